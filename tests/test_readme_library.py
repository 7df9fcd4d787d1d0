"""README.md's "The library" section runs as written: its three code blocks, executed in order,
then used on a batch (loss and gradients, a new method through the registry, the compact model's
logits equal the masked dense model's)."""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def library_blocks() -> list[str]:
    text = README.read_text()
    section = text[text.index("## The library\n"):]
    section = section[:section.index("\n## ", 3)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.fixture(scope="module")
def namespace():
    from mvp_jax.pruning import methods

    blocks = library_blocks()
    assert len(blocks) == 3
    ns: dict = {}
    saved = dict(methods.REGISTRY)
    try:
        for block in blocks:
            exec(compile(block, str(README), "exec"), ns)  # noqa: S102 - the README's own code
        yield ns
    finally:
        methods.REGISTRY.clear()
        methods.REGISTRY.update(saved)


def batch(n=4, length=12, seed=0):
    rng = np.random.default_rng(seed)
    return {"input_ids": jnp.asarray(rng.integers(1000, 20000, (n, length)), jnp.int32),
            "attention_mask": jnp.ones((n, length), jnp.int32),
            "token_type_ids": jnp.zeros((n, length), jnp.int32),
            "labels": jnp.asarray(rng.integers(0, 2, n), jnp.int32)}


def test_loss_and_gradients_of_the_first_example(namespace):
    from mvp_jax import tree
    from mvp_jax.pruning import masking

    ns = namespace
    state = {"params": ns["pre"].params, "scores": ns["scores"]}
    loss, grads = jax.jit(jax.value_and_grad(ns["loss_fn"]))(state, batch(), 1000)
    assert np.isfinite(float(loss))
    # at the end of the schedule 10% of each matrix is kept, and every score has a gradient
    masks = ns["pruner"].masks(state["params"], state["scores"], 0.10)
    assert float(masking.remaining_fraction(masks)) == pytest.approx(0.10, abs=1e-4)
    g = tree.flatten(grads["scores"])
    assert len(g) == 36 and all(float(jnp.abs(v).sum()) > 0 for v in g.values())


def test_the_new_method_is_registered_and_keeps_the_smallest_weights(namespace):
    from mvp_jax.config import PruneConfig
    from mvp_jax.pruning import Pruner, masking

    ns = namespace
    prune = PruneConfig(method="smallest", final_threshold=0.5)
    masks = Pruner.from_config(prune, ns["pre"].module).final_masks(ns["pre"].params, None)
    path = "bert/encoder/layer/0/intermediate/dense/kernel"
    w = np.abs(np.asarray(masking.prunable_weights(ns["pre"].params)[path]))
    np.testing.assert_array_equal(np.asarray(masks[path]) > 0, w <= np.median(w))


def test_the_compact_model_gives_the_masked_models_logits(namespace):
    from mvp_jax.models import build_module
    from mvp_jax.pruning import masking

    ns = namespace
    heads, sizes = ns["small_config"].layer_num_heads, ns["small_config"].layer_intermediate_sizes
    assert list(heads) == [3] * 6 and list(sizes) == [460] * 6  # int(0.3 * 12), int(0.3 * 1536)
    b = batch()
    inputs = (b["input_ids"], b["attention_mask"], b["token_type_ids"])
    dense = ns["pre"].module.apply({"params": masking.multiply_masks(ns["pre"].params,
                                                                     ns["masks"])}, *inputs)
    small = build_module(ns["small_config"], head="classification", num_labels=2)
    np.testing.assert_allclose(np.asarray(small.apply({"params": ns["small_params"]}, *inputs)),
                               np.asarray(dense), atol=1e-5)
