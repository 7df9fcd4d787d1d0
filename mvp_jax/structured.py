"""Structured units for movement pruning: attention heads and FFN neurons (pure functions).

Granularities (``GRANULARITIES``):

* ``weight``: one score per weight, ``mvp_jax.masking`` as is; no units here.
* ``head``: one score per attention head ``h`` of a layer, shared by the columns
  ``h d:(h+1) d`` of the Q, K and V kernels ``(hidden, n d)`` and the same rows of the attention
  output kernel ``(n d, hidden)``, with ``d = hidden_size / num_attention_heads``. Only the four
  attention matrices are pruned.
* ``neuron``: one score per FFN intermediate unit ``j``: column ``j`` of the FFN-in kernel
  ``(hidden, I)`` and row ``j`` of the FFN-out kernel ``(I, hidden)``. Only the FFN is pruned.
* ``hybrid``: heads in attention, neurons in the FFN.

Unit scores and unit masks are flat dicts of vectors, keyed by the layer's params prefix::

    {prefix}encoder/layer/{i}/attention/heads   [n_heads]
    {prefix}encoder/layer/{i}/ffn/neurons       [intermediate]

(``prefix`` is what precedes ``encoder/`` in the params: ``bert/`` for ``mvp_jax.models.Bert``;
each architecture's layer list and matrix paths are in ``mvp_jax.models.layout``).
Selection is the existing ``mvp_jax.masking`` code applied to these dicts: ``topk_mask(s[p], v)``
per unit group (local: ``v`` of each layer's heads, of each layer's neurons) or
``topk_mask(s, v)`` over the dict (global), ``threshold_mask``, ``hard_concrete_mask``,
``magnitude_mask(unit_magnitudes(...), v)``. ``v`` is then a fraction of units, not of weights.

``expand(unit_masks, params)`` broadcasts each unit mask ``m`` to its weights:
``M_ij = m_u(ij)``. The broadcast is linear, so its transpose sums: with the straight-through
estimator (``dL/dm = dL/dM``) the score gradient of a unit is Eq. (2) summed over its weights::

    dL/dS_u = sum_{ij in u} dL/dM_ij = sum_{ij in u} dL/d(W * M)_ij * W_ij

Biases are not masked, on purpose. A unit whose mask is 0 has zero output rows (attention
output rows of a head, FFN-out row of a neuron), so its Q/K/V and FFN-in biases cannot reach the
layer's output: the masked dense model already equals the model without the unit
(``mvp_jax.compact``), the unit's gradient is Eq. (2) over its weights only (no bias terms), and
remaining weights are counted on the kernels, as for ``weight``.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp

from mvp_jax.errors import UserError
from mvp_jax.models.layout import LAYOUTS, layout_of_path
from mvp_jax.tree import flatten

GRANULARITIES = ("weight", "head", "neuron", "hybrid")
UNIT_SCORE_INITS = ("constant", "uniform", "magnitude")

# unit kind -> (unit path below the layer, ((matrix type, axis indexing units), ...)); the
# layout of the layer's architecture names each type's kernel
UNITS = {
    "heads": ("attention/heads", (("query", 1), ("key", 1), ("value", 1), ("attn_out", 0))),
    "neurons": ("ffn/neurons", (("ffn_in", 1), ("ffn_out", 0))),
}
KINDS = {"weight": (), "head": ("heads",), "neuron": ("neurons",), "hybrid": ("heads", "neurons")}
_LAYER = re.compile("|".join(rf"^(.*{layout.layers}/\d+)/{layout.path('query')}/kernel$"
                             for layout in LAYOUTS))


def check_granularity(granularity: str) -> None:
    """``UserError`` (one line) for a granularity not in ``GRANULARITIES``."""
    if granularity not in GRANULARITIES:
        raise UserError(f"unknown granularity {granularity!r}; choose one of "
                        f"{', '.join(GRANULARITIES)}")


def is_unit_path(path: str) -> bool:
    """Whether ``path`` names a unit vector (``.../attention/heads``, ``.../ffn/neurons``)."""
    return any(path.endswith("/" + unit) for unit, _ in UNITS.values())


def layers(flat: dict[str, Any]) -> list[str]:
    """Params prefixes of the encoder layers, e.g. ``bert/encoder/layer/0``, by layer index."""
    found = [next(g for g in m.groups() if g) for m in map(_LAYER.match, flat) if m]
    if not found:
        raise UserError("params have no encoder layers (.../encoder/layer/<i>/attention/self/"
                        "query/kernel): structured pruning needs an encoder of mvp_jax.models")
    return sorted(found, key=lambda layer: int(layer.rsplit("/", 1)[1]))


def _split(unit_path: str) -> tuple[str, str]:
    """``(layer prefix, kind)`` of a unit path."""
    for kind, (unit, _) in UNITS.items():
        if unit_path.endswith("/" + unit):
            return unit_path[: -len(unit) - 1], kind
    raise UserError(f"{unit_path!r} is not a unit path (.../attention/heads or .../ffn/neurons)")


def members(unit_path: str) -> list[tuple[str, int]]:
    """``[(kernel path, unit axis), ...]`` of the weights a unit vector covers."""
    layer, kind = _split(unit_path)
    layout = layout_of_path(layer)
    return [(f"{layer}/{layout.path(t)}/kernel", axis) for t, axis in UNITS[kind][1]]


def unit_counts(params: Any, granularity: str, num_heads: int) -> dict[str, int]:
    """``{unit path: number of units}`` for every layer and unit kind of ``granularity``.

    ``num_heads`` is the config's ``num_attention_heads``: it fixes the head size ``d =
    hidden / num_heads``, so layer ``i`` has ``(query columns) / d`` heads (fewer in a compact
    model) and ``(FFN-in columns)`` neurons.
    """
    check_granularity(granularity)
    flat = flatten(params)
    out = {}
    for layer in layers(flat):
        for kind in KINDS[granularity]:
            unit = UNITS[kind][0]
            kernel, axis = members(f"{layer}/{unit}")[0]
            width = flat[kernel].shape[axis]
            if kind == "heads":
                d = flat[kernel].shape[0] // num_heads
                if d == 0 or width % d:
                    raise UserError(f"{layer}: {width} query columns are not whole heads of "
                                    f"size hidden / num_attention_heads = {d}")
                width //= d
            out[f"{layer}/{unit}"] = width
    return out


def _broadcast(m: jax.Array, shape: tuple[int, ...], axis: int) -> jax.Array:
    """Unit mask ``m [units]`` as a mask of ``shape``: each unit spans ``shape[axis] / units``
    consecutive entries along ``axis`` (``d`` for heads, 1 for neurons), all of the other axis."""
    width = shape[axis] // max(m.shape[0], 1)
    if width * m.shape[0] != shape[axis]:
        raise UserError(f"a unit mask of {m.shape[0]} units does not divide axis {axis} of a "
                        f"{shape} kernel")
    line = jnp.repeat(m, width, total_repeat_length=shape[axis])
    return jnp.broadcast_to(line[:, None] if axis == 0 else line[None, :], shape)


def _reduce(x: jax.Array, units: int, axis: int) -> jax.Array:
    """Transpose of ``_broadcast``: ``x`` summed over each unit's entries, ``[units]``."""
    line = jnp.sum(x, axis=1 - axis)
    return line.reshape(units, -1).sum(axis=1) if units else jnp.zeros((0,), x.dtype)


