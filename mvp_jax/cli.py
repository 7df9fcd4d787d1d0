"""The ``mvp-jax`` command: fine-prune, evaluate, export, count, predict, compress,
latency-table.

Exit codes: 0 done; 2 bad input (one line ``mvp-jax: error: ...`` on stderr, never a traceback,
nothing written); 3 a non-finite loss stopped the run (its checkpoints kept); 4 a target was
missed: ``compress`` found no model within ``--max-drop`` (its runs kept, nothing delivered),
or ``fine-prune --target-remaining`` no lambda within ``--tolerance`` (the closest trial is
the run); 130 interrupted
(a checkpoint saved); 1 an internal error, i.e. a bug: the traceback is printed.

Every command that compiles uses JAX's persistent compilation cache (``compile_cache_dir()``:
``$JAX_COMPILATION_CACHE_DIR``, else ``mvp-jax/xla`` in the user's cache folder), so a second
run of the same shapes compiles nothing; ``--no-compile-cache`` turns it off.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

from mvp_jax.errors import UserError

# A lean install has no PyTorch, and transformers then warns on import that its PyTorch models
# are unavailable (mvp-jax uses only its tokenizers and configs): keep stderr to our own lines.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_NON_FINITE = 3
EXIT_MISSED = 4
EXIT_INTERRUPTED = 130


def _add_common_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", action="append",
                   help="YAML recipe (see configs/); repeat to layer files, later ones win; "
                        "default: built-in defaults")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set prune.final_threshold=0.1 (repeatable)")


def _add_cache_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-compile-cache", action="store_true",
                   help="do not use JAX's persistent compilation cache (default: on, in "
                        "$JAX_COMPILATION_CACHE_DIR or the user's cache folder, mvp-jax/xla)")


def compile_cache_dir() -> str:
    """Where compiled programs are cached: ``$JAX_COMPILATION_CACHE_DIR``, else ``xla`` in
    mvp-jax's cache folder (``mvp_jax.serving.latency.cache_dir``)."""
    from mvp_jax.serving.latency import cache_dir

    return os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(cache_dir(), "xla")


def use_compile_cache() -> str:
    """Turn on JAX's persistent compilation cache for every program (no minimum compile time);
    returns its folder."""
    import jax

    folder = compile_cache_dir()
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    return folder


