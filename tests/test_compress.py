"""``mvp-jax compress`` and ``mvp_jax.serving.latency``: the budget a known cost table gives (derived by
hand), the table's fit and file, the command end to end on a tiny model (teacher trained once and
reused by a second target, the card written, ``predict`` on the output), a missed ``--max-drop``,
bad input (one line, exit 2, nothing written), ``mvp-jax latency-table``, and JAX's persistent
compilation cache on by default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_own_data import one_error_line, reviews, run_cli, write

from mvp_jax.serving import latency
from mvp_jax.serving.latency import LatencyError, LatencyTable, ModelShape

TINY = ModelShape("bert", 2, 32, 2, 64, "gelu")  # conftest's tiny_bert


def tiny_table(batch_size=8, precision="float32") -> LatencyTable:
    """base 1 ms; per layer A(h) = h ms, F(f) = 0.1 f ms; dense = 1 + 2 (2 + 6.4) = 17.8 ms."""
    return LatencyTable(TINY, batch_size, 16, precision, None, 17.8, 1.0,
                        ((0, 0.0), (1, 1.0), (2, 2.0)), ((0, 0.0), (64, 6.4)))


# ----------------------------------------------------------------------------------------------
# The budget
# ----------------------------------------------------------------------------------------------


def test_prediction_is_the_sum_of_the_layers_costs():
    t = tiny_table()
    assert t.predict_ms([2, 2], [64, 64]) == pytest.approx(17.8)
    assert t.predict_ms([1, 0], [32, 10]) == pytest.approx(1 + (1 + 3.2) + (0 + 1.0))
    assert t.speedup([1, 1], [44, 44]) == pytest.approx(17.8 / 11.8)
    with pytest.raises(LatencyError, match="sizes for 1/1 layers; the table is for 2"):
        t.predict_ms([1], [1])


def test_budget_of_a_known_cost_table():
    # target 1.5: T <= 17.8 / 1.5 = 11.867 ms, i.e. 1 + 2 (h + 0.1 f) <= 11.867. Any k < 1 keeps
    # int(2 k) = 1 head for k >= 0.5 (fewer: no head, not sensible), so 0.1 f <= 4.43: f = 44,
    # k = (44 + 0.5) / 64; predicted 17.8 / (1 + 2 (1 + 4.4)) = 17.8 / 11.8.
    b = latency.plan_budget(tiny_table(), 1.5)
    assert (b.keep, b.heads, b.neurons, b.reachable) == (44.5 / 64, 1, 44, True)
    assert b.predicted_speedup == pytest.approx(17.8 / 11.8)
    # target 2 needs T <= 8.9: even f = 32 (k = 32.5 / 64, the last k with a head) costs 9.4
    b = latency.plan_budget(tiny_table(), 2.0)
    assert (b.keep, b.heads, b.neurons, b.reachable) == (32.5 / 64, 1, 32, False)
    assert b.predicted_speedup == pytest.approx(17.8 / 9.4)
    # a target the dense model already meets keeps everything
    easy = LatencyTable(TINY, 8, 16, "int8", None, 17.8, 1.0, ((0, 0.0), (2, 1.0)),
                        ((0, 0.0), (64, 3.0)))  # int8 dense: 1 + 2 (1 + 3) = 9 ms, 1.98x
    assert latency.plan_budget(easy, 1.5).keep == 1.0
    with pytest.raises(LatencyError, match="must be > 1"):
        latency.plan_budget(tiny_table(), 1.0)


def test_budget_of_a_minilm_shaped_table():
    # 6 layers, 12 heads, 1536 neurons; base 2, A(h) = 0.5 h, F(f) = 0.005 f: dense 84.08 ms.
    # Target 2: 6 (0.5 h + 0.005 f) <= 40.04. Every k >= 768.5 / 1536 keeps >= 6 heads and
    # would need f <= 734 < 768: impossible. Below, 5 heads: f <= 834, capped by k < 768.5/1536
    # at f = 767: keep (767 + 0.5) / 1536, predicted 84.08 / (2 + 6 (2.5 + 3.835)).
    shape = ModelShape("bert", 6, 384, 12, 1536, "gelu")
    t = LatencyTable(shape, 32, 27, "float32", None, 84.08, 2.0, ((0, 0.0), (12, 6.0)),
                     ((0, 0.0), (1536, 7.68)))
    b = latency.plan_budget(t, 2.0)
    assert (b.keep, b.heads, b.neurons) == (767.5 / 1536, 5, 767)
    assert b.predicted_speedup == pytest.approx(84.08 / (2 + 6 * (2.5 + 3.835)))
    # the counts local Top-v keeps are the same in float32 (a traced threshold) and float64
    import numpy as np

    for k in latency.candidate_fractions(shape):
        assert int(np.float32(k) * np.float32(1536)) == int(k * 1536)
        assert int(np.float32(k) * np.float32(12)) == int(k * 12) >= 1


def test_isotonic_fit_is_non_decreasing_least_squares():
    assert latency.isotonic([(0, 0.0), (1, 3.0), (2, 1.0), (3, 2.0)]) == \
        ((0, 0.0), (1, 2.0), (2, 2.0), (3, 2.0))
    assert latency.isotonic([(0, 1.0), (5, 2.0)]) == ((0, 1.0), (5, 2.0))
    t = LatencyTable(TINY, 8, 16, "float32", None, 10.0, 1.0,
                     ((0, 0.0), (1, 2.0), (2, 1.0)), ((0, 0.0), (64, 1.0)))
    assert t.predict_ms([1, 2], [0, 0]) == pytest.approx(1.0 + 1.5 + 1.5)  # noise pooled


def test_table_file_round_trip_and_bad_files(tmp_path):
    path = tmp_path / "t.json"
    tables = [tiny_table(), tiny_table(1, "int8")]
    latency.save_tables(path, tables)
    assert latency.load_tables(path) == tables
    assert latency.pick_table(tables, TINY, 1, "int8") == tables[1]
    assert latency.pick_table(tables, TINY, 4, "int8") is None
    other = ModelShape("bert", 6, 384, 12, 1536, "gelu")
    with pytest.raises(LatencyError, match="measured for another model"):
        latency.pick_table(tables, other, 8, "float32")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LatencyError, match="not readable JSON"):
        latency.load_tables(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(LatencyError, match="is not a latency table"):
        latency.load_tables(tmp_path / "other.json")
    with pytest.raises(LatencyError, match="does not exist"):
        latency.load_tables(tmp_path / "missing.json")


# ----------------------------------------------------------------------------------------------
# The command, end to end on a tiny model
# ----------------------------------------------------------------------------------------------

STEPS = 24


@pytest.fixture(scope="module")
def setting(tmp_path_factory, tiny_bert):
    """A recipe of the tiny model on the reviews, and a known latency table at batch 8."""
    root = tmp_path_factory.mktemp("compress")
    rows = reviews(64)
    write(root / "train.csv", rows)
    write(root / "dev.csv", rows[:24])
    (root / "recipe.yaml").write_text(f"""\
