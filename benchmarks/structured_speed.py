"""Inference speed of compact structured-pruned models against the dense fine-tuned model, and
the curve of accuracy against speed-up.

Each run directory gives a model and its accuracy (``eval_results.json``): a structured run its
``compact/`` model (pruned heads and neurons removed), a dense run its ``export/``. Every model
runs through the same runtime (``mvp_jax.serving.predict``: the JAX model, jit-compiled, texts sorted by
length and batched into length buckets) on the same inputs, the SST-2 dev sentences, at batch
32 and batch 1. One warm-up pass each (compiles one program per bucket), then timed passes
alternate between the models, so all see the same load on a shared machine. Reported: examples/s
of every pass, medians, speed-up over the first (dense) run, accuracy, and the encoder's heads
and FFN widths.

    python benchmarks/structured_speed.py runs/reproduce_cpu_lab/sst2/dense_s42 \\
        runs/structured/hybrid_k0.5 runs/structured/hybrid_k0.3 runs/structured/hybrid_k0.2 \\
        runs/structured/hybrid_kd_k0.5 runs/structured/hybrid_kd_k0.3 \\
        --json benchmarks/results/cpu-2026-11-28/structured_speed.json \\
        --plot docs/figures/structured_curve.png
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from predict_speed import sst2_sentences  # noqa: E402


def model_of(run: Path) -> Path:
    """The run's compact model if it has one, else its (dense) export."""
    return run / "compact" if (run / "compact").is_dir() else run / "export"


def describe(run: Path) -> dict:
    """Accuracy, remaining weights and encoder sizes of a run."""
    from mvp_jax.config import load_config
    from mvp_jax.export.compact import layer_sizes
    from mvp_jax.models import load_model_config

    results = json.loads((run / "eval_results.json").read_text())
    heads, sizes = layer_sizes(load_model_config(str(model_of(run))))
    cfg = load_config(str(run / "config.yaml"))
    return {"run": str(run), "model": str(model_of(run)), "method": results["method"],
            "granularity": cfg.prune.granularity, "distilled": cfg.distill.teacher is not None,
            "accuracy": results["metrics"]["validation"]["accuracy"],
            "remaining_weights": results["remaining_weights"], "heads_per_layer": heads,
            "ffn_sizes": sizes}


def plot(rows: list[dict], batch: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    dense = rows[0]
    ax.axhline(100 * dense["accuracy"], color="0.6", ls="--", lw=1, label="dense")
    ax.axhline(100 * dense["accuracy"] - 3, color="tab:red", ls=":", lw=1,
               label="dense - 3 points")
    ax.axvline(2.0, color="tab:red", ls=":", lw=1)
    for distilled, color, label, dy in ((False, "tab:blue", "hybrid movement (heads + neurons)", -12),
                                        (True, "tab:green", "the same, distilled from dense", 6)):
        series = sorted((r for r in rows[1:] if r["distilled"] == distilled),
                        key=lambda r: r[f"speedup_b{batch}"])
        if not series:
            continue
        xs = [r[f"speedup_b{batch}"] for r in series]
        ys = [100 * r["accuracy"] for r in series]
        ax.plot(xs, ys, "o-", color=color, label=label)
        for r, x, y in zip(series, xs, ys):
            ax.annotate(f"{100 * r['remaining_weights']:.0f}% weights", (x, y),
                        textcoords="offset points", xytext=(5, dy), fontsize=8)
    ax.plot([1.0], [100 * dense["accuracy"]], "s", color="0.3")
    ax.set_xlabel(f"inference speed-up over dense (batch {batch}, CPU, same runtime)")
    ax.set_ylabel("SST-2 dev accuracy (%)")
    ax.set_title("MiniLM-L6 on SST-2: structured movement pruning")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run directories, the dense reference first")
    ap.add_argument("--batch-sizes", default="32,1")
    ap.add_argument("--rounds", type=int, default=3, help="timed passes of each model")
    ap.add_argument("--n", type=int, help="first N sentences (default: all 872)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--plot", help="draw accuracy against speed-up (first batch size) here")
    args = ap.parse_args(argv)

    import jax

    from mvp_jax.serving.predict import load_predictor, predict_texts

    texts = sst2_sentences(n=args.n)
    runs = [Path(r) for r in args.runs]
    rows = [describe(r) for r in runs]
    predictors = [load_predictor(str(model_of(r))) for r in runs]
    batches = [int(b) for b in args.batch_sizes.split(",")]
    load_start = os.getloadavg()
    rates: dict = {b: [[] for _ in runs] for b in batches}
    for b in batches:
        def rate(predictor):
            t = time.perf_counter()
            list(predict_texts(predictor, texts, batch_size=b))
            return len(texts) / (time.perf_counter() - t)

        for p in predictors:
            rate(p)  # warm-up: compiles one program per length bucket
        for _ in range(args.rounds):
            for i, p in enumerate(predictors):
                rates[b][i].append(rate(p))
    for b in batches:
        base = statistics.median(rates[b][0])
        for row, r in zip(rows, rates[b]):
            row[f"examples_per_s_b{b}"] = [round(x, 2) for x in r]
            row[f"median_examples_per_s_b{b}"] = round(statistics.median(r), 2)
            row[f"speedup_b{b}"] = round(statistics.median(r) / base, 3)
    result = {
        "benchmark": "structured_speed",
        "date": date.today().isoformat(),
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
        "device": f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
        "runtime": "mvp_jax.serving.predict (JAX, jit, length buckets)",
        "inputs": f"SST-2 dev sentences ({len(texts)})",
        "rounds": args.rounds,
        "loadavg_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
        "jax": jax.__version__,
        "models": rows,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    if args.plot:
        plot(rows, batches[0], args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
