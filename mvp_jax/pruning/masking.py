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
    """Magnitude pruning's mask ``Top_v(|W|)`` over an array or a pytree (one global Top-v).

    The mask of ``methods.Magnitude``: 1 on the ``int(keep * n)`` largest ``|W|`` of all ``n``
    entries together, 0 elsewhere, with no gradient through it.

    Args:
        weights: an array, or a pytree of arrays ranked together.
        keep: the fraction ``v`` of entries kept, in ``(0, 1]`` (a Python number or traced).

    Returns:
        The masks, a pytree of the structure and shapes of ``weights``.

    Raises:
        UserError: a Python ``keep`` outside ``(0, 1]``.
    """
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
    """``method``'s masks of the selection paths (``selection_inputs``), ``{path: mask}``.

    The selection paths are the prunable kernels (``weight``), or one vector per layer of its
    heads and of its FFN neurons (the other granularities); ``compute_masks`` broadcasts these
    to the kernels.

    Args:
        params: the model's parameters, a pytree (the prunable kernels are read from it).
        scores: the learned or fixed scores, a pytree mirroring the selection paths
            (``init_scores``); None or empty for the methods that need none.
        method: a ``mvp_jax.pruning.methods`` name or object.
        threshold: what ``method.threshold`` says (fraction kept, sigmoid ``tau`` ...); a
            Python number or a traced scalar.
        rng: PRNG key of random masks (L0 in training).
        train: False for deterministic masks (no hard-concrete noise).
        global_topk: one Top-v over all selection paths instead of one per path.
        patterns: regexes of the prunable kernel paths (``re.search``).
        granularity: what one score stands for: ``weight``, ``head``, ``neuron`` or ``hybrid``.
        num_heads: the model's attention heads per layer (needed by ``head`` and ``hybrid``).

    Returns:
        ``{selection path: M}``, ``M`` shaped as the path's kernel or unit vector.

    Raises:
        UserError: an unknown method or granularity, a pattern that matches no parameter,
            missing scores for a method that learns them, or no ``num_heads`` for heads.
    """
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
    """Masks of the prunable kernels, a flat ``{path: mask}`` dict, of ``method``.

    The masks of ``selection_masks`` with unit masks (heads, neurons) broadcast to the weights
    they cover (``to_weight_masks``); ``threshold`` means what ``method.threshold`` says.

    Args:
        params: the model's parameters, a pytree.
        scores: the scores, a pytree mirroring the selection paths, or None.
        **kwargs: those of ``selection_masks`` (``method`` is required).

    Returns:
        ``{kernel path: M}``, ``M`` shaped as the kernel.

    Raises:
        UserError: as ``selection_masks``.
    """
    return to_weight_masks(selection_masks(params, scores, **kwargs), params)


def apply_masks(params: PyTree, scores: PyTree | None = None, **mask_kwargs) -> PyTree:
    """``params`` with every prunable kernel ``W`` replaced by ``W * M`` (see ``compute_masks``).

    A params -> params transform: the model that consumes the result knows nothing of pruning.

    Args:
        params: the model's parameters, a pytree.
        scores: the scores, a pytree mirroring the selection paths, or None.
        **mask_kwargs: those of ``selection_masks`` (``method`` is required).

    Returns:
        A pytree of the structure of ``params``.

    Raises:
        UserError: as ``selection_masks``.
    """
    return multiply_masks(params, compute_masks(params, scores, **mask_kwargs))


def multiply_masks(params: PyTree, masks: dict[str, jax.Array]) -> PyTree:
    """``params`` (any pytree) with ``W <- W * masks[path]`` for every path in ``masks``.

    Args:
        params: a pytree of arrays.
        masks: ``{'/'-joined key path: M}``, ``M`` broadcastable to its array (cast to its
            dtype); the paths not in ``masks`` are left as they are.

    Returns:
        A pytree of the structure of ``params``.
    """
    return tree.map_with_path(
        lambda path, w: w * masks[path].astype(w.dtype) if path in masks else w, params)


def remaining_fraction(masks: dict[str, jax.Array]) -> jax.Array:
    """Fraction of prunable weights whose mask is non-zero (the paper's "remaining weights").

    Args:
        masks: ``{kernel path: M}`` (``compute_masks``).

    Returns:
        A float32 scalar, ``sum_paths #{M > 0} / sum_paths size(M)``; 1 without masks.
    """
    if not masks:
        return jnp.asarray(1.0, jnp.float32)
    kept = sum(jnp.sum(m > 0, dtype=jnp.float32) for m in masks.values())
    return cast(jax.Array, kept / sum(m.size for m in masks.values()))
