"""The method registry (mvp_jax.pruning.methods): one class per method, a new method is one class, and
the functional API on a Flax NNX model."""

from __future__ import annotations

import dataclasses
import pathlib
import re
import subprocess
import sys
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mvp_jax import tree
from mvp_jax.errors import UserError
from mvp_jax.pruning import masking, methods
from mvp_jax.pruning.pruner import Pruner

PACKAGE = pathlib.Path(methods.__file__).parent


def test_registry_holds_each_method_once_under_its_name():
    assert methods.NAMES == ("none", "magnitude", "topk", "sigmoied_threshold", "l0", "random")
    for name in methods.NAMES:
        method = methods.get(name)
        assert method.name == name and methods.get(method) is method
        assert dataclasses.is_dataclass(method) and method.__dataclass_params__.frozen
    with pytest.raises(UserError, match="unknown pruning method 'top_k'; did you mean 'topk'"):
        methods.get("top_k")


def test_what_each_method_says_it_is():
    learned = {n for n in methods.NAMES if methods.get(n).learns_scores}
    assert learned == {"topk", "sigmoied_threshold", "l0"}
    assert [n for n in methods.NAMES if methods.get(n).per_micro_batch] == ["l0"]
    assert {n: methods.get(n).regularization for n in methods.NAMES if methods.get(n).regularization} \
        == {"sigmoied_threshold": "l1", "l0": "l0"}
    assert {n for n in methods.NAMES if methods.get(n).global_selection} \
        == {"magnitude", "topk", "random"}
    assert not methods.get("none").prunes


def test_the_registry_imports_no_jax():
    """Config validation reads the registry (tests/test_config.py: reading a config imports no
    JAX); here the registry alone, with every method looked up."""
    code = ("import sys, mvp_jax.pruning.methods as m; [m.get(n) for n in m.NAMES]; "
            "sys.exit(any(k == 'jax' or k.startswith('jax.') for k in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_no_module_but_methods_branches_on_a_method_name():
    """``method == "topk"``, ``x in ("topk", ...)`` and the like appear in methods.py only."""
    only_methods = re.compile(r"""["'](topk|sigmoied_threshold)["']""")
    compares = re.compile(r"""\bmethod\s*(==|!=|in\b|not in\b)\s*[(\[{]?\s*["']""")
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "methods.py":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            branches = re.search(r"\b(if|elif|while|in)\b|==|!=", code)
            if compares.search(code) or (branches and only_methods.search(code)):
                offenders.append(f"{path.relative_to(PACKAGE)}:{i}: {line.strip()}")
    assert not offenders, offenders


def _weights():
    rng = np.random.default_rng(0)
    return {"enc/0/kernel": jnp.asarray(rng.normal(size=(8, 6)), jnp.float32),
            "enc/1/kernel": jnp.asarray(rng.normal(size=(6, 8)), jnp.float32)}


@pytest.mark.parametrize("global_topk", [False, True])
def test_random_is_top_v_of_fixed_scores_that_ignore_the_weights(global_topk):
    weights = _weights()
    random = methods.get("random")
    masks = random.masks(weights, {}, 0.25, global_topk=global_topk)
    # the same mask for other weights of the same shapes: it knows nothing of the weights
    other = {p: -3.0 * w + 1.0 for p, w in weights.items()}
    again = random.masks(other, {}, 0.25, global_topk=global_topk)
    kept = 0
    for p in weights:
        np.testing.assert_array_equal(masks[p], again[p])
        # Top-v of U(0, 1) scores drawn from the path alone
        fixed = np.asarray(masking.random_scores(weights[p], p))
        if not global_topk:
            k = int(0.25 * fixed.size)
            np.testing.assert_array_equal(np.asarray(masks[p]), fixed >= np.sort(fixed.ravel())[-k])
        kept += int(np.sum(masks[p]))
    assert kept == (int(0.25 * 96) if global_topk else 2 * int(0.25 * 48))
    # no gradient to anything
    grads = jax.grad(lambda w: sum(jnp.sum(m * w[p]) for p, m in random.masks(
        w, {}, 0.25, global_topk=global_topk).items()))(weights)
    for p in weights:  # d/dW sum(M * W) = M: the mask is a constant
        np.testing.assert_array_equal(grads[p], masks[p])


@dataclasses.dataclass(frozen=True)
class SmallestMagnitude(methods.TopV):
    """A method written in a test: keeps the weights of *smallest* |W| (one class)."""

    name: ClassVar[str] = "smallest"
    label: ClassVar[str] = "Smallest magnitude"

    def selection(self, weights, scores):
        return {p: -jnp.abs(jax.lax.stop_gradient(w)) for p, w in weights.items()}


def test_a_new_method_is_one_class_and_one_registry_line(monkeypatch):
    monkeypatch.setitem(methods.REGISTRY, "smallest", SmallestMagnitude())  # the registry line
    params = {"enc": {"0": {"kernel": _weights()["enc/0/kernel"]}}}
    masks = masking.compute_masks(params, None, method="smallest", threshold=0.5,
                                  patterns=[r"kernel$"])
    w = np.abs(np.asarray(params["enc"]["0"]["kernel"]))
    np.testing.assert_array_equal(np.asarray(masks["enc/0/kernel"]), w <= np.median(w))
    from mvp_jax.config import load_config
    cfg = load_config(None, ["prune.method=smallest", "prune.final_threshold=0.5"])
    assert cfg.prune.method == "smallest"


# ----------------------------------------------------------------------------------------------
# The functional API on a Flax NNX model
# ----------------------------------------------------------------------------------------------


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(8, 32, rngs=rngs), nnx.Linear(32, 2, rngs=rngs)])

    def __call__(self, x):
        return self.layers[1](jax.nn.relu(self.layers[0](x)))


