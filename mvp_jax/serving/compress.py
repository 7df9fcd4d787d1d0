"""``mvp-jax compress``: a speed-up target in, a verified deployable model out.

From a recipe (model, task, training settings) and a target ``N`` ("N times faster than the
dense model in ONNX Runtime on this machine, at batch B"):

1. **Budget.** A latency table (``mvp_jax.serving.latency``: what a layer's heads and FFN neurons cost
   here, cached, or measured on the serving machine with ``mvp-jax latency-table``) turns ``N``
   into a kept fraction of units ``k`` for each precision (float32, int8 matrices); the
   precision whose budget keeps more units is trained for.
2. **Teacher.** The dense model is fine-tuned once per (model, task, training settings) in the
   work directory and reused by every target (``teacher-<task>-<hash>``; resumable).
3. **Student.** Hybrid movement pruning (heads and FFN neurons, local Top-v to ``k``) distilled
   from the teacher (``student-<task>-keep<k>-<hash>``; resumable, reused when complete).
4. **Verify.** The compact student is exported to ONNX in float32 and int8; both and the dense
   float32 model are scored on the dev set and timed side by side on its texts at batch 1 and
   ``B``; the faster of the two that is within ``max_drop`` points of the dense model is kept.
5. **Deliver.** The output directory is a deployable model: ``model.onnx``, ``config.json``,
   the tokenizer, ``README.md`` (a model card with the measured speed-ups, dev scores, machine,
   date and command) and ``compress.json`` (every measurement). ``mvp-jax predict DIR`` uses it.

``Outcome.status``: ``met`` (speed-up at least the target and drop within ``max_drop``),
``missed_speed`` (within ``max_drop`` but slower than the target: the closest model is still
delivered), ``missed_accuracy`` (no export within ``max_drop``: nothing is delivered, the runs
are kept in the work directory).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import date
from typing import Any, Sequence

import numpy as np

from mvp_jax.errors import UserError
from mvp_jax.serving import latency
from mvp_jax.training.rundir import write_json

# the lab's distillation weights (configs/lab/sst2/hybrid_distilled.yaml), used when the recipe
# names no teacher of its own
DEFAULT_DISTILL = {"alpha_ce": 0.1, "alpha_distil": 0.9, "temperature": 2.0}
OUTPUT_FILES = frozenset({"README.md", "compress.json"})
TIMED_BATCHES = (1, 32)


class CompressError(UserError):
    """Bad input to ``compress`` (target, options, recipe, model)."""


@dataclasses.dataclass
class Outcome:
    status: str  # met | missed_speed | missed_accuracy
    report: dict
    output_dir: str | None  # None when nothing was delivered

    @property
    def message(self) -> str:
        return self.report["summary"]


def say(text: str) -> None:
    print(f"compress: {text}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Checks (before anything is written)
# ----------------------------------------------------------------------------------------------


def check_options(target: float, max_drop: float, batch_size: int, precision: str,
                  onnx_threads: int | None) -> None:
    if not target > 1.0:
        raise CompressError(f"--speedup must be > 1 (times faster than the dense model), got "
                            f"{target:g}")
    if not max_drop >= 0.0:
        raise CompressError(f"--max-drop must be >= 0 (points of the task's main metric), got "
                            f"{max_drop:g}")
    if batch_size < 1:
        raise CompressError(f"--batch-size must be >= 1, got {batch_size}")
    if precision not in ("auto", *latency.PRECISIONS):
        raise CompressError(f"unknown --precision {precision!r}; choose auto, "
                            f"{', '.join(latency.PRECISIONS)}")
    if onnx_threads is not None and onnx_threads < 1:
        raise CompressError(f"--onnx-threads must be >= 1, got {onnx_threads}")


def check_recipe(cfg) -> Any:
    """The recipe's task spec; a ``CompressError`` unless it is a classification task."""
    from mvp_jax import data

    spec = data.task_from_config(cfg.task)
    if spec.kind != "classification":
        raise CompressError(f"compress needs a classification task; {spec.name} is {spec.kind} "
                            f"(fine-prune it with mvp-jax fine-prune instead)")
    return spec


