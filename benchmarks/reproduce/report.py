"""The report's files: results.csv and lambda_trials.csv, the Markdown tables (per task, and the
README's summary), the note on what each variant is, and the figure (metric against remaining
weights); ``report`` writes them all with the claims."""

from __future__ import annotations

import csv
import math
import os
import platform
import time
from pathlib import Path

from mvp_jax.pruning import methods

from ..markers import between_markers, replace_between_markers
from .claims import claims, claims_markdown, pct
from .presets import (
    MAIN_METRIC,
    PROG,
    TASK_LABELS,
    TASK_METRICS,
    TASKS,
    VARIANT_ORDER,
    VARIANTS,
    row_variant,
)

COLUMNS = ["task", "variant", "method", "distill", "target", "remaining_weights", "accuracy",
           "exact_match", "f1", "seed", "steps", "batch_size", "train_samples", "max_seq_length",
           "lambda", "scores_lr", "wall_s", "run"]


def sort_key(r):
    return (TASKS.index(r["task"]), r["distill"], -(r["target"] or 2),
            VARIANT_ORDER.index(row_variant(r)), r["seed"], r.get("lambda") or 0)


def write_csv(path, rows):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in sorted(rows, key=sort_key):
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})


def read_csv(path):
    rows = []
    with open(path) as f:
        for r in csv.DictReader(f):
            for k in ("target", "remaining_weights", "accuracy", "exact_match", "f1", "lambda",
                      "wall_s", "scores_lr"):
                r[k] = float(r[k]) if r.get(k) not in (None, "") else None
            for k in ("seed", "steps", "batch_size", "max_seq_length"):
                r[k] = int(r[k]) if r.get(k) not in (None, "") else None
            r["variant"] = row_variant(r)
            rows.append(r)
    return rows


def _fmt(v, pct=False):
    if v is None or v == "":
        return ""
    return f"{100 * v:.1f}" if pct else f"{v:g}"


