"""Reproduce the paper's main comparison (Sanh, Wolf & Rush 2020, Figure 2) at lab scale.

One command fine-tunes the embedded MiniLM ("minilm-l6") densely, then fine-prunes it with
magnitude, movement (topk), soft movement (sigmoied_threshold + l1) and L0 (l0 + l0) at each
target fraction of remaining encoder weights, with and/or without distillation from the dense
model (its export/ directory is the teacher), on SST-2 and on the SQuAD-dev split; then it
writes results/results.csv, results/results.md and results/figure2.png.

Soft movement and L0 reach their sparsity through lambda, not through a target: for each
target, lambda is searched by secant steps on log(lambda) vs log(remaining weights) over full
runs (every trial is a complete run with its own eval_results.json; all trials are listed in
results/lambda_trials.csv, and the table reports, per target, the trial whose remaining weights
are closest to the target in log ratio). Remaining weights are counted on the exported model
(export/model.safetensors: zeros in the encoder's prunable matrices) and checked against the
run's eval_results.json.

    # reduced CPU version (what results/RESULTS.md reports)
    python benchmarks/reproduce.py --preset cpu-reduced
    # paper-like run (a GPU): full SST-2 train set, SQuAD-dev split, 3 epochs, seq 128/384
    python benchmarks/reproduce.py --preset full
    # only rebuild the table and plot from existing runs
    python benchmarks/reproduce.py --report-only

Run directories go under --runs-dir (git-ignored runs/reproduce); --resume-existing skips runs
whose eval_results.json exists (and restarts incomplete ones from scratch).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / ".." / "shared" / "data").resolve()

METHODS = ("magnitude", "topk", "sigmoied_threshold", "l0")
LAMBDA_METHODS = ("sigmoied_threshold", "l0")
METHOD_LABELS = {"none": "dense", "magnitude": "magnitude", "topk": "movement",
                 "sigmoied_threshold": "soft movement", "l0": "L0 regularization"}
TASKS = ("sst2", "squad_dev_split")
TASK_LABELS = {"sst2": "SST-2 (dev)", "squad_dev_split": "SQuAD-dev split (last 10 articles)"}
TASK_METRICS = {"sst2": ("accuracy",), "squad_dev_split": ("exact_match", "f1")}
MAIN_METRIC = {"sst2": "accuracy", "squad_dev_split": "f1"}

# Method recipes (configs/methods/*.yaml, the reference README's values); the target fills in.
RECIPE_FILES = {"none": "dense", "magnitude": "magnitude", "topk": "movement",
                "sigmoied_threshold": "soft_movement", "l0": "l0"}

# Presets: values of the command-line options, overridable one by one.
PRESETS = {
    # What a 2-core CPU affords in about 90 minutes (see results/RESULTS.md).
    "cpu-reduced": dict(
        tasks="sst2,squad_dev_split", methods=",".join(METHODS), targets="0.5,0.1,0.03", seeds="42",
        distill="both", distill_targets="0.1,0.03", squad_distill="no", max_train_samples=960,
        max_steps=60, batch_size=16, max_seq_length=64, squad_max_seq_length=256,
        squad_doc_stride=128, squad_max_train_samples=240, squad_max_steps=30, squad_batch_size=8,
        squad_max_eval_samples=300, squad_methods="magnitude,topk", squad_targets="0.1",
        warmup_fraction=0.1, lambda_trials=1, lambda_trials_distill=1,
        soft_scores_lr=0.2, l0_scores_lr=0.3, learning_rate=3e-4),
    # Paper-like settings (GPU): full SST-2 train, 3 epochs (10 for SQuAD-dev split, it is small).
    "full": dict(
        tasks="sst2,squad_dev_split", methods=",".join(METHODS), targets="0.5,0.1,0.03", seeds="42",
        distill="both", distill_targets="0.5,0.1,0.03", squad_distill="both",
        max_train_samples=None, epochs=3.0,
        max_steps=None, batch_size=32, max_seq_length=128, squad_max_seq_length=384,
        squad_doc_stride=128, squad_max_train_samples=None, squad_max_steps=None, squad_epochs=10.0,
        squad_batch_size=16, squad_max_eval_samples=None, squad_methods=",".join(METHODS),
        squad_targets="0.5,0.1,0.03", warmup_fraction=0.1, lambda_trials=4, lambda_trials_distill=2,
        soft_scores_lr=None, l0_scores_lr=None, learning_rate=None),
}


def _floats(text):
    return [float(x) for x in str(text).split(",") if x.strip()]


def _names(text):
    return [x.strip() for x in str(text).split(",") if x.strip()]


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu-reduced",
                   help="default values of every option below (default: cpu-reduced)")
    p.add_argument("--tasks", help="comma list of sst2, squad_dev_split")
    p.add_argument("--methods", help="comma list of magnitude, topk, sigmoied_threshold, l0")
    p.add_argument("--targets", help="remaining-weight fractions, e.g. 0.5,0.1,0.03")
    p.add_argument("--seeds", help="comma list of seeds")
    p.add_argument("--distill", choices=("no", "yes", "both"))
    p.add_argument("--distill-targets", help="targets run with distillation (default: --targets)")
    p.add_argument("--squad-distill", choices=("no", "yes", "both"),
                   help="--distill for squad_dev_split")
    p.add_argument("--max-train-samples", type=int, help="SST-2 training subset (0 = all)")
    p.add_argument("--max-steps", type=int, help="SST-2 updates (0 = use --epochs)")
    p.add_argument("--epochs", type=float)
    p.add_argument("--max-seq-length", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--learning-rate", type=float, help="weights LR (default: the lab recipe's)")
    p.add_argument("--squad-max-seq-length", type=int)
    p.add_argument("--squad-doc-stride", type=int)
    p.add_argument("--squad-max-train-samples", type=int, help="questions (0 = all 38 articles)")
    p.add_argument("--squad-max-eval-samples", type=int, help="questions (0 = all 10 articles)")
    p.add_argument("--squad-max-steps", type=int)
    p.add_argument("--squad-epochs", type=float)
    p.add_argument("--squad-batch-size", type=int)
    p.add_argument("--squad-methods", help="methods on squad_dev_split (default: --methods)")
    p.add_argument("--squad-targets", help="targets on squad_dev_split (default: --targets)")
    p.add_argument("--warmup-fraction", type=float,
                   help="train.warmup_steps as a fraction of the run; the cubic schedule holds "
                        "for 1x and ends 2x warmup_steps before the end")
    p.add_argument("--lambda-trials", type=int, help="max runs per target for soft movement / L0")
    p.add_argument("--lambda-trials-distill", type=int, help="same, with distillation")
    p.add_argument("--soft-scores-lr", type=float, help="scores LR of soft movement")
    p.add_argument("--l0-scores-lr", type=float, help="scores LR of L0")
    p.add_argument("--data-dir", default=str(DATA), help="folder holding glue/ and squad_v1.1/")
    p.add_argument("--out", default=str(ROOT / "results"))
    p.add_argument("--runs-dir", default=str(ROOT / "runs" / "reproduce"))
    p.add_argument("--resume-existing", action="store_true",
                   help="skip runs whose eval_results.json exists")
    p.add_argument("--report-only", action="store_true", help="only write table and plot")
    p.add_argument("--deadline", help="HH:MM (machine clock): start no run after it")
    p.add_argument("--set", action="append", default=[], dest="overrides",
                   help="extra section.key=value override for every run")
    return p


def resolve_args(argv=None):
    args = build_parser().parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    for key in ("epochs", "squad_epochs"):
        if getattr(args, key, None) is None:
            setattr(args, key, 3.0)
    if args.squad_distill is None:
        args.squad_distill = args.distill
    for key in ("max_train_samples", "max_steps", "squad_max_train_samples", "squad_max_steps",
                "squad_max_eval_samples"):
        if getattr(args, key) == 0:
            setattr(args, key, None)
    args.tasks, args.methods, args.seeds = _names(args.tasks), _names(args.methods), \
        [int(s) for s in _names(args.seeds)]
    args.targets = _floats(args.targets)
    args.distill_targets = _floats(args.distill_targets) if args.distill_targets else args.targets
    args.squad_methods = _names(args.squad_methods) if args.squad_methods else args.methods
    args.squad_targets = _floats(args.squad_targets) if args.squad_targets else args.targets
    for m in args.methods + args.squad_methods:
        if m not in METHODS:
            sys.exit(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    for t in args.tasks:
        if t not in TASKS:
            sys.exit(f"unknown task {t!r}; choose from {', '.join(TASKS)}")
    return args


# ----------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------


def task_settings(args, task):
    """(overrides, steps or None, batch, train samples) for ``task``."""
    if task == "sst2":
        steps, batch, n_train, epochs = args.max_steps, args.batch_size, args.max_train_samples, \
            args.epochs
        ov = [f"task.data_dir={Path(args.data_dir) / 'glue' / 'SST-2'}",
              f"task.max_seq_length={args.max_seq_length}"]
    else:
        steps, batch, n_train, epochs = args.squad_max_steps, args.squad_batch_size, \
            args.squad_max_train_samples, args.squad_epochs
        ov = [f"task.data_dir={Path(args.data_dir) / 'squad_v1.1'}",
              f"task.max_seq_length={args.squad_max_seq_length}",
              f"task.doc_stride={args.squad_doc_stride}"]
        if args.squad_max_eval_samples:
            ov.append(f"data.max_eval_samples={args.squad_max_eval_samples}")
    ov += [f"task.name={task}", f"train.batch_size={batch}", f"train.epochs={epochs}",
           f"data.max_train_samples={'null' if n_train is None else n_train}",
           f"train.max_steps={'null' if steps is None else steps}",
           "train.eval_every=0", "train.save_every=0", "train.keep_checkpoints=1"]
    if args.learning_rate:
        ov.append(f"train.learning_rate={args.learning_rate}")
    return ov


def make_config(args, task, method, target, seed, lam=None, teacher=None, total_steps=None):
    from mvp_jax.config import load_config

    files = [ROOT / "configs" / "lab" / "sst2" / "_task.yaml",
             ROOT / "configs" / "methods" / f"{RECIPE_FILES[method]}.yaml"]
    ov = task_settings(args, task) + [f"train.seed={seed}"]
    if total_steps is not None:
        warm = max(1, round(args.warmup_fraction * total_steps))
        ov += [f"train.warmup_steps={warm}", f"train.log_every={max(1, total_steps // 20)}"]
    if method in ("magnitude", "topk"):
        ov.append(f"prune.final_threshold={target}")
    if method == "sigmoied_threshold":
        ov.append(f"prune.final_lambda={lam}")
        if args.soft_scores_lr:
            ov.append(f"train.scores_learning_rate={args.soft_scores_lr}")
    if method == "l0":
        ov.append(f"prune.final_lambda={lam}")
        if args.l0_scores_lr:
            ov.append(f"train.scores_learning_rate={args.l0_scores_lr}")
    if teacher:
        ov.append(f"distill.teacher={teacher}")
    return load_config([str(f) for f in files], ov + list(args.overrides))


_STEPS: dict = {}


def total_steps_of(args, task, seed):
    """Updates of a run of ``task`` (needs the data size when the run length is in epochs)."""
    cfg = make_config(args, task, "none", None, seed)
    if cfg.train.max_steps:
        return cfg.train.max_steps
    if (task, seed) not in _STEPS:
        from mvp_jax.runner import load_setup
        _STEPS[task, seed] = load_setup(cfg).total_steps
    return _STEPS[task, seed]


def run_name(method, distill, target, seed, lam=None):
    name = "dense" if method == "none" else f"{method}_{'kd' if distill else 'nokd'}_t{target:g}"
    if lam is not None:
        name += f"_lam{lam:.4g}"
    return f"{name}_s{seed}"


def count_export(export_dir: Path):
    """(remaining, total) over the encoder's prunable matrices of an exported HF model."""
    from safetensors.numpy import load_file

    tensors = load_file(str(export_dir / "model.safetensors"))
    remaining = total = 0
    for name, w in tensors.items():
        if ".encoder." in name and name.endswith(".weight") and "LayerNorm" not in name \
                and w.ndim == 2:
            remaining += int((w != 0).sum())
            total += int(w.size)
    return remaining, total


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Deadline(Exception):
    pass


