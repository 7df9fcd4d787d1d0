"""Masks of a method applied to params (pure functions of pytrees).

Above the mask primitives (``mvp_jax.pruning.binarizers``), the methods
(``mvp_jax.pruning.methods``) and what a score stands for (``mvp_jax.pruning.structured``): the
masks of a method at a threshold (``compute_masks``, ``selection_masks``) and ``W * M``
(``multiply_masks``). ``mvp_jax.pruning.pruner.Pruner`` fills in their keywords from a ``prune``
config section. The names of the layers below that a user needs are importable from here too
(``topk_mask``, ``kth_largest``, ``init_scores``, ``prunable_paths`` ...).
"""
from __future__ import annotations

from typing import Any, Iterable, cast

import jax
import jax.numpy as jnp

from mvp_jax import tree
from mvp_jax.errors import UserError
from mvp_jax.models.layout import PRUNABLE as DEFAULT_PRUNABLE
from mvp_jax.pruning import methods
from mvp_jax.pruning.binarizers import (  # noqa: F401  (re-exported: the public mask functions)
    hard_concrete_mask,
    kth_largest,
    random_scores,
    straight_through,
    threshold_mask,
    topk_mask,
)
from mvp_jax.pruning.structured import (  # noqa: F401  (re-exported)
    SCORE_INITS,
    init_scores,
    prunable_paths,
    prunable_weights,
    selection_inputs,
    to_weight_masks,
)

PyTree = Any

METHODS = methods.NAMES


def magnitude_mask(weights: PyTree, keep) -> PyTree:
    """``Top_v(|W|)`` over an array or a pytree (global): ``methods.Magnitude``'s mask, no
    gradient through it."""
    leaves, treedef = jax.tree_util.tree_flatten(weights)
    masks = methods.get("magnitude").masks(dict(enumerate(leaves)), {}, keep, global_topk=True)
    return jax.tree_util.tree_unflatten(treedef, [masks[i] for i in range(len(leaves))])


def selection_masks(
    params: PyTree,
    scores: PyTree | None,
    *,
    method: str | methods.Method,
    threshold=1.0,
    rng: jax.Array | None = None,
    train: bool = True,
    global_topk: bool = False,
    patterns: Iterable[str] = DEFAULT_PRUNABLE,
    granularity: str = "weight",
    num_heads: int | None = None,
) -> dict[str, jax.Array]:
    """``method``'s masks of the selection paths (``selection_inputs``), ``{path: mask}``."""
    m = methods.get(method)
    inputs = selection_inputs(params, patterns, granularity, num_heads)
    flat_scores = tree.flatten(scores) if scores else {}
    if m.learns_scores:
        if scores is None:
            raise UserError(f"pruning method {m.name!r} needs scores (see init_scores)")
        missing = [p for p in inputs if p not in flat_scores]
        if missing:
            raise UserError(f"scores are missing for prunable parameters: {', '.join(missing)}")
    return m.masks(inputs, flat_scores, threshold, rng=rng, train=train, global_topk=global_topk)


def compute_masks(params: PyTree, scores: PyTree | None, **kwargs) -> dict[str, jax.Array]:
    """Masks of the prunable kernels, a flat ``{path: mask}`` dict, of ``method`` (a
    ``mvp_jax.pruning.methods`` name or object); ``threshold`` means what ``method.threshold`` says.
    Keyword arguments: those of ``selection_masks``."""
    return to_weight_masks(selection_masks(params, scores, **kwargs), params)


def apply_masks(params: PyTree, scores: PyTree | None = None, **mask_kwargs) -> PyTree:
    """``params`` with every prunable kernel ``W`` replaced by ``W * M`` (see ``compute_masks``).

    A params -> params transform: the model that consumes the result knows nothing of pruning.
    """
    return multiply_masks(params, compute_masks(params, scores, **mask_kwargs))


def multiply_masks(params: PyTree, masks: dict[str, jax.Array]) -> PyTree:
    """``params`` (any pytree) with ``W <- W * masks[path]`` for every path in ``masks``."""
    return tree.map_with_path(
        lambda path, w: w * masks[path].astype(w.dtype) if path in masks else w, params)


def remaining_fraction(masks: dict[str, jax.Array]) -> jax.Array:
    """Fraction of prunable weights whose mask is non-zero (the paper's "remaining weights")."""
    if not masks:
        return jnp.asarray(1.0, jnp.float32)
    kept = sum(jnp.sum(m > 0, dtype=jnp.float32) for m in masks.values())
    return cast(jax.Array, kept / sum(m.size for m in masks.values()))