def markdown_table(rows):
    """One Markdown table per task: metrics in %, remaining weights in % of the encoder's
    prunable weights as counted on the exported model."""
    out = []
    for task in TASKS:
        trs = sorted([r for r in rows if r["task"] == task], key=sort_key)
        if not trs:
            continue
        mets = TASK_METRICS[task]
        out.append(f"**{TASK_LABELS[task]}**\n")
        head = ["method", "distill", "target %", "remaining % (export)",
                *[f"{m} %" for m in mets], "Δ vs dense", "lambda", "seed", "steps", "batch",
                "train samples", "seq len"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        dense = {r["seed"]: r for r in trs if r["method"] == "none"}
        main = MAIN_METRIC[task]
        for r in trs:
            d = dense.get(r["seed"])
            delta = "" if d is None or r["method"] == "none" else f"{100 * (r[main] - d[main]):+.1f}"
            cells = [VARIANTS[row_variant(r)].label, r["distill"],
                     "100" if r["method"] == "none" else _fmt(r["target"], pct=True),
                     f"{100 * r['remaining_weights']:.2f}", *[_fmt(r[m], pct=True) for m in mets],
                     delta, "" if r["lambda"] is None else f"{r['lambda']:g}", str(r["seed"]),
                     str(r["steps"]), str(r["batch_size"]), str(r["train_samples"]),
                     str(r["max_seq_length"])]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def variants_note(rows):
    """What each variant in ``rows`` is (its method, ``prune.method`` and overrides)."""
    present = [v for v in VARIANT_ORDER[1:] if any(row_variant(r) == v for r in rows)]
    lines = []
    for name in present:
        v = VARIANTS[name]
        extra = "".join(f", `{o}`" for o in v.overrides)
        lrs = sorted({r.get("scores_lr") for r in rows if row_variant(r) == name} - {None, ""})
        if lrs:
            extra += ", scores learning rate " + " / ".join(f"{float(x):g}" for x in lrs)
            if name == "soft_movement" and any(float(x) != 0.01 for x in lrs):
                extra += " (the paper's: 0.01; raised so that the scores can cross the " \
                         "threshold within the run)"
        lines.append(f"- {v.label} (`{name}`): {methods.get(v.method).label}, "
                     f"`prune.method={v.method}`{extra}")
    return "\n".join(lines)


def line_style(variant, distill):
    """(color, marker, linestyle, marker face) of a variant's line on the plot: one color and
    marker per variant; dashed with hollow markers with distillation; the random control grey
    and dashed (dotted with distillation)."""
    if variant == "random":
        return "grey", "x", ":" if distill == "yes" else "--", "grey"
    v = VARIANTS[variant]
    kd = distill == "yes"
    return v.color, v.marker, "--" if kd else "-", "white" if kd else v.color


def plot(rows, path, title=None, trials=()):
    """Metric against remaining weights (log x), one line per variant, dense as a horizontal
    line; solid without distillation, dashed with; the random control grey and dashed; one
    panel per task. Lambda trials that are not in the table are drawn as faint unconnected
    markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    tasks = [t for t in TASKS if any(r["task"] == t for r in rows)]
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(6.2 * max(1, len(tasks)), 4.6),
                             squeeze=False)
    for ax, task in zip(axes[0], tasks):
        main = MAIN_METRIC[task]
        trs = [r for r in rows if r["task"] == task]
        dense = [r[main] for r in trs if r["method"] == "none"]
        if dense:
            ax.axhline(100 * sum(dense) / len(dense), color="black", lw=1.2,
                       label="dense fine-tuning")
        for variant in VARIANT_ORDER[1:]:
            for distill in ("no", "yes"):
                pts = {}
                for r in trs:
                    if row_variant(r) == variant and r["distill"] == distill:
                        pts.setdefault(r["target"], []).append(r)
                if not pts:
                    continue
                xs, ys, lo, hi = [], [], [], []
                for target in sorted(pts):
                    group = pts[target]
                    vals = [100 * g[main] for g in group]
                    xs.append(100 * sum(g["remaining_weights"] for g in group) / len(group))
                    ys.append(sum(vals) / len(vals))
                    lo.append(ys[-1] - min(vals))  # error bars: the seeds' range
                    hi.append(max(vals) - ys[-1])
                order = sorted(range(len(xs)), key=lambda i: xs[i])
                color, marker, ls, mfc = line_style(variant, distill)
                ax.errorbar([xs[i] for i in order], [ys[i] for i in order],
                            yerr=[[lo[i] for i in order], [hi[i] for i in order]],
                            color=color, marker=marker, ls=ls, mfc=mfc, capsize=3,
                            label=VARIANTS[variant].label
                            + (" + distillation" if distill == "yes" else ""))
        shown = {(r["run"], r["distill"]) for r in trs}
        extra = [r for r in trials if r["task"] == task and (r["run"], r["distill"]) not in shown]
        for r in extra:
            v = VARIANTS[row_variant(r)]
            ax.plot([100 * r["remaining_weights"]], [100 * r[main]], ls="none", marker=v.marker,
                    color=v.color, alpha=0.35, ms=5)
        if extra:
            ax.plot([], [], ls="none", marker="o", color="grey", alpha=0.35,
                    label="other lambda trials")
        ax.set_xscale("log")
        xs_all = [100 * r["remaining_weights"] for r in trs] + \
            [100 * r["remaining_weights"] for r in extra]
        if xs_all:  # plain percentages at round values, not 3x10^0
            lo, hi = min(xs_all) / 1.3, max(xs_all) * 1.3
            ticks = [t for t in (0.1, 0.3, 0.5, 1, 2, 3, 5, 10, 15, 20, 30, 50, 100)
                     if lo <= t <= hi]
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            if ticks:
                ax.set_xticks(ticks)
                ax.set_xticklabels([f"{t:g}" for t in ticks])
        ax.set_xlabel("remaining encoder weights (%), counted on the exported model")
        ax.set_ylabel(f"{main} (%)")
        ax.set_title(TASK_LABELS[task])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best", framealpha=0.6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def device_line():
    import jax

    dev = jax.devices()[0]
    kind = f"{dev.platform.upper()} ({dev.device_kind})"
    return f"{kind}, {os.cpu_count()} cores, {platform.machine()}, {time.strftime('%Y-%m-%d')}"


SUMMARY_COLUMNS = (("no", 0.5), ("no", 0.1), ("no", 0.03), ("yes", 0.1), ("yes", 0.03))


def summary_table(rows, task="sst2"):
    """One Markdown table for README: a row per variant, a column per (distillation, target);
    each cell the main metric in % (the mean over seeds, their range after +-), with the
    remaining weights where they are not the target's (soft movement, L0)."""
    main = MAIN_METRIC[task]
    trs = [r for r in rows if r["task"] == task]
    dense = [r[main] for r in trs if r["method"] == "none"]
    head = ["method"] + [f"{pct(t)}{', distilled' if kd == 'yes' else ''}"
                         for kd, t in SUMMARY_COLUMNS]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if dense:
        d = 100 * sum(dense) / len(dense)
        out.append("| dense (100%) | " + " | ".join([f"{d:.1f}"] + [""] * (len(head) - 2)) + " |")
    for variant in VARIANT_ORDER[1:]:
        cells = []
        for kd, t in SUMMARY_COLUMNS:
            g = [r for r in trs if row_variant(r) == variant and r["distill"] == kd
                 and r.get("target") is not None and math.isclose(float(r["target"]), t)]
            if not g:
                cells.append("")
                continue
            vals = [100 * r[main] for r in g]
            mean = sum(vals) / len(vals)
            cell = f"{mean:.1f}"
            if len(vals) > 1:
                cell += f" ± {(max(vals) - min(vals)) / 2:.1f}"
            rem = sum(r["remaining_weights"] for r in g) / len(g)
            if not math.isclose(rem, t, rel_tol=0.02):
                cell += f" @ {100 * rem:.1f}%"
            cells.append(cell)
        if any(cells):
            out.append(f"| {VARIANTS[variant].label} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


README_SECTION = "paper-grid"  # README.md's Results table: <!-- paper-grid:start/end -->


def readme_table(out) -> str:
    """README's Results table: ``summary_table`` of the committed ``OUT/results.csv``."""
    return summary_table(read_csv(Path(out) / "results.csv")).rstrip("\n")


def write_readme(out, readme, check: bool = False) -> bool:
    """Write README's Results table from ``OUT/results.csv`` (``check``: only compare); True
    when the README holds it."""
    text = Path(readme).read_text()
    new = replace_between_markers(text, readme_table(out), README_SECTION)
    if check:
        return between_markers(text, README_SECTION) == readme_table(out)
    Path(readme).write_text(new)
    return True


def report(rows, trials, out, command, device):
    """results.csv, lambda_trials.csv, results.md (table, variants, claims) and figure2.png
    under ``out``; returns the claims."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "results.csv", rows)
    write_csv(out / "lambda_trials.csv", trials)
    items = claims(rows)
    header = (f"<!-- written by {PROG}; do not edit -->\n"
              f"Command: `{command}`  \nDevice: {device}\n\n")
    if rows:
        body = [markdown_table(rows), "Variants:\n\n" + variants_note(rows) + "\n",
                "![metric against remaining encoder weights](figure2.png)\n\nSolid lines: "
                "without distillation; dashed, hollow markers: with; grey dashed with x "
                "markers: the random control; black: dense.\n", claims_markdown(items)]
    else:
        body = ["No finished runs under the runs directory yet.\n"]
    (out / "results.md").write_text(header + "\n".join(b for b in body if b))
    if rows:
        (out / "summary.md").write_text(header + summary_table(rows))
    plot(rows, out / "figure2.png", title=f"mvp_jax benchmarks.reproduce - {device}",
         trials=trials)
    return items
