"""Mask primitives, pure functions of arrays: binarizers, straight-through estimator, k-th value.

The bottom layer of pruning: it knows no method, no granularity and no config
(``mvp_jax.pruning.methods`` builds the methods from these, ``mvp_jax.pruning.masking`` applies them to params).

Notation follows Sanh, Wolf & Rush (2020): a prunable weight ``W`` has importance scores ``S`` of
the same shape and a mask ``M``; the layer computes ``a = (W * M) x``.

* ``topk_mask(S, v)``: ``M = Top_v(S)``, 1 on the ``int(v * size)`` highest scores (Eq. 1).
* ``threshold_mask(S, tau)``: ``M = 1[sigmoid(S) > tau]`` (soft movement), never below 0.5%.
* ``hard_concrete_mask(S, rng, train)``: the L0 relaxation of Louizos et al. (2017).
* ``random_scores(W, path)``: fixed pseudo-random scores; ``Top_v`` of them is the random-pruning
  control (method ``random``: a mask that knows nothing of the weights or the task).

The binary masks use the straight-through estimator (Eq. 2): the backward pass ignores the
binarizer, so ``dL/dS = dL/dM = dL/d(W*M) * W``.

Selection of the k-th largest value never sorts: floats are mapped to order-preserving uint32
keys and the k-th key is found bit by bit (32 rounds, each one fused count ``sum(key >= t)``),
so the same code selects per matrix or globally over a pytree (counts simply add up), and on
sharded scores each round is a local count plus one scalar all-reduce: no score is gathered.
"""

from __future__ import annotations

import zlib
from functools import partial
from typing import Any, Callable, Sequence, cast

import jax
import jax.numpy as jnp
import numpy as np

from mvp_jax.errors import UserError

PyTree = Any

# Hard-concrete stretch interval (l, r) and temperature beta (Louizos et al. 2017; the paper).
L0_LEFT, L0_RIGHT, L0_BETA = -0.1, 1.1, 2.0 / 3.0

_SIGN = np.uint32(0x80000000)


# ----------------------------------------------------------------------------------------------
# k-th largest value without sorting
# ----------------------------------------------------------------------------------------------


def _order_keys(x: jax.Array) -> jax.Array:
    """Map float32 to uint32 so that ``a < b`` iff ``key(a) < key(b)`` (and -0 < +0)."""
    bits = jax.lax.bitcast_convert_type(jnp.asarray(x, jnp.float32), jnp.uint32)
    return jnp.where(bits & _SIGN, ~bits, bits | _SIGN)


def _from_order_key(key: jax.Array) -> jax.Array:
    bits = jnp.where(key & _SIGN, key & ~_SIGN, ~key)
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def radix_bits() -> int:
    """Bits decided per counting pass of the k-th value search, for the default backend.

    1 on CPU (32 passes of one count: XLA's CPU reductions are compute-bound, so more
    candidates per pass cost more), 4 on GPU/TPU (8 passes of 15 counts each; passes there are
    memory-bound, so 4x fewer reads of the scores). Any value in {1, 2, 4, 8} gives the same
    exact result.

    Returns:
        1 or 4.
    """
    return 1 if jax.default_backend() == "cpu" else 4


def _count_at_least(leaves: Sequence[jax.Array], key) -> jax.Array:
    """``#{x : order_key(x) >= key}`` over every leaf (keys recomputed, never stored), int32."""
    return cast(jax.Array, sum(jnp.sum(_order_keys(x) >= key, dtype=jnp.int32) for x in leaves))