def check_destination(path: str, overwrite: bool) -> None:
    """``path`` is absent or empty, or (``overwrite``) holds only what compress writes."""
    from mvp_jax.export.huggingface import MODEL_DIR_FILES

    if os.path.lexists(path) and not os.path.isdir(path):
        raise CompressError(f"--output-dir {path} exists and is not a directory")
    entries = sorted(os.listdir(path)) if os.path.isdir(path) else []
    if entries and not overwrite:
        raise CompressError(f"--output-dir {path} exists and is not empty; pass --overwrite to "
                            f"replace it")
    foreign = [e for e in entries if e not in MODEL_DIR_FILES | OUTPUT_FILES]
    if foreign:
        raise CompressError(f"--output-dir {path} holds {foreign[0]!r}, which compress did not "
                            f"write; refusing to replace it (choose an empty or new directory)")


# ----------------------------------------------------------------------------------------------
# Configs of the two runs
# ----------------------------------------------------------------------------------------------


def config_hash(cfg) -> str:
    """A short hash of the keys of ``cfg`` that differ from their defaults: a run directory's
    name, so that a later mvp-jax with new keys (at their defaults) still finds the run."""
    from mvp_jax.config import Config, config_to_dict

    default = config_to_dict(Config())
    changed = {s: {k: v for k, v in keys.items() if v != default[s][k]}
               for s, keys in config_to_dict(cfg).items()}
    text = json.dumps(changed, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def teacher_config(cfg):
    """The recipe fine-tuned densely: no pruning, no teacher of its own."""
    from mvp_jax.config import DistillConfig, PruneConfig

    return cfg.replace(prune=PruneConfig(method="none"), distill=DistillConfig())


def student_config(cfg, keep: float, teacher_model: str):
    """The recipe as hybrid movement pruning (local Top-v of heads and FFN neurons) to ``keep``
    of each layer's units, distilled from ``teacher_model``. A recipe that already scores heads
    and neurons keeps its unit scores' init; another gets the lab's (magnitude, 2.0)."""
    prune = cfg.prune
    init = ({} if prune.granularity == "hybrid" and prune.mask_init != "kaiming"
            else {"mask_init": "magnitude", "mask_scale": 2.0})
    prune = prune.replace(method="topk", granularity="hybrid", initial_threshold=1.0,
                          regularization=None,
                          final_lambda=0.0, patterns=None, global_topk=False,
                          final_threshold=float(keep), **init)
    weights = ({} if cfg.distill.teacher else DEFAULT_DISTILL)
    distill = cfg.distill.replace(teacher=os.path.abspath(teacher_model), **weights)
    return cfg.replace(prune=prune, distill=distill)


def run_complete(run_dir: str) -> bool:
    return os.path.isfile(os.path.join(run_dir, "eval_results.json"))


def ensure_run(cfg, run_dir: str, what: str, progress: bool) -> dict:
    """The finished run in ``run_dir``: read when complete, resumed when started, else run."""
    from mvp_jax.config import load_config
    from mvp_jax.training.runner import fine_prune

    if run_complete(run_dir):
        say(f"{what}: reusing the finished run {run_dir}")
        with open(os.path.join(run_dir, "eval_results.json")) as f:
            return json.load(f)
    resume = os.path.isfile(os.path.join(run_dir, "config.yaml"))
    if resume and load_config(os.path.join(run_dir, "config.yaml")) != cfg:
        raise CompressError(f"{run_dir} holds another run's config; remove it or choose "
                            f"another --work-dir")
    say(f"{what}: {'resuming' if resume else 'training'} {run_dir}")
    return fine_prune(cfg, run_dir, resume=resume, progress=progress)


# ----------------------------------------------------------------------------------------------
# Dev data, scores and timing
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class DevSet:
    texts: list
    pairs: list | None
    labels: np.ndarray
    spec: Any

    def score(self, rows: Sequence[dict], label_names: Sequence[str]) -> float:
        """The task's main metric of ``predict`` rows, in points (x100)."""
        from mvp_jax.data.metrics import label_metrics

        index = {n: i for i, n in enumerate(label_names)}
        predicted = [index[row["label"]] for row in rows]
        return 100.0 * float(label_metrics(self.spec, predicted, self.labels)[self.spec.main_metric])


def load_dev(cfg, spec) -> DevSet:
    """The recipe's validation split: texts (and second texts of pairs) and integer labels."""
    from mvp_jax import data

    ds = data.load_raw(spec, "validation", cfg.task.data_dir)
    n = cfg.data.max_eval_samples
    if n is not None:
        ds = ds.select(range(min(n, len(ds))))
    keys = spec.text_keys
    pairs = list(ds[keys[1]]) if len(keys) > 1 else None
    return DevSet(list(ds[keys[0]]), pairs, np.asarray(ds[spec.label_key]), spec)


def padded_length(tokenizer, dev: DevSet, batch_size: int, max_length: int) -> int:
    """The mean length batches are padded to when the dev texts are sorted by length and cut
    into ``batch_size`` rows (as ``predict`` batches them): the latency table's length."""
    enc = tokenizer(dev.texts, dev.pairs, truncation=True, max_length=max_length)
    lengths = np.sort([len(x) for x in enc["input_ids"]])
    tops = [lengths[min(i + batch_size, len(lengths)) - 1]
            for i in range(0, len(lengths), batch_size)]
    return max(2, int(round(float(np.mean(tops)))))


def onnx_runner(model_dir: str, threads: int | None, max_seq_length: int):
    """``(run(texts, pairs, batch_size) -> rows, label names)`` of an ONNX directory."""
    from mvp_jax.serving.predict import load_predictor, predict_texts

    predictor = load_predictor(model_dir, max_seq_length=max_seq_length, threads=threads or None)

    def run(texts, pairs, batch_size):
        return list(predict_texts(predictor, texts, pairs, batch_size=batch_size))

    return run, predictor.label_names


def time_models(runners: Sequence[Any], dev: DevSet, batch_sizes: Sequence[int], rounds: int,
                max_examples: int) -> dict[int, list[float]]:
    """Examples per second of each runner over the dev texts, per batch size: one warm-up pass,
    then ``rounds`` passes in which the models alternate; the median of the rounds."""
    texts = dev.texts[:max_examples]
    pairs = dev.pairs[:max_examples] if dev.pairs is not None else None
    out = {}
    for b in batch_sizes:
        rates: list[list[float]] = [[] for _ in runners]
        for run in runners:
            run(texts, pairs, b)
        for _ in range(rounds):
            for i, run in enumerate(runners):
                t = time.perf_counter()
                run(texts, pairs, b)
                rates[i].append(len(texts) / (time.perf_counter() - t))
        out[b] = [float(np.median(r)) for r in rates]
    return out


# ----------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------


def _tables(model_config, batch_size, seq_length, precisions, threads, table_file, progress):
    shape = latency.ModelShape.of(model_config)
    if table_file is None:
        say(f"latency tables of this machine at batch {batch_size}, {seq_length} tokens "
            f"(cached in {os.path.join(latency.cache_dir(), 'latency')})")
        return latency.cached_tables(model_config, batch_size, seq_length, precisions,
                                     threads, progress=progress)
    tables = latency.load_tables(table_file)
    found = [latency.pick_table(tables, shape, batch_size, p, table_file) for p in precisions]
    found = [t for t in found if t is not None]
    if not found:
        raise CompressError(f"{table_file} has no table at batch size {batch_size} for "
                            f"{' or '.join(precisions)}; measure one with mvp-jax latency-table "
                            f"--batch-size {batch_size}")
    return found


def plan(budgets: Sequence[tuple[latency.LatencyTable, latency.Budget]]
         ) -> tuple[latency.LatencyTable, latency.Budget]:
    """The table and budget to train for, among each precision's ``(table, plan_budget)``: the
    reachable budget that keeps the most units, else the one predicted fastest."""
    reachable = [tb for tb in budgets if tb[1].reachable]
    if reachable:
        return max(reachable, key=lambda tb: tb[1].keep)
    return max(budgets, key=lambda tb: tb[1].predicted_speedup)


def compress(cfg, target: float, output_dir: str, *, batch_size: int = 32,
             max_drop: float = 1.0, precision: str = "auto", work_dir: str = "mvp-jax-runs",
             latency_table: str | None = None, onnx_threads: int | None = None,
             rounds: int = 3, max_timed_examples: int = 1000, overwrite: bool = False,
             progress: bool = True, command: str = "") -> Outcome:
    """Train, verify and deliver a model ``target`` times faster (module docstring)."""
    from mvp_jax.export.onnx import require_onnx, unsupported_reason
    from mvp_jax.models import load_model_config, load_tokenizer, resolve_model_path

    check_options(target, max_drop, batch_size, precision, onnx_threads)
    output_dir = os.path.abspath(output_dir)
    check_destination(output_dir, overwrite)
    spec = check_recipe(cfg)
    require_onnx()
    model_path = resolve_model_path(cfg.model.name)
    model_config = load_model_config(model_path)
    reason = unsupported_reason(model_config)
    if reason:
        raise CompressError(f"model {cfg.model.name}: {reason}; compress delivers ONNX models")
    if latency_table is not None and not os.path.isfile(latency_table):
        raise CompressError(f"--latency-table {latency_table} does not exist")
    dev = load_dev(cfg, spec)
    max_len = cfg.task.max_seq_length or spec.max_seq_length
    tokenizer = load_tokenizer(model_path)
    seq = padded_length(tokenizer, dev, batch_size, max_len)
    precisions = list(latency.PRECISIONS) if precision == "auto" else [precision]
    tables = _tables(model_config, batch_size, seq, precisions, onnx_threads, latency_table,
                     progress)
    budgets = [(t, latency.plan_budget(t, target)) for t in tables]
    table, budget = plan(budgets)
    for t, b in budgets:
        say(f"{t.precision}: keep {b.keep:.4f} of the units ({b.heads}/{t.shape.num_heads} "
            f"heads, {b.neurons}/{t.shape.intermediate_size} neurons per layer), predicted "
            f"{b.predicted_speedup:.2f}x" + ("" if b.reachable else " (the fastest sensible "
                                                                    "model; target out of reach)"))
    say(f"training for {table.precision}: keep {budget.keep:.4f}")

    work_dir = os.path.abspath(work_dir)
    os.makedirs(work_dir, exist_ok=True)
    t_cfg = teacher_config(cfg)
    teacher_dir = os.path.join(work_dir, f"teacher-{spec.name}-{config_hash(t_cfg)}")
    teacher = ensure_run(t_cfg, teacher_dir, "dense teacher", progress)
    if budget.keep >= 1.0:  # int8 matrices alone reach the target: the teacher is the model
        say("no unit needs to be pruned: the dense model is the student")
        student_dir, student = teacher_dir, teacher
    else:
        s_cfg = student_config(cfg, budget.keep, os.path.join(teacher_dir, "export"))
        student_dir = os.path.join(work_dir, f"student-{spec.name}-keep{budget.keep:.4f}-"
                                             f"{config_hash(s_cfg)}")
        student = ensure_run(s_cfg, student_dir, "student", progress)

    from mvp_jax.export.deploy import export_model_dir
    from mvp_jax.training.rundir import export_run

    say("exporting ONNX: dense float32, compact float32 and int8")
    dense_onnx = os.path.join(teacher_dir, "onnx-float32")
    export_model_dir(os.path.join(teacher_dir, "export"), dense_onnx, format="onnx",
                     overwrite=True)
    exports = {}
    for p in latency.PRECISIONS:
        exports[p] = os.path.join(student_dir, f"onnx-{p}")
        quantize = "int8" if p == "int8" else None
        if student_dir == teacher_dir:
            export_model_dir(os.path.join(teacher_dir, "export"), exports[p], format="onnx",
                             quantize=quantize, overwrite=True)
        else:
            export_run(student_dir, exports[p], format="onnx", compact=True, quantize=quantize,
                       overwrite=True)

    say(f"scoring on {len(dev.texts)} dev examples and timing at batch "
        f"{', '.join(map(str, sorted({1, batch_size})))} ({rounds} rounds, side by side)")
    names = ["dense", *latency.PRECISIONS]
    dirs = [dense_onnx, *(exports[p] for p in latency.PRECISIONS)]
    runners = [onnx_runner(d, onnx_threads, max_len) for d in dirs]
    scores = [dev.score(run(dev.texts, dev.pairs, batch_size), labels)
              for run, labels in runners]
    batches = sorted({1, batch_size})
    say(f"dev {spec.main_metric}: dense {scores[0]:.1f}, float32 {scores[1]:.1f}, int8 "
        f"{scores[2]:.1f}; timing")
    rates = time_models([r for r, _ in runners], dev, batches, rounds, max_timed_examples)
    models = {}
    for i, name in enumerate(names):
        models[name] = {
            "dir": dirs[i], "score": scores[i], "drop": scores[0] - scores[i],
            "examples_per_s": {str(b): rates[b][i] for b in batches},
            "speedup": {str(b): rates[b][i] / rates[b][0] for b in batches},
            "size_mb": os.path.getsize(os.path.join(dirs[i], "model.onnx")) / 1e6}
    ok = [p for p in latency.PRECISIONS if models[p]["drop"] <= max_drop + 1e-9]
    key = str(batch_size)
    chosen = max(ok, key=lambda p: models[p]["speedup"][key]) if ok else None
    metric = spec.main_metric
    heads, neurons = _layer_sizes(exports["float32"])
    report = {
        "target_speedup": target, "batch_size": batch_size, "max_drop": max_drop,
        "onnx_threads": onnx_threads, "task": spec.name, "metric": metric,
        "model": cfg.model.name, "date": date.today().isoformat(),
        "machine": latency.machine(), "onnxruntime": _ort_version(), "command": command,
        "plan": {"precision": table.precision, "keep": budget.keep, "heads": budget.heads,
                 "neurons": budget.neurons, "predicted_speedup": budget.predicted_speedup,
                 "reachable": budget.reachable, "seq_length": seq},
        "latency_table": table.to_dict(),
        "teacher_run": teacher_dir, "student_run": student_dir,
        "remaining_weights": student["remaining_weights"],
        "layer_num_heads": heads, "layer_intermediate_sizes": neurons,
        "models": models, "chosen": chosen}
    if chosen is None:
        best = max(latency.PRECISIONS, key=lambda p: models[p]["score"])
        report["summary"] = (
            f"missed --max-drop {max_drop:g}: the student scores {models[best]['score']:.1f} "
            f"({best}) against the dense {scores[0]:.1f} {metric} ({models[best]['drop']:.1f} "
            f"points below); nothing was delivered; the runs are kept in {student_dir} and "
            f"{teacher_dir}")
        report["status"] = "missed_accuracy"
        write_json(os.path.join(student_dir, "compress.json"), report)
        return Outcome("missed_accuracy", report, None)
    got = models[chosen]["speedup"][key]
    status = "met" if got >= target else "missed_speed"
    report["status"] = status
    verdict = ("target met" if status == "met" else
               f"target {target:g}x missed by {target - got:.2f}x ({100 * (1 - got / target):.0f}%)")
    report["summary"] = (
        f"{verdict}: {got:.2f}x faster than the dense model at batch {batch_size} ({chosen}, "
        f"predicted {budget.predicted_speedup:.2f}x), {models[chosen]['score']:.1f} {metric} "
        f"against the dense {scores[0]:.1f} ({_points(models[chosen]['drop'])})")
    report["output_dir"] = output_dir
    write_json(os.path.join(student_dir, "compress.json"), report)
    deliver(output_dir, models[chosen]["dir"], report, overwrite)
    return Outcome(status, report, output_dir)


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _points(drop: float) -> str:
    return f"{abs(drop):.1f} points {'below' if drop >= 0 else 'above'}"


def _layer_sizes(model_dir: str) -> tuple[list[int], list[int]]:
    from mvp_jax.export.compact import layer_sizes
    from mvp_jax.models import load_model_config

    return layer_sizes(load_model_config(model_dir))


def deliver(output_dir: str, model_dir: str, report: dict, overwrite: bool) -> None:
    """Copy the chosen ONNX directory with ``README.md`` and ``compress.json`` to
    ``output_dir``, atomically (a temporary directory renamed into place by
    ``export.replace_directory``, as every model directory is written)."""
    from mvp_jax.export.huggingface import replace_directory

    check_destination(output_dir, overwrite)
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(output_dir)}.tmp-")
    try:
        for name in os.listdir(model_dir):
            shutil.copy2(os.path.join(model_dir, name), tmp)
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
            f.write(model_card(report))
        with open(os.path.join(tmp, "compress.json"), "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
        replace_directory(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def model_card(report: dict) -> str:
    """The model card (README.md) of a delivered model: what it is and what was measured."""
    m, chosen, metric = report["models"], report["chosen"], report["metric"]
    batches = sorted(m["dense"]["speedup"], key=int)
    rows = ["| model | " + f"dev {metric} | " + " | ".join(
        f"batch {b}: examples/s | batch {b}: speed-up" for b in batches) + " | model.onnx (MB) |",
        "|---|---|" + "---|---|" * len(batches) + "---|"]
    for name, label in (("dense", "dense (float32)"), (chosen, f"this model ({chosen})")):
        r = m[name]
        cells = [label, f"{r['score']:.1f}"]
        for b in batches:
            cells += [f"{r['examples_per_s'][b]:.0f}", f"{r['speedup'][b]:.2f}x"]
        cells.append(f"{r['size_mb']:.1f}")
        rows.append("| " + " | ".join(cells) + " |")
    mach = report["machine"]
    threads = report["onnx_threads"] or "one per core"
    status = {"met": "target met", "missed_speed": "speed target missed"}[report["status"]]
    return f"""# {report['model']} pruned for {report['task']} ({status})

Made by `mvp-jax compress`: hybrid movement pruning of attention heads and FFN neurons,
distilled from the dense model, compacted (pruned units removed) and exported to ONNX
({chosen} matrices). Asked for: {report['target_speedup']:g}x faster than the dense model at
batch {report['batch_size']}, at most {report['max_drop']:g} points of {metric} below it.
Measured: {report['summary']}.

{chr(10).join(rows)}

- Remaining encoder weights: {100 * report['remaining_weights']:.1f}%. Heads per layer:
  {report['layer_num_heads']}; FFN neurons per layer: {report['layer_intermediate_sizes']}.
- Timed on {mach.get('cpu')} ({mach.get('cores')} cores), ONNX Runtime {report['onnxruntime']}
  with {threads} intra-op threads, on {report['date']}: the dev set's texts
  sorted by length and batched, the models alternating, the median of the passes.
- Command: `{report['command'] or 'mvp_jax.serving.compress.compress(...)'}`

## Use

```bash
mvp-jax predict {report['output_dir']} --text "..."
```

or run `model.onnx` in ONNX Runtime with this directory's tokenizer: inputs `input_ids`,
`attention_mask` (int64, `[batch, sequence]`), output `logits`; class names in `config.json`'s
`id2label`. Hugging Face Optimum (`pip install optimum-onnx`, in an environment of its own: it
needs transformers 4) loads it too:

```python
from optimum.onnxruntime import ORTModelForSequenceClassification
from transformers import AutoTokenizer, pipeline

model = ORTModelForSequenceClassification.from_pretrained("{report['output_dir']}")
tokenizer = AutoTokenizer.from_pretrained("{report['output_dir']}")
pipeline("text-classification", model=model, tokenizer=tokenizer)("...")
```
"""


__all__ = ["CompressError", "Outcome", "compress", "check_options", "plan", "student_config",
           "teacher_config", "model_card"]