@dataclass
class Runner:
    args: argparse.Namespace
    done: list = field(default_factory=list)

    def run(self, task, method, distill, target, seed, lam=None, teacher=None):
        """One fine-prune run (or its existing results); returns a result row."""
        from mvp_jax.runner import fine_prune

        d = Path(self.args.runs_dir) / task / run_name(method, distill, target, seed, lam)
        res_file = d / "eval_results.json"
        if not (self.args.resume_existing and res_file.exists()):
            if self.args.report_only:
                return None
            if self.args.deadline and time.strftime("%H:%M") >= self.args.deadline:
                raise Deadline(self.args.deadline)
            steps = total_steps_of(self.args, task, seed)
            cfg = make_config(self.args, task, method, target, seed, lam, teacher, steps)
            log(f"run {d}")
            tic = time.time()
            fine_prune(cfg, str(d), overwrite=True, progress=False)
            (d / "wall_seconds.txt").write_text(f"{time.time() - tic:.1f}\n")
        row = read_run(d)
        log(f"  -> remaining {row['remaining_weights']:.4f} {MAIN_METRIC[task]} "
            f"{row[MAIN_METRIC[task]]:.4f}")
        return row


def read_run(d: Path) -> dict:
    """A result row from a finished run directory (remaining weights counted on export/)."""
    import yaml

    res = json.loads((d / "eval_results.json").read_text())
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    remaining, total = count_export(d / "export")
    if (remaining, total) != (res["remaining"], res["prunable"]):
        raise RuntimeError(f"{d}: export counts {remaining}/{total} differ from eval_results "
                           f"{res['remaining']}/{res['prunable']}")
    task = res["task"]
    method = res["method"]
    lam = cfg["prune"]["final_lambda"] if method in LAMBDA_METHODS else None
    metrics = res["metrics"]["validation"]
    wall = d / "wall_seconds.txt"
    row = {"task": task, "method": method, "distill": "yes" if cfg["distill"]["teacher"] else "no",
           "target": None if method == "none" else float(re.search(r"_t([0-9.e+-]+?)_", d.name)[1]),
           "remaining_weights": remaining / total, "remaining": remaining, "prunable": total,
           "seed": cfg["train"]["seed"], "steps": res["step"],
           "batch_size": cfg["train"]["batch_size"],
           "train_samples": cfg["data"]["max_train_samples"] or "all",
           "max_seq_length": cfg["task"]["max_seq_length"], "lambda": lam,
           "wall_s": float(wall.read_text()) if wall.exists() else None, "run": d.name}
    for k in TASK_METRICS[task]:
        # fractions everywhere: the SQuAD metrics come in percent (0-100, as the official
        # script), GLUE accuracy as a fraction
        row[k] = float(metrics[k]) / (100.0 if task.startswith("squad") else 1.0)
    return row


