"""Structured (head / neuron) pruning: unit scores, the summed Eq. (2), compact models, export."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers_models import padded_batch, tiny_config

from mvp_jax.errors import UserError
from mvp_jax.export.compact import (
    compact_params,
    layer_sizes,
    save_compact,
    save_transformers,
    to_transformers,
)
from mvp_jax.models import build_module, load_pretrained, param_shapes
from mvp_jax.pruning.masking import multiply_masks, straight_through, topk_mask
from mvp_jax.pruning.structured import (
    check_granularity,
    expand,
    init_scores,
    unit_counts,
    unit_magnitudes,
    unit_sums,
)
from mvp_jax.tree import flatten, unflatten

NUM_LABELS = 3
L0 = "bert/encoder/layer/0"
L1 = "bert/encoder/layer/1"
AO, FIN, FOUT = "attention/output/dense/kernel", "intermediate/dense/kernel", "output/dense/kernel"


@pytest.fixture(scope="module")
def tiny():
    """2 layers, hidden 32, 4 heads of 8, FFN 37; every parameter ~ N(0, 0.2^2) (biases too)."""
    config = tiny_config(num_labels=NUM_LABELS)
    module = build_module(config, "classification", NUM_LABELS)
    rng = np.random.default_rng(1)
    flat = {k: rng.normal(0, 0.2, s).astype(np.float32) for k, s in param_shapes(module).items()}
    return config, module, unflatten(flat)


@pytest.fixture(scope="module")
def batch():
    return padded_batch(99)


def logits(module, params, batch):
    return np.asarray(module.apply({"params": params}, *batch))


def compact_logits(config, params, batch):
    return logits(build_module(config, "classification", NUM_LABELS), params, batch)


def random_unit_masks(params, granularity, seed=0, num_heads=4):
    """Half of each layer's units (rounded down) kept at random."""
    rng = np.random.default_rng(seed)
    return {p: jnp.asarray(rng.permutation(n) < n // 2, jnp.float32)
            for p, n in unit_counts(params, granularity, num_heads).items()}


def positive(s):
    return (s > 0).astype(s.dtype)


# ----------------------------------------------------------------------------------------------
# Unit bookkeeping
# ----------------------------------------------------------------------------------------------


def test_unit_counts_and_expand(tiny):
    _, _, params = tiny
    assert unit_counts(params, "hybrid", 4) == {
        f"{L0}/attention/heads": 4, f"{L0}/ffn/neurons": 37,
        f"{L1}/attention/heads": 4, f"{L1}/ffn/neurons": 37}
    assert set(unit_counts(params, "head", 4)) == {f"{L0}/attention/heads", f"{L1}/attention/heads"}
    head = jnp.array([1.0, 0.0, 1.0, 1.0])
    neuron = jnp.zeros(37).at[5].set(1.0)
    m = expand({f"{L0}/attention/heads": head, f"{L0}/ffn/neurons": neuron}, params)
    assert set(m) == {f"{L0}/attention/self/{n}/kernel" for n in ("query", "key", "value")} | {
        f"{L0}/attention/output/dense/kernel", f"{L0}/intermediate/dense/kernel",
        f"{L0}/output/dense/kernel"}
    q, o = np.asarray(m[f"{L0}/attention/self/query/kernel"]), m[f"{L0}/{AO}"]
    assert q.shape == (32, 32) and (q[:, 8:16] == 0).all()
    assert (np.delete(q, range(8, 16), 1) == 1).all()
    np.testing.assert_array_equal(np.asarray(o), q.T)
    ffn_in = np.asarray(m[f"{L0}/intermediate/dense/kernel"])
    assert ffn_in.shape == (32, 37) and ffn_in.sum() == 32 and ffn_in[:, 5].all()
    assert np.asarray(m[f"{L0}/output/dense/kernel"])[5].all()


def test_init_and_magnitudes(tiny):
    _, _, params = tiny
    flat = {k: np.asarray(v) for k, v in flatten(params).items()}
    mags = unit_magnitudes(params, "hybrid", 4)
    # by hand: RMS over the unit's Q, K, V columns and output rows / FFN-in column and out row
    qkv = [flat[f"{L1}/attention/self/{n}/kernel"][:, 16:24] for n in ("query", "key", "value")]
    head2 = np.concatenate([w.ravel() for w in qkv] + [flat[f"{L1}/{AO}"][16:24].ravel()])
    n7 = np.concatenate([flat[f"{L0}/{FIN}"][:, 7], flat[f"{L0}/{FOUT}"][7]])
    for path, unit, weights in ((f"{L1}/attention/heads", 2, head2), (f"{L0}/ffn/neurons", 7, n7)):
        np.testing.assert_allclose(mags[path][unit], np.sqrt(np.mean(weights ** 2)), rtol=1e-5)

    def init_unit_scores(granularity, init, scale=0.0, rng=None):
        return flatten(init_scores(params, init, scale, rng, granularity=granularity, num_heads=4))

    const = init_unit_scores("neuron", "constant", 0.5)
    assert all(v.shape == (37,) and (v == 0.5).all() for v in const.values())
    uni = init_unit_scores("head", "uniform", 0.1, jax.random.PRNGKey(0))
    assert all(v.shape == (4,) and (np.abs(v) <= 0.1).all() for v in uni.values())
    mag = init_unit_scores("hybrid", "magnitude", 2.0)
    for p, v in mag.items():  # scale * rms_u / rms over the group: same order, group rms = scale
        assert np.argsort(v).tolist() == np.argsort(mags[p]).tolist()
        np.testing.assert_allclose(np.sqrt(np.mean(np.square(v))), 2.0, rtol=1e-5)


def test_bad_input(tiny):
    params = tiny[2]
    with pytest.raises(UserError, match="unknown granularity 'block'"):
        check_granularity("block")
    with pytest.raises(UserError, match="unknown granularity"):
        unit_counts(params, "heads", 4)
    with pytest.raises(UserError, match="score init 'kaiming'"):
        init_scores(params, "kaiming", rng=jax.random.PRNGKey(0), granularity="head", num_heads=4)
    with pytest.raises(UserError, match="no encoder layers"):
        unit_counts({"classifier": {"kernel": jnp.ones((2, 2))}}, "head", 4)
    with pytest.raises(UserError, match="layer_num_heads"):
        build_module(tiny_config(layer_num_heads=[4]), "classification", 3)
    with pytest.raises(UserError, match="layer_intermediate_sizes"):
        build_module(tiny_config(layer_intermediate_sizes=[3, -1]), "classification", 3)


# ----------------------------------------------------------------------------------------------
# The summed Eq. (2), by hand
# ----------------------------------------------------------------------------------------------

HIDDEN, HEADS, D, LEN, FFN = 6, 3, 2, 5, 4
ATT = "encoder/layer/0/attention"


def small_layer(seed=0):
    """One attention block and one FFN (tanh), flat params with the BERT paths."""
    rng = np.random.default_rng(seed)
    shapes = {f"{ATT}/self/{n}/kernel": (HIDDEN, HIDDEN) for n in ("query", "key", "value")}
    shapes.update({f"{ATT}/self/{n}/bias": (HIDDEN,) for n in ("query", "key", "value")})
    shapes.update({f"{ATT}/output/dense/kernel": (HIDDEN, HIDDEN),
                   "encoder/layer/0/intermediate/dense/kernel": (HIDDEN, FFN),
                   "encoder/layer/0/intermediate/dense/bias": (FFN,),
                   "encoder/layer/0/output/dense/kernel": (FFN, HIDDEN)})
    params = {k: rng.normal(0, 0.7, s).astype(np.float32) for k, s in shapes.items()}
    x, target = rng.normal(size=(LEN, HIDDEN)), rng.normal(size=(LEN, HIDDEN))
    return params, x.astype(np.float32), target.astype(np.float32)


def layer_loss(p, x, target, xp=jnp):
    """``0.5 |y - t|^2`` with ``y = Att(x) + FFN(x)`` (no LayerNorm): the forward pass."""
    def proj(n):
        return (x @ p[f"{ATT}/self/{n}/kernel"] + p[f"{ATT}/self/{n}/bias"]).reshape(LEN, HEADS, D)

    q, k, v = proj("query"), proj("key"), proj("value")
    s = xp.einsum("qhd,khd->hqk", q, k) / np.sqrt(D)
    a = xp.exp(s - s.max(-1, keepdims=True))
    a = a / a.sum(-1, keepdims=True)
    o = xp.einsum("hqk,khd->qhd", a, v).reshape(LEN, HIDDEN)
    h = xp.tanh(x @ p["encoder/layer/0/intermediate/dense/kernel"]
                + p["encoder/layer/0/intermediate/dense/bias"])
    y = o @ p[f"{ATT}/output/dense/kernel"] + h @ p["encoder/layer/0/output/dense/kernel"]
    return 0.5 * xp.sum((y - target) ** 2), (q, k, v, a, o, h, y)


def effective_weight_grads(p, x, target):
    """``dL/d(W * M)`` of every kernel, backpropagated by hand in numpy."""
    _, (q, k, v, a, o, h, y) = layer_loss(p, x, target, xp=np)
    dy = y - target
    g = {f"{ATT}/output/dense/kernel": o.T @ dy,
         "encoder/layer/0/output/dense/kernel": h.T @ dy}
    dpre = (dy @ p["encoder/layer/0/output/dense/kernel"].T) * (1 - h ** 2)
    g["encoder/layer/0/intermediate/dense/kernel"] = x.T @ dpre
    do = (dy @ p[f"{ATT}/output/dense/kernel"].T).reshape(LEN, HEADS, D)
    da = np.einsum("qhd,khd->hqk", do, v)
    dv = np.einsum("hqk,qhd->khd", a, do)
    ds = a * (da - np.sum(da * a, -1, keepdims=True)) / np.sqrt(D)  # softmax backward
    dq, dk = np.einsum("hqk,khd->qhd", ds, k), np.einsum("hqk,qhd->khd", ds, q)
    for n, dz in (("query", dq), ("key", dk), ("value", dv)):
        g[f"{ATT}/self/{n}/kernel"] = x.T @ dz.reshape(LEN, HIDDEN)
    return g


def test_unit_score_gradient_is_summed_eq2_by_hand():
    params, x, target = small_layer()
    scores = {f"{ATT}/heads": jnp.array([0.3, -0.2, 0.9]),
              "encoder/layer/0/ffn/neurons": jnp.array([0.1, 0.5, -0.4, 0.2])}

    def loss(s):
        masks = expand({p: topk_mask(v, 0.5) for p, v in s.items()}, params)  # 1 head, 2 neurons
        return layer_loss({k: w * masks.get(k, 1.0) for k, w in params.items()}, x, target)[0]

    grads = jax.jit(jax.grad(loss))(scores)
    masks = expand({p: topk_mask(v, 0.5) for p, v in scores.items()}, params)
    np.testing.assert_array_equal(masks[f"{ATT}/self/query/kernel"][0], [0, 0, 0, 0, 1, 1])
    effective = {k: w * np.asarray(masks.get(k, 1.0)) for k, w in params.items()}
    g = effective_weight_grads(effective, x, target)
    # dL/dS_h = sum over Q, K, V columns 2h:2h+2 and output rows 2h:2h+2 of G * W; neurons alike
    eq2 = {k: g[k] * params[k] for k in g}  # dL/d(W * M)_ij * W_ij
    qkv = sum(eq2[f"{ATT}/self/{n}/kernel"] for n in ("query", "key", "value"))
    out = eq2[f"{ATT}/output/dense/kernel"]
    heads = [qkv[:, 2 * h:2 * h + 2].sum() + out[2 * h:2 * h + 2].sum() for h in range(HEADS)]
    neurons = eq2[f"encoder/layer/0/{FIN}"].sum(0) + eq2[f"encoder/layer/0/{FOUT}"].sum(1)
    np.testing.assert_allclose(grads[f"{ATT}/heads"], heads, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads["encoder/layer/0/ffn/neurons"], neurons, rtol=1e-4, atol=1e-5)
    assert np.abs(heads).min() > 1e-3 and np.abs(neurons).min() > 1e-3  # pruned units too


def test_unit_score_gradient_through_bert(tiny, batch):
    """Same identity through the whole model (LayerNorm, masking of padded keys, pooler)."""
    _, module, params = tiny
    scores = flatten(init_scores(params, "uniform", 1.0, jax.random.PRNGKey(3), granularity="hybrid",
                                 num_heads=4))

    def unit_masks(s):  # any straight-through binarizer: here 1[S > 0]
        return {p: straight_through(positive, v) for p, v in s.items()}

    def loss(s, zero):  # d/d zero = dL/d(W * M): one backward pass gives both gradients
        effective = multiply_masks(params, expand(unit_masks(s), params))
        effective = jax.tree_util.tree_map(jnp.add, effective, zero)
        return jnp.sum(jnp.sin(module.apply({"params": effective}, *batch)))

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    grads, g = jax.jit(jax.grad(loss, argnums=(0, 1)))(scores, zeros)
    g, masks = flatten(g), expand(unit_masks(scores), params)
    w = flatten(params)
    by_unit = unit_sums({k: g[k] * w[k] for k in masks}, unit_counts(params, "hybrid", 4))
    for p in scores:
        np.testing.assert_allclose(grads[p], by_unit[p], rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Compact model = masked dense model
# ----------------------------------------------------------------------------------------------


def empty_layers(masks):
    """Layer 0 loses every head, layer 1 every neuron (where those masks exist)."""
    out = dict(masks)
    for p in (f"{L0}/attention/heads", f"{L1}/ffn/neurons"):
        if p in out:
            out[p] = jnp.zeros_like(out[p])
    return out


@pytest.mark.parametrize("granularity", ["head", "neuron", "hybrid"])
@pytest.mark.parametrize("empty", [False, True])
def test_compact_equals_masked_dense(tiny, batch, granularity, empty):
    config, module, params = tiny
    units = random_unit_masks(params, granularity)
    units = empty_layers(units) if empty else units
    dense = logits(module, multiply_masks(params, expand(units, params)), batch)
    small, cfg = compact_params(params, units, config)
    np.testing.assert_allclose(compact_logits(cfg, small, batch), dense, atol=1e-5)
    heads, sizes = layer_sizes(cfg)
    kept = {p: int(np.sum(m)) for p, m in units.items()}
    assert heads == [kept.get(f"{L}/attention/heads", 4) for L in (L0, L1)]
    assert sizes == [kept.get(f"{L}/ffn/neurons", 37) for L in (L0, L1)]
    if granularity == "neuron" and not empty:  # same width everywhere: a plain BERT config
        assert cfg.intermediate_size == 18 and not hasattr(cfg, "layer_num_heads")
    assert flatten(small)[f"{L0}/attention/self/query/kernel"].shape == (32, 8 * heads[0])


def test_compact_from_weight_masks_folds_constant_units(tiny, batch):
    """Unstructured masks: a head whose V columns are empty and neurons whose FFN-in columns are
    empty are constants, folded into the output bias; units with empty output rows dropped."""
    config, module, params = tiny
    flat = flatten(params)
    rng = np.random.default_rng(0)
    masks = {k: jnp.asarray(rng.random(flat[k].shape) < 0.7, jnp.float32) for k in flat
             if k.endswith("kernel") and "/layer/" in k}
    value = f"{L0}/attention/self/value/kernel"
    masks[value] = masks[value].at[:, 8:16].set(0)  # head 1 of layer 0: constant b_v
    masks[f"{L1}/{AO}"] = masks[f"{L1}/{AO}"].at[:8].set(0)  # head 0 of layer 1: adds nothing
    masks[f"{L0}/{FIN}"] = masks[f"{L0}/{FIN}"].at[:, :10].set(0)  # 10 constant neurons
    masks[f"{L1}/{FOUT}"] = masks[f"{L1}/{FOUT}"].at[30:].set(0)  # 7 silent neurons
    dense = logits(module, multiply_masks(params, masks), batch)
    small, cfg = compact_params(params, masks, config)
    assert layer_sizes(cfg) == ([3, 3], [27, 30])
    np.testing.assert_allclose(compact_logits(cfg, small, batch), dense, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Saving: mvp-jax (load_pretrained) and transformers
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compact_model(tiny, batch):
    config, module, params = tiny
    units = empty_layers(random_unit_masks(params, "hybrid", seed=1))
    dense = logits(module, multiply_masks(params, expand(units, params)), batch)
    return (*compact_params(params, units, config), dense)


def test_save_compact_round_trip(compact_model, batch, tmp_path):
    small, cfg, dense = compact_model
    out = save_compact(tmp_path / "compact", small, cfg, "classification")
    saved = json.loads((tmp_path / "compact" / "config.json").read_text())
    assert saved["layer_num_heads"] == [0, 2] and saved["layer_intermediate_sizes"] == [18, 0]
    loaded = load_pretrained(out, head="classification", num_labels=NUM_LABELS)
    assert layer_sizes(loaded.config) == ([0, 2], [18, 0])
    np.testing.assert_allclose(logits(loaded.module, loaded.params, batch), dense, atol=1e-5)


def test_transformers_export(compact_model, batch, tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import BertForSequenceClassification

    small, cfg, dense = compact_model
    plain = to_transformers(small, cfg)[1]
    assert layer_sizes(plain) == ([4, 4], [18, 18]) and not hasattr(plain, "layer_num_heads")
    out = save_transformers(tmp_path / "hf", small, cfg, "classification")
    model = BertForSequenceClassification.from_pretrained(out).eval()
    ids, mask, types = (torch.tensor(np.asarray(a, np.int64)) for a in batch)
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits.numpy()
    np.testing.assert_allclose(got, dense, atol=1e-5)
    loaded = load_pretrained(out, head="classification", num_labels=NUM_LABELS)
    np.testing.assert_allclose(logits(loaded.module, loaded.params, batch), dense, atol=1e-5)
    # the per-layer directory is not silently misread by transformers
    save_compact(tmp_path / "compact", small, cfg, "classification")
    # transformers refuses the mismatched shapes: a RuntimeError, "size mismatch for ..." in older
    # releases, "You set `ignore_mismatched_sizes` to `False`, ..." in newer ones
    with pytest.raises(RuntimeError, match="size mismatch for |ignore_mismatched_sizes"):
        BertForSequenceClassification.from_pretrained(tmp_path / "compact")


def test_predict_reads_compact_export(tmp_path):
    """``mvp-jax predict``'s loader on a compact export: the masked dense model's probabilities."""
    from _helpers_models import save_tiny_vocab_bert

    from mvp_jax.export.huggingface import export_hf
    from mvp_jax.serving.predict import load_predictor, predict_texts

    src = save_tiny_vocab_bert(tmp_path / "src", head="classification")
    pre = load_pretrained(src, head="classification", num_labels=2)
    units = empty_layers(random_unit_masks(pre.params, "hybrid", num_heads=2))
    masked = multiply_masks(pre.params, expand(units, pre.params))
    export_hf(tmp_path / "dense", masked, pre.config, "classification", src)
    save_compact(tmp_path / "compact", *compact_params(pre.params, units, pre.config),
                 "classification", src)
    texts = ["a gripping, well acted film", "dull"]
    rows = [list(predict_texts(load_predictor(tmp_path / d, max_seq_length=16), texts))
            for d in ("dense", "compact")]
    for dense, small in zip(*rows):
        assert dense["label"] == small["label"]
        np.testing.assert_allclose(list(small["probabilities"].values()),
                                   list(dense["probabilities"].values()), atol=1e-5)
