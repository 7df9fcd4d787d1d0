"""Sparsity penalties on the scores pytree (paper Section 4).

Each is a mean over matrices of a per-matrix mean, as the reference code
(``sum_matrices(sum(f(S)) / numel(S)) / n_matrices``).
"""

from __future__ import annotations

import math
from typing import cast

import jax
import jax.numpy as jnp

from mvp_jax.errors import UserError
from mvp_jax.pruning.binarizers import L0_BETA, L0_LEFT, L0_RIGHT


def _mean_over_matrices(fn, scores) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(scores)
    if not leaves:
        raise ValueError("regularizer: the scores pytree is empty")
    return cast(jax.Array, sum(jnp.mean(fn(s)) for s in leaves) / len(leaves))


def l1_sigmoid(scores) -> jax.Array:
    """Soft movement penalty ``R(S) = mean_matrices mean_ij sigmoid(S_ij)`` (sigmoid >= 0, so L1).

    Args:
        scores: the learned scores, a non-empty pytree of arrays (one leaf per matrix).

    Returns:
        ``R(S)``, a scalar.

    Raises:
        ValueError: an empty pytree.
    """
    return _mean_over_matrices(jax.nn.sigmoid, scores)


def expected_l0(scores) -> jax.Array:
    """Expected L0 of the hard-concrete masks, per matrix ``mean_ij sigmoid(S_ij - beta log(-l/r))``:
    ``P(mask_ij > 0)`` for ``l=-0.1, r=1.1, beta=2/3`` (Louizos et al. 2017).

    Args:
        scores: the learned scores, a non-empty pytree of arrays (one leaf per matrix).

    Returns:
        The mean over matrices of the expected fraction of non-zero mask entries, a scalar.

    Raises:
        ValueError: an empty pytree.
    """
    shift = L0_BETA * math.log(-L0_LEFT / L0_RIGHT)
    return _mean_over_matrices(lambda s: jax.nn.sigmoid(s - shift), scores)


def regularizer(name: str):
    """The penalty function called ``name`` (``l1`` or ``l0``).

    Args:
        name: ``l1`` (``l1_sigmoid``) or ``l0`` (``expected_l0``), as ``prune.regularization``.

    Returns:
        The function ``scores -> R(S)``.

    Raises:
        UserError: another name.
    """
    table = {"l1": l1_sigmoid, "l0": expected_l0}
    if name not in table:
        raise UserError(f"unknown regularization {name!r}; choose one of {', '.join(table)}")
    return table[name]