def _add_compress(sub) -> None:
    p = sub.add_parser(
        "compress", help="a model N times faster than the dense one, trained, verified, "
                         "deployable",
        description="Turn a speed-up target into a unit budget with a latency table of this "
                    "machine (or of --latency-table), fine-tune the dense teacher once (reused "
                    "by every target of the task), fine-prune heads and FFN neurons (hybrid "
                    "movement pruning, distilled) to that budget, export the compact model to "
                    "ONNX in float32 and int8, score and time both against the dense model "
                    "side by side, and write the faster one within --max-drop to --output-dir "
                    "with a model card (README.md). Exit 0 with the model delivered (a missed "
                    "speed target is said); 4 when no model is within --max-drop.")
    _add_common_overrides(p)
    p.add_argument("--speedup", type=float, required=True, metavar="N",
                   help="times faster than the dense model in ONNX Runtime (> 1)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="the batch size the target is for (default 32; 1 for one request at a "
                        "time)")
    p.add_argument("--max-drop", type=float, default=1.0, metavar="POINTS",
                   help="at most this many points of the task's main metric below the dense "
                        "model (default 1.0)")
    p.add_argument("--precision", default="auto", metavar="auto|float32|int8",
                   help="the precision to plan the budget for (default auto: the one whose "
                        "budget keeps more units); both are verified")
    p.add_argument("--latency-table", metavar="FILE",
                   help="a latency table measured on the serving machine (mvp-jax "
                        "latency-table); default: this machine's, measured once and cached")
    p.add_argument("--onnx-threads", type=int, metavar="N",
                   help="ONNX Runtime intra-op threads per session (default: one per core)")
    p.add_argument("--work-dir", default="mvp-jax-runs", metavar="DIR",
                   help="where the teacher and student runs are kept and reused (default "
                        "./mvp-jax-runs)")
    p.add_argument("--output-dir", required=True, metavar="DIR",
                   help="the deployable model directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace --output-dir")
    p.add_argument("--rounds", type=int, default=3, help="timed passes over the dev texts")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_cache_option(p)

    p = sub.add_parser(
        "latency-table", help="measure what heads and FFN neurons cost in ONNX Runtime here",
        description="Time probe models of a model's shape (every layer at a few head counts "
                    "and FFN widths, random weights) and the dense model in ONNX Runtime on "
                    "this machine, and write the latency table that mvp-jax compress "
                    "--latency-table reads: run it on the serving machine. Needs only the "
                    "model's config.json.")
    p.add_argument("--model", default="minilm-l6",
                   help="model name or directory (its config.json; default minilm-l6)")
    p.add_argument("--batch-size", dest="batch_sizes", default="32,1", metavar="B[,B...]",
                   help="batch sizes (default 32,1)")
    p.add_argument("--seq-length", type=int, default=32, metavar="N",
                   help="tokens per example (default 32; compress measures its own at the dev "
                        "set's mean padded length)")
    p.add_argument("--precision", default="float32,int8", metavar="P[,P]",
                   help="float32, int8 or both (default both)")
    p.add_argument("--onnx-threads", type=int, metavar="N",
                   help="ONNX Runtime intra-op threads (default: one per core)")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds (default 7)")
    p.add_argument("--output", required=True, metavar="FILE", help="the table file (JSON)")
    p.add_argument("--overwrite", action="store_true", help="replace --output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mvp-jax",
        description="Fine-prune BERT-family encoders with movement pruning and its baselines "
                    "(Sanh, Wolf & Rush 2020) in JAX.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("fine-prune", help="fine-prune a pretrained model on a task",
                       description="Fine-prune a pretrained model on a task; writes a run directory "
                                   "(config.yaml, metrics.jsonl, checkpoints/, export/, counts.json, "
                                   "eval_results.json).")
    _add_common_overrides(p)
    p.add_argument("--output-dir", required=True, metavar="DIR", help="run directory to write")
    either = p.add_mutually_exclusive_group()
    either.add_argument("--resume", action="store_true", help="continue the run in DIR from its latest checkpoint")
    either.add_argument("--overwrite", action="store_true", help="replace the run in DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--stop-at-step", type=int, metavar="N",
                   help="stop after step N with a checkpoint (continue later with --resume)")
    _add_cache_option(p)
    g = p.add_argument_group(
        "a sparsity target", "keep a fraction of the prunable encoder weights, whatever the "
        "method: topk, magnitude and random take it as prune.final_threshold (one run); "
        "sigmoied_threshold (soft movement) and l0 search prune.final_lambda with complete runs "
        "in DIR/trials/lambda-<L>/, starting from the config's final_lambda, list them in "
        "DIR/lambda_trials.json and make the closest the run in DIR (the same command again "
        "reruns nothing; an interrupted trial continues). Exit code 4 when no trial lands "
        "within --tolerance: the closest one is then the run in DIR (see mvp_jax/training/target.py)")
    g.add_argument("--target-remaining", type=float, metavar="FRACTION",
                   help="fraction of the prunable weights to keep, in (0, 1], e.g. 0.1")
    g.add_argument("--lambda-trials", type=int, metavar="N",
                   help="at most N runs for this target (default 5; soft movement, L0)")
    g.add_argument("--tolerance", type=float, metavar="FRACTION",
                   help="stop at a trial within this absolute fraction of the target (default "
                        "0.01, one point; soft movement, L0)")

    p = sub.add_parser("evaluate", help="evaluate a model directory or a run on a task",
                       description="Evaluate a Hugging Face model directory (e.g. RUN/export) or a run "
                                   "directory on its task; prints the metrics as JSON.")
    p.add_argument("model", metavar="MODEL", help="run directory or model directory")
    p.add_argument("--task", help="task name (default: the run's task)")
    p.add_argument("--data-dir", help="local data directory (default: the run's, else the hub)")
    p.add_argument("--max-eval-samples", type=int,
                   help="evaluate on the first N examples only (default: the run's setting, else all)")
    p.add_argument("--batch-size", type=int,
                   help="evaluation batch size (default: a run's, which it then scores exactly "
                        "as the run did: same batches, length buckets and device mesh; else 64)")
    g = p.add_argument_group(
        "your own data", "score the model on files or a dataset (e.g. one it never saw); these "
        "replace the run's data, and keep its columns, kind and labels unless given")
    g.add_argument("--validation-file", metavar="FILE",
                   help="labelled examples: .csv, .tsv, .json, .jsonl, .parquet (SQuAD-format "
                        ".json for qa)")
    g.add_argument("--test-file", metavar="FILE", help="a second labelled file, scored as 'test'")
    g.add_argument("--hub-path", metavar="PATH",
                   help="a dataset: hub id, local dataset directory or save_to_disk directory")
    g.add_argument("--hub-config", metavar="NAME", help="the dataset's configuration")
    g.add_argument("--validation-split", metavar="SPLIT",
                   help="the dataset's split scored as 'validation' (default: validation)")
    g.add_argument("--test-split", metavar="SPLIT", help="the dataset's split scored as 'test'")
    g.add_argument("--text-column", dest="text_columns", action="append", metavar="COLUMN",
                   help="text column; twice for sentence pairs (default: the run's, else text)")
    g.add_argument("--label-column", metavar="COLUMN", help="label column (default: the run's, "
                                                            "else label)")
    g.add_argument("--kind", choices=("classification", "regression", "qa"),
                   help="task kind (default: the run's, else the model's)")
    g.add_argument("--max-seq-length", type=int, metavar="N",
                   help="truncate inputs to N tokens (default: the run's, else the task's)")

    p = sub.add_parser("export", help="export a run (or a model directory) as a pruned model",
                       description="Apply the final masks of a run's latest checkpoint and write a "
                                   "model directory: Hugging Face (safetensors) or ONNX, the whole "
                                   "model or its compact form (pruned heads and FFN neurons "
                                   "removed); optionally an int8 + sparse compressed file as "
                                   "well. MODEL may also be an exported model directory (e.g. "
                                   "RUN/export), to convert it to ONNX.")
    p.add_argument("run", metavar="RUN", help="run directory written by fine-prune, or a model "
                                              "directory")
    p.add_argument("--output-dir", required=True, metavar="DIR", help="model directory to write")
    p.add_argument("--format", default="hf", metavar="FORMAT",
                   help="hf (config.json + model.safetensors, for transformers and mvp-jax) or "
                        "onnx (config.json + model.onnx, for ONNX Runtime and mvp-jax predict; "
                        "needs mvp-jax[onnx]); default hf")
    p.add_argument("--compact", action="store_true",
                   help="remove the pruned attention heads and FFN neurons (structured runs): a "
                        "smaller, faster model with per-layer sizes")
    p.add_argument("--quantize", metavar="int8",
                   help="with --format onnx: int8 matrices (ONNX Runtime dynamic quantization)")
    p.add_argument("--compressed", metavar="FILE", help="also write the compressed file FILE")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")

    p = sub.add_parser("count", help="count the remaining weights of a model",
                       description="Remaining weights of the encoder's prunable matrices (the paper's "
                                   "'remaining weights'), per matrix and in total.")
    p.add_argument("model", metavar="MODEL", help="model directory or run directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", metavar="FILE",
                   help="also save a heatmap of remaining weights (layer x matrix type) as FILE "
                        "(PNG, or any format matplotlib writes, by extension)")

    p = sub.add_parser("predict", help="label texts with a fine-pruned model",
                       description="Label texts with an exported model or a finished run (in "
                                   "JAX, batched by length; an ONNX directory from export "
                                   "--format onnx runs in ONNX Runtime): for each text the "
                                   "class name and "
                                   "the class probabilities, or the value for regression. "
                                   "Prints JSON lines, or writes --output.")
    p.add_argument("model", metavar="MODEL_OR_RUN", help="model directory or run directory")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--text", dest="texts", action="append", metavar="TEXT",
                   help="a text to label (repeatable)")
    g.add_argument("--file", metavar="FILE",
                   help="texts to label: a .csv, .tsv, .json, .jsonl or .parquet file")
    p.add_argument("--text-column", dest="text_columns", action="append", metavar="COLUMN",
                   help="the text column of --file; twice for sentence pairs (default: the "
                        "run's text columns, its task's for a built-in task; else the file's "
                        "only column, else text)")
    p.add_argument("--output", metavar="FILE",
                   help="write the results to FILE (.jsonl or .csv) instead of printing them")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument("--batch-size", type=int, default=32, help="texts per batch (default 32)")
    p.add_argument("--max-seq-length", type=int, metavar="N",
                   help="truncate texts to N tokens (default: the run's, else the model's limit)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (--file)")
    _add_compress(sub)
    for name in ("evaluate", "export", "count", "predict"):
        _add_cache_option(sub.choices[name])
    return parser


