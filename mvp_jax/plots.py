"""Plots of what pruning keeps: the paper's Figure 1, score distributions, remaining weights per
layer and matrix type, and how masks change over training.

Two kinds of functions:

* loaders that read a run directory written by ``fine_prune`` / ``mvp-jax fine-prune`` and
  return plain numpy arrays (``load_run_weights``, ``mask_history``, ``read_metrics``);
* plotting functions that take those arrays (or a ``counts`` dict of
  :func:`mvp_jax.export.huggingface.count_remaining`) and return a ``matplotlib`` figure; ``save_figure``
  writes it as a PNG, so figures can be looked at outside Jupyter.

The numbers behind the pictures come from plain functions too (``figure1_stats``,
``mask_flips``, ``overlap_with_final``, ``kept_per_layer``), so tests can check them.

JAX and the model code are imported only by the loaders.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from mvp_jax.errors import MissingFileError, UserError
from mvp_jax.export.matrices import layer_order, matrix_label, tally
from mvp_jax.pruning import methods
from mvp_jax.training import rundir

__all__ = [
    "RunWeights",
    "checkpoint_steps",
    "figure1",
    "figure1_stats",
    "kept_per_layer",
    "load_run_weights",
    "mask_dynamics",
    "mask_flips",
    "mask_history",
    "matrix_label",
    "movement_scatter",
    "overlap_with_final",
    "read_metrics",
    "remaining_grid",
    "remaining_heatmap",
    "save_figure",
    "save_remaining_heatmap",
    "score_histograms",
    "training_curves",
    "weights_scatter",
]

KEPT_COLORS = ("tab:blue", "tab:red", "tab:green", "tab:purple")
PRUNED_COLOR = "0.72"

def _layer_of(path: str) -> str:
    return matrix_label(path)[0]


# ----------------------------------------------------------------------------------------------
# Loading runs
# ----------------------------------------------------------------------------------------------


@dataclass
class RunWeights:
    """The prunable matrices of one run, as numpy arrays keyed by '/'-joined parameter path.

    ``pretrained``: values before fine-pruning; ``final``: fine-pruned values (before masking);
    ``masks``: the final deterministic masks (bool); ``scores``: the importance scores the masks
    were selected from (learned scores, or ``|W|`` for magnitude pruning).
    """

    run_dir: str
    method: str
    step: int
    keep: float
    pretrained: dict[str, np.ndarray]
    final: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]

    @property
    def paths(self) -> list[str]:
        return list(self.masks)

    def concat(self, which: str, paths: Sequence[str] | None = None) -> np.ndarray:
        """All matrices' values of ``which`` (a field name) flattened and concatenated."""
        tree = getattr(self, which)
        return np.concatenate([np.ravel(tree[p]) for p in (paths or self.paths)])


def _final_masks_fn(pruner):
    """``(params, scores) -> {path: bool array}``: a run's final masks (``Pruner.final_masks``),
    in one compiled program."""
    import jax

    compiled = jax.jit(pruner.final_masks)

    def final_masks(params, scores):
        return {p: np.asarray(m) > 0 for p, m in jax.device_get(compiled(params, scores)).items()}

    return final_masks


def load_run_weights(run_dir: str) -> RunWeights:
    """Pretrained and fine-pruned values, final masks and scores of a run's latest checkpoint."""
    import jax

    from mvp_jax import tree
    from mvp_jax.pruning import structured
    from mvp_jax.pruning.pruner import Pruner

    run = rundir.restore_run(os.fspath(run_dir), pretrained=True)
    pruner = Pruner.from_config(run.cfg.prune, run.pretrained.module)
    method = pruner.method
    masks = _final_masks_fn(pruner)(run.params, run.scores)
    flat_pre = tree.flatten(jax.device_get(run.pretrained.params))
    flat_fin = tree.flatten(run.params)
    # what the masks were selected from: the learned scores (a unit's score for each of its
    # weights), or |W|
    learned = tree.flatten(run.scores) if method.learns_scores else {}
    learned = structured.expand(learned, run.params)
    flat_scores = {p: learned.get(p, np.abs(flat_fin[p])) for p in masks}
    return RunWeights(
        run_dir=os.fspath(run_dir), method=method.name, step=run.step,
        keep=pruner.final_threshold,
        pretrained={p: np.asarray(flat_pre[p]) for p in masks},
        final={p: np.asarray(flat_fin[p]) for p in masks}, masks=masks,
        scores={p: np.asarray(flat_scores[p]) for p in masks})


