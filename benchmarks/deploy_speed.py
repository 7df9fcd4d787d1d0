"""Deployment benchmark: the runtimes a user can serve a pruned model with, side by side on the
same SST-2 dev sentences, on this machine's CPU.

For a dense run and structured (hybrid) runs, every model is first exported through mvp-jax's
one export path (``rundir.export_run`` from the run's checkpoint, ``deploy.export_model_dir``
for the dense export), then timed:

* ``torch pipeline``: transformers' PyTorch ``pipeline("text-classification")`` on the dense
  export (what users run today);
* ``onnx``: ONNX Runtime (CPU, every graph optimization) on the dense model (also with int8
  matrices, to show what int8 alone gives), each compact model (pruned heads and FFN neurons
  removed) and each compact model with int8 matrices;
* ``jax``: mvp-jax's JAX path (``mvp_jax.serving.predict``, jit, length buckets), dense and compact.

The ONNX and JAX models run through ``mvp_jax.serving.predict`` (texts sorted by length, batched; ONNX
batches padded to their longest text, JAX ones to a length bucket); the pipeline gets the texts
in their order, as users call it. Each model has one warm-up pass per batch size, then timed
passes alternate between the models (``--rounds``), so all see the same load. Reported per model:
examples/s at each batch size (median of the rounds), speed-up over the dense model in the same
runtime and over the PyTorch pipeline, the weight file's size, and the accuracy of its labels.

    python benchmarks/deploy_speed.py runs/hybrid1200/dense runs/hybrid1200/hybrid_kd_k0.5 \\
        runs/hybrid1200/hybrid_kd_k0.3 runs/hybrid1200/hybrid_kd_k0.2 \\
        --work runs/deploy --json benchmarks/results/cpu-2026-12-03/deploy_speed.json \\
        --plot docs/figures/deploy_curve.png
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SST2_DEV = ROOT.parent / "shared" / "data" / "glue" / "SST-2" / "dev.tsv"


def sst2_dev(n: int | None = None) -> tuple[list[str], list[int]]:
    with open(SST2_DEV, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:n]
    return [r["sentence"] for r in rows], [int(r["label"]) for r in rows]


def weight_file(model_dir: Path) -> Path:
    for name in ("model.onnx", "model.safetensors"):
        if (model_dir / name).is_file():
            return model_dir / name
    raise FileNotFoundError(f"no weights in {model_dir}")


def export_all(dense_run: Path, runs: list[Path], work: Path) -> list[dict]:
    """The models to time: ``{name, runtime, dir, run, kind}`` (exports written under work/)."""
    from mvp_jax.export.deploy import export_model_dir
    from mvp_jax.training.rundir import export_run

    work.mkdir(parents=True, exist_ok=True)
    models = [{"name": "dense", "runtime": "torch pipeline", "dir": dense_run / "export",
               "run": dense_run}]
    for suffix, quantize in (("", None), (" int8", "int8")):  # int8 speeds up dense too
        out = work / f"dense-onnx{suffix.strip() and '-int8'}"
        export_model_dir(str(dense_run / "export"), str(out), format="onnx", quantize=quantize,
                         overwrite=True)
        models.append({"name": f"dense{suffix}", "runtime": "onnx", "dir": out, "run": dense_run})
    models.append({"name": "dense", "runtime": "jax", "dir": dense_run / "export",
                   "run": dense_run})
    for run in runs:
        name = run.name
        for suffix, quantize in (("", None), (" int8", "int8")):
            out = work / f"{name}-onnx{suffix.strip() and '-int8'}"
            export_run(str(run), str(out), format="onnx", compact=True, quantize=quantize,
                       overwrite=True)
            models.append({"name": f"{name} compact{suffix}", "runtime": "onnx", "dir": out,
                           "run": run})
        compact = work / f"{name}-compact"
        export_run(str(run), str(compact), compact=True, overwrite=True)
        models.append({"name": f"{name} compact", "runtime": "jax", "dir": compact, "run": run})
    return models


def torch_runner(model_dir: Path):
    import torch
    from transformers import pipeline

    torch.set_num_threads(os.cpu_count() or 1)
    pipe = pipeline("text-classification", model=str(model_dir), device=-1)
    label2id = pipe.model.config.label2id

    def run(texts, batch_size):
        out = pipe(texts, batch_size=batch_size, truncation=True, max_length=64)
        return [int(label2id[o["label"]]) for o in out]

    return run


def mvp_runner(model_dir: Path, onnx_threads: int | None = None):
    from mvp_jax.serving.predict import load_predictor, predict_texts

    predictor = load_predictor(str(model_dir), max_seq_length=64, threads=onnx_threads or None)
    label2id = {n: i for i, n in enumerate(predictor.label_names)}

    def run(texts, batch_size):
        return [label2id[r["label"]] for r in predict_texts(predictor, texts,
                                                            batch_size=batch_size)]

    return run


def plot(rows: list[dict], batches: list[int], dense_accuracy: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 4), squeeze=False)
    styles = {("onnx", False): ("tab:blue", "o", "ONNX Runtime, compact"),
              ("onnx", True): ("tab:orange", "s", "ONNX Runtime, compact + int8"),
              ("jax", False): ("tab:green", "^", "mvp-jax (JAX), compact")}
    for ax, b in zip(axes[0], batches):
        right = max(r[f"speedup_vs_dense_b{b}"] for r in rows) + 0.5
        ax.axhline(100 * dense_accuracy, color="0.6", ls="--", lw=1, label="dense")
        for dx, dy, color in ((2, 2, "tab:red"), (3, 4, "tab:purple")):  # the targets' corners
            floor = 100 * dense_accuracy - dy
            ax.plot([dx, dx, right], [100 * dense_accuracy, floor, floor], ":", color=color,
                    lw=1, label=f"target: >= {dx}x at <= {dy} points below")
        for (runtime, int8), (color, marker, label) in styles.items():
            series = sorted((r for r in rows if r["runtime"] == runtime
                             and not r["name"].startswith("dense")
                             and r["name"].endswith("int8") == int8),
                            key=lambda r: r[f"speedup_vs_dense_b{b}"])
            if not series:
                continue
            xs = [r[f"speedup_vs_dense_b{b}"] for r in series]
            ys = [100 * r["accuracy"] for r in series]
            ax.plot(xs, ys, marker=marker, color=color, label=label)
            for r, x, y in zip(series, xs, ys):
                ax.annotate(f"{100 * r['remaining_weights']:.0f}%", (x, y), fontsize=7,
                            textcoords="offset points", xytext=(4, 4), color=color)
        ax.plot([1.0], [100 * dense_accuracy], "s", color="0.3")
        ax.set_xlim(left=0.8)
        ax.set_xlabel(f"speed-up over dense, same runtime (batch {b}); labels: remaining "
                      "weights")
        ax.set_ylabel("SST-2 dev accuracy (%)")
        ax.set_title(f"batch {b}")
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("MiniLM-L6 on SST-2: hybrid movement pruning (distilled), CPU")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def markdown(rows: list[dict], batches: list[int]) -> str:
    head = ["model", "runtime", "weights (MB)", "SST-2 dev"]
    for b in batches:
        head += [f"b{b} ex/s", f"b{b} vs dense", f"b{b} vs torch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"], r["runtime"], f"{r['file_mb']:.1f}", f"{100 * r['accuracy']:.1f}%"]
        for b in batches:
            cells += [f"{r[f'median_examples_per_s_b{b}']:.0f}",
                      f"{r[f'speedup_vs_dense_b{b}']:.2f}x", f"{r[f'speedup_vs_torch_b{b}']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run directories, the dense run first")
    ap.add_argument("--work", required=True, help="directory for the exported models")
    ap.add_argument("--batch-sizes", default="32,1")
    ap.add_argument("--rounds", type=int, default=3, help="timed passes of each model")
    ap.add_argument("--n", type=int, help="first N sentences (default: all 872)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--plot", help="draw accuracy against speed-up here")
    ap.add_argument("--onnx-threads", type=int,
                    help="ONNX Runtime's intra-op threads (default: one per core)")
    args = ap.parse_args(argv)

    import onnxruntime
    import torch

    runs = [Path(r) for r in args.runs]
    texts, gold = sst2_dev(args.n)
    models = export_all(runs[0], runs[1:], Path(args.work))
    runners = [torch_runner(m["dir"]) if m["runtime"] == "torch pipeline"
               else mvp_runner(m["dir"], args.onnx_threads) for m in models]
    batches = [int(b) for b in args.batch_sizes.split(",")]
    load_start = os.getloadavg()
    rates = {b: [[] for _ in models] for b in batches}
    for m, run in zip(models, runners):  # accuracy, and a first pass (compilation, caches)
        labels = run(texts, batches[0])
        m["accuracy"] = sum(int(a == g) for a, g in zip(labels, gold)) / len(gold)
    for b in batches:
        for run in runners:
            run(texts, b)  # warm-up at this batch size
        for _ in range(args.rounds):
            for i, run in enumerate(runners):
                t = time.perf_counter()
                run(texts, b)
                rates[b][i].append(len(texts) / (time.perf_counter() - t))
    rows = []
    for i, m in enumerate(models):
        results = json.loads((m["run"] / "eval_results.json").read_text())
        row = {"name": m["name"], "runtime": m["runtime"], "model_dir": str(m["dir"]),
               "file_mb": weight_file(m["dir"]).stat().st_size / 1e6,
               "accuracy": m["accuracy"], "run_accuracy": results["metrics"]["validation"][
                   "accuracy"], "remaining_weights": results["remaining_weights"]}
        for b in batches:
            row[f"examples_per_s_b{b}"] = [round(x, 2) for x in rates[b][i]]
            row[f"median_examples_per_s_b{b}"] = round(statistics.median(rates[b][i]), 2)
        rows.append(row)
    for b in batches:
        key = f"median_examples_per_s_b{b}"
        dense = {r["runtime"]: r[key] for r in rows if r["name"] == "dense"}
        for r in rows:
            r[f"speedup_vs_dense_b{b}"] = round(r[key] / dense[r["runtime"]], 3)
            r[f"speedup_vs_torch_b{b}"] = round(r[key] / dense["torch pipeline"], 3)
    result = {
        "benchmark": "deploy_speed",
        "date": date.today().isoformat(),
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
        "device": f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
        "inputs": f"SST-2 dev sentences ({len(texts)}), max 64 tokens",
        "rounds": args.rounds,
        "onnx_threads": args.onnx_threads or "one per core",
        "loadavg_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
        "versions": {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
                     "jax": __import__("jax").__version__},
        "models": rows,
    }
    text = json.dumps(result, indent=2)
    print(text)
    print(markdown(rows, batches))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    if args.plot:
        plot(rows, batches, rows[0]["accuracy"], args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
