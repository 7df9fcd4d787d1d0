"""Schedules, regularizers, optimizer groups, and one movement-pruning step on a small Flax model."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mvp_jax.pruning import masking, regularizers
from mvp_jax.pruning.schedules import regularization_lambda, threshold_schedule
from mvp_jax.training.optim import (
    bias_correction,
    linear_warmup_decay,
    make_optimizer,
    param_labels,
    reference_adamw,
)

SCHED = dict(total_steps=1000, warmup_steps=100, initial_threshold=1.0, final_threshold=0.15,
             initial_warmup=1, final_warmup=2)


def reference_schedule(step, total_steps, warmup_steps, initial_threshold, final_threshold,
                       initial_warmup, final_warmup):
    """The paper's reference (emmental ``schedule_threshold``), transcribed in plain Python."""
    if step <= initial_warmup * warmup_steps:
        return initial_threshold
    if step > total_steps - final_warmup * warmup_steps:
        return final_threshold
    start = initial_warmup * warmup_steps
    span = total_steps - (initial_warmup + final_warmup) * warmup_steps
    return final_threshold + (initial_threshold - final_threshold) * (1 - (step - start) / span) ** 3


@pytest.mark.parametrize("step", [0, 50, 100, 101, 350, 500, 799, 800, 801, 900, 1000])
def test_threshold_schedule_matches_formula(step):
    got = float(threshold_schedule(step, **SCHED))
    assert got == pytest.approx(reference_schedule(step, **SCHED), rel=1e-6, abs=1e-7)


def test_threshold_schedule_landmarks_and_lambda():
    f = jax.jit(lambda s: threshold_schedule(s, **SCHED))
    assert float(f(0)) == 1.0 and float(f(100)) == 1.0  # initial warm-up
    assert float(f(801)) == pytest.approx(0.15) and float(f(1000)) == pytest.approx(0.15)  # final
    mid = 100 + 350  # half-way through the cubic part: 0.15 + 0.85 * 0.5**3
    assert float(f(mid)) == pytest.approx(0.15 + 0.85 * 0.125, rel=1e-6)
    assert f._cache_size() == 1  # traced step: no recompilation
    for step in (0, 450, 1000):
        t = f(step)
        assert float(regularization_lambda(t, final_lambda=400.0, final_threshold=0.15)) == pytest.approx(
            400.0 * float(t) / 0.15, rel=1e-6)


def test_l1_regularizer_is_mean_of_per_matrix_means():
    s = {"a": jnp.array([[0.0, 1.0]]), "b": jnp.array([-2.0, 3.0, 0.5])}

    def sig(v):
        return 1 / (1 + np.exp(-np.asarray(v)))

    expected = (sig(s["a"]).mean() + sig(s["b"]).mean()) / 2
    assert float(regularizers.l1_sigmoid(s)) == pytest.approx(expected, rel=1e-6)


def test_expected_l0_agrees_with_monte_carlo():
    scores = jnp.linspace(-3.0, 3.0, 64)
    draws = jax.vmap(lambda k: masking.hard_concrete_mask(scores, k, train=True))(
        jax.random.split(jax.random.PRNGKey(0), 20000))
    p_nonzero = np.asarray((draws > 0).mean(0))
    # per-entry closed form P(mask > 0) = sigmoid(S - beta log(-l/r)); standard error ~ 0.0035
    closed = 1 / (1 + np.exp(-(np.asarray(scores) - 2 / 3 * math.log(0.1 / 1.1))))
    np.testing.assert_allclose(p_nonzero, closed, atol=0.02)
    assert float(regularizers.expected_l0({"s": scores})) == pytest.approx(p_nonzero.mean(), abs=0.005)


def test_unknown_regularizer():
    with pytest.raises(ValueError, match="unknown regularization 'l2'.*l1, l0"):
        regularizers.regularizer("l2")


def tree():
    return {
        "params": {
            "bert": {
                "embeddings": {"word_embeddings": {"embedding": jnp.ones((5, 4))}},
                "encoder": {"layer": {"0": {"intermediate": {"dense": {"kernel": jnp.ones((4, 4)),
                                                                         "bias": jnp.ones(4)}},
                                            "output": {"LayerNorm": {"scale": jnp.ones(4), "bias": jnp.ones(4)}}}}},
            },
        },
        "scores": {"bert": {"encoder": {"layer": {"0": {"intermediate": {"dense": {"kernel": jnp.zeros((4, 4))}}}}}}},
    }


def test_param_labels():
    labels = param_labels(tree())
    p = labels["params"]["bert"]
    assert p["embeddings"]["word_embeddings"]["embedding"] == "frozen"
    layer = p["encoder"]["layer"]["0"]
    assert layer["intermediate"]["dense"]["kernel"] == "decay"
    assert layer["intermediate"]["dense"]["bias"] == "no_decay"
    assert layer["output"]["LayerNorm"]["scale"] == "no_decay"
    assert labels["scores"]["bert"]["encoder"]["layer"]["0"]["intermediate"]["dense"]["kernel"] == "scores"