def checkpoint_steps(run_dir: str) -> list[int]:
    """Steps of the checkpoints kept in ``run_dir/checkpoints``, ascending."""
    return rundir.checkpoint_steps(os.fspath(run_dir))


def mask_history(run_dir: str, steps: Sequence[int] | None = None
                 ) -> tuple[list[int], list[dict[str, np.ndarray]]]:
    """Final-style masks (the final keep fraction applied to the scores, or to ``|W|``, of each
    checkpoint) for every checkpoint of a run, or for ``steps``.

    Returns ``(steps, masks)``, ``masks[i]`` a ``{path: bool array}`` dict. Save checkpoints
    often (``train.save_every``) and keep them (``train.keep_checkpoints``) to see more steps.
    """
    run_dir = os.fspath(run_dir)
    available = checkpoint_steps(run_dir)
    steps = available if steps is None else [int(s) for s in steps]
    missing = sorted(set(steps) - set(available))
    if missing:
        raise MissingFileError(f"{run_dir}: no checkpoint for steps {missing}; "
                                f"available: {available}")
    from mvp_jax.models import load_model_config, resolve_model_path
    from mvp_jax.pruning.pruner import Pruner

    cfg = rundir.load_run_config(run_dir)
    heads = load_model_config(resolve_model_path(cfg.model.name)).num_attention_heads
    final_masks = _final_masks_fn(Pruner.from_config(cfg.prune, num_heads=heads))
    history = []
    for step in steps:
        saved = rundir.read_checkpoint(run_dir, ("params", "scores"), step)
        history.append(final_masks(saved["params"], saved.get("scores") or {}))
    return steps, history


def read_metrics(run_dir: str) -> list[dict]:
    """The records of ``run_dir/metrics.jsonl`` (one dict per logged step or evaluation)."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


# ----------------------------------------------------------------------------------------------
# Numbers behind the pictures
# ----------------------------------------------------------------------------------------------


def figure1_stats(pretrained: Mapping[str, np.ndarray], final: Mapping[str, np.ndarray],
                  masks: Mapping[str, np.ndarray]) -> dict:
    """What a mask selected, relative to the pretrained and final values.

    * ``outward_kept`` / ``outward_pruned``: fraction of kept / pruned weights with
      ``|W_final| > |W_pretrained|`` (moved away from zero). Movement pruning keeps the weights
      that move away from zero: the first is much larger than the second.
    * ``separated``: in every matrix, ``min |W_final|`` of kept weights ``>=`` ``max |W_final|``
      of pruned ones (what Top-v of ``|W|`` per matrix guarantees); ``separated_global``: the
      same over all matrices together (a global Top-v).
    * ``kept_fraction``, ``kept_abs_pretrained`` / ``pruned_abs_pretrained`` (mean ``|W|``
      before fine-pruning), ``mean_abs_change_kept`` / ``mean_abs_change_pruned``.
    """
    out_k = out_p = n_k = n_p = 0
    abs0_k = abs0_p = d_k = d_p = 0.0
    separated = True
    min_kept, max_pruned = np.inf, -np.inf
    for path, m in masks.items():
        m = np.asarray(m, bool)
        w0, w1 = np.asarray(pretrained[path]), np.asarray(final[path])
        outward = np.abs(w1) > np.abs(w0)
        out_k += int(outward[m].sum())
        out_p += int(outward[~m].sum())
        n_k, n_p = n_k + int(m.sum()), n_p + int((~m).sum())
        abs0_k += float(np.abs(w0[m]).sum())
        abs0_p += float(np.abs(w0[~m]).sum())
        d_k += float(np.abs(w1 - w0)[m].sum())
        d_p += float(np.abs(w1 - w0)[~m].sum())
        if m.any() and (~m).any():
            lo, hi = float(np.abs(w1[m]).min()), float(np.abs(w1[~m]).max())
            separated &= lo >= hi
            min_kept, max_pruned = min(min_kept, lo), max(max_pruned, hi)

    def ratio(a, b):
        return a / b if b else float("nan")

    return {
        "kept": n_k, "pruned": n_p, "kept_fraction": ratio(n_k, n_k + n_p),
        "outward_kept": ratio(out_k, n_k), "outward_pruned": ratio(out_p, n_p),
        "separated": bool(separated), "separated_global": bool(min_kept >= max_pruned),
        "min_abs_kept": float(min_kept), "max_abs_pruned": float(max_pruned),
        "kept_abs_pretrained": ratio(abs0_k, n_k), "pruned_abs_pretrained": ratio(abs0_p, n_p),
        "mean_abs_change_kept": ratio(d_k, n_k), "mean_abs_change_pruned": ratio(d_p, n_p),
    }


def _per_layer(masks: Mapping[str, np.ndarray]) -> dict[str, list[str]]:
    layers: dict[str, list[str]] = {}
    for path in masks:
        layers.setdefault(_layer_of(path), []).append(path)
    return {layer: layers[layer] for layer in sorted(layers, key=layer_order)}


def mask_flips(history: Sequence[Mapping[str, np.ndarray]], by_layer: bool = False):
    """Fraction of mask entries that changed between consecutive masks: ``len(history) - 1``
    values (``{layer: values}`` with ``by_layer``)."""
    def flips(paths):
        total = sum(np.size(history[0][p]) for p in paths)
        return np.array([sum(int(np.count_nonzero(a[p] != b[p])) for p in paths) / total
                         for a, b in pairwise(history)])

    if not history:
        return {} if by_layer else np.zeros(0)
    if by_layer:
        return {layer: flips(paths) for layer, paths in _per_layer(history[0]).items()}
    return flips(list(history[0]))


def overlap_with_final(history: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per layer, the fraction of the last mask's kept weights already kept in each mask."""
    last = history[-1]
    out = {}
    for layer, paths in _per_layer(last).items():
        kept = sum(int(last[p].sum()) for p in paths)
        out[layer] = np.array([sum(int(np.count_nonzero(h[p] & last[p])) for p in paths)
                               / max(kept, 1) for h in history])
    return out


