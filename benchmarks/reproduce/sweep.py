"""The sweep: the cells to run in order (``plan``), what they will cost, and running them
(``sweep``, ``run_cell``); soft movement and L0 search lambda per target with the library's
``mvp_jax.pruning.calibration.calibrate_lambda``, and the report shows, per target, the trial
``calibration.closest`` picks (``select_from_runs``)."""

from __future__ import annotations

from pathlib import Path

from mvp_jax.pruning.calibration import Trial, calibrate_lambda, closest

from .presets import LAMBDA_METHODS, searches_lambda, variant_name
from .runs import (
    Deadline,
    finished_dir,
    finished_runs,
    log,
    run_name,
    run_or_read,
    start_lambda,
    teacher_seed,
    trials_on_disk,
)

# Run order of --order informative, per target: at high sparsity (<= 10% remaining, where the
# paper says movement wins) movement first; at low sparsity magnitude first (it should lead).
HIGH_SPARSITY_ORDER = ("movement", "movement_paper", "magnitude", "random", "soft_movement", "l0")
LOW_SPARSITY_ORDER = ("magnitude", "movement", "movement_paper", "random", "soft_movement", "l0")


def plan(args):
    """The runs in order: (task, seed, variant, distill, target) cells, dense (target None)
    first for each task and seed; a lambda variant's cell may hold several trials."""
    cells = []
    for task in args.tasks:
        choice = args.distill if task == "sst2" else args.squad_distill
        distills = {"no": [False], "yes": [True], "both": [False, True]}[choice]
        variants = args.methods if task == "sst2" else args.squad_methods
        targets = args.targets if task == "sst2" else args.squad_targets
        lam_targets = args.lambda_targets if task == "sst2" else targets
        kd_variants = args.distill_methods if args.distill_methods is not None else variants

        def wanted(variant, distill, target):
            is_lam = searches_lambda(variant)
            if variant not in variants or target not in (lam_targets if is_lam else targets):
                return False
            return not distill or (variant in kd_variants and target in args.distill_targets)

        for seed in args.seeds:
            if not args.skip_dense:
                cells.append((task, seed, "dense", False, None))
            if args.order == "nested":
                all_targets = list(targets) + [t for t in lam_targets if t not in targets]
                for distill in distills:
                    for variant in variants:
                        for target in all_targets:
                            if wanted(variant, distill, target):
                                cells.append((task, seed, variant, distill, target))
            else:
                for target in sorted(set(targets) | set(lam_targets)):
                    order = HIGH_SPARSITY_ORDER if target <= 0.1 else LOW_SPARSITY_ORDER
                    for distill in distills:
                        for variant in order:
                            if wanted(variant, distill, target):
                                cells.append((task, seed, variant, distill, target))
    return cells


SECONDS_PER_STEP_GUESS = 0.6  # a lab step of 32 SST-2 sentences, 2 cores (0.5-0.7 s, 2026-12-03)
RUN_OVERHEAD_GUESS = 40.0  # tokenizing, compiling, evaluating, exporting a lab run