def _kth_key_and_count(leaves: Sequence[jax.Array], k, bits: int | None = None):
    """``(t, #{key >= t})``: the largest uint32 ``t`` with ``#{key >= t} >= k``, i.e. the k-th
    largest order key (1-indexed) over all ``leaves`` (float arrays of any shape) together, and
    the count at it (kept from the search, no extra pass).

    Built from the most significant bits down, ``bits`` at a time (default ``radix_bits()``):
    ``32 / bits`` rounds, each one fused pass over every leaf counting ``key(x) >= candidate``
    for the ``2**bits - 1`` candidates that extend the prefix found so far (keys recomputed
    inside the count, never stored). Nothing is flattened or gathered: on sharded leaves each
    count is a local sum plus one small all-reduce. Counts are int32, so at most 2**31 - 1
    entries in total.
    """
    bits = radix_bits() if bits is None else int(bits)
    if bits not in (1, 2, 4, 8):
        raise UserError(f"bits={bits} must be 1, 2, 4 or 8")
    k = jnp.asarray(k, jnp.int32)
    total = jnp.int32(sum(int(np.size(x)) for x in leaves))  # every key is >= 0

    if bits == 1:
        def round_(i, state):
            result, count = state
            candidate = result | (jnp.uint32(1) << (jnp.uint32(31) - i.astype(jnp.uint32)))
            c = _count_at_least(leaves, candidate)
            return jnp.where(c >= k, candidate, result), jnp.where(c >= k, c, count)
    else:
        digits = jnp.arange(1, 2 ** bits, dtype=jnp.uint32)

        def round_(i, state):
            result, count = state
            shift = jnp.uint32(32 - bits) - i.astype(jnp.uint32) * jnp.uint32(bits)
            candidates = result | (digits << shift)  # increasing; counts decrease
            counts = sum(jnp.sum(_order_keys(x)[..., None] >= candidates,
                                 axis=tuple(range(x.ndim)), dtype=jnp.int32) for x in leaves)
            digit = jnp.sum(counts >= k, dtype=jnp.uint32)  # the largest candidate still >= k
            count = jnp.where(digit > 0, counts[jnp.maximum(digit, 1) - 1], count)
            return result | (digit << shift), count

    return jax.lax.fori_loop(0, 32 // bits, round_, (jnp.uint32(0), total))


@partial(jax.jit, static_argnames="bits")
def _kth_key(leaves: Sequence[jax.Array], k, bits: int | None = None) -> jax.Array:
    """The k-th largest order key over all ``leaves`` together (``_kth_key_and_count``)."""
    return _kth_key_and_count(leaves, k, bits)[0]


def kth_largest(x: PyTree, k) -> jax.Array:
    """Exact k-th largest value (1-indexed) of an array, or of all leaves of a pytree together.

    ``kth_largest(x, k) == jnp.sort(x.ravel())[-k]`` for ``1 <= k <= x.size``, found without
    sorting by bisection over the float32 bit pattern. ``k`` may be traced.

    Args:
        x: an array, or a pytree of arrays taken together (read as float32).
        k: the rank, ``1 <= k <= size``; a Python int or a traced integer scalar.

    Returns:
        The k-th largest value, a float32 scalar.

    Raises:
        ValueError: an empty pytree.
    """
    leaves = jax.tree_util.tree_leaves(x)
    if not leaves:
        raise ValueError("kth_largest: got an empty pytree")
    return _from_order_key(_kth_key([jnp.asarray(leaf, jnp.float32) for leaf in leaves], k))


# ----------------------------------------------------------------------------------------------
# Binarizers (forward only) and the straight-through wrapper
# ----------------------------------------------------------------------------------------------


def check_fraction(name: str, value) -> None:
    """Check that a Python number ``value`` is a fraction of weights kept, in ``(0, 1]``.

    Traced values are not checked.

    Args:
        name: the value's name in the message.
        value: the fraction.

    Raises:
        UserError: a Python number outside ``(0, 1]``.
    """
    if isinstance(value, (int, float)) and not 0.0 < float(value) <= 1.0:
        raise UserError(f"{name}={value!r} is outside (0, 1]: it is the fraction of weights kept")


def keep_count(keep, size: int):
    """The number of entries Top-v keeps: ``int(keep * size)``.

    Args:
        keep: the fraction kept, a Python number (exact) or a traced scalar (in float32).
        size: the number of entries ranked.

    Returns:
        A Python int for a Python ``keep``, else an int32 scalar.
    """
    if isinstance(keep, (int, float)):
        return int(keep * size)
    return jnp.floor(jnp.asarray(keep, jnp.float32) * size).astype(jnp.int32)


def _rows(x: jax.Array) -> jax.Array:
    """``x`` as a matrix of rows: ``(prod(shape[:-1]), shape[-1])``; a vector is one row."""
    return x.reshape(1, -1) if x.ndim < 2 else x.reshape(-1, x.shape[-1])


def _split_ties(keys: Sequence[jax.Array], t, k, n_at_least) -> list[jax.Array]:
    """Which entries equal to ``t`` to keep so that ``k`` are kept in all, given
    ``n_at_least = #{key >= t}``: the first ``k - #{key > t}`` ties in the order (leaf, then
    row-major position), per leaf as ``[rows, cols]`` booleans.

    Counts only, no flattening or sorting: one pass counts the ties of every row; an exclusive
    running sum over the (few) rows tells each row how many of its ties to keep, so rows are kept
    whole or not at all except one, the row where the count runs out; that row is read out by a
    masked sum over rows and ranked by a running sum along it.
    """
    tied = [_rows(key) == t for key in keys]
    per_row = [jnp.sum(tie, axis=1, dtype=jnp.int32) for tie in tied]
    all_rows = jnp.concatenate(per_row)
    ties_left = k - (n_at_least - jnp.sum(all_rows))  # k minus the entries above t
    before = jnp.cumsum(all_rows) - all_rows  # ties in the rows before each row
    take = jnp.clip(ties_left - before, 0, all_rows)  # ties kept in each row
    partial = (take > 0) & (take < all_rows)  # at most one row
    p = jnp.where(jnp.any(partial), jnp.argmax(partial), -1)
    take_p = jnp.where(p >= 0, take[jnp.maximum(p, 0)], 0)
    masks, offset = [], 0
    for tie, n_tied in zip(tied, per_row):
        rows = tie.shape[0]
        whole = (take[offset:offset + rows] == n_tied) & (n_tied > 0)  # every tie of the row
        is_p = jax.lax.broadcasted_iota(jnp.int32, tie.shape, 0) == p - offset
        row_p = jnp.any(tie & is_p, axis=0)  # the partial row (all False if not in this leaf)
        keep_p = row_p & (jnp.cumsum(row_p, dtype=jnp.int32) <= take_p)
        masks.append(tie & (whole[:, None] | (is_p & keep_p[None, :])))
        offset += rows
    return masks


@jax.jit
def _topk_binarize_leaves(leaves: Sequence[jax.Array], k) -> list[jax.Array]:
    """Masks with exactly ``k`` ones over all leaves together.

    Ties at the k-th value are broken by position (first leaf, then row-major index first), so
    the count is exact for tied and constant scores too. The tie split (``_split_ties``: counts
    and running sums over rows, so sharded leaves are never gathered) runs only when ties must be
    split (``lax.cond``); otherwise the mask is ``S >= t`` for the k-th value ``t``.
    """
    k = jnp.asarray(k, jnp.int32)
    leaves = [jnp.asarray(leaf) for leaf in leaves]
    t, n_at_least = _kth_key_and_count(leaves, jnp.maximum(k, 1))
    keys = [_order_keys(leaf) for leaf in leaves]

    def split():
        ties = _split_ties(keys, t, k, n_at_least)
        return [((key > t) | tie.reshape(key.shape)) for key, tie in zip(keys, ties)]

    # every tie kept (the usual case for learned scores): no split needed
    keep = jax.lax.cond(n_at_least > k, split, lambda: [key >= t for key in keys])
    return [(m & (k > 0)).astype(leaf.dtype) for m, leaf in zip(keep, leaves)]


def _topk_binarize(scores: PyTree, k) -> PyTree:
    leaves, treedef = jax.tree_util.tree_flatten(scores)
    return jax.tree_util.tree_unflatten(treedef, _topk_binarize_leaves(leaves, k))


def _tree_size(tree: PyTree) -> int:
    return sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(tree))


@partial(jax.jit, static_argnames="sigmoid")
def _threshold_binarize(scores: jax.Array, tau, sigmoid: bool) -> jax.Array:
    """``1[sigmoid(S) > tau]``; if that keeps fewer than ``int(0.005 n) + 1`` entries, keep those
    above the ``(int(0.005 n) + 2)``-th largest score instead (the reference's 0.5% floor)."""
    n = scores.size
    n_min = int(0.005 * n) + 1
    values = jax.nn.sigmoid(scores) if sigmoid else scores
    mask = values > tau
    # the floor's k-th value (32 counting passes) only when the floor applies
    return jax.lax.cond(
        jnp.sum(mask, dtype=jnp.int32) < n_min,
        lambda: (scores > kth_largest(scores, min(n_min + 1, n))).astype(scores.dtype),
        lambda: mask.astype(scores.dtype))


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def straight_through(binarize: Callable, scores: PyTree, *args):
    """The straight-through estimator: ``binarize(scores, *args)`` forward, identity backward.

    The backward pass hands the cotangent to ``scores`` unchanged, ``dL/dS = dL/dM`` (Bengio
    et al. 2013; the paper's Eq. 2, with ``dL/dM = dL/d(W * M) * W``), and zeros to ``args``
    (thresholds, keep counts).

    Args:
        binarize: ``(scores, *args) -> masks`` of the structure of ``scores``; not
            differentiated.
        scores: an array or a pytree of arrays.
        *args: the binarizer's other arguments.

    Returns:
        ``binarize(scores, *args)``.
    """
    return binarize(scores, *args)


