"""Smoke test of benchmarks/reproduce.py's bookkeeping: reading run directories (remaining
weights counted on the exported tensors), choosing lambda trials, the table and the plot.
Fake run directories, no training: a few seconds."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rp():
    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "benchmarks" / "reproduce.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["reproduce"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("reproduce", None)


def fake_run(rp, root, task, method, distill, target, seed, keep, metric, lam=None, lie=False):
    """A finished-looking run directory whose export keeps ``keep`` of its encoder weights."""
    from safetensors.numpy import save_file

    d = Path(root) / task / rp.run_name(method, distill, target, seed, lam)
    (d / "export").mkdir(parents=True)
    rng = np.random.default_rng(0)
    w = rng.normal(size=(2, 8, 16)).astype(np.float32)
    n_keep = round(keep * w[0].size)
    for m in w:
        flat = m.reshape(-1)
        flat[n_keep:] = 0.0
    tensors = {
        "bert.encoder.layer.0.attention.self.query.weight": w[0],
        "bert.encoder.layer.0.output.dense.weight": w[1],
        "bert.encoder.layer.0.output.dense.bias": np.ones(8, np.float32),
        "bert.encoder.layer.0.output.LayerNorm.weight": np.zeros(8, np.float32),
        "bert.embeddings.word_embeddings.weight": np.zeros((4, 8), np.float32),
    }
    save_file(tensors, str(d / "export" / "model.safetensors"))
    remaining = 2 * n_keep + (1 if lie else 0)
    metrics = ({"accuracy": metric} if task == "sst2"  # SQuAD metrics are in percent
               else {"exact_match": 100 * (metric - 0.1), "f1": 100 * metric})
    (d / "eval_results.json").write_text(json.dumps({
        "task": task, "method": method, "step": 5, "remaining_weights": remaining / 256,
        "remaining": remaining, "prunable": 256, "main_metric": rp.MAIN_METRIC[task],
        "metrics": {"validation": metrics}}))
    cfg = {"train": {"seed": seed, "batch_size": 4, "max_steps": 5},
           "data": {"max_train_samples": 20}, "task": {"max_seq_length": 32},
           "prune": {"final_lambda": lam or 0.0}, "distill": {"teacher": "/t" if distill else None}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    return d


def test_next_lambda_brackets_and_extrapolates(rp):
    assert rp.next_lambda([], 0.1, 400.0) == 400.0
    # one trial: slope -1 guess, step clamped to x30
    assert rp.next_lambda([(10.0, 0.2)], 0.1, 1.0) == pytest.approx(20.0)
    assert rp.next_lambda([(10.0, 1.0)], 0.001, 1.0) == pytest.approx(300.0)
    # bracketing trials: log-log interpolation
    lam = rp.next_lambda([(10.0, 0.4), (1000.0, 0.025)], 0.1, 1.0)
    assert 10.0 < lam < 1000.0
    assert lam == pytest.approx(100.0, rel=1e-6)


def test_tables_and_plot_from_fake_runs(rp, tmp_path):
    runs = tmp_path / "runs"
    fake_run(rp, runs, "sst2", "none", False, None, 1, 1.0, 0.85)
    fake_run(rp, runs, "sst2", "magnitude", False, 0.5, 1, 0.5, 0.84)
    fake_run(rp, runs, "sst2", "magnitude", False, 0.1, 1, 0.1, 0.70)
    fake_run(rp, runs, "sst2", "topk", True, 0.1, 1, 0.1, 0.80)
    fake_run(rp, runs, "sst2", "sigmoied_threshold", False, 0.5, 1, 0.45, 0.82, lam=10.0)
    fake_run(rp, runs, "sst2", "sigmoied_threshold", False, 0.5, 1, 0.12, 0.78, lam=100.0)
    # L0: each target shows a trial run for it, even when another target's trial is closer
    fake_run(rp, runs, "sst2", "l0", False, 0.5, 1, 0.2, 0.75, lam=1.0)
    fake_run(rp, runs, "sst2", "l0", False, 0.1, 1, 0.01, 0.5, lam=3.0)
    fake_run(rp, runs, "sst2", "l0", True, 0.1, 1, 0.05, 0.6, lam=2.0)
    fake_run(rp, runs, "squad_dev_split", "none", False, None, 1, 1.0, 0.30)
    fake_run(rp, runs, "squad_dev_split", "topk", False, 0.1, 1, 0.1, 0.12)

    args = rp.resolve_args(["--tasks", "sst2,squad_dev_split", "--runs-dir", str(runs),
                            "--out", str(tmp_path / "out"), "--report-only"])
    all_rows = rp.existing_trials(args)
    assert len(all_rows) == 11
    by_run = {r["run"]: r for r in all_rows}
    # counted on the export: 2 matrices of 128, LayerNorm / bias / embeddings excluded
    assert by_run["magnitude_nokd_t0.1_s1"]["remaining"] == 2 * 13
    assert by_run["magnitude_nokd_t0.1_s1"]["prunable"] == 256
    assert by_run["sigmoied_threshold_nokd_t0.5_lam100_s1"]["target"] == 0.5
    assert by_run["topk_kd_t0.1_s1"]["distill"] == "yes"

    rows = rp.select_from_runs(args, all_rows)
    soft = [r for r in rows if r["method"] == "sigmoied_threshold"]
    assert len(soft) == 1 and soft[0]["lambda"] == 10.0  # 0.45 is closer to 0.5 than 0.12
    l0 = {(r["distill"], r["target"]): r["lambda"] for r in rows if r["method"] == "l0"}
    assert l0 == {("no", 0.5): 1.0, ("no", 0.1): 3.0, ("yes", 0.1): 2.0}

    trials = [r for r in all_rows if r["method"] in rp.LAMBDA_METHODS]
    rp.report(rows, trials, tmp_path / "out", "python benchmarks/reproduce.py --report-only",
              "CPU (test), 2 cores, 2026-01-01")
    out = tmp_path / "out"
    csv_rows = rp.read_csv(out / "results.csv")
    assert len(csv_rows) == len(rows) == 10
    assert {r["method"] for r in csv_rows} == {"none", "magnitude", "topk", "sigmoied_threshold",
                                               "l0"}
    mag = next(r for r in csv_rows if r["run"] == "magnitude_nokd_t0.1_s1")
    assert math.isclose(mag["remaining_weights"], 26 / 256) and mag["accuracy"] == 0.70
    assert len(rp.read_csv(out / "lambda_trials.csv")) == 5
    squad = next(r for r in csv_rows if r["task"] == "squad_dev_split" and r["method"] == "none")
    assert squad["f1"] == pytest.approx(0.30) and squad["exact_match"] == pytest.approx(0.20)
    md = (out / "results.md").read_text()
    assert "CPU (test), 2 cores" in md and "SQuAD-dev split" in md
    assert "| magnitude | no | 10.0 | 10.16 | 70.0 | -15.0 |" in md
    png = (out / "figure2.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_export_count_mismatch_is_an_error(rp, tmp_path):
    d = fake_run(rp, tmp_path, "sst2", "topk", False, 0.1, 1, 0.1, 0.8, lie=True)
    with pytest.raises(RuntimeError, match="differ from eval_results"):
        rp.read_run(d)