def next_lambda(trials, target, default):
    """Next lambda to try for ``target`` from earlier (lambda, remaining) trials: secant on
    log(remaining) vs log(lambda), interpolating between bracketing trials when there are any."""
    pts = sorted((math.log(l), math.log(max(r, 1e-6))) for l, r in trials)
    if not pts:
        return default
    y = math.log(target)
    lo = [p for p in pts if p[1] >= y]  # fewer pruned than wanted: lambda too small
    hi = [p for p in pts if p[1] < y]
    if lo and hi:
        (x0, y0), (x1, y1) = max(lo, key=lambda p: p[0]), min(hi, key=lambda p: p[0])
        if x1 > x0 and y0 != y1:
            return math.exp(x0 + (y - y0) * (x1 - x0) / (y1 - y0))
        return math.exp(0.5 * (x0 + x1))
    near = sorted(pts, key=lambda p: abs(p[1] - y))
    slope = -1.0  # d log(remaining) / d log(lambda), a guess until two trials differ
    if len(near) >= 2 and near[0][0] != near[1][0] and near[0][1] != near[1][1]:
        slope = (near[0][1] - near[1][1]) / (near[0][0] - near[1][0])
        slope = -min(max(-slope, 0.2), 5.0)
    x0, y0 = near[0]
    step = (y - y0) / slope
    step = max(min(step, math.log(30.0)), -math.log(30.0))
    return math.exp(x0 + step)