def _located(path: str, need_model: bool = True):
    """``rundir.locate`` of a directory; None for a name (an embedded model or a hub id, which
    the loaders resolve)."""
    from mvp_jax.training.rundir import locate

    return locate(path, need_model=need_model) if os.path.isdir(path) else None


def _model_dir(path: str) -> str:
    """The model directory a path stands for (a run: its export/), or the name itself."""
    found = _located(path)
    return found.model_dir if found else path


def _is_user_error(e: BaseException) -> bool:
    """Bad input: our ``UserError``s, and OS errors on a path the user named (a missing config
    file, an unreadable directory); anything else is a bug."""
    from mvp_jax.errors import UserError

    return isinstance(e, UserError) or (
        isinstance(e, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError))
        and getattr(e, "filename", None) is not None)


def cmd_fine_prune(args) -> int:
    from mvp_jax.config import load_config
    from mvp_jax.training.runner import fine_prune

    if args.target_remaining is None:
        for flag, value in (("--lambda-trials", args.lambda_trials),
                            ("--tolerance", args.tolerance)):
            if value is not None:
                raise UserError(f"{flag} applies with --target-remaining")
    cfg = load_config(args.config or None, args.overrides)
    if args.target_remaining is not None:
        from mvp_jax.training.target import fine_prune_to_target

        given = {k: v for k, v in (("max_trials", args.lambda_trials),
                                   ("tolerance", args.tolerance)) if v is not None}
        found = fine_prune_to_target(
            cfg, args.output_dir, args.target_remaining, resume=args.resume,
            overwrite=args.overwrite, progress=not args.no_progress,
            stop_at_step=args.stop_at_step, **given)
        for line in found.table():
            print(line, file=sys.stderr)
        print(json.dumps(found.report(), indent=2, default=float))
        if not found.on_target:
            print(f"mvp-jax: {found.missed_line()}", file=sys.stderr)
        return found.exit_code
    results = fine_prune(cfg, args.output_dir, resume=args.resume, overwrite=args.overwrite,
                         progress=not args.no_progress, stop_at_step=args.stop_at_step)
    print(json.dumps(results, indent=2, default=float))
    return 0


