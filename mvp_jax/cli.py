"""The ``mvp-jax`` command: fine-prune, evaluate, export, count.

Bad input ends with one line ``mvp-jax: error: ...`` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _add_common_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", action="append",
                   help="YAML recipe (see configs/); repeat to layer files, later ones win; "
                        "default: built-in defaults")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set prune.final_threshold=0.1 (repeatable)")


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
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue the run in DIR from its latest checkpoint")
    g.add_argument("--overwrite", action="store_true", help="replace the run in DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--stop-at-step", type=int, metavar="N",
                   help="stop after step N with a checkpoint (continue later with --resume)")

    p = sub.add_parser("evaluate", help="evaluate a model directory or a run on a task",
                       description="Evaluate a Hugging Face model directory (e.g. RUN/export) or a run "
                                   "directory on its task; prints the metrics as JSON.")
    p.add_argument("model", metavar="MODEL", help="run directory or model directory")
    p.add_argument("--task", help="task name (default: the run's task)")
    p.add_argument("--data-dir", help="local data directory (default: the run's, else the hub)")
    p.add_argument("--max-eval-samples", type=int,
                   help="evaluate on the first N examples only (default: the run's setting, else all)")
    p.add_argument("--batch-size", type=int, default=64, help="evaluation batch size (default 64)")

    p = sub.add_parser("export", help="export a run's latest checkpoint as a pruned model",
                       description="Apply the final masks of a run's latest checkpoint and write a "
                                   "Hugging Face model directory; optionally an int8 + sparse "
                                   "compressed file as well.")
    p.add_argument("run", metavar="RUN", help="run directory written by fine-prune")
    p.add_argument("--output-dir", required=True, metavar="DIR", help="Hugging Face directory to write")
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
    return parser


def _model_dir(path: str) -> str:
    """A run directory stands for its export/ folder."""
    if os.path.isfile(os.path.join(path, "eval_results.json")) and os.path.isdir(os.path.join(path, "export")):
        return os.path.join(path, "export")
    return path


def cmd_fine_prune(args) -> int:
    from mvp_jax.config import load_config
    from mvp_jax.runner import fine_prune

    cfg = load_config(args.config or None, args.overrides)
    results = fine_prune(cfg, args.output_dir, resume=args.resume, overwrite=args.overwrite,
                         progress=not args.no_progress, stop_at_step=args.stop_at_step)
    print(json.dumps(results, indent=2, default=float))
    return 0


def cmd_evaluate(args) -> int:
    from mvp_jax.evaluation import evaluate_model_dir

    run_cfg = None
    if os.path.isfile(os.path.join(args.model, "config.yaml")):
        from mvp_jax.config import load_config

        run_cfg = load_config(os.path.join(args.model, "config.yaml"))
    task = args.task or (run_cfg.task.name if run_cfg else None)
    if task is None:
        raise ValueError("--task is required when MODEL is not a run directory")
    data_dir = args.data_dir or (run_cfg.task.data_dir if run_cfg else None)
    max_len = run_cfg.task.max_seq_length if run_cfg else None
    max_eval = args.max_eval_samples or (run_cfg.data.max_eval_samples if run_cfg else None)
    metrics = evaluate_model_dir(_model_dir(args.model), task, data_dir=data_dir,
                                 max_eval_samples=max_eval, batch_size=args.batch_size,
                                 max_seq_length=max_len)
    print(json.dumps(metrics, indent=2, default=float))
    return 0


def cmd_export(args) -> int:
    from mvp_jax.evaluation import export_run

    report = export_run(args.run, args.output_dir, compressed=args.compressed, overwrite=args.overwrite)
    print(json.dumps(report, indent=2, default=float))
    return 0


def cmd_count(args) -> int:
    from mvp_jax.export import count_remaining, format_counts
    from mvp_jax.models import load_pretrained

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


COMMANDS = {"fine-prune": cmd_fine_prune, "evaluate": cmd_evaluate, "export": cmd_export,
            "count": cmd_count}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mvp_jax.runner import Interrupted

    try:
        return COMMANDS[args.command](args)
    except Interrupted as e:
        print(f"mvp-jax: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("mvp-jax: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"mvp-jax: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
