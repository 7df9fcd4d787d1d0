"""mvp_jax.plots: the numbers behind the figures on constructed masks, the figures themselves
(saved, right artists), and `mvp-jax count --plot`."""

import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

from mvp_jax import plots
from mvp_jax.export.matrices import MATRIX_TYPES

PATHS = [f"bert/encoder/layer/{i}/{m}/kernel" for i in range(2)
         for m in ("attention/self/query", "intermediate/dense")]


def fine_tuned(seed=0, shape=(48, 32)):
    """Pretrained weights and fine-tuned ones that moved a little, per matrix."""
    rng = np.random.default_rng(seed)
    pre, fin = {}, {}
    for p in PATHS:
        pre[p] = rng.normal(0, 0.05, shape).astype(np.float32)
        fin[p] = pre[p] + rng.normal(0, 0.005, shape).astype(np.float32)
    return pre, fin


def topk(values, keep):
    k = int(keep * values.size)
    thresh = np.sort(values.ravel())[-k]
    return values >= thresh


def test_figure1_stats_magnitude_and_movement_selections():
    pre, fin = fine_tuned()
    magnitude = {p: topk(np.abs(fin[p]), 0.1) for p in PATHS}
    movement = {p: topk(np.abs(fin[p]) - np.abs(pre[p]), 0.1) for p in PATHS}

    s = plots.figure1_stats(pre, fin, magnitude)
    assert s["separated"]
    assert s["min_abs_kept"] >= 0 and s["kept_fraction"] == pytest.approx(0.1, abs=0.01)
    assert s["kept_abs_pretrained"] > 2 * s["pruned_abs_pretrained"]

    s = plots.figure1_stats(pre, fin, movement)
    assert s["outward_kept"] == 1.0
    assert s["outward_pruned"] < 0.5
    assert not s["separated"]
    assert s["kept_abs_pretrained"] == pytest.approx(s["pruned_abs_pretrained"], rel=0.35)

    # exact counts on a hand-made case
    pre1 = {"m": np.array([0.1, -0.2, 0.3, -0.4])}
    fin1 = {"m": np.array([0.2, -0.1, 0.35, -0.5])}
    s = plots.figure1_stats(pre1, fin1, {"m": np.array([True, False, False, True])})
    assert s["kept"] == 2 and s["pruned"] == 2
    assert s["outward_kept"] == 1.0 and s["outward_pruned"] == 0.5
    assert s["min_abs_kept"] == pytest.approx(0.2) and s["max_abs_pruned"] == pytest.approx(0.35)
    assert s["separated"] is False
    assert s["mean_abs_change_kept"] == pytest.approx(0.1)


def test_separated_per_matrix_vs_global():
    pre = {"a": np.array([1.0, 2.0]), "b": np.array([10.0, 20.0])}
    masks = {"a": np.array([False, True]), "b": np.array([False, True])}  # local top-1
    s = plots.figure1_stats(pre, pre, masks)
    assert s["separated"] and not s["separated_global"]
    s = plots.figure1_stats(pre, pre, {"a": np.array([False, False]), "b": np.array([True, True])})
    assert s["separated"] and s["separated_global"]


def test_mask_flips_overlap_kept_per_layer():
    p0, p1 = "encoder/layer/0/output/dense/kernel", "encoder/layer/1/output/dense/kernel"
    h = [
        {p0: np.array([1, 1, 0, 0], bool), p1: np.array([1, 0, 0, 0], bool)},
        {p0: np.array([1, 0, 1, 0], bool), p1: np.array([1, 0, 0, 0], bool)},
        {p0: np.array([0, 0, 1, 1], bool), p1: np.array([1, 1, 0, 0], bool)},
    ]
    np.testing.assert_allclose(plots.mask_flips(h), [2 / 8, 3 / 8])
    by_layer = plots.mask_flips(h, by_layer=True)
    assert list(by_layer) == ["0", "1"]
    np.testing.assert_allclose(by_layer["0"], [2 / 4, 2 / 4])
    np.testing.assert_allclose(by_layer["1"], [0, 1 / 4])
    overlap = plots.overlap_with_final(h)
    np.testing.assert_allclose(overlap["0"], [0, 1 / 2, 1])
    np.testing.assert_allclose(overlap["1"], [1 / 2, 1 / 2, 1])
    kept = plots.kept_per_layer(h)
    np.testing.assert_allclose(kept["0"], [1 / 2, 1 / 2, 1 / 2])
    np.testing.assert_allclose(kept["1"], [1 / 4, 1 / 4, 1 / 2])
    assert len(plots.mask_flips(h[:1])) == 0


def counts_for(fractions):
    """A count_remaining-style dict, {layer: {short type: fraction}} -> matrices."""
    long = {v: k for k, v in MATRIX_TYPES.items()}
    matrices = {}
    for layer, row in fractions.items():
        for kind, f in row.items():
            matrices[f"bert/encoder/layer/{layer}/{long[kind]}/kernel"] = {
                "remaining": round(f * 1000), "total": 1000}
    rem = sum(m["remaining"] for m in matrices.values())
    tot = sum(m["total"] for m in matrices.values())
    return {"matrices": matrices, "remaining": rem, "total": tot, "fraction": rem / tot}


