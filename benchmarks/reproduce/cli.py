"""The command line: ``python -m benchmarks.reproduce [OPTIONS]`` (the options, checked; a bad
value is one error line and exit status 2 before anything is written), the sweep then the
report (``main``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mvp_jax.pruning.calibration import check_target

from . import __doc__ as PACKAGE_DOC
from .claims import claims_markdown
from .presets import (
    DATA,
    DEFAULT_OUT,
    DEFAULT_RUNS_DIR,
    LAMBDA_METHODS,
    PRESETS,
    PROG,
    ROOT,
    TASKS,
    VARIANT_ORDER,
    variant_name,
)
from .report import device_line, report, write_readme
from .runs import existing_trials, keep_run, kept_dir, log, use_compilation_cache
from .sweep import cost, plan, select_from_runs, sweep


def _floats(text):
    return [float(x) for x in str(text).split(",") if x.strip()]


def _names(text):
    return [x.strip() for x in str(text).split(",") if x.strip()]


def build_parser():
    p = argparse.ArgumentParser(prog=PROG, description=PACKAGE_DOC.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", "--sweep", dest="preset", default="cpu-reduced",
                   help="default values of every option below (default: cpu-reduced)")
    p.add_argument("--tasks", help="comma list of sst2, squad_dev_split")
    p.add_argument("--methods", help="comma list of variants: " + ", ".join(VARIANT_ORDER[1:])
                   + " (topk = movement_paper, sigmoied_threshold = soft_movement)")
    p.add_argument("--targets", help="remaining-weight fractions, e.g. 0.5,0.1,0.03")
    p.add_argument("--lambda-targets",
                   help="targets of soft movement / L0 (lambda search; default: --targets)")
    p.add_argument("--seeds", help="comma list of seeds")
    p.add_argument("--distill", choices=("no", "yes", "both"))
    p.add_argument("--distill-targets", help="targets run with distillation (default: --targets)")
    p.add_argument("--distill-methods",
                   help="variants run with distillation (default: --methods)")
    p.add_argument("--alpha-ce", type=float, help="distill.alpha_ce (default: the config's)")
    p.add_argument("--alpha-distil", type=float, help="distill.alpha_distil")
    p.add_argument("--temperature", type=float, help="distill.temperature")
    p.add_argument("--squad-distill", choices=("no", "yes", "both"),
                   help="--distill for squad_dev_split")
    p.add_argument("--recipes", choices=("lab", "fragments"),
                   help="lab: configs/lab/sst2/<variant>.yaml; fragments: configs/lab/sst2/"
                        "_task.yaml + configs/methods/<method>.yaml")
    p.add_argument("--order", choices=("nested", "informative"),
                   help="run order: nested (task, seed, distill, method, target) or "
                        "informative (dense, then the highest sparsity first, the variants "
                        "that test a claim there first, distilled runs after their target)")
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
    p.add_argument("--squad-methods", help="variants on squad_dev_split (default: --methods)")
    p.add_argument("--squad-targets", help="targets on squad_dev_split (default: --targets)")
    p.add_argument("--warmup-fraction", type=float,
                   help="train.warmup_steps as a fraction of the run (default for cpu-lab: the "
                        "recipe's, 120/1200); the cubic schedule holds for initial_warmup x and "
                        "ends final_warmup x warmup_steps before the end")
    p.add_argument("--lambda-trials", type=int, help="max runs per target for soft movement / L0")
    p.add_argument("--lambda-trials-distill", type=int, help="same, with distillation")
    p.add_argument("--lambda-tolerance", type=float,
                   help="stop a lambda search when a trial's remaining fraction is within this "
                        "of the target (absolute: 0.01 = 1 point; paper-grid: 0.01; default: within a "
                        "factor of 1.25 of it)")
    p.add_argument("--teacher-seed", type=int,
                   help="seed of the dense run every distilled run learns from (default: the "
                        "distilled run's own seed)")
    p.add_argument("--skip-dense", action="store_true",
                   help="do not run the dense model (another worker runs it)")
    p.add_argument("--soft-scores-lr", type=float, help="scores LR of soft movement")
    p.add_argument("--l0-scores-lr", type=float, help="scores LR of L0")
    p.add_argument("--data-dir", default=str(DATA), help="folder holding glue/ and squad_v1.1/")
    p.add_argument("--out", help="results folder (default: results/, results/cpu_lab for cpu-lab)")
    p.add_argument("--runs-dir", help="run directories (default: runs/reproduce, "
                                      "runs/reproduce_cpu_lab for cpu-lab)")
    p.add_argument("--resume-existing", action="store_true",
                   help="skip runs whose eval_results.json exists")
    p.add_argument("--report-only", action="store_true", help="only write table and plot")
    p.add_argument("--readme", action="store_true",
                   help="only write README.md's Results table from OUT/results.csv")
    p.add_argument("--check", action="store_true",
                   help="with --readme: write nothing, exit 1 if README.md's table differs")
    p.add_argument("--deadline", help="HH:MM (machine clock): start no run after it")
    p.add_argument("--set", action="append", default=[], dest="overrides",
                   help="extra section.key=value override for every run")
    return p


def fail(msg):
    """Bad input: one line on stderr, exit status 2, before anything is written."""
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def resolve_args(argv=None):
    args = build_parser().parse_args(argv)
    if args.preset not in PRESETS:
        fail(f"unknown sweep {args.preset!r}; choose from {', '.join(sorted(PRESETS))}")
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    defaults = dict(epochs=3.0, squad_epochs=3.0, recipes="fragments", order="nested",
                    runs_dir=DEFAULT_RUNS_DIR, out=DEFAULT_OUT)
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.squad_distill is None:
        args.squad_distill = args.distill
    for key in ("max_train_samples", "max_steps", "squad_max_train_samples", "squad_max_steps",
                "squad_max_eval_samples"):
        if getattr(args, key) == 0:
            setattr(args, key, None)
    try:
        args.tasks, args.seeds = _names(args.tasks), [int(s) for s in _names(args.seeds)]
        for key in ("targets", "distill_targets", "lambda_targets", "squad_targets"):
            text = getattr(args, key)
            setattr(args, key, [check_target(t) for t in _floats(text)] if text else None)
    except ValueError as e:
        fail(str(e))
    for key in ("distill_targets", "lambda_targets", "squad_targets"):
        if getattr(args, key) is None:
            setattr(args, key, args.targets)
    for key in ("lambda_trials", "lambda_trials_distill"):
        n = getattr(args, key)
        if n is not None and n < 1:
            fail(f"--{key.replace('_', '-')} {n}: a lambda search needs at least one trial")
    if args.lambda_tolerance is not None and not 0 < args.lambda_tolerance < 1:
        fail(f"--lambda-tolerance {args.lambda_tolerance} is outside (0, 1)")
    try:
        args.methods = [variant_name(m) for m in _names(args.methods)]
        args.squad_methods = ([variant_name(m) for m in _names(args.squad_methods)]
                              if args.squad_methods else list(args.methods))
        args.distill_methods = ([variant_name(m) for m in _names(args.distill_methods)]
                                if args.distill_methods else None)
    except ValueError as e:
        fail(str(e))
    if "dense" in args.methods + args.squad_methods:
        fail("dense is always run first; leave it out of --methods")
    for t in args.tasks:
        if t not in TASKS:
            fail(f"unknown task {t!r}; choose from {', '.join(TASKS)}")
    if args.recipes == "lab" and args.tasks != ["sst2"]:
        fail(f"--recipes lab (presets cpu-lab, paper-grid) runs the SST-2 lab recipes: --tasks "
             f"sst2 only, got {','.join(args.tasks)}")
    return args


def report_step(args, command):
    """The report: the rows of every finished run of --tasks under --runs-dir, the table picking
    one lambda trial per target; files under --out, claims printed."""
    for task in args.tasks:
        for d in sorted((Path(args.runs_dir) / task).glob("*")):
            if (d / "eval_results.json").exists() and \
                    not (kept_dir(args, task, d.name) / "eval_results.json").exists():
                keep_run(args, d)
    all_rows = existing_trials(args)
    rows = select_from_runs(args, all_rows)
    trials = [r for r in all_rows if r["method"] in LAMBDA_METHODS]
    items = report(rows, trials, args.out, command, device_line())
    print(claims_markdown(items), flush=True)
    log(f"wrote {args.out}/results.csv, results.md, lambda_trials.csv, figure2.png "
        f"({len(rows)} rows)")


def main(argv=None):
    args = resolve_args(argv)
    if args.readme:
        if write_readme(args.out, ROOT / "README.md", check=args.check):
            return 0
        print(f"{PROG}: README.md's Results table differs from {args.out}/results.csv; run "
              f"{PROG} --sweep {args.preset} --readme", file=sys.stderr)
        return 1
    command = f"{PROG} " + " ".join(argv if argv is not None else sys.argv[1:])
    if not args.report_only:
        log(f"settings: {vars(args)}")
        log("plan: " + ", ".join(
            "dense" if v == "dense" else f"{v}{'+kd' if kd else ''}@{t:g}"
            for _, _, v, kd, t in plan(args)))
        todo, extra, per_run, basis = cost(args)
        log(f"XLA compilation cache: {use_compilation_cache(args.runs_dir)}")
        log(f"cost: {todo} runs to go, up to {todo + extra} with lambda trials, about "
            f"{todo * per_run / 60:.0f}-{(todo + extra) * per_run / 60:.0f} minutes at "
            f"{per_run:.0f} s a run ({basis}; one worker)")
        sweep(args)
    report_step(args, command)
