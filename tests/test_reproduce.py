"""Smoke test of the sweep's bookkeeping (``benchmarks.reproduce``): reading run directories
(remaining weights counted on the exported tensors), choosing lambda trials, the table and the
plot, the variants' configs, the cpu-lab run order and the claims computed from result rows.
Fake run directories, no training: a few seconds."""

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import benchmarks.reproduce as rp

ROOT = Path(__file__).resolve().parents[1]


def fake_run(root, task, method, distill, target, seed, keep, metric, lam=None, lie=False,
             prune_set=None):
    """A finished-looking run directory of variant (or prune.method) ``method`` whose export
    keeps ``keep`` of its encoder weights; its config.yaml holds the variant's prune overrides
    (or ``prune_set``)."""
    from safetensors.numpy import save_file

    variant = rp.variant_name(method)
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
        "task": task, "method": "none" if variant == "dense" else rp.VARIANTS[variant][0],
        "step": 5, "remaining_weights": remaining / 256,
        "remaining": remaining, "prunable": 256, "main_metric": rp.MAIN_METRIC[task],
        "metrics": {"validation": metrics}}))
    cfg = {"train": {"seed": seed, "batch_size": 4, "max_steps": 5},
           "data": {"max_train_samples": 20}, "task": {"max_seq_length": 32},
           "prune": {"final_lambda": lam or 0.0, "mask_init": "constant", "mask_scale": 0.0},
           "distill": {"teacher": "/t" if distill else None}}
    for o in prune_set if prune_set is not None else rp.VARIANTS.get(variant, ("", []))[1]:
        key, _, value = o.partition("=")
        cfg["prune"][key.split(".")[1]] = yaml.safe_load(value)
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    return d


def test_the_lambda_search_is_the_library_search(tmp_path, monkeypatch):
    """A soft movement / L0 cell searches lambda with ``mvp_jax.pruning.calibration``
    (``calibrate_lambda``, its steps ``next_lambda``; tested there): the sweep runs the library's
    lambdas, from the recipe's final_lambda, and the report shows, per target, the trial that
    ``calibration.closest`` picks."""
    from mvp_jax.pruning import calibration

    def remaining(lam):  # a logistic fall in log lambda, as the runs measure it
        return 1.0 / (1.0 + (lam / 3000.0) ** 1.5)

    ran = []

    def fake_run_or_read(args, task, variant, distill, target, seed, lam=None, teacher=None,
                         fresh=False):
        ran.append(lam)
        return {"task": task, "variant": variant, "method": rp.VARIANTS[variant].method,
                "distill": "yes" if distill else "no", "seed": seed, "target": target,
                "lambda": lam, "remaining_weights": target if lam is None else remaining(lam),
                "run": rp.run_name(variant, distill, target, seed, lam)}

    monkeypatch.setattr(rp.sweep, "run_or_read", fake_run_or_read)  # where run_cell looks it up
    args = rp.resolve_args(["--preset", "paper-grid", "--runs-dir", str(tmp_path / "runs"),
                            "--out", str(tmp_path / "out")])
    trials = []
    rp.run_cell(args, "sst2", "soft_movement", False, 0.1, 42, "/teacher", trials)
    start = rp.start_lambda(args, "soft_movement")
    want = calibration.calibrate_lambda(remaining, 0.1, start, tolerance=0.01, max_trials=5)
    assert ran == [t.lam for t in want] and ran[0] == start == 400.0 and len(ran) > 2
    assert [r["lambda"] for r in trials] == ran
    # the report's row for the target: the trial the library's closest picks
    rows = rp.select_from_runs(args, trials)
    assert [r["lambda"] for r in rows] == [calibration.closest(want, 0.1).lam]
    # a hard-target variant is one run, no lambda
    ran.clear()
    rp.run_cell(args, "sst2", "magnitude", False, 0.1, 42, "/teacher", trials)
    assert ran == [None]