def test_nnx_model_fine_pruned_with_movement_through_the_functional_api():
    """An ``nnx.State`` is a pytree: scores, masks, ``W * M`` and the straight-through
    gradient work on it as on a Linen params dict, with no conversion."""
    graphdef, params = nnx.split(MLP(nnx.Rngs(0)), nnx.Param)
    patterns = [r"layers/\d+/kernel$"]
    assert masking.prunable_paths(params, patterns) == ["layers/0/kernel", "layers/1/kernel"]
    scores = masking.init_scores(params, "constant", 0.0, patterns=patterns)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(64, 8)), jnp.float32)
    y = jnp.asarray((x[:, 0] + x[:, 1] > 0).astype(np.int32))
    keep = 0.3

    def loss_fn(params, scores):
        masked = masking.apply_masks(params, scores, method="topk", threshold=keep,
                                     patterns=patterns)
        logits = nnx.merge(graphdef, masked)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    # Eq. (2) on an NNX state: dL/dS = dL/d(W * M) * W
    g_params, g_scores = jax.grad(loss_fn, argnums=(0, 1))(params, scores)
    masks = masking.compute_masks(params, scores, method="topk", threshold=keep, patterns=patterns)
    for path, w in masking.prunable_weights(params, patterns).items():
        kept = np.asarray(masks[path]) > 0  # there dL/dW = dL/d(W * M)
        np.testing.assert_allclose(np.asarray(tree.flatten(g_scores)[path])[kept],
                                   np.asarray(tree.flatten(g_params)[path] * w)[kept],
                                   rtol=1e-5, atol=1e-7)

    tx = optax.multi_transform({"params": optax.adam(1e-2), "scores": optax.adam(1e-1)},
                               {"params": "params", "scores": "scores"})
    train = {"params": params, "scores": scores}
    opt_state = tx.init(train)

    @jax.jit
    def step(train, opt_state):
        loss, grads = jax.value_and_grad(lambda t: loss_fn(t["params"], t["scores"]))(train)
        updates, opt_state = tx.update(grads, opt_state, train)
        return optax.apply_updates(train, updates), opt_state, loss

    losses = []
    for _ in range(60):
        train, opt_state, loss = step(train, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
    final = masking.compute_masks(train["params"], train["scores"], method="topk",
                                  threshold=keep, patterns=patterns)
    assert float(masking.remaining_fraction(final)) == pytest.approx(
        (int(keep * 256) + int(keep * 64)) / 320)
    # the pruned model is the NNX model with W * M: no pruning code left in it
    pruned = nnx.merge(graphdef, masking.multiply_masks(train["params"], final))
    np.testing.assert_array_equal(np.asarray(pruned.layers[0].kernel[...]) == 0,
                                  np.asarray(final["layers/0/kernel"]) == 0)


def test_random_scores_are_drawn_once_and_never_trained():
    """The random control's fixed scores ``U`` are drawn at init (``Pruner.initial_scores``),
    frozen in the optimizer (no update, no moments), and the train step draws nothing for them:
    it makes as many random draws as magnitude pruning's (dropout and the step key)."""
    from transformers import BertConfig

    from mvp_jax.config import PruneConfig
    from mvp_jax.models import build_module, init_params
    from mvp_jax.training.optim import make_optimizer
    from mvp_jax.training.train import init_state, make_train_step

    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=40)
    module = build_module(config, head="classification", num_labels=2)
    params = init_params(module, seed=0)
    rng = np.random.default_rng(0)
    batch = {"input_ids": rng.integers(0, 100, (1, 4, 8)).astype(np.int32),
             "attention_mask": np.ones((1, 4, 8), np.int32),
             "token_type_ids": np.zeros((1, 4, 8), np.int32),
             "example_weight": np.ones((1, 4), np.float32),
             "labels": rng.integers(0, 2, (1, 4)).astype(np.int32)}
    draws = {}
    for name in ("magnitude", "random"):
        prune = PruneConfig(method=name, initial_threshold=0.5, final_threshold=0.3)
        pruner = Pruner.from_config(prune, module, total_steps=10)
        scores = pruner.initial_scores(params)
        opt = make_optimizer(learning_rate=1e-3, total_steps=10,
                             freeze_scores=not methods.get(name).learns_scores)
        state = init_state(params, scores, opt, seed=0)
        step = make_train_step(module, "classification", pruner, opt)
        jaxpr = str(jax.make_jaxpr(step)(state, batch))
        draws[name] = jaxpr.count("threefry2x32") + jaxpr.count("random_bits")
        if name == "random":
            flat = tree.flatten(scores)
            assert set(flat) == set(masking.prunable_paths(params))
            for p, w in masking.prunable_weights(params).items():
                np.testing.assert_array_equal(flat[p], masking.random_scores(w, p))
            assert not any(jax.tree_util.tree_leaves(opt.trainable(
                {"params": params, "scores": scores})["scores"]))
            no_scores = opt.tx.init({"params": params, "scores": {}})  # no moments for them
            assert len(jax.tree_util.tree_leaves(state.opt_state)) == len(
                jax.tree_util.tree_leaves(no_scores))
            new, _ = jax.jit(step)(state, batch)
            for a, b in zip(jax.tree_util.tree_leaves(new.scores), jax.tree_util.tree_leaves(scores)):
                np.testing.assert_array_equal(a, b)
            # the same fixed random Top-v as scores drawn on the spot
            kept = pruner.final_masks(new.params, new.scores)
            drawn = pruner.final_masks(new.params, None)
            for p in kept:
                np.testing.assert_array_equal(kept[p], drawn[p])
    assert draws["random"] == draws["magnitude"] > 0