def cost(args):
    """What the sweep will cost before it starts: (runs to go, the most lambda trials among
    them, seconds a run, what the seconds are based on). A finished run (--runs-dir or kept)
    costs nothing; a soft movement / L0 cell counts its remaining trials."""
    todo = extra = 0
    for task, seed, variant, distill, target in plan(args):
        name = run_name(variant, distill, target, seed)
        if searches_lambda(variant):
            prefix = name[:-len(f"_s{seed}")]
            done = len(finished_runs(args, task, f"{prefix}_lam*_s{seed}")) \
                if args.resume_existing else 0
            n = (args.lambda_trials_distill if distill else args.lambda_trials) - done
            todo += 1 if n > 0 else 0
            extra += max(n - 1, 0)
        elif not (args.resume_existing and finished_dir(args, task, name)):
            todo += 1
    walls = sorted(float((d / "wall_seconds.txt").read_text()) for task in args.tasks
                   for d in finished_runs(args, task) if (d / "wall_seconds.txt").exists())
    if walls:
        return todo, extra, walls[len(walls) // 2], f"the median of {len(walls)} finished runs"
    steps = args.max_steps or 1000
    per_run = SECONDS_PER_STEP_GUESS * steps + RUN_OVERHEAD_GUESS
    return todo, extra, per_run, f"a guess of {SECONDS_PER_STEP_GUESS:g} s a step"


def sweep(args):
    """Run every cell of ``plan(args)`` in order (with --resume-existing, the finished ones are
    read back instead); stops at --deadline."""
    trials = []
    for task, seed, variant, distill, target in plan(args):
        teacher = str(Path(args.runs_dir) / task
                      / run_name("dense", False, None, teacher_seed(args, seed)) / "export")
        try:
            run_cell(args, task, variant, distill, target, seed, teacher, trials)
        except Deadline:
            log("deadline reached: no more runs")
            return


def run_cell(args, task, method, distill, target, seed, teacher, trials):
    """Dense and hard-target variants: one run. Soft movement / L0: up to --lambda-trials runs
    for this target (those already on disk for it count, with --resume-existing), each lambda
    from all the trials so far of the same task/variant/distillation/seed (secant on log-log,
    from the recipe's final_lambda, ``mvp_jax.pruning.calibration.calibrate_lambda``); stops when a
    trial lands within --lambda-tolerance of the target (an absolute fraction; without one,
    within a factor of 1.25 of it: ``calibration.on_target``). The report picks
    among trials afterwards."""
    variant = variant_name(method)
    t = teacher if distill else None
    if not searches_lambda(variant):
        run_or_read(args, task, variant, distill, target, seed, teacher=t)
        return
    kd = "yes" if distill else "no"

    def known(kd_):
        rows = {r["run"]: r for r in trials
                if (r["task"], r["variant"], r["distill"], r["seed"]) == (task, variant, kd_, seed)}
        if args.resume_existing:
            for r in trials_on_disk(args, task, variant, kd_ == "yes", seed):
                rows.setdefault(r["run"], r)
        return list(rows.values())

    n = args.lambda_trials_distill if distill else args.lambda_trials
    cands = known(kd)
    mine = [(r["lambda"], r["remaining_weights"]) for r in cands if r["target"] == target]
    # without trials of its own, distillation starts from the trials without it
    hints = [(r["lambda"], r["remaining_weights"]) for r in (cands or known("no"))
             if not (r in cands and r["target"] == target)]
    if n - len(mine) < 1:
        return

    def run(lam):
        row = run_or_read(args, task, variant, distill, target, seed, lam=lam, teacher=t)
        trials.append(row)
        return row["remaining_weights"]

    calibrate_lambda(run, target, start_lambda(args, variant),
                     tolerance=args.lambda_tolerance, max_trials=n - len(mine),
                     history=mine, hints=hints)


def select_from_runs(args, all_rows):
    """The reported cells from all finished runs: hard-target variants as they are; for lambda
    variants, per (task, variant, distill, seed, target) the trial closest to the target in
    |log(remaining / target)| among the trials run for that target (the run directory names
    the target its lambda was searched for), so no run is shown twice. The other trials stay
    in lambda_trials.csv and on the plot."""
    rows = [dict(r) for r in all_rows if r["method"] not in LAMBDA_METHODS]
    groups = {}
    for r in all_rows:
        if r["method"] in LAMBDA_METHODS:
            key = (r["task"], r["variant"], r["distill"], r["seed"], r["target"])
            groups.setdefault(key, []).append(r)
    for key, cands in sorted(groups.items(), key=lambda kv: str(kv[0])):
        trials = [Trial(r["lambda"], r["remaining_weights"]) for r in cands]
        rows.append(dict(cands[trials.index(closest(trials, key[-1]))]))
    return rows
