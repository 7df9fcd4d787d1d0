"""The operating curve of ``mvp-jax compress``: accuracy against measured speed-up, one point per
speed-up target, from the committed ``compress.json`` files under ``results/compress/``.

    # after `mvp-jax compress ... --work-dir runs/compress` for each target (runs/compress/chain.sh):
    python benchmarks/compress_curve.py --collect runs/compress   # small files -> results/compress/
    python benchmarks/compress_curve.py                           # README table + figure
    python benchmarks/compress_curve.py --check                   # exit 1 if README differs

``--collect`` copies, for each run of the work directory, its small files (``compress.json``,
``config.yaml``, ``eval_results.json``, ``counts.json``, ``metrics.jsonl``) to
``results/compress/<task>/<target>x/`` (the student) and ``results/compress/<task>/teacher/``.
The README's table lies between the markers ``<!-- compress-curve:start -->`` and
``<!-- compress-curve:end -->``, BENCHMARKS.md's between ``<!-- compress-detail:start -->`` and
``<!-- compress-detail:end -->``; only this script writes them (tests/test_docs.py checks
that they equal what the files give).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from markers import replace_between_markers  # a script: its folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "compress"
README = ROOT / "README.md"
BENCHMARKS = ROOT / "BENCHMARKS.md"
FIGURE = ROOT / "docs" / "figures" / "compress_curve.png"
SMALL_FILES = ("compress.json", "config.yaml", "eval_results.json", "counts.json",
               "metrics.jsonl")


def _copy_small(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in SMALL_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def collect(work: Path, results: Path = RESULTS) -> list[Path]:
    """Copy the small files of every finished compress run under ``work``; returns the point
    folders written."""
    written = []
    for report_path in sorted(work.glob("*/compress.json")):
        report = json.loads(report_path.read_text())
        point = results / report["task"] / f"{report['target_speedup']:g}x-b{report['batch_size']}"
        _copy_small(report_path.parent, point)
        _copy_small(Path(report["teacher_run"]), results / report["task"] / "teacher")
        written.append(point)
    return written


def points(results: Path = RESULTS) -> list[dict]:
    """Every point's report, ordered by task then target."""
    reports = [json.loads(p.read_text()) for p in results.glob("*/*/compress.json")
               if p.parent.name != "teacher"]
    return sorted(reports, key=lambda r: (r["task"] != "sst2", r["task"], r["batch_size"],
                                          r["target_speedup"]))


def _delivered(r: dict) -> str:
    """The export the command delivered, or the one it measured best when it delivered none."""
    if r.get("chosen"):
        return r["chosen"]
    return max(("float32", "int8"), key=lambda p: r["models"][p]["score"])


def table(reports: list[dict]) -> str:
    """The README's markdown table of the curve: per target, what was kept, the dev score
    against the dense model's, and the measured speed-ups of the export it delivered (or, when it
    delivered none, of its best-scoring export)."""
    head = ("| target | heads, neurons per layer | dev (dense) | export | batch 32 (predicted) | "
            "batch 1 | within 1 point |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in reports:
        p = _delivered(r)
        m, dense = r["models"][p], r["models"]["dense"]
        heads = "/".join(map(str, sorted(set(r["layer_num_heads"]))))
        neurons = "/".join(map(str, sorted(set(r["layer_intermediate_sizes"]))))
        task = {"sst2": "SST-2", "cola": "CoLA"}.get(r["task"], r["task"])
        metric = " MCC" if r["metric"] == "mcc" else "%"
        cells = [f"{task} {r['target_speedup']:g}x", f"{heads}, {neurons}",
                 f"{m['score']:.1f}{metric} ({dense['score']:.1f})", p,
                 f"**{m['speedup']['32']:.2f}x** ({r['plan']['predicted_speedup']:.2f}x)",
                 f"{m['speedup']['1']:.2f}x", "yes" if m["drop"] <= 1.0 else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def detail_table(reports: list[dict]) -> str:
    """BENCHMARKS.md's table: every export of every point, examples/s and speed-ups."""
    head = ("| task | target | export | dev | batch 32: ex/s | speed-up | batch 1: ex/s | "
            "speed-up | model.onnx MB | delivered |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in reports:
        for name in ("dense", "float32", "int8"):
            m = r["models"][name]
            cells = [r["task"], f"{r['target_speedup']:g}x (b{r['batch_size']})",
                     "dense float32" if name == "dense" else f"compact {name}",
                     f"{m['score']:.1f}"]
            for b in ("32", "1"):
                cells += [f"{m['examples_per_s'][b]:.0f}", f"{m['speedup'][b]:.2f}x"]
            cells += [f"{m['size_mb']:.1f}", "yes" if r.get("chosen") == name else ""]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)




def documents(reports: list[dict]) -> dict[Path, str]:
    """README.md and BENCHMARKS.md with their tables written from ``reports``."""
    return {README: replace_between_markers(README.read_text(), table(reports), "compress-curve"),
            BENCHMARKS: replace_between_markers(BENCHMARKS.read_text(), detail_table(reports),
                                                "compress-detail")}


def plot(reports: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in reports}, key=lambda t: t != "sst2")
    fig, axes = plt.subplots(len(tasks), 2, figsize=(11, 4 * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks):
        rs = [r for r in reports if r["task"] == task]
        dense = rs[0]["models"]["dense"]["score"]
        metric = "MCC x 100" if rs[0]["metric"] == "mcc" else rs[0]["metric"]
        for ax, b in zip(row, ("32", "1")):
            ax.axhline(dense, color="0.5", ls="--", lw=1, label="dense")
            ax.axhline(dense - 1.0, color="tab:red", ls=":", lw=1, label="1 point below dense")
            for p, color, marker in (("float32", "tab:blue", "o"), ("int8", "tab:orange", "s")):
                xs = [r["models"][p]["speedup"][b] for r in rs if b in r["models"][p]["speedup"]]
                ys = [r["models"][p]["score"] for r in rs if b in r["models"][p]["speedup"]]
                ax.scatter(xs, ys, color=color, marker=marker, label=p)
                for r, x, y in zip(rs, xs, ys):
                    ax.annotate(f"{r['target_speedup']:g}x", (x, y), fontsize=7,
                                textcoords="offset points", xytext=(4, 3), color=color)
            for r in rs:
                ax.axvline(r["target_speedup"], color="0.85", lw=0.8, zorder=0)
            ax.set_xlabel(f"measured speed-up over dense float32 (ONNX Runtime, batch {b}); "
                          "labels: the target", fontsize=8)
            ax.set_ylabel(f"{task} dev {metric}")
            ax.set_title(f"{task}: batch {b}")
            ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("mvp-jax compress: MiniLM-L6, hybrid movement pruning distilled, CPU")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--collect", metavar="WORK_DIR", type=Path,
                    help="first copy the small files of the runs in WORK_DIR")
    ap.add_argument("--check", action="store_true",
                    help="only check that README.md's table equals the files' (exit 1 if not)")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    if args.collect:
        for p in collect(args.collect):
            print(f"collected {p.relative_to(ROOT)}")
    reports = points()
    if not reports:
        raise SystemExit(f"no compress.json under {RESULTS}")
    docs = documents(reports)
    stale = [p.name for p, text in docs.items() if p.read_text() != text]
    if args.check:
        if stale:
            print(f"{', '.join(stale)}: the compress tables differ from results/compress; run "
                  "python benchmarks/compress_curve.py", file=sys.stderr)
            return 1
        return 0
    for path, text in docs.items():
        path.write_text(text)
    if not args.no_plot:
        plot(reports, FIGURE)
    print(table(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