def kept_per_layer(history: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per layer, the fraction of weights kept by each mask (varies only with a global Top-v)."""
    out = {}
    for layer, paths in _per_layer(history[0]).items():
        total = sum(np.size(history[0][p]) for p in paths)
        out[layer] = np.array([sum(int(h[p].sum()) for p in paths) / total for h in history])
    return out


def remaining_grid(counts: Mapping) -> tuple[list[str], list[str], np.ndarray]:
    """``(layers, types, fraction[layer, type])`` from a ``count_remaining`` dict (NaN where a
    layer has no matrix of that type)."""
    layers, types, cells = tally(counts)
    grid = np.full((len(layers), len(types)), np.nan)
    for (layer, kind), (r, t) in cells.items():
        grid[layers.index(layer), types.index(kind)] = r / t if t else np.nan
    return layers, types, grid


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------


def _plt():
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str, dpi: int = 110) -> str:
    """Write ``fig`` as a PNG (parent folders created); returns the path."""
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
    ext = os.path.splitext(os.fspath(path))[1].lstrip(".").lower()
    formats = fig.canvas.get_supported_filetypes()
    if ext not in formats:
        kind = repr(ext) if ext else "a file without an extension"
        raise UserError(f"{path}: cannot write a figure as {kind}; use one of "
                        f"{', '.join(sorted(formats))}")
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return os.fspath(path)


def _sample(n: int, max_points: int | None, seed: int) -> np.ndarray:
    if max_points is None or n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def _symmetric_limit(*arrays, quantile: float = 0.999) -> float:
    values = np.concatenate([np.abs(np.ravel(a)) for a in arrays])
    return float(np.quantile(values, quantile)) * 1.05 if values.size else 1.0


def weights_scatter(ax, pretrained: np.ndarray, final: np.ndarray, mask: np.ndarray, *,
                    title: str = "", color: str = KEPT_COLORS[0], max_points: int | None = 30000,
                    seed: int = 0, limit: float | None = None):
    """Fine-pruned against pretrained values on ``ax``: kept weights in ``color``, pruned in
    grey, the identity line in black (the paper's Figure 1). Returns ``ax``."""
    w0, w1 = np.ravel(pretrained), np.ravel(final)
    m = np.ravel(np.asarray(mask, bool))
    idx = _sample(w0.size, max_points, seed)
    w0, w1, m = w0[idx], w1[idx], m[idx]
    lim = limit or _symmetric_limit(w0, w1)
    ax.scatter(w0[~m], w1[~m], s=1.5, c=PRUNED_COLOR, lw=0, rasterized=True,
               label=f"pruned ({100 * (~m).mean():.0f}%)")
    ax.scatter(w0[m], w1[m], s=1.5, c=color, lw=0, rasterized=True,
               label=f"kept ({100 * m.mean():.0f}%)")
    ax.plot([-lim, lim], [-lim, lim], color="black", lw=0.8)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xlabel("pretrained value")
    ax.set_ylabel("fine-pruned value")
    ax.set_title(title)
    ax.legend(loc="upper left", markerscale=6, fontsize=8, frameon=False)
    return ax


def _select(run: RunWeights, paths: Sequence[str] | str | None):
    if paths is None:
        paths = run.paths
    elif isinstance(paths, str):
        pattern, paths = paths, [p for p in run.paths if re.search(paths, p)]
        if not paths:
            raise UserError(f"no prunable matrix of {run.run_dir} matches {pattern!r}")
    return [run.concat(k, paths) for k in ("pretrained", "final", "masks")]


def _method(name: str):
    """The ``mvp_jax.pruning.methods`` object of ``name``, None for a name it does not know."""
    try:
        return methods.get(name)
    except UserError:
        return None


def _method_title(run: RunWeights) -> str:
    label = getattr(_method(run.method), "label", run.method)
    return f"{label} ({100 * run.keep:.0f}% kept, step {run.step})"


def figure1(runs: Sequence[RunWeights], *, paths: Sequence[str] | str | None = None,
            max_points: int | None = 30000, seed: int = 0, suptitle: str | None = None,
            quantile: float = 0.995):
    """The paper's Figure 1 for your runs: one weights-vs-pretrained panel per run, side by
    side, on shared axes. ``paths``: the matrices to plot (a list, or a regex); default all
    prunable matrices (subsampled to ``max_points`` points per panel). The axes span the
    ``quantile`` of ``|W|``: lower it to zoom in on the bulk of the weights."""
    plt = _plt()
    data = [_select(r, paths) for r in runs]
    lim = max(_symmetric_limit(w0, w1, quantile=quantile) for w0, w1, _ in data)
    fig, axes = plt.subplots(1, len(runs), figsize=(4.6 * len(runs), 4.6), squeeze=False)
    for i, (run, (w0, w1, m)) in enumerate(zip(runs, data)):
        weights_scatter(axes[0, i], w0, w1, m, title=_method_title(run),
                        color=KEPT_COLORS[i % len(KEPT_COLORS)], max_points=max_points,
                        seed=seed, limit=lim)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def movement_scatter(runs: Sequence[RunWeights], *, paths: Sequence[str] | str | None = None,
                     max_points: int | None = 30000, seed: int = 0):
    """Change of magnitude ``|W_final| - |W_pretrained|`` against the pretrained value, kept in
    colour, pruned in grey: above zero = moved away from zero. A zoom on Figure 1's diagonal."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(runs), figsize=(4.6 * len(runs), 3.6), squeeze=False,
                             sharey=True)
    data = [_select(r, paths) for r in runs]
    xlim = max(_symmetric_limit(w0) for w0, _, _ in data)
    ylim = max(_symmetric_limit(np.abs(w1) - np.abs(w0)) for w0, w1, _ in data)
    for i, (run, (w0, w1, m)) in enumerate(zip(runs, data)):
        ax = axes[0, i]
        idx = _sample(w0.size, max_points, seed)
        w0, w1, m = w0[idx], w1[idx], m[idx].astype(bool)
        d = np.abs(w1) - np.abs(w0)
        ax.scatter(w0[~m], d[~m], s=1.5, c=PRUNED_COLOR, lw=0, rasterized=True, label="pruned")
        ax.scatter(w0[m], d[m], s=1.5, c=KEPT_COLORS[i % len(KEPT_COLORS)], lw=0,
                   rasterized=True, label="kept")
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xlim(-xlim, xlim)
        ax.set_ylim(-ylim, ylim)
        ax.set_xlabel("pretrained value")
        ax.set_title(_method_title(run), fontsize=10)
        ax.legend(loc="upper left", markerscale=6, fontsize=8, frameon=False)
    axes[0, 0].set_ylabel("|fine-pruned| - |pretrained|")
    fig.tight_layout()
    return fig


def score_histograms(runs: Sequence[RunWeights], *, bins: int = 120):
    """Distribution of the importance scores of each run (learned S, or |W| for magnitude),
    kept and pruned weights stacked, log counts; the central 99.9% of the scores."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(runs), figsize=(4.6 * len(runs), 3.4), squeeze=False)
    for i, run in enumerate(runs):
        ax = axes[0, i]
        s, m = run.concat("scores"), run.concat("masks").astype(bool)
        lo, hi = np.quantile(s, [0.0005, 0.9995])
        edges = np.linspace(lo, hi, bins + 1)
        inside = (s >= lo) & (s <= hi)  # the central 99.9%: a few outliers would squash the rest
        ax.hist([s[~m & inside], s[m & inside]], bins=edges, stacked=True,
                color=[PRUNED_COLOR, KEPT_COLORS[i % len(KEPT_COLORS)]], label=["pruned", "kept"])
        ax.set_yscale("log")
        learned = getattr(_method(run.method), "learns_scores", True)
        ax.set_xlabel("learned score S" if learned else "|W| (magnitude score)")
        ax.set_ylabel("weights")
        ax.set_title(_method_title(run), fontsize=10)
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def remaining_heatmap(counts: Mapping, *, title: str | None = None, ax=None,
                      vmax: float | None = None):
    """Remaining weights (percent) per layer (rows) and matrix type (columns) of a
    ``count_remaining`` dict / ``counts.json``, annotated; returns the figure."""
    layers, types, grid = remaining_grid(counts)
    if ax is None:
        fig, ax = _plt().subplots(figsize=_heatmap_size(layers, types))
    else:
        fig = ax.figure
    pct = 100.0 * grid
    vmax = vmax if vmax is not None else max(float(np.nanmax(pct)) if pct.size else 100.0, 1e-9)
    im = ax.imshow(pct, cmap="viridis", vmin=0.0, vmax=vmax, aspect="auto")
    for (r, c), v in np.ndenumerate(pct):
        if np.isfinite(v):
            ax.text(c, r, f"{v:.1f}", ha="center", va="center", fontsize=8,
                    color="white" if v < 0.6 * vmax else "black")
    ax.set_xticks(range(len(types)), types, rotation=30, ha="right")
    ax.set_yticks(range(len(layers)), layers)
    ax.set_xlabel("matrix")
    ax.set_ylabel("layer")
    total = 100.0 * counts.get("fraction", np.nan)
    ax.set_title(title or f"remaining weights (%), {total:.2f}% overall")
    fig.colorbar(im, ax=ax, label="% remaining")
    fig.tight_layout()
    return fig


def _heatmap_size(layers, types) -> tuple[float, float]:
    return 1.0 * len(types) + 2.2, 0.42 * len(layers) + 1.6


def save_remaining_heatmap(counts: Mapping, path: str, *, title: str | None = None) -> str:
    """:func:`remaining_heatmap` written to ``path`` without pyplot (no GUI backend, no global
    figure state: safe in scripts and in the command line); returns the path."""
    from matplotlib.figure import Figure

    layers, types, _ = remaining_grid(counts)
    fig = Figure(figsize=_heatmap_size(layers, types))
    remaining_heatmap(counts, ax=fig.subplots(), title=title)
    return save_figure(fig, path)


def _layer_lines(ax, steps, per_layer: Mapping[str, np.ndarray], ylabel: str, title: str):
    cmap = _plt().get_cmap("viridis")
    n = max(len(per_layer) - 1, 1)
    for i, (layer, values) in enumerate(per_layer.items()):
        ax.plot(steps, 100.0 * np.asarray(values), marker="o", ms=3, color=cmap(i / n),
                label=f"layer {layer}")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)


def mask_dynamics(steps: Sequence[int], history: Sequence[Mapping[str, np.ndarray]], *,
                  title: str | None = None):
    """How final-style masks change over training, from a run's checkpoints: fraction of mask
    flips between consecutive checkpoints (all and per layer), the fraction of the final mask
    already kept at each step, and the kept fraction per layer (constant for a local Top-v)."""
    plt = _plt()
    steps = list(steps)
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    mid = [(a + b) / 2 for a, b in pairwise(steps)]
    ax = axes[0]
    if len(history) > 1:
        _layer_lines(ax, mid, mask_flips(history, by_layer=True), "", "")
        ax.plot(mid, 100.0 * mask_flips(history), color="black", lw=2, label="all")
    ax.set_ylabel("% of entries flipped")
    ax.set_title("mask flips between consecutive checkpoints", fontsize=10)
    ax.legend(fontsize=7, frameon=False, ncol=2)
    _layer_lines(axes[1], steps, overlap_with_final(history), "% of final kept weights",
                 "final mask already kept at step t")
    _layer_lines(axes[2], steps, kept_per_layer(history), "% kept",
                 "kept per layer (final keep fraction)")
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def training_curves(runs: Mapping[str, str]):
    """Loss and remaining weights over steps of runs ``{label: run_dir}`` (from metrics.jsonl)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for i, (label, run_dir) in enumerate(runs.items()):
        recs = [r for r in read_metrics(run_dir) if "loss" in r]
        steps = [r["step"] for r in recs]
        color = KEPT_COLORS[i % len(KEPT_COLORS)]
        axes[0].plot(steps, [r["loss"] for r in recs], color=color, label=label)
        axes[1].plot(steps, [100 * r["remaining_weights"] for r in recs], color=color, label=label)
    axes[0].set_ylabel("training loss")
    axes[1].set_ylabel("% remaining (training mask)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig
