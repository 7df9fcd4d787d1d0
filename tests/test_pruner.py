"""``Pruner``: the ``prune`` section read once, checked against hand-derived values (the paper's
cubic schedule and lambda, Top-v counts, |W| medians) rather than against the functions it
calls."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers_models import tiny_config

from mvp_jax.config import PruneConfig
from mvp_jax.models import build_module, param_shapes
from mvp_jax.models.layout import PRUNABLE
from mvp_jax.pruning import Pruner, masking, methods
from mvp_jax.tree import flatten, unflatten

FFN_IN = "bert/encoder/layer/0/intermediate/dense/kernel"


@pytest.fixture(scope="module")
def tiny():
    """2 layers, hidden 32, 4 heads of 8, FFN 37; parameters ~ N(0, 0.2^2)."""
    module = build_module(tiny_config(num_labels=2), "classification", 2)
    rng = np.random.default_rng(3)
    flat = {k: rng.normal(0, 0.2, s).astype(np.float32) for k, s in param_shapes(module).items()}
    return module, unflatten(flat)


def test_from_config_reads_the_section_and_the_models_heads(tiny):
    module, _ = tiny
    prune = PruneConfig(method="topk", granularity="hybrid", final_threshold=0.25,
                        mask_init="magnitude", mask_scale=2.0, global_topk=False)
    pruner = Pruner.from_config(prune, module, total_steps=100, warmup_steps=10)
    assert pruner.method is methods.get("topk")
    assert (pruner.num_heads, pruner.granularity, pruner.patterns) == (4, "hybrid", PRUNABLE)
    assert (pruner.total_steps, pruner.warmup_steps, pruner.final_threshold) == (100, 10, 0.25)
    assert pruner.structured and pruner.prunes and not pruner.penalized
    assert Pruner.from_config(prune, num_heads=6).num_heads == 6
    patterned = Pruner.from_config(PruneConfig(method="magnitude", patterns=["query"]))
    assert patterned.patterns == ("query",)
    hash(pruner)  # a frozen value: jitted functions may close over it


def test_threshold_is_the_papers_cubic_schedule_and_lambda_follows_it():
    """t(s) = t_f + (t_i - t_f)(1 - (s - a) / (T - a - b))^3 between the warm-ups a = 1 x 10
    and b = 2 x 10 steps, T = 100; lambda = final_lambda * t / t_f."""
    prune = PruneConfig(method="sigmoied_threshold", initial_threshold=0.0, final_threshold=0.1,
                        initial_warmup=1, final_warmup=2, regularization="l1", final_lambda=400.0,
                        mask_init="constant", mask_scale=0.0)
    pruner = Pruner.from_config(prune, total_steps=100, warmup_steps=10)
    for step, want in [(0, 0.0), (10, 0.0), (45, 0.1 - 0.1 * (1 - 35 / 70) ** 3),
                       (79, 0.1 - 0.1 * (1 - 69 / 70) ** 3), (80, 0.1), (81, 0.1), (100, 0.1)]:
        got = float(pruner.threshold(step))
        assert got == pytest.approx(want, abs=1e-6), step
        assert float(pruner.penalty_weight(got)) == pytest.approx(400.0 * got / 0.1, rel=1e-5)
    assert pruner.penalized
    traced = jax.jit(pruner.threshold)(jnp.int32(45))  # a traced step needs no recompilation
    assert float(traced) == pytest.approx(0.1 - 0.1 * 0.5 ** 3, abs=1e-6)
    plain = Pruner.from_config(PruneConfig(method="topk", final_threshold=0.1), total_steps=10)
    assert float(plain.penalty_weight(0.5)) == 0.0 and not plain.penalized


def test_final_masks_keep_the_top_v_of_each_matrix(tiny):
    """Magnitude at v = 0.5, local: each matrix keeps int(0.5 n) weights, those with |W| at or
    above the matrix's median; the dense recipe masks nothing."""
    module, params = tiny
    pruner = Pruner.from_config(PruneConfig(method="magnitude", final_threshold=0.5), module)
    masks = pruner.final_masks(params, None)
    weights = masking.prunable_weights(params)
    assert set(masks) == set(weights) and len(masks) == 12
    for path, m in masks.items():
        w = np.abs(np.asarray(weights[path]))
        assert int(np.sum(np.asarray(m) > 0)) == int(0.5 * w.size), path
        assert np.all(w[np.asarray(m) > 0] >= np.median(w) - 1e-7), path
    pruned = pruner.pruned(params, None)
    w = np.asarray(weights[FFN_IN])
    np.testing.assert_array_equal(np.asarray(masking.prunable_weights(pruned)[FFN_IN]),
                                  w * (np.asarray(masks[FFN_IN]) > 0))
    dense = Pruner.from_config(PruneConfig(method="none"), module)
    assert dense.final_masks(params, None) == {} and not dense.prunes


def test_hybrid_scores_and_masks_are_per_head_and_neuron(tiny):
    """Hybrid granularity at v = 0.5: int(0.5 x 4) = 2 heads of 8 columns and int(0.5 x 37) = 18
    neurons kept in every layer; learned scores start as one per unit."""
    module, params = tiny
    prune = PruneConfig(method="topk", granularity="hybrid", final_threshold=0.5,
                        mask_init="magnitude", mask_scale=2.0)
    pruner = Pruner.from_config(prune, module)
    scores = pruner.initial_scores(params)
    unit_shapes = sorted({tuple(np.shape(s)) for s in jax.tree_util.tree_leaves(scores)})
    assert unit_shapes == [(4,), (37,)]
    masks = pruner.final_masks(params, scores)
    query = np.asarray(masks["bert/encoder/layer/1/attention/self/query/kernel"]) > 0
    kept_columns = query.all(axis=0)
    assert kept_columns.sum() == 2 * 8 and (query.any(axis=0) == kept_columns).all()
    assert int((np.asarray(masks[FFN_IN]) > 0).all(axis=0).sum()) == 18


def test_initial_scores_of_the_random_control_are_its_fixed_draw(tiny):
    module, params = tiny
    pruner = Pruner.from_config(PruneConfig(method="random", final_threshold=0.3), module)
    scores = pruner.initial_scores(params)
    drawn = methods.get("random").draw_scores(masking.prunable_weights(params))
    flat = flatten(scores)
    assert set(flat) == set(drawn) and len(flat) == 12
    for p in drawn:
        np.testing.assert_array_equal(np.asarray(flat[p]), np.asarray(drawn[p]))
    assert not pruner.method.learns_scores
