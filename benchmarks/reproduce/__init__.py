"""Reproduce the paper's main comparison (Sanh, Wolf & Rush 2020, Figure 2) at lab scale.

Two steps. The *sweep* fine-tunes the embedded MiniLM ("minilm-l6") densely, then fine-prunes it
with each pruning *variant* (below) at each target fraction of remaining encoder weights, with
and/or without distillation from the dense model (its export/ directory is the teacher), on
SST-2 (and, for the cpu-reduced and full presets, on the SQuAD-dev split). Each run is a config:
the variant's YAML files plus a list of overrides (``make_run``), run by
``mvp_jax.training.runner.fine_prune`` into its own directory. The *report* (``--report-only`` alone)
reads the finished run directories and writes results.csv, results.md (the table and which of
the paper's claims held, computed from its rows), lambda_trials.csv and figure2.png under --out.

Variants (the unit of comparison; --methods takes their names, or the prune.method names
topk = movement_paper and sigmoied_threshold = soft_movement):

    magnitude        prune.method magnitude
    movement_paper   prune.method topk, scores from 0 (the paper's movement pruning)
    movement         prune.method topk, prune.mask_init magnitude, prune.mask_scale 2.0
    soft_movement    prune.method sigmoied_threshold + l1 (sparsity set by lambda)
    l0               prune.method l0 + l0 (sparsity set by lambda)
    random           prune.method random: Top-v of fixed random scores (the control)
    l0_ramp          l0 with lambda ramped along the cubic schedule (prune.initial_threshold 0)
    l0_magnitude     l0 whose gates start ranked by |W| (prune.mask_init magnitude, scale 2.75)

Soft movement and L0 reach their sparsity through lambda, not through a target: for each
target, lambda is searched by secant steps on log(lambda) vs log(remaining weights) over full
runs, starting from the recipe's final_lambda (every trial is a complete run with its own
eval_results.json; all trials are listed in lambda_trials.csv, and the table reports, per
target, the trial whose remaining weights are closest to the target in log ratio). Remaining
weights are counted by ``mvp_jax.export.huggingface.count_remaining`` on the exported model
(export/model.safetensors) and checked against the run's eval_results.json.

    # the paper's Figure 2 on 2 CPU cores (README "Results"): every variant at 50/10/3% with the
    # lab recipes at 300 updates, soft movement / L0 calibrated to 1 point, distillation at
    # 10/3%; finished runs' small files kept under results/paper_grid/runs/ (resumed from)
    python -m benchmarks.reproduce --sweep paper-grid --resume-existing
    # lab recipes (configs/lab/sst2/<variant>.yaml) at 600 updates on 2 CPU cores: dense, then
    # 3% and 50% for movement (both variants), magnitude, random; soft movement at 3%;
    # movement distilled at 3% (about 6 minutes a run, 11 runs)
    python -m benchmarks.reproduce --preset cpu-lab --resume-existing
    # reduced CPU version of results/RESULTS.md (configs/lab/sst2/_task.yaml + the method
    # fragments of configs/methods/, 60 updates of 16 on 960 sentences, SQuAD-dev split too)
    python -m benchmarks.reproduce --preset cpu-reduced
    # paper-like run (a GPU): full SST-2 train set, SQuAD-dev split, 3 epochs, seq 128/384
    python -m benchmarks.reproduce --preset full
    # the report step alone: table, claims and plot from existing runs
    python -m benchmarks.reproduce --preset cpu-lab --report-only

Run directories go under --runs-dir (git-ignored runs/reproduce, runs/reproduce_cpu_lab for
cpu-lab, runs/paper_grid); each finished run's small files (config, metrics, eval results,
counts) are kept under --out/runs; --resume-existing skips runs whose eval_results.json exists
in either (and restarts incomplete ones from scratch); --preset is also --sweep, and a bad sweep
name, a target outside (0, 1] or a search without trials is one error line and exit 2;
--deadline HH:MM starts no run after that time (the runs are ordered so that the most
informative come first).

The package, by idea (``python -m benchmarks.reproduce`` runs ``cli.main``; run it from the
repository root, or with the root on PYTHONPATH):

    presets   the variants, tasks, metrics and presets (what the sweep compares)
    runs      a run as config files + overrides, running one, keeping its small files, reading
              a finished run directory back as a result row
    sweep     the plan (run order), its cost, the sweep, a cell's lambda search
              (``mvp_jax.pruning.calibration``) and the trial the report shows per target
    report    results.csv, lambda_trials.csv, the Markdown tables, the figure
    claims    the paper's claims as verdicts computed from the rows
    cli       the options (checked), the report step, ``main``

How a method reaches its sparsity is the library's knowledge, asked here, not repeated:
``mvp_jax.pruning.methods`` (``learns_scores``, the registry) and
``mvp_jax.training.target.kind_of`` ("fraction": Top-v; "lambda": soft movement, L0).
The public names below are re-exported here; ``sweep``, ``report`` and ``claims`` are the
modules (their functions of the same name: ``reproduce.sweep.sweep`` and so on), never shadowed.
"""

from .claims import claims_markdown
from .cli import build_parser, main, report_step, resolve_args
from .presets import (
    LAMBDA_METHODS,
    MAIN_METRIC,
    METHOD_ALIASES,
    PREFIX_VARIANT,
    PRESETS,
    TASKS,
    VARIANT_ORDER,
    VARIANTS,
    Variant,
    variant_name,
)
from .report import markdown_table, plot, read_csv, summary_table, variants_note, write_csv
from .runs import (
    Run,
    existing_trials,
    keep_run,
    make_config,
    make_run,
    read_run,
    run_name,
    run_or_read,
    start_lambda,
    use_compilation_cache,
)
from .sweep import cost, plan, run_cell, select_from_runs

__all__ = [
    "LAMBDA_METHODS", "MAIN_METRIC", "METHOD_ALIASES", "PREFIX_VARIANT", "PRESETS", "TASKS",
    "VARIANT_ORDER", "VARIANTS", "Run", "Variant", "build_parser", "claims_markdown", "cost",
    "existing_trials", "keep_run", "main", "make_config", "make_run", "markdown_table", "plan",
    "plot", "read_csv", "read_run", "report_step", "resolve_args", "run_cell", "run_name",
    "run_or_read", "select_from_runs", "start_lambda", "summary_table", "use_compilation_cache",
    "variant_name", "variants_note", "write_csv",
]