@pytest.mark.parametrize("optimizer", ["reference_adamw", "adamw"])
def test_optimizer_groups_learning_rates_and_decay(optimizer):
    """With zero gradients, Adam's step is 0, so the only change is decoupled weight decay:
    ``w <- w - lr * wd * w`` for the decay group only; frozen and no-decay leaves stay put.
    With unit gradients, Adam's first step is ``-lr`` per coordinate (bias-corrected m/sqrt(v) = 1),
    which reads off each group's learning rate; the decay then applies to the old weight
    (optax.adamw) or to the updated one (the reference's AdamW)."""
    t = tree()
    opt = make_optimizer(learning_rate=1e-3, scores_learning_rate=1e-2, total_steps=100,
                         warmup_steps=0, weight_decay=0.1, max_grad_norm=None, optimizer=optimizer)
    state = opt.tx.init(t)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, t)
    upd, _ = opt.tx.update(zeros, state, t)
    lay = upd["params"]["bert"]["encoder"]["layer"]["0"]
    np.testing.assert_allclose(lay["intermediate"]["dense"]["kernel"], -1e-3 * 0.1 * np.ones((4, 4)), rtol=1e-5)
    assert np.all(np.asarray(lay["intermediate"]["dense"]["bias"]) == 0)
    assert np.all(np.asarray(lay["output"]["LayerNorm"]["scale"]) == 0)

    ones = jax.tree_util.tree_map(jnp.ones_like, t)
    upd, _ = opt.tx.update(ones, state, t)
    new = optax.apply_updates(t, upd)
    np.testing.assert_array_equal(new["params"]["bert"]["embeddings"]["word_embeddings"]["embedding"],
                                  t["params"]["bert"]["embeddings"]["word_embeddings"]["embedding"])
    sc = upd["scores"]["bert"]["encoder"]["layer"]["0"]["intermediate"]["dense"]["kernel"]
    np.testing.assert_allclose(sc, -1e-2, rtol=1e-4)
    lay = upd["params"]["bert"]["encoder"]["layer"]["0"]
    np.testing.assert_allclose(lay["intermediate"]["dense"]["bias"], -1e-3, rtol=1e-4)
    decayed = 1.0 if optimizer == "adamw" else 1.0 - 1e-3  # w = 1, or w - lr = 1 - 1e-3
    np.testing.assert_allclose(lay["intermediate"]["dense"]["kernel"], -1e-3 - 1e-4 * decayed,
                               rtol=1e-5)
    lrs = opt.learning_rates(0)
    assert float(lrs["lr_weights"]) == pytest.approx(1e-3) and float(lrs["lr_scores"]) == pytest.approx(1e-2)
    assert float(opt.learning_rates(50)["lr_scores"]) == pytest.approx(5e-3)


def test_warmup_and_clipping():
    opt = make_optimizer(learning_rate=1.0, total_steps=10, warmup_steps=4, max_grad_norm=1.0)
    assert [round(float(opt.weights_lr(s)), 4) for s in (0, 2, 4, 7, 10)] == [0.0, 0.5, 1.0, 0.5, 0.0]
    with pytest.raises(ValueError, match="learning_rate"):
        make_optimizer(learning_rate=0.0, total_steps=10)


def reference_adamw_float64(p, grads, lrs, b1=0.9, b2=0.999, eps=1e-8, wd=0.0):
    """transformers' AdamW (2020, correct_bias=True) in numpy float64: params after each step."""
    m, v, out = np.zeros_like(p), np.zeros_like(p), []
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (np.sqrt(v) + eps)
        p = p - lr * wd * p
        out.append(p)
    return out


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_reference_adamw_matches_a_float64_transcription(wd):
    """30 steps under a warm-up/decay schedule, gradients from 1e-9 (where eps dominates) to 1e2:
    float32 within float32 rounding of the float64 rule; optax.adamw is far off on the same
    inputs (eps outside the bias correction, decay of the old weight)."""
    rng = np.random.default_rng(0)
    steps, n = 30, 64
    p0 = rng.normal(size=n)
    scale = 10.0 ** rng.uniform(-9, 2, size=n)  # per coordinate
    grads = [rng.normal(size=n) * scale for _ in range(steps)]
    lrs = [1e-2 * min(s / 5, (steps - s) / (steps - 5)) for s in range(steps)]  # at count t - 1
    expected = reference_adamw_float64(p0, grads, lrs, wd=wd)

    def run(tx):
        p = jnp.asarray(p0, jnp.float32)
        state, out = tx.init(p), []
        update = jax.jit(tx.update)
        for g in grads:
            u, state = update(jnp.asarray(g, jnp.float32), state, p)
            p = optax.apply_updates(p, u)
            out.append(np.asarray(p, np.float64))
        return out

    schedule = linear_warmup_decay(1e-2, 5, steps)
    for got, want in zip(run(reference_adamw(schedule, eps=1e-8, weight_decay=wd)), expected):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    optax_run = run(optax.adamw(schedule, eps=1e-8, weight_decay=wd))
    assert np.max(np.abs(optax_run[-1] - expected[-1])) > 1e-3