def _st_fwd(binarize, scores, *args):
    return binarize(scores, *args), args


def _zero_cotangent(x):
    if jnp.issubdtype(jnp.result_type(x), jnp.integer):
        return np.zeros(np.shape(x), jax.dtypes.float0)
    return jnp.zeros_like(x)


def _st_bwd(binarize, args, g):
    return (g, *jax.tree_util.tree_map(_zero_cotangent, args))


straight_through.defvjp(_st_fwd, _st_bwd)


def topk_mask(scores: PyTree, keep) -> PyTree:
    """``Top_v(S)``: 1 for the ``int(keep * size)`` highest scores, else 0; straight-through.

    ``scores`` may be one array (local selection) or a pytree (global: one threshold over all
    leaves, the count taken over their total size). Exactly ``int(keep * size)`` entries are
    kept: ties at the k-th value are broken by position (leaf order, then row-major). The
    gradient to ``scores`` is the straight-through estimator's (``straight_through``).

    Args:
        scores: ``S``, an array or a pytree of arrays.
        keep: the fraction ``v`` kept, in ``(0, 1]``; a Python number or a traced scalar.

    Returns:
        The masks, of the structure, shapes and dtypes of ``scores``.

    Raises:
        UserError: a Python ``keep`` outside ``(0, 1]``.
    """
    check_fraction("keep", keep)
    return straight_through(_topk_binarize, scores, keep_count(keep, _tree_size(scores)))


def threshold_mask(scores: jax.Array, tau, sigmoid: bool = True) -> jax.Array:
    """``M = 1[sigmoid(S) > tau]`` (or ``1[S > tau]``) with a 0.5% floor; straight-through.

    Soft movement's mask. The floor, as in the reference code: if fewer than
    ``int(0.005 n) + 1`` of the ``n`` entries pass, the mask keeps instead the scores above the
    ``(int(0.005 n) + 2)``-th largest. The gradient to ``scores`` is the straight-through
    estimator's.

    Args:
        scores: ``S``, an array.
        tau: the threshold, a Python number or a traced scalar.
        sigmoid: compare ``sigmoid(S)`` (True) or ``S`` itself (False) with ``tau``.

    Returns:
        The 0/1 mask, of the shape and dtype of ``scores``.
    """
    return straight_through(
        partial(_threshold_binarize, sigmoid=sigmoid), scores, jnp.asarray(tau, jnp.float32)
    )


RANDOM_SCORES_SEED = 0


def random_scores(weight: jax.Array, path: str) -> jax.Array:
    """Fixed scores ``U(0, 1)`` for the random-pruning control: the same for every step and run
    (drawn from ``PRNGKey(RANDOM_SCORES_SEED)`` folded with the CRC-32 of the matrix's path).

    Args:
        weight: the matrix scored (only its shape is read).
        path: the matrix's path, which seeds its scores.

    Returns:
        float32 scores of ``weight``'s shape.
    """
    key = jax.random.fold_in(jax.random.PRNGKey(RANDOM_SCORES_SEED),
                             zlib.crc32(path.encode()) & 0x7FFFFFFF)
    return jax.random.uniform(key, weight.shape, jnp.float32)


def hard_concrete_mask(scores: jax.Array, rng: jax.Array | None, train: bool) -> jax.Array:
    """L0 mask: ``min(1, max(0, s (r - l) + l))`` with ``l=-0.1, r=1.1``.

    Training: ``s = sigmoid((log u - log(1 - u) + S) / beta)``, ``u ~ U(0.0001, 0.9999)``,
    ``beta = 2/3``; gradients flow through this relaxation. Evaluation: ``s = sigmoid(S)``.
    (Louizos et al. 2017.)

    Args:
        scores: ``S`` (the log-odds ``log alpha``), an array.
        rng: PRNG key of the noise ``u``; required when ``train``, ignored otherwise.
        train: sample the relaxed mask (True) or take the deterministic one (False).

    Returns:
        Masks in ``[0, 1]`` of the shape of ``scores``.

    Raises:
        ValueError: ``train`` without ``rng``.
    """
    if train:
        if rng is None:
            raise ValueError("hard_concrete_mask: a PRNG key is required when train=True")
        u = jax.random.uniform(rng, scores.shape, jnp.float32, 0.0001, 0.9999)
        s = jax.nn.sigmoid((jnp.log(u) - jnp.log1p(-u) + scores) / L0_BETA)
    else:
        s = jax.nn.sigmoid(scores)
    return jnp.clip(s * (L0_RIGHT - L0_LEFT) + L0_LEFT, 0.0, 1.0)