def test_remaining_grid_orders_layers_and_types():
    counts = counts_for({"10": {"ffn_out": 0.1, "query": 0.2}, "2": {"key": 0.5, "query": 0.3}})
    layers, types, grid = plots.remaining_grid(counts)
    assert layers == ["2", "10"]
    assert types == ["query", "key", "ffn_out"]
    np.testing.assert_allclose(grid, [[0.3, 0.5, np.nan], [0.2, np.nan, 0.1]])
    assert plots.matrix_label("bert/encoder/layer/3/intermediate/dense/kernel") == ("3", "ffn_in")
    assert plots.matrix_label("classifier/kernel") == ("classifier/kernel", "matrix")


def run_weights(method, masks, pre, fin):
    scores = {p: np.abs(fin[p]) for p in masks}
    return plots.RunWeights("run", method, 100, 0.1, pre, fin, masks, scores)


def test_figures_are_saved_with_grey_pruned_and_identity_line(tmp_path):
    pre, fin = fine_tuned()
    runs = [run_weights("magnitude", {p: topk(np.abs(fin[p]), 0.1) for p in PATHS}, pre, fin),
            run_weights("topk", {p: topk(np.abs(fin[p]) - np.abs(pre[p]), 0.1) for p in PATHS},
                        pre, fin)]
    fig = plots.figure1(runs, max_points=1000)
    ax = fig.axes[0]
    pruned, kept = ax.collections
    assert len(pruned.get_offsets()) + len(kept.get_offsets()) == 1000
    np.testing.assert_allclose(pruned.get_facecolor()[0][:3], matplotlib.colors.to_rgb(
        plots.PRUNED_COLOR))
    (line,) = ax.lines
    x, y = line.get_data()
    np.testing.assert_allclose(x, y)  # identity
    assert matplotlib.colors.to_rgb(line.get_color()) == (0, 0, 0)
    assert "Magnitude" in ax.get_title() and "Movement" in fig.axes[1].get_title()
    out = plots.save_figure(fig, str(tmp_path / "sub" / "fig1.png"))
    assert (tmp_path / "sub" / "fig1.png").stat().st_size > 10_000 and out.endswith("fig1.png")

    fig = plots.figure1(runs, paths=r"layer/0/intermediate", max_points=None)
    assert len(fig.axes[0].collections[0].get_offsets()) + len(
        fig.axes[0].collections[1].get_offsets()) == 48 * 32
    with pytest.raises(ValueError, match="no prunable matrix"):
        plots.figure1(runs, paths="nothing-matches")

    for name, f in [("move", plots.movement_scatter(runs)), ("scores", plots.score_histograms(runs)),
                    ("heat", plots.remaining_heatmap(counts_for({"0": {"query": 0.1}})))]:
        plots.save_figure(f, str(tmp_path / f"{name}.png"))
        assert (tmp_path / f"{name}.png").stat().st_size > 5_000
    h = [runs[1].masks, runs[0].masks, runs[0].masks]
    fig = plots.mask_dynamics([10, 20, 30], h, title="t")
    plots.save_figure(fig, str(tmp_path / "dyn.png"))
    plt.close("all")


def test_save_remaining_heatmap_without_pyplot(tmp_path):
    before = plt.get_fignums()
    path = plots.save_remaining_heatmap(counts_for({"0": {"query": 0.1, "key": 0.9}}),
                                        str(tmp_path / "h.png"), title="x")
    assert (tmp_path / "h.png").stat().st_size > 3_000 and path.endswith("h.png")
    assert plt.get_fignums() == before  # no pyplot figure left behind


def test_cli_count_plot(tmp_path, capsys):
    """`mvp-jax count DIR --plot FILE` on an exported, locally magnitude-pruned MiniLM."""
    import jax

    from mvp_jax.cli import main
    from mvp_jax.export.huggingface import export_hf
    from mvp_jax.models import load_pretrained
    from mvp_jax.pruning import masking

    pre = load_pretrained("minilm-l6", head=None)
    masked = jax.device_get(masking.apply_masks(pre.params, method="magnitude", threshold=0.3))
    model_dir = tmp_path / "pruned"
    export_hf(str(model_dir), masked, pre.config, None, tokenizer_path=pre.path)

    png = tmp_path / "plots" / "remaining.png"
    assert main(["count", str(model_dir), "--json", "--plot", str(png)]) == 0
    out, err = capsys.readouterr()
    counts = json.loads(out)  # stdout stays pure JSON
    assert "heatmap written" in err
    assert png.stat().st_size > 5_000
    layers, types, grid = plots.remaining_grid(counts)
    assert layers == [str(i) for i in range(6)] and len(types) == 6
    np.testing.assert_allclose(grid, 0.3, atol=1e-4)

    assert main(["count", str(model_dir), "--plot", str(tmp_path / "bad.notaformat")]) == 2
    assert "error" in capsys.readouterr().err