def test_bias_correction_is_float64_accurate():
    t = np.arange(1, 200_001)
    for b in (0.9, 0.98, 0.999, 0.9999):
        exact = -np.expm1(t * np.log(b))  # float64
        got = np.asarray(jax.jit(bias_correction, static_argnums=0)(b, t.astype(np.int32)))
        assert np.max(np.abs(got / exact - 1)) < 4e-7, b
    naive = 1 - np.float32(0.999) ** t[:10].astype(np.float32)  # float32 1 - b^t: 2e-5 off
    assert np.max(np.abs(naive / -np.expm1(t[:10] * np.log(0.999)) - 1)) > 1e-5


def test_frozen_leaves_are_split_off_have_no_state_and_no_update():
    t = tree()
    opt = make_optimizer(learning_rate=1e-3, total_steps=10, weight_decay=0.1)
    trainable, frozen = opt.split(t)
    embedding = t["params"]["bert"]["embeddings"]["word_embeddings"]["embedding"]
    assert jax.tree_util.tree_leaves(frozen) == [embedding]
    assert len(jax.tree_util.tree_leaves(trainable)) == len(jax.tree_util.tree_leaves(t)) - 1
    merged = opt.merge(trainable, frozen)
    assert jax.tree_util.tree_structure(merged) == jax.tree_util.tree_structure(t)
    assert all(a is b for a, b in zip(jax.tree_util.tree_leaves(merged), jax.tree_util.tree_leaves(t)))
    state = opt.tx.init(t)  # the whole tree, as init_state does: no moments for frozen leaves
    assert not any(np.shape(x) == embedding.shape for x in jax.tree_util.tree_leaves(state))
    grads = jax.tree_util.tree_map(jnp.ones_like, trainable)  # MaskedNode where frozen
    upd, _ = jax.jit(opt.tx.update)(grads, state, trainable)
    assert jax.tree_util.tree_structure(upd) == jax.tree_util.tree_structure(trainable)
    new = opt.merge(optax.apply_updates(trainable, upd), frozen)
    assert new["params"]["bert"]["embeddings"]["word_embeddings"]["embedding"] is embedding
    layer = new["params"]["bert"]["encoder"]["layer"]["0"]["intermediate"]["dense"]["kernel"]
    assert np.all(np.asarray(layer) < 1.0)
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'; choose one of reference_adamw, adamw"):
        make_optimizer(learning_rate=1e-3, total_steps=10, optimizer="sgd")


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(32, name="hidden")(x))
        return nn.Dense(3, name="head")(x)


def test_movement_pruning_step_lowers_loss_and_rewards_weights_moving_away_from_zero():
    """Section 4, "Method Interpretation": with plain SGD, one step changes S by
    ``-lr_s * dL/dW' * W`` (W' = W*M), i.e. S grows exactly where W moves away from zero."""
    kx, ky, kp = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (64, 10))
    y = jax.random.randint(ky, (64,), 0, 3)
    model = MLP()
    params = model.init(kp, x)["params"]
    patterns = [r"hidden/kernel$"]
    scores = masking.init_scores(params, "constant", 0.0, patterns=patterns)
    s0 = scores["hidden"]["kernel"] + jnp.linspace(0, 1e-3, 320).reshape(10, 32)  # break ties
    scores = {"hidden": {"kernel": s0}}

    def loss_fn(tree):
        masked = masking.apply_masks(tree["params"], tree["scores"], method="topk", threshold=0.5,
                                     patterns=patterns)
        logits = model.apply({"params": masked}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    tx = optax.sgd(0.1)
    t = {"params": params, "scores": scores}

    @jax.jit
    def step(t):
        loss, g = jax.value_and_grad(loss_fn)(t)
        upd, _ = tx.update(g, tx.init(t), t)
        return optax.apply_updates(t, upd), loss

    t1, loss0 = step(t)
    losses = [float(loss0)]
    tk = t1
    for _ in range(30):
        tk, loss = step(tk)
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.05

    w0 = np.asarray(t["params"]["hidden"]["kernel"])
    mask0 = np.asarray(masking.topk_mask(s0, 0.5))
    w1 = np.asarray(t1["params"]["hidden"]["kernel"])
    ds = np.asarray(t1["scores"]["hidden"]["kernel"]) - np.asarray(s0)
    moving_away = np.sign(w1 - w0) == np.sign(w0)
    changed = (mask0 == 1) & (w1 != w0)  # kept weights move with gradient dL/dW = dL/dW' * M
    assert changed.sum() > 50
    assert np.all(ds[changed & moving_away] > 0)
    assert np.all(ds[changed & ~moving_away] < 0)