DEFAULT_LAMBDA = {"sigmoied_threshold": 400.0, "l0": 125.0}  # reference README values


def closest(rows, target):
    return min(rows, key=lambda r: abs(math.log(max(r["remaining_weights"], 1e-6) / target)))


def experiment(args, runner: Runner):
    rows, trials = [], []
    for task in args.tasks:
        choice = args.distill if task == "sst2" else args.squad_distill
        distills = {"no": [False], "yes": [True], "both": [False, True]}[choice]
        methods = args.methods if task == "sst2" else args.squad_methods
        targets = args.targets if task == "sst2" else args.squad_targets
        for seed in args.seeds:
            try:
                dense = runner.run(task, "none", False, None, seed)
            except Deadline:
                log("deadline reached: no more runs")
                return rows, trials
            if dense is None:
                continue
            dense["selected"] = True
            rows.append(dense)
            teacher = str(Path(args.runs_dir) / task / dense["run"] / "export")
            for distill in distills:
                tlist = [t for t in targets if not distill or t in args.distill_targets]
                for method in methods:
                    for target in tlist:
                        try:
                            cell = run_cell(args, runner, task, method, distill, target, seed,
                                            teacher, trials)
                        except Deadline:
                            log("deadline reached: no more runs")
                            return rows, trials
                        if cell:
                            rows.append(cell)
    return rows, trials