_SOURCES = ("validation_file", "test_file", "hub_path")
_OWN_KEYS = ("train_file", "validation_file", "test_file", "hub_path", "hub_config", "kind",
             "text_columns", "label_column", "labels", "train_split", "validation_split",
             "test_split")


def _evaluate_task(args, run_cfg):
    """The ``TaskConfig`` to evaluate on: the run's task (when MODEL is a run) with the command
    line's data in its place. Data options (--data-dir, --validation-file, --test-file,
    --hub-path) replace the run's source; a built-in task drops the own-data keys."""
    import dataclasses

    from mvp_jax.config import TaskConfig

    fields = dataclasses.asdict(run_cfg.task) if run_cfg else {}
    given = {k: getattr(args, k) for k in (*_SOURCES, "hub_config", "validation_split",
                                           "test_split", "text_columns", "label_column", "kind",
                                           "max_seq_length") if getattr(args, k) is not None}
    if args.data_dir is not None or any(k in given for k in _SOURCES):
        for k in ("train_file", "validation_file", "test_file", "hub_path", "hub_config",
                  "data_dir"):
            fields.pop(k, None)
    if args.data_dir is not None:
        fields["data_dir"] = args.data_dir
    fields.update(given)
    own = any(fields.get(k) is not None for k in (*_SOURCES, "train_file"))
    if not own:
        for k in _OWN_KEYS:
            fields.pop(k, None)
    name = args.task or (run_cfg.task.name if run_cfg else None)
    if name is None:
        if not own:
            raise UserError("--task is required when MODEL is not a run directory (or give "
                            "--validation-file, --test-file or --hub-path)")
        source = fields.get("validation_file") or fields.get("test_file") or fields["hub_path"]
        name = os.path.splitext(os.path.basename(os.path.normpath(source)))[0] or "data"
    fields["name"] = name
    return TaskConfig(**fields)


