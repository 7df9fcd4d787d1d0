"""Pruning policy: a config's method applied to params (pure functions of pytrees).

The top layer of pruning, above the mask primitives (``mvp_jax.binarizers``), the methods
(``mvp_jax.methods``) and what a score stands for (``mvp_jax.structured``): which masks a
``prune`` config section means at a threshold (``compute_masks``, ``masks_of``,
``final_masks``), the scores a run starts from (``initial_scores``) and ``W * M``
(``multiply_masks``). The names of the layers below that a user needs are importable from
here too (``topk_mask``, ``kth_largest``, ``init_scores``, ``prunable_paths`` ...).
"""

from __future__ import annotations

from typing import Any, Iterable

import jax
import jax.numpy as jnp

from mvp_jax import methods, tree
from mvp_jax.binarizers import (  # noqa: F401  (re-exported: the public mask functions)
    hard_concrete_mask,
    kth_largest,
    random_scores,
    straight_through,
    threshold_mask,
    topk_mask,
)
from mvp_jax.errors import UserError
from mvp_jax.models.layout import PRUNABLE as DEFAULT_PRUNABLE
from mvp_jax.structured import (  # noqa: F401  (re-exported)
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
    ``mvp_jax.methods`` name or object); ``threshold`` means what ``method.threshold`` says.
    Keyword arguments: those of ``selection_masks``."""
    return to_weight_masks(selection_masks(params, scores, **kwargs), params)


def patterns_of(prune) -> tuple[str, ...]:
    """The prunable patterns of a ``prune`` config section (``null``: ``DEFAULT_PRUNABLE``)."""
    return tuple(prune.patterns) if prune.patterns else DEFAULT_PRUNABLE


def selection_of(prune, num_heads: int | None = None) -> dict:
    """The selection keywords of a ``prune`` config section (for ``selection_masks`` /
    ``compute_masks``); ``num_heads``: the model's, for head granularity."""
    return dict(method=prune.method, global_topk=prune.global_topk, patterns=patterns_of(prune),
                granularity=prune.granularity, num_heads=num_heads)


def masks_of(prune, params: PyTree, scores: PyTree | None, threshold, *, rng=None,
             train: bool = True, num_heads: int | None = None) -> dict[str, jax.Array]:
    """``compute_masks`` with the method, selection and patterns of a ``prune`` config section."""
    return compute_masks(params, scores, threshold=threshold, rng=rng, train=train,
                         **selection_of(prune, num_heads))


def initial_scores(prune, params: PyTree, rng: jax.Array | None = None,
                   num_heads: int | None = None) -> PyTree:
    """The scores a run of a ``prune`` config section starts from: learned ones as
    ``prune.mask_init`` / ``mask_scale`` say (``init_scores``), a method's fixed ones (the
    random control's, drawn once here and never updated), or ``{}``."""
    m = methods.get(prune.method)
    kwargs = dict(patterns=patterns_of(prune), granularity=prune.granularity,
                  num_heads=num_heads)
    if m.learns_scores:
        return init_scores(params, prune.mask_init, prune.mask_scale, rng=rng, **kwargs)
    return tree.unflatten(m.draw_scores(selection_inputs(params, **kwargs)))


def final_masks(prune, params: PyTree, scores: PyTree | None,
                num_heads: int | None = None) -> dict[str, jax.Array]:
    """The deterministic masks of a ``prune`` config section at its final threshold (a Python
    float: exact Top-v counts), as evaluation and export use them."""
    return masks_of(prune, params, scores, float(prune.final_threshold), train=False,
                    num_heads=num_heads)


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
        return jnp.float32(1.0)
    kept = sum(jnp.sum(m > 0, dtype=jnp.float32) for m in masks.values())
    return kept / sum(m.size for m in masks.values())