def run_cell(args, runner, task, method, distill, target, seed, teacher, trials):
    """Hard-target methods: one run. Soft movement / L0: up to --lambda-trials runs for this
    target (those already on disk for it count, with --resume-existing), each lambda from all
    the trials so far of the same task/method/distillation/seed (secant on log-log); stops
    when a trial lands within 25% of the target. The table picks among trials afterwards."""
    t = teacher if distill else None
    if method not in LAMBDA_METHODS:
        return runner.run(task, method, distill, target, seed, teacher=t)
    kd = "yes" if distill else "no"

    def known(kd_):
        rows = {r["run"]: r for r in trials
                if (r["task"], r["method"], r["distill"], r["seed"]) == (task, method, kd_, seed)}
        if args.resume_existing:
            for r in trials_on_disk(args, task, method, kd_ == "yes", seed):
                rows.setdefault(r["run"], r)
        return list(rows.values())

    n = args.lambda_trials_distill if distill else args.lambda_trials
    done = sum(1 for r in known(kd) if r["target"] == target)
    for _ in range(n - done):
        cands = known(kd)
        if cands and abs(math.log(max(closest(cands, target)["remaining_weights"], 1e-6)
                                  / target)) < math.log(1.25):
            break
        # without trials of its own, distillation starts from the trials without it
        hist = [(r["lambda"], r["remaining_weights"]) for r in (cands or known("no"))]
        lam = float(f"{next_lambda(hist, target, DEFAULT_LAMBDA[method]):.4g}")
        if any(abs(lam - r["lambda"]) < 1e-9 for r in cands):
            break
        row = runner.run(task, method, distill, target, seed, lam=lam, teacher=t)
        if row is None:
            break
        trials.append(row)
    return None


def trials_on_disk(args, task, method, distill, seed):
    """Finished runs of one method/distillation/seed under --runs-dir."""
    pattern = f"{method}_{'kd' if distill else 'nokd'}_t*_s{seed}"
    return [read_run(d) for d in sorted((Path(args.runs_dir) / task).glob(pattern))
            if (d / "eval_results.json").exists()]