def cmd_evaluate(args) -> int:
    from mvp_jax.training.evaluation import evaluate_model_dir

    found = _located(args.model, need_model=False)
    run_cfg = found.cfg if found else None
    task = _evaluate_task(args, run_cfg)
    model_dir = _model_dir(args.model)
    max_eval = (args.max_eval_samples if args.max_eval_samples is not None
                else run_cfg.data.max_eval_samples if run_cfg else None)
    layout = None
    if run_cfg is not None and args.batch_size is None:
        from mvp_jax.training.evaluation import EvalLayout

        layout = EvalLayout.of_run(run_cfg)
    metrics = evaluate_model_dir(model_dir, task, max_eval_samples=max_eval,
                                 batch_size=64 if args.batch_size is None else args.batch_size,
                                 layout=layout)
    print(json.dumps(metrics, indent=2, default=float))
    return 0


def cmd_export(args) -> int:
    from mvp_jax.export.deploy import export_model_dir
    from mvp_jax.training.rundir import export_run

    options = dict(format=args.format, compact=args.compact, quantize=args.quantize,
                   overwrite=args.overwrite)
    found = _located(args.run, need_model=False)
    if found is not None and not found.is_run and found.model_dir == found.path:
        if args.compressed:
            raise UserError("--compressed applies to a run directory, not a model directory")
        report = export_model_dir(args.run, args.output_dir, **options)
    else:
        report = export_run(args.run, args.output_dir, compressed=args.compressed, **options)
    print(json.dumps(report, indent=2, default=float))
    return 0


def cmd_count(args) -> int:
    from mvp_jax.export.huggingface import count_remaining, format_counts
    from mvp_jax.models import load_pretrained

    if args.plot:  # before the work: matplotlib is an optional extra (mvp-jax[plots])
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise UserError("--plot needs matplotlib: pip install 'mvp-jax[plots]'")
    path = _model_dir(args.model)
    pre = load_pretrained(path, head=None)
    counts = count_remaining(pre.params)
    print(json.dumps(counts, indent=2) if args.json else format_counts(counts))
    if args.plot:
        from mvp_jax.plots import save_remaining_heatmap

        name = os.path.basename(os.path.normpath(args.model))
        save_remaining_heatmap(counts, args.plot,
                               title=f"{name}: {100 * counts['fraction']:.2f}% remaining")
        print(f"heatmap written to {args.plot}", file=sys.stderr)
    return 0


def cmd_predict(args) -> int:
    from mvp_jax.serving.predict import run_predict

    rows = run_predict(args.model, texts=args.texts, file=args.file,
                       text_columns=args.text_columns, output=args.output,
                       batch_size=args.batch_size, max_seq_length=args.max_seq_length,
                       overwrite=args.overwrite, progress=not args.no_progress)
    if args.output:
        print(f"{len(rows)} predictions written to {args.output}", file=sys.stderr)
    else:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
    return 0