model: {{name: {tiny_bert}}}
task: {{name: mine, train_file: {root / 'train.csv'}, validation_file: {root / 'dev.csv'},
        max_seq_length: 32}}
data: {{max_train_samples: 64}}
train: {{batch_size: 8, max_steps: {STEPS}, warmup_steps: 1, learning_rate: 1.0e-2}}
prune: {{initial_warmup: 1, final_warmup: 1}}
""")
    latency.save_tables(root / "table.json", [tiny_table()])
    return root


def compress_args(root, out, *extra, speedup="1.5"):
    return ["compress", "--config", root / "recipe.yaml", "--speedup", speedup, "--batch-size",
            "8", "--latency-table", root / "table.json", "--max-drop", "100", "--rounds", "1",
            "--work-dir", root / "work", "--output-dir", out, "--no-progress", *extra]


def test_compress_end_to_end_reuses_the_teacher(setting, tmp_path, capsys):
    from mvp_jax.config import load_config
    from mvp_jax.serving.predict import load_predictor, predict_texts

    out = tmp_path / "fast"
    code, stdout, err = run_cli(capsys, *compress_args(setting, out))
    assert code == 0, err
    assert "dense teacher: training" in err and "student: training" in err
    files = sorted(p.name for p in out.iterdir())
    for name in ("README.md", "compress.json", "config.json", "model.onnx", "vocab.txt"):
        assert name in files
    report = json.loads((out / "compress.json").read_text())
    assert report["plan"]["keep"] == 44.5 / 64 and report["plan"]["heads"] == 1
    assert report["chosen"] in ("float32", "int8")
    chosen = report["models"][report["chosen"]]
    for key in ("1", "8"):  # both batch sizes timed against the dense model
        assert chosen["speedup"][key] > 0 and report["models"]["dense"]["speedup"][key] == 1.0
    assert report["status"] in ("met", "missed_speed")
    # the student: hybrid movement pruning to the budget, distilled from the teacher
    student = Path(report["student_run"])
    cfg = load_config(student / "config.yaml")
    assert (cfg.prune.method, cfg.prune.granularity) == ("topk", "hybrid")
    assert cfg.prune.final_threshold == 44.5 / 64
    assert cfg.distill.teacher == str(Path(report["teacher_run"]) / "export")
    assert json.loads((out / "config.json").read_text())["layer_num_heads"] == [1, 1]
    # the card says what was asked, what was measured, where and how
    card = (out / "README.md").read_text()
    assert "1.5x faster" in card and "mvp-jax compress" in card and "predict" in card
    assert f"{chosen['speedup']['8']:.2f}x" in card and report["machine"]["cpu"] in card
    # predict uses the output, with the labels of the chosen export
    texts = [r["text"] for r in reviews(8)]
    code, stdout, err = run_cli(capsys, "predict", out, *sum((["--text", t] for t in texts), []))
    assert code == 0, err
    labels = [json.loads(line)["label"] for line in stdout.splitlines()]
    assert labels == [r["label"] for r in predict_texts(load_predictor(chosen["dir"]), texts)]

    # a second target: the teacher is reused, a second student trained
    teacher_results = Path(report["teacher_run"]) / "eval_results.json"
    before = teacher_results.stat().st_mtime_ns
    code, _, err = run_cli(capsys, *compress_args(setting, tmp_path / "faster", speedup="1.2"))
    assert code == 0, err
    assert "dense teacher: reusing the finished run" in err and "student: training" in err
    assert teacher_results.stat().st_mtime_ns == before
    second = json.loads((tmp_path / "faster" / "compress.json").read_text())
    assert second["plan"]["keep"] == 59.5 / 64  # 1 + 2 (1 + 0.1 f) <= 17.8 / 1.2: f = 59
    assert second["teacher_run"] == report["teacher_run"]

    # a missed --max-drop: exit 4, nothing delivered, the runs kept
    import mvp_jax.serving.compress as compress_module

    def score(self, rows, label_names, _calls=[]):
        _calls.append(1)
        return 100.0 if len(_calls) == 1 else 90.0  # dense first, then the two exports

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(compress_module.DevSet, "score", score)
        code, _, err = run_cli(capsys, *compress_args(setting, tmp_path / "none", "--max-drop",
                                                      "1"))
    assert code == 4
    line = [x for x in err.splitlines() if x.startswith("mvp-jax:")]
    assert len(line) == 1 and "missed --max-drop 1" in line[0] and "10.0 points below" in line[0]
    assert not (tmp_path / "none").exists() and student.is_dir()
    assert json.loads((student / "compress.json").read_text())["status"] == "missed_accuracy"


@pytest.mark.parametrize("extra,match", [
    (["--speedup", "1"], "--speedup must be > 1"),
    (["--speedup", "0.5"], "--speedup must be > 1"),
    (["--max-drop", "-1"], "--max-drop must be >= 0"),
    (["--precision", "int4"], "unknown --precision 'int4'"),
    (["--set", "task.kind=regression"], "needs a classification task; mine is regression"),
    (["--latency-table", "missing.json"], "--latency-table missing.json does not exist"),
])
def test_compress_bad_input_is_one_line_and_writes_nothing(setting, tmp_path, capsys, extra,
                                                           match):
    args = compress_args(setting, tmp_path / "out")
    args[args.index("--work-dir") + 1] = tmp_path / "work"
    for i in range(0, len(extra), 2):  # replace an option already there, else append it
        if extra[i] in args:
            args[args.index(extra[i]) + 1] = extra[i + 1]
        else:
            args += extra[i:i + 2]
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and match in one_error_line(err)
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


def test_compress_refuses_a_model_onnx_cannot_export_and_a_missing_runtime(
        setting, tiny_bert, tmp_path, capsys, monkeypatch):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_bert, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "hidden_act": "mish"}))
    args = compress_args(setting, tmp_path / "out", "--set", f"model.name={model}")
    args[args.index("--work-dir") + 1] = tmp_path / "work"
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "unsupported hidden_act 'mish'" in one_error_line(err)

    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    code, _, err = run_cli(capsys, *compress_args(setting, tmp_path / "out2"))
    assert code == 2 and "pip install 'mvp-jax[onnx]'" in one_error_line(err)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()
    assert not (tmp_path / "work").exists()


def test_latency_table_command_measures_a_readable_table(tiny_bert, tmp_path, capsys):
    out = tmp_path / "serving.json"
    code, stdout, err = run_cli(capsys, "latency-table", "--model", tiny_bert, "--batch-size",
                                "2", "--seq-length", "8", "--rounds", "1", "--output", out)
    assert code == 0, err
    tables = latency.load_tables(out)
    assert [(t.batch_size, t.precision) for t in tables] == [(2, "float32"), (2, "int8")]
    for t in tables:
        assert t.shape == TINY and t.seq_length == 8 and t.dense_ms > 0 and t.base_ms > 0
        assert [h for h, _ in t.attention_ms] == [0, 1, 2] and t.attention_ms[0][1] == 0.0
        assert t.ffn_ms[-1][0] == 64 and min(ms for _, ms in t.ffn_ms) >= 0.0
    code, _, err = run_cli(capsys, "latency-table", "--model", tiny_bert, "--output", out)
    assert code == 2 and "exists; pass --overwrite" in one_error_line(err)
    code, _, err = run_cli(capsys, "latency-table", "--model", tiny_bert, "--precision",
                           "int4", "--output", tmp_path / "x.json")
    assert code == 2 and "unknown precision 'int4'" in one_error_line(err)


def test_compress_with_a_table_of_another_batch_size_says_so(setting, tmp_path, capsys):
    args = compress_args(setting, tmp_path / "out")
    args[args.index("--batch-size") + 1] = "4"
    args[args.index("--work-dir") + 1] = tmp_path / "work"
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "has no table at batch size 4" in one_error_line(err)
    assert not (tmp_path / "work").exists()


# ----------------------------------------------------------------------------------------------
# JAX's persistent compilation cache, on by default
# ----------------------------------------------------------------------------------------------


def test_second_run_of_the_same_shapes_compiles_nothing(tiny_bert, tmp_path, shared_data):
    from test_own_data import fine_prune_args

    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env["MVP_JAX_CACHE_DIR"] = str(tmp_path / "cache")
    args = fine_prune_args(tiny_bert, tmp_path / "run", "task.name=sst2",
                           f"task.data_dir={shared_data / 'glue' / 'SST-2'}",
                           "data.max_eval_samples=16", steps=2, method="none")

    def run(*extra):
        proc = subprocess.run([sys.executable, "-m", "mvp_jax.cli", *map(str, args), *extra],
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        return sorted(p.name for p in (tmp_path / "cache" / "xla").iterdir())

    first = run()
    assert first, "the first run wrote no compiled program"
    assert run("--overwrite") == first  # nothing new compiled


def test_no_compile_cache_turns_it_off(tiny_bert, capsys, monkeypatch):
    import mvp_jax.cli as cli

    calls = []
    monkeypatch.setattr(cli, "use_compile_cache", lambda: calls.append(1))
    assert run_cli(capsys, "count", tiny_bert, "--json")[0] == 0
    assert calls == [1]
    assert run_cli(capsys, "count", tiny_bert, "--json", "--no-compile-cache")[0] == 0
    assert calls == [1]


def test_predict_file_of_a_builtin_task_run_reads_its_text_column(tiny_bert_classifier, tmp_path,
                                                                   capsys):
    """A run of SST-2 knows its text column (``sentence``): ``predict RUN --file`` needs no
    ``--text-column``; a file with one column needs none either (issue 33, item 9)."""
    import shutil

    from mvp_jax.config import load_config, save_config

    run = tmp_path / "run"
    shutil.copytree(tiny_bert_classifier, run / "export")
    save_config(load_config(None, ["task.name=sst2", f"model.name={tiny_bert_classifier}"]),
                run / "config.yaml")
    texts = ["a gorgeous film", "dull and long"]
    write(tmp_path / "dev.csv", [{"sentence": t, "label": 1} for t in texts])
    code, stdout, err = run_cli(capsys, "predict", run, "--file", tmp_path / "dev.csv")
    assert code == 0, err
    assert [json.loads(line)["text"] for line in stdout.splitlines()] == texts
    write(tmp_path / "one.csv", [{"review": t} for t in texts])
    code, stdout, err = run_cli(capsys, "predict", run / "export", "--file", tmp_path / "one.csv")
    assert code == 0, err
    assert [json.loads(line)["text"] for line in stdout.splitlines()] == texts
    write(tmp_path / "two.csv", [{"review": t, "id": 1} for t in texts])
    code, _, err = run_cli(capsys, "predict", run / "export", "--file", tmp_path / "two.csv")
    assert code == 2 and "no column 'text'" in one_error_line(err)


@pytest.mark.parametrize("recipe", ["movement", "soft_movement", "l0", "dense", "hybrid_distilled"])
def test_student_is_hybrid_movement_distilled_whatever_the_recipe(recipe):
    from mvp_jax.config import load_config
    from mvp_jax.serving.compress import student_config, teacher_config

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "configs" / "lab" / "sst2" / f"{recipe}.yaml")
    s = student_config(cfg, 0.3, "/runs/teacher/export")
    assert (s.prune.method, s.prune.granularity, s.prune.final_threshold) == ("topk", "hybrid", 0.3)
    assert s.prune.initial_threshold == 1.0 and s.prune.regularization is None
    assert s.prune.mask_init in ("magnitude", "constant", "uniform")
    assert s.distill.teacher == "/runs/teacher/export"
    assert (s.distill.alpha_ce, s.distill.alpha_distil) == (0.1, 0.9)
    assert (s.train, s.task, s.model) == (cfg.train, cfg.task, cfg.model)
    t = teacher_config(cfg)
    assert t.prune.method == "none" and t.distill.teacher is None and t.train == cfg.train
