"""Masks, straight-through gradients (paper Eq. 2) and sort-free k-th value selection."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mvp_jax import tree
from mvp_jax.pruning import binarizers
from mvp_jax.pruning import masking as m

KEY = jax.random.PRNGKey(0)


# --- kth_largest --------------------------------------------------------------------------------

floats = st.one_of(
    st.floats(width=32, allow_nan=False, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e-38, -1e-38, 3.0]),  # zeros, denormal-ish, duplicates
)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, st.integers(1, 300), elements=floats), st.data())
def test_kth_largest_equals_sorted(x, data):
    k = data.draw(st.integers(1, x.size))
    expected = np.sort(x)[-k]
    got = np.asarray(m.kth_largest(jnp.asarray(x), k))
    assert got == expected  # -0.0 == 0.0, as a sort sees them


@settings(max_examples=25, deadline=None)
@given(st.lists(hnp.arrays(np.float32, st.integers(1, 50), elements=floats), min_size=1, max_size=4), st.data())
def test_kth_largest_global_over_pytree(leaves, data):
    allv = np.concatenate(leaves)
    k = data.draw(st.integers(1, allv.size))
    tree = {f"m{i}": jnp.asarray(v) for i, v in enumerate(leaves)}
    assert np.asarray(m.kth_largest(tree, k)) == np.sort(allv)[-k]


def test_kth_largest_small_k_over_large_array_and_traced_k():
    x = jax.random.normal(KEY, (200_000,))
    s = np.sort(np.asarray(x))
    for k in (1, 2, 17):
        assert float(m.kth_largest(x, k)) == s[-k]
    f = jax.jit(m.kth_largest)
    assert float(f(x, jnp.int32(100_000))) == s[-100_000]


# --- topk_mask -----------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0.005, 0.1, 0.15, 0.5, 0.999, 1.0])
@pytest.mark.parametrize(
    "make",
    [
        lambda: jax.random.normal(KEY, (37, 53)),
        lambda: jnp.round(jax.random.normal(KEY, (37, 53)) * 2),  # many ties
        lambda: jnp.zeros((37, 53)),  # all equal
    ],
    ids=["random", "tied", "constant"],
)
def test_topk_keeps_exact_count_locally(make, keep):
    s = make()
    mask = m.topk_mask(s, keep)
    assert int(mask.sum()) == int(keep * s.size)
    assert set(np.unique(np.asarray(mask))) <= {0.0, 1.0}
    kept, dropped = np.asarray(s)[np.asarray(mask) == 1], np.asarray(s)[np.asarray(mask) == 0]
    if kept.size and dropped.size:
        assert kept.min() >= dropped.max()  # the kept ones are the highest


@pytest.mark.parametrize("keep", [0.03, 0.1, 0.5])
def test_topk_keeps_exact_count_globally(keep):
    tree = {
        "a": jax.random.normal(KEY, (20, 30)),
        "b": jnp.round(3 * jax.random.normal(jax.random.PRNGKey(1), (7, 11))),
        "c": jnp.zeros((5, 9)),
    }
    masks = m.topk_mask(tree, keep)
    total = sum(v.size for v in tree.values())
    assert sum(int(v.sum()) for v in masks.values()) == int(keep * total)
    # one threshold: every kept score >= every dropped score across matrices
    s = np.concatenate([np.ravel(tree[k]) for k in "abc"])
    mk = np.concatenate([np.ravel(masks[k]) for k in "abc"])
    assert s[mk == 1].min() >= s[mk == 0].max()


def reference_topk_masks(leaves, k):
    """Independent reference: a stable sort by (-value, leaf, row-major index), first k kept."""
    flat = np.concatenate([np.ravel(x) for x in leaves])
    order = np.argsort(-flat, kind="stable")  # stable: ties keep (leaf, index) order
    keep = np.zeros(flat.size, bool)
    keep[order[:k]] = True
    out, start = [], 0
    for x in leaves:
        out.append(keep[start:start + np.size(x)].reshape(np.shape(x)))
        start += np.size(x)
    return out


@settings(max_examples=40, deadline=None)
@given(st.lists(hnp.array_shapes(min_dims=1, max_dims=3, max_side=9), min_size=1, max_size=4),
       st.integers(1, 4), st.data())
def test_topk_ties_are_split_by_position_like_a_stable_sort(shapes, levels, data):
    """Few distinct values (many ties): exactly the entries a stable descending sort keeps."""
    leaves = [data.draw(hnp.arrays(np.float32, s, elements=st.integers(0, levels).map(float)))
              for s in shapes]
    total = sum(x.size for x in leaves)
    k = data.draw(st.integers(0, total))
    got = binarizers._topk_binarize_leaves([jnp.asarray(x) for x in leaves], k)
    for g, want in zip(got, reference_topk_masks(leaves, k)):
        np.testing.assert_array_equal(np.asarray(g) == 1, want)


def test_topk_traced_keep_inside_jit_no_recompile():
    s = jax.random.normal(KEY, (64, 64))
    f = jax.jit(lambda s, keep: m.topk_mask(s, keep).sum())
    assert int(f(s, 0.25)) == 1024
    assert int(f(s, 0.5)) == 2048
    assert f._cache_size() == 1


def test_keep_out_of_range_is_value_error():
    for keep in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"outside \(0, 1\]"):
            m.topk_mask(jnp.ones(10), keep)
        with pytest.raises(ValueError, match=r"outside \(0, 1\]"):
            m.magnitude_mask(jnp.ones(10), keep)


# --- straight-through gradient: paper Eq. (2) --------------------------------------------------


@pytest.mark.parametrize("kind", ["topk", "threshold", "threshold_raw"])
def test_straight_through_gradient_is_eq2(kind):
    """a = (W*M(S)) x, L = sum(c * a): dL/d(W*M) = outer(c, x) (hand-derived), so
    dL/dS = outer(c, x) * W and dL/dW = outer(c, x) * M."""
    k1, k2, k3, k4 = jax.random.split(KEY, 4)
    W = jax.random.normal(k1, (6, 5))
    S = jax.random.normal(k2, (6, 5))
    x = jax.random.normal(k3, (5,))
    c = jax.random.normal(k4, (6,))
    mask_fn = {
        "topk": lambda s: m.topk_mask(s, 0.4),
        "threshold": lambda s: m.threshold_mask(s, 0.5, sigmoid=True),
        "threshold_raw": lambda s: m.threshold_mask(s, 0.1, sigmoid=False),
    }[kind]

    def loss(W, S):
        return jnp.sum(c * ((W * mask_fn(S)) @ x))

    gW, gS = jax.grad(loss, argnums=(0, 1))(W, S)
    M = np.asarray(mask_fn(S))
    dL_dWM = np.outer(np.asarray(c), np.asarray(x))
    np.testing.assert_allclose(gS, dL_dWM * np.asarray(W), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gW, dL_dWM * M, rtol=1e-6, atol=1e-6)
    assert 0 < M.sum() < M.size  # the check is not vacuous


def test_magnitude_mask_has_no_gradient():
    W = jax.random.normal(KEY, (8, 8))
    g = jax.grad(lambda w: jnp.sum(m.magnitude_mask(w, 0.5) * 3.0))(W)
    assert np.all(np.asarray(g) == 0)
    mask = m.magnitude_mask(W, 0.25)
    assert int(mask.sum()) == 16
    assert np.abs(np.asarray(W))[np.asarray(mask) == 1].min() >= np.abs(np.asarray(W))[np.asarray(mask) == 0].max()


# --- threshold mask ------------------------------------------------------------------------------


def test_threshold_mask_values_and_half_percent_floor():
    s = jnp.linspace(-3, 3, 1000)
    np.testing.assert_array_equal(m.threshold_mask(s, 0.5), np.asarray(jax.nn.sigmoid(s) > 0.5, np.float32))
    np.testing.assert_array_equal(m.threshold_mask(s, 1.0, sigmoid=False), np.asarray(s > 1.0, np.float32))
    # a threshold that keeps nothing: the reference keeps int(0.005 * n) + 1 = 6 entries
    floor = m.threshold_mask(s, 0.9999)
    assert int(floor.sum()) == 6
    np.testing.assert_array_equal(np.nonzero(np.asarray(floor))[0], np.arange(994, 1000))


# --- hard concrete -------------------------------------------------------------------------------


def test_hard_concrete_eval_mask_is_deterministic_formula():
    s = jnp.linspace(-4, 4, 101)
    a = m.hard_concrete_mask(s, None, train=False)
    b = m.hard_concrete_mask(s, jax.random.PRNGKey(9), train=False)
    expected = np.clip(1 / (1 + np.exp(-np.asarray(s))) * 1.2 - 0.1, 0, 1)
    np.testing.assert_allclose(a, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(a, b)


def test_hard_concrete_train_needs_key_and_varies():
    s = jnp.zeros(1000)
    with pytest.raises(ValueError, match="PRNG key"):
        m.hard_concrete_mask(s, None, train=True)
    a = m.hard_concrete_mask(s, jax.random.PRNGKey(1), True)
    b = m.hard_concrete_mask(s, jax.random.PRNGKey(2), True)
    assert not np.array_equal(a, b)
    assert float(a.min()) == 0.0 and float(a.max()) == 1.0  # stretched, then clipped: exact 0/1 occur


# --- pytree plumbing -----------------------------------------------------------------------------


def bert_like_params():
    k = iter(jax.random.split(KEY, 32))

    def dense(i, o):
        return {"kernel": jax.random.normal(next(k), (i, o)), "bias": jnp.zeros(o)}

    layer = {
        "attention": {
            "self": {"query": dense(8, 8), "key": dense(8, 8), "value": dense(8, 8)},
            "output": {"dense": dense(8, 8), "LayerNorm": {"scale": jnp.ones(8), "bias": jnp.zeros(8)}},
        },
        "intermediate": {"dense": dense(8, 16)},
        "output": {"dense": dense(16, 8), "LayerNorm": {"scale": jnp.ones(8), "bias": jnp.zeros(8)}},
    }
    return {
        "bert": {
            "embeddings": {"word_embeddings": {"embedding": jax.random.normal(next(k), (30, 8))}},
            "encoder": {"layer": {"0": layer, "1": jax.tree_util.tree_map(lambda x: x + 1, layer)}},
            "pooler": {"dense": dense(8, 8)},
        },
        "classifier": dense(8, 2),
    }


def test_default_prunable_paths_are_exactly_the_six_encoder_matrices():
    paths = m.prunable_paths(bert_like_params())
    assert len(paths) == 12
    for p in paths:
        assert p.endswith("/kernel") and "/encoder/layer/" in "/" + p
    assert not any(s in p for p in paths for s in ("embeddings", "pooler", "classifier", "LayerNorm", "bias"))


def test_pattern_matching_nothing_is_value_error():
    with pytest.raises(ValueError, match="matches no parameter"):
        m.prunable_paths(bert_like_params(), [r"decoder/.*kernel"])


@pytest.mark.parametrize("init,scale", [("constant", 2.0), ("uniform", 0.5), ("kaiming", 0.0)])
def test_init_scores_mirror_prunable_kernels(init, scale):
    params = bert_like_params()
    scores = m.init_scores(params, init, scale, rng=KEY)
    flat = tree.flatten(scores)
    assert sorted(flat) == sorted(m.prunable_paths(params))
    for path, s in flat.items():
        w = tree.flatten(params)[path]
        assert s.shape == w.shape
        if init == "constant":
            assert np.all(np.asarray(s) == scale)
        else:
            bound = scale if init == "uniform" else 1 / np.sqrt(w.shape[0])
            assert np.abs(np.asarray(s)).max() <= bound and np.asarray(s).std() > 0


def test_unknown_names_are_value_errors():
    with pytest.raises(ValueError, match="unknown score init 'xavier'.*constant"):
        m.init_scores(bert_like_params(), "xavier")
    with pytest.raises(ValueError, match="unknown pruning method 'movement'.*topk"):
        m.apply_masks(bert_like_params(), None, method="movement")


@pytest.mark.parametrize("method,threshold", [("topk", 0.3), ("magnitude", 0.3), ("sigmoied_threshold", 0.5), ("l0", None)])
def test_apply_masks_touches_only_prunable_kernels(method, threshold):
    params = bert_like_params()
    scores = m.init_scores(params, "uniform", 1.0, rng=KEY)
    out = m.apply_masks(params, scores, method=method, threshold=threshold, rng=KEY, train=False)
    flat_in, flat_out = tree.flatten(params), tree.flatten(out)
    prunable = set(m.prunable_paths(params))
    for path, w in flat_in.items():
        if path in prunable:
            mask = m.compute_masks(params, scores, method=method, threshold=threshold, rng=KEY, train=False)[path]
            np.testing.assert_allclose(flat_out[path], np.asarray(w) * np.asarray(mask), rtol=1e-6)
            if method in ("topk", "magnitude"):
                assert int((np.asarray(flat_out[path]) != 0).sum()) == int(0.3 * w.size)
        else:
            np.testing.assert_array_equal(flat_out[path], w)


def test_global_topk_over_model_keeps_exact_total():
    params = bert_like_params()
    scores = m.init_scores(params, "uniform", 1.0, rng=KEY)
    masks = m.compute_masks(params, scores, method="topk", threshold=0.1, global_topk=True)
    total = sum(v.size for v in masks.values())
    assert sum(int(v.sum()) for v in masks.values()) == int(0.1 * total)
    per_matrix = [int(v.sum()) for v in masks.values()]
    assert len(set(per_matrix)) > 1  # global: matrices keep different counts


def test_magnitude_score_init_is_scaled_normalised_magnitude():
    """``S0 = scale * |W| / rms(W)`` per matrix (hand formula), so Top-v of the initial scores is
    exactly magnitude pruning of every matrix."""
    params = bert_like_params()
    scores = tree.flatten(m.init_scores(params, "magnitude", 2.0))
    for path, w in tree.flatten(params).items():
        if path not in scores:
            continue
        w = np.asarray(w, np.float64)
        np.testing.assert_allclose(scores[path], 2.0 * np.abs(w) / np.sqrt(np.mean(w * w)), rtol=1e-5)
        np.testing.assert_array_equal(m.topk_mask(scores[path], 0.3), m.magnitude_mask(jnp.asarray(w, jnp.float32), 0.3))


@pytest.mark.parametrize("global_topk", [False, True])
def test_random_control_is_fixed_exact_and_blind_to_the_weights(global_topk):
    params = bert_like_params()
    masks = m.compute_masks(params, None, method="random", threshold=0.3, global_topk=global_topk)
    total = sum(v.size for v in masks.values())
    kept = sum(int(v.sum()) for v in masks.values())
    if global_topk:
        assert kept == int(0.3 * total)
    else:
        assert all(int(v.sum()) == int(0.3 * v.size) for v in masks.values())
    # blind to the weights: other values of the same shapes give the same masks
    other = jax.tree_util.tree_map(lambda x: -3.0 * x + 1.0, params)
    again = m.compute_masks(other, None, method="random", threshold=0.3, global_topk=global_topk)
    for p in masks:
        np.testing.assert_array_equal(masks[p], again[p])
    # and unrelated to magnitude: about 30% of magnitude's kept entries, not all of them
    mag = m.compute_masks(params, None, method="magnitude", threshold=0.3, global_topk=global_topk)
    overlap = sum(float(jnp.sum(masks[p] * mag[p])) for p in masks) / sum(float(jnp.sum(mag[p])) for p in masks)
    assert 0.15 < overlap < 0.45
    # no gradient reaches the weights through the mask
    g = jax.grad(lambda ps: sum(jnp.sum(v) for v in m.compute_masks(ps, None, method="random", threshold=0.3).values()))(params)
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree_util.tree_leaves(g))