def cmd_compress(args) -> int:
    from mvp_jax.config import load_config
    from mvp_jax.serving.compress import check_options, compress

    check_options(args.speedup, args.max_drop, args.batch_size, args.precision,
                  args.onnx_threads)
    if args.rounds < 1:
        raise UserError(f"--rounds must be >= 1, got {args.rounds}")
    cfg = load_config(args.config or None, args.overrides)
    command = "mvp-jax " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["compress"] else ""
    outcome = compress(cfg, args.speedup, args.output_dir, batch_size=args.batch_size,
                       max_drop=args.max_drop, precision=args.precision, work_dir=args.work_dir,
                       latency_table=args.latency_table, onnx_threads=args.onnx_threads,
                       rounds=args.rounds, overwrite=args.overwrite,
                       progress=not args.no_progress, command=command)
    print(json.dumps({k: outcome.report.get(k) for k in (
        "status", "summary", "chosen", "plan", "models", "output_dir")}, indent=2, default=float))
    if outcome.status == "missed_accuracy":
        print(f"mvp-jax: error: {outcome.message}", file=sys.stderr)
        return EXIT_MISSED
    print(f"mvp-jax: {outcome.message}; model in {outcome.output_dir}", file=sys.stderr)
    return 0


def _csv(text: str, convert, what: str) -> list:
    try:
        items = [convert(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        items = []
    if not items:
        raise UserError(f"{what} must be a comma-separated list, got {text!r}")
    return items


def cmd_latency_table(args) -> int:
    from mvp_jax.export.onnx import require_onnx, unsupported_reason
    from mvp_jax.models import load_model_config, resolve_model_path
    from mvp_jax.serving import latency

    batches = _csv(args.batch_sizes, int, "--batch-size")
    precisions = _csv(args.precision, str, "--precision")
    for p in precisions:
        latency.check_precision(p)
    if min(batches) < 1 or args.seq_length < 2 or args.rounds < 1:
        raise UserError("--batch-size, --rounds must be >= 1 and --seq-length >= 2")
    if args.onnx_threads is not None and args.onnx_threads < 1:
        raise UserError(f"--onnx-threads must be >= 1, got {args.onnx_threads}")
    if os.path.exists(args.output) and not args.overwrite:
        raise UserError(f"--output {args.output} exists; pass --overwrite to replace it")
    require_onnx()
    config = load_model_config(resolve_model_path(args.model))
    reason = unsupported_reason(config)
    if reason:
        raise UserError(f"model {args.model}: {reason}")
    tables = []
    for b in batches:
        tables += latency.measure_tables(config, b, args.seq_length, precisions,
                                         args.onnx_threads, rounds=args.rounds, progress=True)
    latency.save_tables(args.output, tables)
    for t in tables:
        print(f"batch {t.batch_size} {t.precision}: dense {t.dense_ms:.2f} ms, fixed "
              f"{t.base_ms:.2f} ms, per layer: all heads {t.attention_ms[-1][1]:.2f} ms, all "
              f"neurons {t.ffn_ms[-1][1]:.2f} ms")
    print(f"latency tables written to {args.output}", file=sys.stderr)
    return 0


COMMANDS = {"fine-prune": cmd_fine_prune, "evaluate": cmd_evaluate, "export": cmd_export,
            "count": cmd_count, "predict": cmd_predict, "compress": cmd_compress,
            "latency-table": cmd_latency_table}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mvp_jax.training.runner import Interrupted, NonFiniteLoss

    try:
        if not getattr(args, "no_compile_cache", True):
            use_compile_cache()
        return COMMANDS[args.command](args)
    except Interrupted as e:
        print(f"mvp-jax: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("mvp-jax: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except NonFiniteLoss as e:
        print(f"mvp-jax: error: {e}", file=sys.stderr)
        return EXIT_NON_FINITE
    except Exception as e:
        if not _is_user_error(e):
            traceback.print_exc()
            print(f"mvp-jax: internal error ({type(e).__name__}); this is a bug in mvp-jax: "
                  "please report it with the traceback above", file=sys.stderr)
            return EXIT_INTERNAL
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"mvp-jax: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