def existing_trials(args):
    """Every finished run under --runs-dir (for --report-only)."""
    out = []
    for task in args.tasks:
        for d in sorted((Path(args.runs_dir) / task).glob("*")):
            if (d / "eval_results.json").exists():
                out.append(read_run(d))
    return out


def select_from_runs(args, all_rows):
    """The reported cells from all finished runs: hard-target methods as they are; for lambda
    methods, per (task, method, distill, seed, target) the trial closest to the target in
    |log(remaining / target)| among the trials run for that target (the run directory names
    the target its lambda was searched for), so no run is shown twice. The other trials stay
    in lambda_trials.csv and on the plot."""
    rows = [dict(r) for r in all_rows if r["method"] not in LAMBDA_METHODS]
    groups = {}
    for r in all_rows:
        if r["method"] in LAMBDA_METHODS:
            key = (r["task"], r["method"], r["distill"], r["seed"], r["target"])
            groups.setdefault(key, []).append(r)
    for key, cands in sorted(groups.items(), key=lambda kv: str(kv[0])):
        rows.append(dict(closest(cands, key[-1])))
    return rows


# ----------------------------------------------------------------------------------------------
# Report: CSV, Markdown, plot
# ----------------------------------------------------------------------------------------------

COLUMNS = ["task", "method", "distill", "target", "remaining_weights", "accuracy", "exact_match",
           "f1", "seed", "steps", "batch_size", "train_samples", "max_seq_length", "lambda",
           "wall_s", "run"]


def sort_key(r):
    order = {"none": 0, "magnitude": 1, "topk": 2, "sigmoied_threshold": 3, "l0": 4}
    return (TASKS.index(r["task"]), r["distill"], -(r["target"] or 2), order[r["method"]],
            r["seed"], r.get("lambda") or 0)


def write_csv(path, rows):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in sorted(rows, key=sort_key):
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})


def read_csv(path):
    rows = []
    with open(path) as f:
        for r in csv.DictReader(f):
            for k in ("target", "remaining_weights", "accuracy", "exact_match", "f1", "lambda",
                      "wall_s"):
                r[k] = float(r[k]) if r.get(k) not in (None, "") else None
            for k in ("seed", "steps", "batch_size", "max_seq_length"):
                r[k] = int(r[k]) if r.get(k) not in (None, "") else None
            rows.append(r)
    return rows


def _fmt(v, pct=False):
    if v is None or v == "":
        return ""
    return f"{100 * v:.1f}" if pct else f"{v:g}"