def expand(unit_masks: dict[str, jax.Array], params: Any) -> dict[str, jax.Array]:
    """``{kernel path: M}``: every unit mask broadcast to the kernels of its units (Q/K/V
    columns and attention-output rows for heads, FFN-in columns and FFN-out rows for neurons).
    Differentiable; dtype of the masks."""
    flat = flatten(params)
    out = {}
    for path, m in unit_masks.items():
        for kernel, axis in members(path):
            out[kernel] = _broadcast(jnp.asarray(m), tuple(flat[kernel].shape), axis)
    return out


def unit_sums(values: dict[str, jax.Array], counts: dict[str, int]) -> dict[str, jax.Array]:
    """``{unit path: [sum over each unit's weights of values]}`` for the units of ``counts``
    (``unit_counts``); the transpose of ``expand``. Of ``G * W`` (``G = dL/d(W * M)``) it is the
    summed Eq. (2), of ``W**2`` the squared norms."""
    return {path: sum(_reduce(values[k], n, axis) for k, axis in members(path))
            for path, n in counts.items()}


def unit_magnitudes(params: Any, granularity: str, num_heads: int) -> dict[str, jax.Array]:
    """``{unit path: rms}`` with ``rms_u = sqrt(mean_{ij in u} W_ij^2)`` (no gradient).

    Why the RMS: it is an L2 measure, in which a unit's largest weights count most (as in
    magnitude pruning of weights, where the largest survive), and a mean, so heads (``4 hidden
    d`` weights each) and neurons (``2 hidden``) are on one scale for a global Top-v over both
    (``hybrid``). Within one group every unit has as many weights, so it ranks as the L2 norm.
    """
    counts = unit_counts(params, granularity, num_heads)
    flat = flatten(params)
    squares = {k: jnp.square(jax.lax.stop_gradient(jnp.asarray(flat[k], jnp.float32)))
               for path in counts for k, _ in members(path)}
    sizes = {path: sum(flat[k].size for k, _ in members(path)) for path in counts}
    return {path: jnp.sqrt(s * n / max(sizes[path], 1))
            for (path, s), n in zip(unit_sums(squares, counts).items(), counts.values())}


def init_unit_scores(params: Any, granularity: str, num_heads: int, init: str = "constant",
                     scale: float = 0.0, rng: jax.Array | None = None) -> dict[str, jax.Array]:
    """Unit scores ``{unit path: float32 [units]}``.

    ``constant``: all ``scale``; ``uniform``: U(-scale, scale); ``magnitude``: ``S0 = scale *
    rms_u / sqrt(mean_u rms_u^2)`` per unit group (``unit_magnitudes``), so Top-v of the initial
    scores is magnitude pruning of units, as ``masking.init_scores`` does for weights.
    """
    if init not in UNIT_SCORE_INITS:
        raise UserError(f"unknown score init {init!r} for unit scores; choose one of "
                        f"{', '.join(UNIT_SCORE_INITS)}")
    counts = unit_counts(params, granularity, num_heads)
    if init == "constant":
        return {p: jnp.full((n,), scale, jnp.float32) for p, n in counts.items()}
    if init == "uniform":
        if rng is None:
            raise UserError("score init 'uniform' needs a PRNG key")
        return {p: jax.random.uniform(jax.random.fold_in(rng, i), (n,), jnp.float32, -scale, scale)
                for i, (p, n) in enumerate(counts.items())}
    mags = unit_magnitudes(params, granularity, num_heads)
    return {p: scale * m / jnp.maximum(jnp.sqrt(jnp.mean(m * m)) if m.size else 1.0, 1e-12)
            for p, m in mags.items()}


__all__ = [
    "GRANULARITIES",
    "UNITS",
    "UNIT_SCORE_INITS",
    "check_granularity",
    "expand",
    "init_unit_scores",
    "is_unit_path",
    "layers",
    "members",
    "unit_counts",
    "unit_magnitudes",
    "unit_sums",
]
