"""The runs of the sweep: a run is its recipe's YAML files plus overrides (``make_run``), made by
``mvp_jax.training.runner.fine_prune`` into --runs-dir/<task>/<name>; a finished run's small
files are kept under --out/runs; finished run directories are read back as result rows
(remaining weights counted on the exported model)."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import NamedTuple

from mvp_jax.pruning import methods
from mvp_jax.training.target import kind_of

from .presets import (
    FRAGMENTS_DIR,
    LAB,
    MAIN_METRIC,
    PREFIX_VARIANT,
    TASK_METRICS,
    VARIANTS,
    variant_name,
)


class Run(NamedTuple):
    """One run of the sweep: its directory under --runs-dir/<task> and its config."""

    task: str
    name: str
    files: tuple[str, ...]
    overrides: tuple[str, ...]

    def config(self):
        from mvp_jax.config import load_config

        return load_config(list(self.files), list(self.overrides))


def config_files(args, variant):
    """The YAML files of ``variant``'s run (before the preset's overrides)."""
    v = VARIANTS[variant_name(variant)]
    if args.recipes == "lab":
        return [LAB / f"{v.lab_recipe}.yaml"]
    return [LAB / "_task.yaml", FRAGMENTS_DIR / f"{v.fragment}.yaml"]


def recipe_config(args, variant):
    """``variant``'s recipe alone, without the preset's overrides."""
    from mvp_jax.config import load_config

    return load_config([str(f) for f in config_files(args, variant)])


def task_settings(args, task, recipe=None):
    """Overrides of the run length, data and batch for ``task``; with lab recipes only the
    options given (the rest stays the recipe's)."""
    if task == "sst2":
        steps, batch, n_train, epochs, seq = args.max_steps, args.batch_size, \
            args.max_train_samples, args.epochs, args.max_seq_length
        ov = [f"task.data_dir={Path(args.data_dir) / 'glue' / 'SST-2'}"]
    else:
        steps, batch, n_train, epochs, seq = args.squad_max_steps, args.squad_batch_size, \
            args.squad_max_train_samples, args.squad_epochs, args.squad_max_seq_length
        ov = [f"task.data_dir={Path(args.data_dir) / 'squad_v1.1'}",
              f"task.doc_stride={args.squad_doc_stride}"]
        if args.squad_max_eval_samples:
            ov.append(f"data.max_eval_samples={args.squad_max_eval_samples}")
    if seq:
        ov.append(f"task.max_seq_length={seq}")
    ov.append(f"task.name={task}")
    if batch:
        ov.append(f"train.batch_size={batch}")
    ov += [f"train.epochs={epochs}",
           f"data.max_train_samples={'null' if n_train is None else n_train}",
           f"train.max_steps={'null' if steps is None else steps}",
           "train.eval_every=0", "train.save_every=0", "train.keep_checkpoints=1"]
    if args.recipes == "fragments":
        ov.append("data.bucket_lengths=null")  # as these presets always ran (SQuAD needs it)
    elif seq and recipe is not None and recipe.data.bucket_lengths:
        kept = [b for b in recipe.data.bucket_lengths if b <= seq]
        ov.append(f"data.bucket_lengths={kept if kept else 'null'}")
    if args.learning_rate:
        ov.append(f"train.learning_rate={args.learning_rate}")
    return ov


def method_settings(args, method, target, lam):
    """Overrides of the pruning strength: the target of a Top-v method, lambda (and the scores'
    learning rate, if given) of soft movement and L0."""
    kind = kind_of(method)
    if kind == "fraction":
        return [f"prune.final_threshold={target}"]
    if kind != "lambda":
        return []
    lr = args.soft_scores_lr if method == "sigmoied_threshold" else args.l0_scores_lr
    return [f"prune.final_lambda={lam}"] + ([f"train.scores_learning_rate={lr}"] if lr else [])


def make_run(args, task, method, target, seed, lam=None, teacher=None, total_steps=None) -> Run:
    """The run of variant (or prune.method name) ``method``: its recipe's files and the
    overrides of the task, seed, variant, schedule, pruning strength and distillation."""
    variant = variant_name(method)
    v = VARIANTS[variant]
    recipe = recipe_config(args, variant)
    ov = task_settings(args, task, recipe) + [f"train.seed={seed}"] + list(v.overrides)
    if total_steps is not None:
        frac = args.warmup_fraction
        if frac is None:  # the recipe's warm-up ratio (lab: 120 / 1200)
            r = recipe.train
            frac = r.warmup_steps / r.max_steps if r.max_steps else 0.1
        warm = max(1, round(frac * total_steps))
        ov += [f"train.warmup_steps={warm}", f"train.log_every={max(1, total_steps // 20)}"]
    ov += method_settings(args, v.method, target, lam)
    if teacher:
        ov.append(f"distill.teacher={teacher}")
        ov += [f"distill.{key}={getattr(args, key)}" for key in
               ("alpha_ce", "alpha_distil", "temperature") if getattr(args, key, None) is not None]
    name = run_name(variant, bool(teacher), target, seed, lam)
    return Run(task, name, tuple(map(str, config_files(args, variant))),
               tuple(ov + list(args.overrides)))


def make_config(args, task, method, target, seed, lam=None, teacher=None, total_steps=None):
    """The config of one run of variant (or prune.method name) ``method``."""
    return make_run(args, task, method, target, seed, lam, teacher, total_steps).config()


def start_lambda(args, variant):
    """The first lambda of a search: the recipe's prune.final_lambda (400 soft, 125 L0)."""
    return float(recipe_config(args, variant).prune.final_lambda)


_STEPS: dict = {}


def total_steps_of(args, task, seed):
    """Updates of a run of ``task`` (needs the data size when the run length is in epochs)."""
    cfg = make_config(args, task, "dense", None, seed)
    if cfg.train.max_steps:
        return cfg.train.max_steps
    if (task, seed) not in _STEPS:
        from mvp_jax.training.runner import load_setup
        _STEPS[task, seed] = load_setup(cfg).total_steps
    return _STEPS[task, seed]


def run_name(method, distill, target, seed, lam=None):
    """Run directory name of variant (or prune.method name) ``method``."""
    variant = variant_name(method)
    name = "dense" if variant == "dense" else \
        f"{VARIANTS[variant].prefix}_{'kd' if distill else 'nokd'}_t{target:g}"
    if lam is not None:
        name += f"_lam{lam:.4g}"
    return f"{name}_s{seed}"


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Deadline(Exception):
    pass


# A run's small files, kept under --out/runs/<task>/<run> (committed): a new machine resumes the
# sweep from them instead of redoing it. The export (tens of MB) stays in --runs-dir.
KEPT_FILES = ("config.yaml", "eval_results.json", "counts.json", "metrics.jsonl",
              "wall_seconds.txt")


def kept_dir(args, task, name) -> Path:
    return Path(args.out) / "runs" / task / name


def keep_run(args, d: Path) -> Path:
    """Copy finished run ``d``'s small files to its kept directory (written to a temporary
    sibling first, then renamed: a kept run is complete or absent)."""
    import shutil

    dest = kept_dir(args, d.parent.name, d.name)
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in KEPT_FILES:
        if (d / f).exists():
            shutil.copy2(d / f, tmp / f)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def finished_dir(args, task, name):
    """The finished directory of run ``name``: under --runs-dir, else kept under --out/runs
    (with --resume-existing), else None."""
    for d in (Path(args.runs_dir) / task / name, kept_dir(args, task, name)):
        if (d / "eval_results.json").exists():
            return d
    return None


def teacher_seed(args, seed):
    """The seed of the dense run that teaches the distilled runs of ``seed``."""
    return seed if args.teacher_seed is None else args.teacher_seed


def ensure_teacher(args, task, seed, teacher):
    """The dense run's export, the teacher of the distilled runs: run again into --runs-dir when
    only its kept files are here (a new machine resuming the sweep)."""
    if teacher and not (Path(teacher) / "model.safetensors").exists():
        log(f"teacher {teacher} is missing: running the dense model again")
        run_or_read(args, task, "dense", False, None, seed, fresh=True)


def run_or_read(args, task, method, distill, target, seed, lam=None, teacher=None, fresh=False):
    """One run of the sweep (not run again when --resume-existing finds it finished, in
    --runs-dir or kept under --out/runs, unless ``fresh``); its row. A finished run's small
    files are kept under --out/runs."""
    from mvp_jax.training.runner import fine_prune

    name = run_name(method, distill, target, seed, lam)
    d = Path(args.runs_dir) / task / name
    found = finished_dir(args, task, name) if args.resume_existing and not fresh else None
    if found is None:
        if args.deadline and time.strftime("%H:%M") >= args.deadline:
            raise Deadline(args.deadline)
        ensure_teacher(args, task, teacher_seed(args, seed), teacher)
        steps = total_steps_of(args, task, seed)
        run = make_run(args, task, method, target, seed, lam, teacher, steps)
        log(f"run {d}: {' '.join(run.overrides)}")
        tic = time.time()
        fine_prune(run.config(), str(d), overwrite=True, progress=False)
        (d / "wall_seconds.txt").write_text(f"{time.time() - tic:.1f}\n")
        if not (fresh and (kept_dir(args, task, name) / "eval_results.json").exists()):
            keep_run(args, d)  # (a teacher run again leaves its committed files as they were)
        found = d
    row = read_run(found)
    log(f"  -> remaining {row['remaining_weights']:.4f} {MAIN_METRIC[task]} "
        f"{row[MAIN_METRIC[task]]:.4f}")
    return row


_NAME = re.compile(r"^(?P<prefix>.+?)_(?:kd|nokd)_t(?P<target>[0-9.e+-]+?)(?:_lam[^_]+)?_s-?\d+$")


def _override_value(text):
    import yaml

    lhs, _, raw = text.partition("=")
    section, key = lhs.split(".")
    return section, key, yaml.safe_load(raw)


def _has_overrides(cfg, overrides):
    return all(cfg.get(s, {}).get(k) == val for s, k, val in map(_override_value, overrides))


def variant_of_run(name, method, cfg):
    """The variant of a run directory: from its name (what the sweep ran), checked against
    its prune.method and the variant's overrides in its config.yaml."""
    if method == "none":
        return "dense"
    m = _NAME.match(name)
    variant = PREFIX_VARIANT.get(m["prefix"]) if m else None
    if variant is None or variant == "dense":  # not named by the sweep: from the config
        cands = [n for n, v in VARIANTS.items()
                 if v.method == method and _has_overrides(cfg, v.overrides)]
        if not cands:
            raise RuntimeError(f"{name}: no variant of method {method!r} matches its config")
        return max(cands, key=lambda n: len(VARIANTS[n].overrides))
    want = VARIANTS[variant]
    if method != want.method:
        raise RuntimeError(f"{name}: named as variant {variant} (prune.method {want.method}) "
                           f"but ran prune.method {method}")
    for s, k, val in map(_override_value, want.overrides):
        got = cfg.get(s, {}).get(k, val)
        if got != val:
            raise RuntimeError(f"{name}: variant {variant} needs {s}.{k}={val}, its config has "
                               f"{got!r}")
    return variant


def export_counts(export_dir: Path) -> dict:
    """``mvp_jax.export.huggingface.count_remaining`` of an exported model (its weights read back), over
    the prunable patterns it has (all six for a BERT)."""
    from mvp_jax import tree
    from mvp_jax.export.huggingface import count_remaining
    from mvp_jax.models import read_weights
    from mvp_jax.models.layout import PRUNABLE

    flat = read_weights(str(export_dir))[1]
    present = [p for p in PRUNABLE if any(re.search(p, path) for path in flat)]
    return count_remaining(tree.unflatten(flat), present)


def read_run(d: Path) -> dict:
    """A result row from a finished run directory (remaining weights counted on export/)."""
    import yaml

    res = json.loads((d / "eval_results.json").read_text())
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    if (d / "export").is_dir():
        counts, source = export_counts(d / "export"), "export"
    else:  # a kept run (results/<sweep>/runs): the run's own count of its export
        counts, source = json.loads((d / "counts.json").read_text()), "counts.json"
    remaining, total = counts["remaining"], counts["total"]
    if (remaining, total) != (res["remaining"], res["prunable"]):
        raise RuntimeError(f"{d}: {source} counts {remaining}/{total} differ from eval_results "
                           f"{res['remaining']}/{res['prunable']}")
    task = res["task"]
    method = res["method"]
    variant = variant_of_run(d.name, method, cfg)
    lam = cfg["prune"]["final_lambda"] if kind_of(method) == "lambda" else None
    metrics = res["metrics"]["validation"]
    wall = d / "wall_seconds.txt"
    row = {"task": task, "variant": variant, "method": method,
           "distill": "yes" if cfg["distill"]["teacher"] else "no",
           "target": None if method == "none" else float(re.search(r"_t([0-9.e+-]+?)_", d.name)[1]),
           "remaining_weights": remaining / total, "remaining": remaining, "prunable": total,
           "seed": cfg["train"]["seed"], "steps": res["step"],
           "batch_size": cfg["train"]["batch_size"],
           "train_samples": cfg["data"]["max_train_samples"] or "all",
           "max_seq_length": cfg["task"]["max_seq_length"], "lambda": lam,
           "scores_lr": (cfg["train"].get("scores_learning_rate")
                         if methods.learns_scores(method) else None),
           "wall_s": float(wall.read_text()) if wall.exists() else None, "run": d.name}
    for k in TASK_METRICS[task]:
        # fractions everywhere: the SQuAD metrics come in percent (0-100, as the official
        # script), GLUE accuracy as a fraction
        row[k] = float(metrics[k]) / (100.0 if task.startswith("squad") else 1.0)
    return row


def finished_runs(args, task, pattern="*"):
    """Finished run directories of ``task`` matching ``pattern``: under --runs-dir, and those
    kept under --out/runs that --runs-dir lacks; sorted by name."""
    found = {}
    for root in (Path(args.runs_dir) / task, Path(args.out) / "runs" / task):
        for d in sorted(root.glob(pattern)):
            if (d / "eval_results.json").exists():
                found.setdefault(d.name, d)
    return [found[k] for k in sorted(found)]


def trials_on_disk(args, task, method, distill, seed):
    """Finished runs of one variant/distillation/seed (--runs-dir or kept)."""
    pattern = f"{VARIANTS[variant_name(method)].prefix}_{'kd' if distill else 'nokd'}_t*_s{seed}"
    return [read_run(d) for d in finished_runs(args, task, pattern)]


def existing_trials(args):
    """Every finished run (--runs-dir or kept under --out/runs): the rows of the report."""
    return [read_run(d) for task in args.tasks for d in finished_runs(args, task)]


def use_compilation_cache(runs_dir):
    """JAX's persistent compilation cache, in $JAX_COMPILATION_CACHE_DIR or else
    ``runs_dir/xla_cache``: runs whose programs have the same shapes (every method at every
    target, every seed) compile once, across runs and worker processes. Returns the folder."""
    import jax

    folder = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(Path(runs_dir) / "xla_cache")
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    return folder