def markdown_table(rows):
    """One Markdown table per task: metrics in %, remaining weights in % of the encoder's
    prunable weights as counted on the exported model."""
    out = []
    for task in TASKS:
        trs = sorted([r for r in rows if r["task"] == task], key=sort_key)
        if not trs:
            continue
        mets = TASK_METRICS[task]
        out.append(f"**{TASK_LABELS[task]}**\n")
        head = ["method", "distill", "target %", "remaining % (export)",
                *[f"{m} %" for m in mets], "Δ vs dense", "lambda", "seed", "steps", "batch",
                "train samples", "seq len"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        dense = {r["seed"]: r for r in trs if r["method"] == "none"}
        main = MAIN_METRIC[task]
        for r in trs:
            d = dense.get(r["seed"])
            delta = "" if d is None or r["method"] == "none" else f"{100 * (r[main] - d[main]):+.1f}"
            cells = [METHOD_LABELS[r["method"]], r["distill"],
                     "100" if r["method"] == "none" else _fmt(r["target"], pct=True),
                     f"{100 * r['remaining_weights']:.2f}", *[_fmt(r[m], pct=True) for m in mets],
                     delta, "" if r["lambda"] is None else f"{r['lambda']:g}", str(r["seed"]),
                     str(r["steps"]), str(r["batch_size"]), str(r["train_samples"]),
                     str(r["max_seq_length"])]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


STYLE = {"magnitude": ("tab:blue", "o"), "topk": ("tab:orange", "s"),
         "sigmoied_threshold": ("tab:green", "^"), "l0": ("tab:red", "D")}


def plot(rows, path, title=None, trials=()):
    """Metric against remaining weights (log x), one line per method, dense as a horizontal
    line; solid without distillation, dashed with; one panel per task. Lambda trials that are
    not in the table are drawn as faint unconnected markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if any(r["task"] == t for r in rows)]
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(6.2 * max(1, len(tasks)), 4.6),
                             squeeze=False)
    for ax, task in zip(axes[0], tasks):
        main = MAIN_METRIC[task]
        trs = [r for r in rows if r["task"] == task]
        dense = [r[main] for r in trs if r["method"] == "none"]
        if dense:
            ax.axhline(100 * sum(dense) / len(dense), color="black", lw=1.2,
                       label="dense fine-tuning")
        for method in METHODS:
            for distill in ("no", "yes"):
                pts = {}
                for r in trs:
                    if r["method"] == method and r["distill"] == distill:
                        pts.setdefault(r["target"], []).append(r)
                if not pts:
                    continue
                xs, ys = [], []
                for target in sorted(pts):
                    group = pts[target]
                    xs.append(100 * sum(g["remaining_weights"] for g in group) / len(group))
                    ys.append(100 * sum(g[main] for g in group) / len(group))
                order = sorted(range(len(xs)), key=lambda i: xs[i])
                color, marker = STYLE[method]
                ax.plot([xs[i] for i in order], [ys[i] for i in order], color=color,
                        marker=marker, ls="--" if distill == "yes" else "-",
                        mfc="white" if distill == "yes" else color,
                        label=METHOD_LABELS[method] + (" + distillation" if distill == "yes" else ""))
        shown = {(r["run"], r["distill"]) for r in trs}
        extra = [r for r in trials if r["task"] == task and (r["run"], r["distill"]) not in shown]
        for r in extra:
            color, marker = STYLE[r["method"]]
            ax.plot([100 * r["remaining_weights"]], [100 * r[main]], ls="none", marker=marker,
                    color=color, alpha=0.35, ms=5)
        if extra:
            ax.plot([], [], ls="none", marker="o", color="grey", alpha=0.35,
                    label="other lambda trials")
        ax.set_xscale("log")
        ax.set_xlabel("remaining encoder weights (%), counted on the exported model")
        ax.set_ylabel(f"{main} (%)")
        ax.set_title(TASK_LABELS[task])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best", framealpha=0.6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def device_line():
    try:
        import jax
        dev = jax.devices()[0]
        kind = f"{dev.platform.upper()} ({dev.device_kind})"
    except Exception:  # noqa: BLE001 - any failure: say so in the table header
        kind = "unknown device"
    return f"{kind}, {os.cpu_count()} cores, {platform.machine()}, {time.strftime('%Y-%m-%d')}"


def report(rows, trials, out, command, device):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "results.csv", rows)
    write_csv(out / "lambda_trials.csv", trials)
    header = (f"<!-- written by benchmarks/reproduce.py; do not edit -->\n"
              f"Command: `{command}`  \nDevice: {device}\n\n")
    (out / "results.md").write_text(header + markdown_table(rows))
    plot(rows, out / "figure2.png", title=f"mvp_jax benchmarks/reproduce.py - {device}",
         trials=trials)


def main(argv=None):
    args = resolve_args(argv)
    sys.path.insert(0, str(ROOT))
    command = "python benchmarks/reproduce.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if not args.report_only:
        log(f"settings: {vars(args)}")
        experiment(args, Runner(args))
    # the table is made from the finished runs on disk (all of --runs-dir for --tasks)
    all_rows = existing_trials(args)
    rows = select_from_runs(args, all_rows)
    trials = [r for r in all_rows if r["method"] in LAMBDA_METHODS]
    report(rows, trials, args.out, command, device_line())
    log(f"wrote {args.out}/results.csv, results.md, lambda_trials.csv, figure2.png "
        f"({len(rows)} rows)")


if __name__ == "__main__":
    main()