def test_tables_and_plot_from_fake_runs(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "sst2", "none", False, None, 1, 1.0, 0.85)
    fake_run(runs, "sst2", "magnitude", False, 0.5, 1, 0.5, 0.84)
    fake_run(runs, "sst2", "magnitude", False, 0.1, 1, 0.1, 0.70)
    fake_run(runs, "sst2", "topk", True, 0.1, 1, 0.1, 0.80)
    fake_run(runs, "sst2", "sigmoied_threshold", False, 0.5, 1, 0.45, 0.82, lam=10.0)
    fake_run(runs, "sst2", "sigmoied_threshold", False, 0.5, 1, 0.12, 0.78, lam=100.0)
    # L0: each target shows a trial run for it, even when another target's trial is closer
    fake_run(runs, "sst2", "l0", False, 0.5, 1, 0.2, 0.75, lam=1.0)
    fake_run(runs, "sst2", "l0", False, 0.1, 1, 0.01, 0.5, lam=3.0)
    fake_run(runs, "sst2", "l0", True, 0.1, 1, 0.05, 0.6, lam=2.0)
    fake_run(runs, "squad_dev_split", "none", False, None, 1, 1.0, 0.30)
    fake_run(runs, "squad_dev_split", "topk", False, 0.1, 1, 0.1, 0.12)

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
    rp.report.report(rows, trials, tmp_path / "out", "python -m benchmarks.reproduce --report-only",
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


def test_export_count_mismatch_is_an_error(tmp_path):
    d = fake_run(tmp_path, "sst2", "topk", False, 0.1, 1, 0.1, 0.8, lie=True)
    with pytest.raises(RuntimeError, match="differ from eval_results"):
        rp.read_run(d)


# ----------------------------------------------------------------------------------------------
# Variants, the cpu-lab preset, the claims
# ----------------------------------------------------------------------------------------------


def test_variant_names_and_aliases(capsys):
    assert rp.variant_name("topk") == "movement_paper"
    assert rp.variant_name("sigmoied_threshold") == "soft_movement"
    assert rp.variant_name("movement") == "movement" and rp.variant_name("random") == "random"
    with pytest.raises(ValueError, match="unknown method or variant"):
        rp.variant_name("movment")
    args = rp.resolve_args(["--preset", "cpu-lab", "--methods", "topk,movement,l0"])
    assert args.methods == ["movement_paper", "movement", "l0"]
    capsys.readouterr()
    # fail(): SystemExit(2) (str "2": the exception carries only the exit status), its one-line
    # message on stderr
    with pytest.raises(SystemExit, match="^2$"):
        rp.resolve_args(["--preset", "cpu-lab", "--methods", "movment"])
    err = capsys.readouterr().err
    assert err.startswith("python -m benchmarks.reproduce: error: unknown method or variant "
                          "'movment'; choose from ")
    assert err.count("\n") == 1
    with pytest.raises(SystemExit, match="^2$"):  # the lab recipes are SST-2's
        rp.resolve_args(["--preset", "cpu-lab", "--tasks", "sst2,squad_dev_split"])
    assert capsys.readouterr().err == ("python -m benchmarks.reproduce: error: --recipes lab "
                                       "(presets cpu-lab, paper-grid) runs the SST-2 lab "
                                       "recipes: --tasks sst2 only, got sst2,squad_dev_split\n")
    # run directories: the paper's four keep their method-named directories
    assert rp.run_name("movement_paper", False, 0.03, 42) == "topk_nokd_t0.03_s42"
    assert rp.run_name("topk", False, 0.03, 42) == "topk_nokd_t0.03_s42"
    assert rp.run_name("movement", True, 0.03, 42) == "movement_kd_t0.03_s42"
    assert rp.run_name("soft_movement", False, 0.03, 42, 400.0) == \
        "sigmoied_threshold_nokd_t0.03_lam400_s42"


def test_variant_configs_resolve():
    """cpu-lab: each variant's config is its lab recipe with the preset's overrides on top."""
    args = rp.resolve_args(["--preset", "cpu-lab"])
    assert args.recipes == "lab" and args.max_steps == 600 and args.tasks == ["sst2"]
    assert args.runs_dir.endswith("reproduce_cpu_lab")
    want = {"dense": ("none", "constant", 0.0), "magnitude": ("magnitude", "constant", 0.0),
            "movement_paper": ("topk", "constant", 0.0), "movement": ("topk", "magnitude", 2.0),
            "random": ("random", "constant", 0.0),
            "soft_movement": ("sigmoied_threshold", "constant", 0.0),
            "l0": ("l0", "constant", 2.197)}
    for variant, (method, init, scale) in want.items():
        lam = rp.start_lambda(args, variant) if method in rp.LAMBDA_METHODS else None
        cfg = rp.make_config(args, "sst2", variant, 0.03, 42, lam=lam, total_steps=600)
        assert (cfg.prune.method, cfg.prune.mask_init, cfg.prune.mask_scale) == \
            (method, init, scale), variant
        # the recipe's schedule and data, the preset's length: warm-up scaled 120/1200 -> 60/600
        assert cfg.train.max_steps == 600 and cfg.train.warmup_steps == 60
        assert (cfg.prune.initial_warmup, cfg.prune.final_warmup) == (2.0, 3.0)
        assert cfg.train.learning_rate == 1e-4 and cfg.train.batch_size == 32
        assert cfg.data.max_train_samples is None and cfg.task.max_seq_length == 64
        assert cfg.data.bucket_lengths == (16, 24, 32, 48, 64)
        assert cfg.train.seed == 42 and cfg.distill.teacher is None
        if method in ("magnitude", "topk", "random"):
            assert cfg.prune.final_threshold == 0.03
    soft = rp.make_config(args, "sst2", "soft_movement", 0.03, 42, lam=400.0, total_steps=600)
    assert rp.start_lambda(args, "soft_movement") == 400.0
    assert soft.prune.final_lambda == 400.0 and soft.train.scores_learning_rate == 0.01
    kd = rp.make_config(args, "sst2", "movement", 0.03, 42, teacher="/runs/dense_s42/export",
                        total_steps=600)
    assert kd.distill.teacher == "/runs/dense_s42/export"
    assert (kd.distill.alpha_ce, kd.distill.alpha_distil, kd.distill.temperature) == \
        (0.1, 0.9, 2.0)
    # the recipe's own length: its own warm-up; a shorter sequence keeps the buckets below it
    args = rp.resolve_args(["--preset", "cpu-lab", "--max-steps", "1200", "--max-seq-length",
                            "32"])
    cfg = rp.make_config(args, "sst2", "movement", 0.5, 42, total_steps=1200)
    assert cfg.train.warmup_steps == 120 and cfg.task.max_seq_length == 32
    assert cfg.data.bucket_lengths == (16, 24, 32)
    # cpu-reduced keeps its meaning: _task.yaml + method fragment, topk = the paper's movement
    args = rp.resolve_args(["--preset", "cpu-reduced"])
    cfg = rp.make_config(args, "sst2", "topk", 0.1, 42, total_steps=60)
    assert (cfg.prune.method, cfg.prune.mask_init, cfg.prune.mask_scale) == \
        ("topk", "constant", 0.0)
    assert (cfg.prune.initial_warmup, cfg.prune.final_warmup) == (1.0, 2.0)
    assert cfg.train.warmup_steps == 6 and cfg.train.batch_size == 16
    assert cfg.train.learning_rate == 3e-4 and cfg.data.bucket_lengths is None
    assert cfg.distill.alpha_ce == 0.5  # no distillation overrides in this preset
    cfg = rp.make_config(args, "sst2", "movement", 0.1, 42, total_steps=60)
    assert (cfg.prune.method, cfg.prune.mask_init, cfg.prune.mask_scale) == \
        ("topk", "magnitude", 2.0)


def test_cpu_lab_plan_order():
    plan = [(v, kd, t) for _, _, v, kd, t in rp.plan(rp.resolve_args(["--preset", "cpu-lab"]))]
    assert plan == [("dense", False, None),
                    ("movement", False, 0.03), ("movement_paper", False, 0.03),
                    ("magnitude", False, 0.03), ("random", False, 0.03),
                    ("soft_movement", False, 0.03), ("movement", True, 0.03),
                    ("magnitude", False, 0.5), ("movement", False, 0.5),
                    ("movement_paper", False, 0.5), ("random", False, 0.5)]
    # L0 when asked for: after soft movement, at the lambda targets only
    args = rp.resolve_args(["--preset", "cpu-lab", "--methods",
                            "movement,movement_paper,magnitude,random,soft_movement,l0"])
    plan = [(v, kd, t) for _, _, v, kd, t in rp.plan(args)]
    assert plan.index(("l0", False, 0.03)) == plan.index(("soft_movement", False, 0.03)) + 1
    assert ("l0", False, 0.5) not in plan and len(plan) == 12
    # cpu-reduced: the nested order as before (dense, then distillation, method, target)
    plan = rp.plan(rp.resolve_args(["--preset", "cpu-reduced"]))
    assert len(plan) == 1 + 4 * 3 + 4 * 2 + 3
    assert plan[:3] == [("sst2", 42, "dense", False, None), ("sst2", 42, "magnitude", False, 0.5),
                        ("sst2", 42, "magnitude", False, 0.1)]
    assert plan[-2:] == [("squad_dev_split", 42, "magnitude", False, 0.1),
                         ("squad_dev_split", 42, "movement_paper", False, 0.1)]


def _row(variant, target, acc, distill="no", remaining=None, seed=42):
    method = "none" if variant == "dense" else None
    return {"task": "sst2", "variant": variant, "method": method or "x", "distill": distill,
            "target": target, "accuracy": acc, "seed": seed,
            "remaining_weights": remaining if remaining is not None else (target or 1.0)}


def _verdicts(items):
    return {(c["claim"], c["variant"]): c["verdict"] for c in items}


def test_claims_held_and_not_held():
    rows = [_row("dense", None, 0.85),
            _row("movement", 0.03, 0.80), _row("movement_paper", 0.03, 0.509),
            _row("magnitude", 0.03, 0.70), _row("random", 0.03, 0.60),
            _row("soft_movement", 0.03, 0.82, remaining=0.028),
            _row("movement", 0.03, 0.81, distill="yes"),
            _row("magnitude", 0.5, 0.84), _row("movement", 0.5, 0.83),
            _row("movement_paper", 0.5, 0.509), _row("random", 0.5, 0.86)]
    items = rp.claims.claims(rows, high=0.03)
    assert _verdicts(items) == {
        ("movement beats magnitude at 3%", "movement"): "held",
        ("movement beats magnitude at 3%", "movement_paper"): "not held",
        ("soft movement is the best method at 3%", "soft_movement"): "held",
        ("magnitude is as good as or better than the other methods at 50%", "magnitude"): "not held",  # random is above
        ("distillation helps", "movement"): "held",
        ("movement beats the random control at 3%", "movement"): "held",
        ("movement beats the random control at 3%", "movement_paper"): "not held",
        ("movement beats the random control at 50%", "movement"): "not held",
        ("movement beats the random control at 50%", "movement_paper"): "not held",
    }
    by = {(c["claim"], c["variant"]): c["detail"] for c in items}
    assert "movement (scores from magnitude) 80.0% (3.00% remaining) vs magnitude 70.0%" in \
        by["movement beats magnitude at 3%", "movement"]
    assert "Δ +10.0 points" in by["movement beats magnitude at 3%", "movement"]
    assert "at the majority class" in by["movement beats magnitude at 3%", "movement_paper"]
    assert "within single-seed noise" in by["distillation helps", "movement"]  # +1.0 point
    assert "vs random (control)" in by["magnitude is as good as or better than the other methods at 50%", "magnitude"]
    soft = by["soft movement is the best method at 3%", "soft_movement"]
    assert "Δ +2.0 points vs movement (scores from magnitude)" in soft and "noise" not in soft
    md = rp.claims_markdown(items)
    assert "### Which of the paper's claims held" in md
    assert "- Movement beats magnitude at 3% [movement (scores from magnitude)]: **held**." in md
    assert "- Movement beats magnitude at 3% [movement (paper: scores from 0)]: **not held**." in md
    # ties are not wins; seeds are averaged
    rows = [_row("magnitude", 0.5, 0.80), _row("movement", 0.5, 0.80),
            _row("magnitude", 0.03, 0.70, seed=1), _row("magnitude", 0.03, 0.60, seed=2),
            _row("movement", 0.03, 0.66)]
    v = _verdicts(rp.claims.claims(rows, high=0.03))
    # "as good": a tie (or less than the 2-point noise margin below) holds
    assert v["magnitude is as good as or better than the other methods at 50%",
             "magnitude"] == "held"
    assert v["movement beats magnitude at 3%", "movement"] == "held"  # 66 > mean(70, 60)
    v = _verdicts(rp.claims.claims([_row("magnitude", 0.5, 0.80), _row("movement", 0.5, 0.8201)]))
    assert v["magnitude is as good as or better than the other methods at 50%",
             "magnitude"] == "not held"  # 2.01 points below


def test_claims_at_both_high_sparsities():
    """By default movement is compared with magnitude at 10% and at 3%, soft movement is
    judged at 3%."""
    rows = [_row("movement", 0.1, 0.80), _row("magnitude", 0.1, 0.82),
            _row("movement", 0.03, 0.75), _row("magnitude", 0.03, 0.60),
            _row("soft_movement", 0.03, 0.76, remaining=0.031)]
    v = _verdicts(rp.claims.claims(rows))
    assert v["movement beats magnitude at 10%", "movement"] == "not held"
    assert v["movement beats magnitude at 3%", "movement"] == "held"
    assert v["soft movement is the best method at 3%", "soft_movement"] == "held"
    assert not any("soft movement is the best method at 10%" in c for c, _ in v)


def test_claims_not_run_and_not_comparable():
    # only dense and magnitude at 50%: nothing to compare with
    v = _verdicts(rp.claims.claims([_row("dense", None, 0.85), _row("magnitude", 0.5, 0.84)],
                            high=0.03))
    assert v == {("movement beats magnitude at 3%", None): "not run",
                 ("soft movement is the best method at 3%", "soft_movement"): "not run",
                 ("magnitude is as good as or better than the other methods at 50%", "magnitude"): "not run",
                 ("distillation helps", None): "not run",
                 ("movement beats the random control", None): "not run"}
    # movement without magnitude at 3%, without random at 50%; a distilled run alone;
    # soft movement whose lambda left 10% for a 3% target
    rows = [_row("movement", 0.03, 0.8), _row("movement", 0.5, 0.83),
            _row("random", 0.03, 0.6), _row("movement", 0.5, 0.84, distill="yes"),
            _row("soft_movement", 0.03, 0.82, remaining=0.10)]
    items = rp.claims.claims(rows, high=0.03)
    v = _verdicts(items)
    assert v["movement beats magnitude at 3%", "movement"] == "not run"
    assert v["soft movement is the best method at 3%", "soft_movement"] == "not comparable"
    assert v["distillation helps", "movement"] == "held"
    assert v["movement beats the random control at 3%", "movement"] == "held"
    assert v["movement beats the random control at 50%", "movement"] == "not run"
    assert ("movement beats magnitude at 3%", "movement_paper") not in v  # not in the rows
    detail = {(c["claim"], c["variant"]): c["detail"] for c in items}
    assert "no run at 3% of magnitude" in detail["movement beats magnitude at 3%", "movement"]
    assert "no run at 50% of random (control)" in \
        detail["movement beats the random control at 50%", "movement"]
    # distillation: lambda runs far apart in sparsity do not compare; an L0 run that kept far
    # more than the target is left out of "soft movement is the best method"
    rows = [_row("soft_movement", 0.03, 0.70, remaining=0.028),
            _row("soft_movement", 0.03, 0.72, distill="yes", remaining=0.005),
            _row("magnitude", 0.03, 0.60), _row("l0", 0.03, 0.80, remaining=0.10)]
    items = rp.claims.claims(rows, high=0.03)
    v = _verdicts(items)
    assert v["distillation helps", "soft_movement"] == "not comparable"
    assert v["soft movement is the best method at 3%", "soft_movement"] == "held"
    detail = {(c["claim"], c["variant"]): c["detail"] for c in items}
    assert "left out, too far above the target: L0 regularization 80.0% (10.00% remaining)" in \
        detail["soft movement is the best method at 3%", "soft_movement"]


def test_lab_report_from_fake_runs(tmp_path):
    """Variant run directories -> rows with their variant, the CSV's variant column, the
    table's labels and the claims in results.md; a run whose config contradicts its name is an
    error."""
    runs = tmp_path / "runs"
    fake_run(runs, "sst2", "dense", False, None, 42, 1.0, 0.85)
    fake_run(runs, "sst2", "movement", False, 0.03, 42, 0.03, 0.80)
    fake_run(runs, "sst2", "movement_paper", False, 0.03, 42, 0.03, 0.509)
    fake_run(runs, "sst2", "magnitude", False, 0.03, 42, 0.03, 0.70)
    fake_run(runs, "sst2", "random", False, 0.03, 42, 0.03, 0.60)
    fake_run(runs, "sst2", "soft_movement", False, 0.03, 42, 0.03, 0.82, lam=400.0)
    fake_run(runs, "sst2", "movement", True, 0.03, 42, 0.03, 0.81)
    args = rp.resolve_args(["--preset", "cpu-lab", "--runs-dir", str(runs), "--out",
                            str(tmp_path / "out"), "--report-only"])
    all_rows = rp.existing_trials(args)
    by_run = {r["run"]: r for r in all_rows}
    assert by_run["movement_nokd_t0.03_s42"]["variant"] == "movement"
    assert by_run["topk_nokd_t0.03_s42"]["variant"] == "movement_paper"
    assert by_run["random_nokd_t0.03_s42"]["method"] == "random"
    assert by_run["sigmoied_threshold_nokd_t0.03_lam400_s42"]["variant"] == "soft_movement"
    rows = rp.select_from_runs(args, all_rows)
    trials = [r for r in all_rows if r["method"] in rp.LAMBDA_METHODS]
    items = rp.report.report(rows, trials, tmp_path / "out", "python -m benchmarks.reproduce "
                      "--preset cpu-lab --report-only", "CPU (test), 2 cores, 2026-01-01")
    csv_rows = rp.read_csv(tmp_path / "out" / "results.csv")
    assert {(r["variant"], r["method"], r["distill"]) for r in csv_rows} == {
        ("dense", "none", "no"), ("movement", "topk", "no"), ("movement_paper", "topk", "no"),
        ("magnitude", "magnitude", "no"), ("random", "random", "no"),
        ("soft_movement", "sigmoied_threshold", "no"), ("movement", "topk", "yes")}
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| movement (scores from magnitude) | no | 3.0 |" in md
    assert "| movement (paper: scores from 0) | no | 3.0 |" in md
    assert "| random (control) | no | 3.0 |" in md
    assert "`prune.mask_init=magnitude`" in md
    assert "Soft movement is the best method at 3% [soft movement]: **held**" in md
    assert _verdicts(items)["movement beats magnitude at 3%", "movement"] == "held"
    assert (tmp_path / "out" / "figure2.png").read_bytes()[:4] == b"\x89PNG"
    # named movement (scores from magnitude) but its scores started at 0
    bad = fake_run(tmp_path / "bad", "sst2", "movement", False, 0.5, 42, 0.5, 0.8,
                   prune_set=["prune.mask_init=constant"])
    with pytest.raises(RuntimeError, match="variant movement needs prune.mask_init=magnitude"):
        rp.read_run(bad)


def keep_as_committed(d, out):
    """Move fake run ``d`` to ``out``/runs as the sweep keeps it: its small files only (its
    counts.json as the runner writes it), no export."""
    import shutil

    res = json.loads((d / "eval_results.json").read_text())
    (d / "counts.json").write_text(json.dumps(
        {"remaining": res["remaining"], "total": res["prunable"], "matrices": {}}))
    dest = Path(out) / "runs" / d.parent.name / d.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(d, dest, ignore=shutil.ignore_patterns("export"))
    shutil.rmtree(d)
    return dest


def test_sweep_resumes_from_committed_run_files(tmp_path, monkeypatch):
    """A new machine: no run directories, only the kept small files of finished runs under
    --out/runs. The sweep reads those back (counts from counts.json), runs only what is
    missing, keeps each new run's small files (not its export), and runs the dense teacher
    again when a distilled run needs its export, leaving the committed dense files as they
    were."""
    import mvp_jax.training.runner

    runs, out = tmp_path / "runs", tmp_path / "out"
    scratch = tmp_path / "scratch"
    dense = keep_as_committed(fake_run(scratch, "sst2", "dense", False, None, 42, 1.0,
                                           0.85), out)
    keep_as_committed(fake_run(scratch, "sst2", "magnitude", False, 0.5, 42, 0.5,
                                   0.84), out)
    dense_before = (dense / "eval_results.json").read_text()
    calls, teachers = [], {}

    def fake_fine_prune(cfg, out_dir, overwrite=False, progress=True):
        d = Path(out_dir)
        variant = rp.PREFIX_VARIANT[d.name.split("_")[0]] if not d.name.startswith("dense") \
            else "dense"
        calls.append(d.name)
        teachers[d.name] = cfg.distill.teacher
        target = cfg.prune.final_threshold if variant != "dense" else None
        fake_run(d.parent.parent, "sst2", variant, bool(cfg.distill.teacher), target,
                 cfg.train.seed, target or 1.0, 0.7)
        res = json.loads((d / "eval_results.json").read_text())
        (d / "counts.json").write_text(json.dumps(
            {"remaining": res["remaining"], "total": res["prunable"], "matrices": {}}))
        (d / "metrics.jsonl").write_text('{"step": 5}\n')

    # benchmarks.reproduce.runs.run_or_read imports fine_prune from mvp_jax.training.runner when
    # it runs (so that a bad option fails before JAX loads): that is where it is looked up
    monkeypatch.setattr(mvp_jax.training.runner, "fine_prune", fake_fine_prune)
    base = ["--preset", "paper-grid", "--runs-dir", str(runs), "--out", str(out),
            "--resume-existing", "--targets", "0.5,0.1"]
    args = rp.resolve_args(base + ["--methods", "magnitude", "--distill", "no"])
    assert rp.cost(args)[0] == 1  # only magnitude at 10% is left
    rp.sweep.sweep(args)
    assert calls == ["magnitude_nokd_t0.1_s42"]
    kept = out / "runs" / "sst2" / "magnitude_nokd_t0.1_s42"
    assert sorted(p.name for p in kept.iterdir()) == sorted(
        ["config.yaml", "counts.json", "eval_results.json", "metrics.jsonl", "wall_seconds.txt"])
    rows = {r["run"]: r for r in rp.existing_trials(args)}
    assert set(rows) == {"dense_s42", "magnitude_nokd_t0.5_s42", "magnitude_nokd_t0.1_s42"}
    assert rows["magnitude_nokd_t0.5_s42"]["accuracy"] == 0.84  # read from the kept files
    # a second pass runs nothing
    calls.clear()
    rp.sweep.sweep(args)
    assert calls == []
    # distillation needs the teacher's export, which was never committed: dense runs again
    args = rp.resolve_args(base + ["--methods", "movement", "--distill", "yes",
                                   "--distill-targets", "0.1"])
    rp.sweep.sweep(args)
    assert calls == ["dense_s42", "movement_kd_t0.1_s42"]
    assert (dense / "eval_results.json").read_text() == dense_before
    # a second seed learns from the same teacher with --teacher-seed (else from its own)
    calls.clear()
    rp.sweep.sweep(rp.resolve_args(base + ["--methods", "movement", "--distill", "yes",
                                     "--distill-targets", "0.1", "--seeds", "43",
                                     "--teacher-seed", "42", "--skip-dense"]))
    assert calls == ["movement_kd_t0.1_s43"]  # no dense_s43
    assert teachers["movement_kd_t0.1_s43"] == str(runs / "sst2" / "dense_s42" / "export")
    # a kept run whose counts contradict its eval_results is an error, not a row
    bad = out / "runs" / "sst2" / "magnitude_nokd_t0.5_s42"
    (bad / "counts.json").write_text(json.dumps({"remaining": 1, "total": 256}))
    with pytest.raises(RuntimeError, match="counts.json counts 1/256 differ"):
        rp.read_run(bad)


@pytest.mark.parametrize("argv, message", [
    (["--targets", "0.5,0"], "target remaining fraction 0.0 is outside (0, 1]"),
    (["--targets", "1.5"], "target remaining fraction 1.5 is outside (0, 1]"),
    (["--distill-targets", "-0.1"], "target remaining fraction -0.1 is outside (0, 1]"),
    (["--lambda-trials", "0"], "--lambda-trials 0: a lambda search needs at least one trial"),
    (["--lambda-trials-distill", "0"], "needs at least one trial"),
    (["--sweep", "paper-gird"], "unknown sweep 'paper-gird'; choose from cpu-lab, cpu-reduced, "
                                "full, paper-grid"),
    (["--methods", "movment"], "unknown method or variant 'movment'"),
])
def test_bad_sweep_input_is_one_line_exit_2_nothing_written(tmp_path, argv, message):
    import subprocess

    runs, out = tmp_path / "runs", tmp_path / "out"
    cmd = [sys.executable, "-m", "benchmarks.reproduce", "--preset", "paper-grid",
           "--runs-dir", str(runs), "--out", str(out), "--resume-existing", *argv]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in p.stderr
    assert lines[0].startswith("python -m benchmarks.reproduce: error: ")
    assert not runs.exists() and not out.exists() and list(tmp_path.iterdir()) == []


def test_the_sweep_compiles_through_one_persistent_cache(tmp_path, monkeypatch):
    """Runs of the same shapes compile once: the sweep points JAX's persistent compilation
    cache at $JAX_COMPILATION_CACHE_DIR, else at RUNS_DIR/xla_cache."""
    import jax

    before = (jax.config.jax_compilation_cache_dir,
              jax.config.jax_persistent_cache_min_compile_time_secs)
    try:
        monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
        assert rp.use_compilation_cache(tmp_path) == str(tmp_path / "xla_cache")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla_cache")
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
        monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
        assert rp.use_compilation_cache(tmp_path) == str(tmp_path / "mine")
    finally:
        jax.config.update("jax_compilation_cache_dir", before[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])


def test_every_reported_run_has_its_files_in_the_repository():
    """A fresh clone resumes the sweep and remakes its report: every run of the committed
    results.csv and lambda_trials.csv has its small files under results/paper_grid/runs/, and
    git does not ignore them (a `runs/` pattern once hid them all)."""
    import csv
    import shutil
    import subprocess

    out = ROOT / "results" / "paper_grid"
    runs = set()
    for name in ("results.csv", "lambda_trials.csv"):
        with open(out / name, newline="") as f:
            runs |= {(r["task"], r["run"]) for r in csv.DictReader(f)}
    assert len(runs) >= 30
    files = [out / "runs" / task / run / f for task, run in sorted(runs)
             for f in ("config.yaml", "counts.json", "eval_results.json", "metrics.jsonl")]
    missing = [str(p.relative_to(ROOT)) for p in files if not p.exists()]
    assert not missing, missing[:5]
    if shutil.which("git") and (ROOT / ".git").exists():
        ignored = subprocess.run(["git", "check-ignore", *map(str, files)], cwd=ROOT,
                                 capture_output=True, text=True).stdout.split()
        assert not ignored, ignored[:5]
