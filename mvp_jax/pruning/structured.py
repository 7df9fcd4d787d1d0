"""What one score stands for (pure functions): a weight, an attention head or an FFN neuron.

The one place that decides what a unit is, between the methods (which mask whatever they are
given) and ``mvp_jax.pruning.masking`` (which applies a config's method to params): the prunable kernels
(``prunable_paths``), what a method selects from (``selection_inputs``), the initial scores
(``init_scores``), and weight masks from unit masks (``to_weight_masks``).

Granularities (``GRANULARITIES``):

* ``weight``: one score per weight of the prunable kernels (``prunable_paths``): its own unit.
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
Selection is the methods' code (``mvp_jax.pruning.methods``) applied to these dicts: ``topk_mask(s[p], v)``
per unit group (local: ``v`` of each layer's heads, of each layer's neurons) or
``topk_mask(s, v)`` over the dict (global), ``threshold_mask``, ``hard_concrete_mask``, magnitude
pruning of ``unit_magnitudes(...)``. ``v`` is then a fraction of units, not of weights.

``expand(unit_masks, params)`` broadcasts each unit mask ``m`` to its weights:
``M_ij = m_u(ij)``. The broadcast is linear, so its transpose sums: with the straight-through
estimator (``dL/dm = dL/dM``) the score gradient of a unit is Eq. (2) summed over its weights::

    dL/dS_u = sum_{ij in u} dL/dM_ij = sum_{ij in u} dL/d(W * M)_ij * W_ij

Biases are not masked, on purpose. A unit whose mask is 0 has zero output rows (attention
output rows of a head, FFN-out row of a neuron), so its Q/K/V and FFN-in biases cannot reach the
layer's output: the masked dense model already equals the model without the unit
(``mvp_jax.export.compact``), the unit's gradient is Eq. (2) over its weights only (no bias terms), and
remaining weights are counted on the kernels, as for ``weight``.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, cast

import jax
import jax.numpy as jnp

from mvp_jax.choices import SCORE_INITS, UNIT_SCORE_INITS
from mvp_jax.errors import UserError
from mvp_jax.models.layout import LAYOUTS, layout_of_path
from mvp_jax.models.layout import PRUNABLE as DEFAULT_PRUNABLE
from mvp_jax.pruning.methods import GRANULARITIES
from mvp_jax.tree import flatten, unflatten

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
    """``UserError`` (one line) for a granularity not in ``GRANULARITIES``.

    Args:
        granularity: the value to check (``prune.granularity``).

    Raises:
        UserError: a granularity not in ``GRANULARITIES``.
    """
    if granularity not in GRANULARITIES:
        raise UserError(f"unknown granularity {granularity!r}; choose one of "
                        f"{', '.join(GRANULARITIES)}")


def is_unit_path(path: str) -> bool:
    """Whether ``path`` names a unit vector (``.../attention/heads``, ``.../ffn/neurons``).

    Args:
        path: a '/'-joined selection or params path.

    Returns:
        True for a unit path, False for a kernel path.
    """
    return any(path.endswith("/" + unit) for unit, _ in UNITS.values())


def layers(flat: dict[str, Any]) -> list[str]:
    """Params prefixes of the encoder layers, e.g. ``bert/encoder/layer/0``, by layer index.

    Args:
        flat: flat params, ``{'/'-joined path: array}`` (``mvp_jax.tree.flatten``).

    Returns:
        The prefixes, sorted by layer index.

    Raises:
        UserError: params without encoder layers of ``mvp_jax.models``.
    """
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
    """``[(kernel path, unit axis), ...]`` of the weights a unit vector covers.

    Args:
        unit_path: ``{layer}/attention/heads`` (Q, K, V columns, attention-output rows) or
            ``{layer}/ffn/neurons`` (FFN-in columns, FFN-out rows).

    Returns:
        The kernels' paths, each with the axis its units index (1: columns, 0: rows).

    Raises:
        UserError: a path that is no unit path.
    """
    layer, kind = _split(unit_path)
    layout = layout_of_path(layer)
    return [(f"{layer}/{layout.path(t)}/kernel", axis) for t, axis in UNITS[kind][1]]


def unit_counts(params: Any, granularity: str, num_heads: int) -> dict[str, int]:
    """``{unit path: number of units}`` for every layer and unit kind of ``granularity``.

    ``num_heads`` is the config's ``num_attention_heads``: it fixes the head size ``d =
    hidden / num_heads``, so layer ``i`` has ``(query columns) / d`` heads (fewer in a compact
    model) and ``(FFN-in columns)`` neurons.

    Args:
        params: the model's parameters, a pytree.
        granularity: ``weight`` (no units), ``head``, ``neuron`` or ``hybrid``.
        num_heads: the config's attention heads per layer.

    Returns:
        ``{unit path: number of units}``, layer by layer.

    Raises:
        UserError: an unknown granularity, params without encoder layers, or query columns
            that are not whole heads.
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


def expand(values: dict[str, jax.Array], params: Any) -> dict[str, jax.Array]:
    """``{kernel path: M}``: every unit vector broadcast to the kernels of its units (Q/K/V
    columns and attention-output rows for heads, FFN-in columns and FFN-out rows for neurons),
    ``M_ij = m_u(ij)``; entries of kernel paths are kept as they are. Differentiable; dtype of
    the values.

    Args:
        values: ``{selection path: array}``: unit vectors ``[units]`` and/or kernel arrays.
        params: the model's parameters, a pytree (the kernels' shapes).

    Returns:
        ``{kernel path: M}``, each ``M`` shaped as its kernel.

    Raises:
        UserError: a unit vector whose length does not divide its kernels' axis.
    """
    flat = flatten(params)
    out = {}
    for path, m in values.items():
        if not is_unit_path(path):
            out[path] = m
            continue
        for kernel, axis in members(path):
            out[kernel] = _broadcast(jnp.asarray(m), tuple(flat[kernel].shape), axis)
    return out


def to_weight_masks(masks: dict[str, jax.Array], params: Any) -> dict[str, jax.Array]:
    """Masks of the prunable kernels from masks of selection paths: weight masks as they are,
    unit masks broadcast to their weights (``expand``: linear, so a unit score's
    straight-through gradient is Eq. (2) summed over its weights). Under unit masks, the
    prunable kernels no unit covers (the FFN under ``head``) get ``M = 1``: they remain.

    Args:
        masks: ``{selection path: M}`` (``masking.selection_masks``).
        params: the model's parameters, a pytree.

    Returns:
        ``{kernel path: M}``, each ``M`` shaped as its kernel.
    """
    expanded = expand(masks, params)
    if not any(map(is_unit_path, masks)):
        return expanded
    kept = {p: jnp.ones(w.shape, jnp.float32) for p, w in prunable_weights(params).items()
            if p not in expanded}
    return {**kept, **expanded}


def unit_sums(values: dict[str, jax.Array], counts: dict[str, int]) -> dict[str, jax.Array]:
    """``{unit path: [sum over each unit's weights of values]}`` for the units of ``counts``
    (``unit_counts``); the transpose of ``expand``. Of ``G * W`` (``G = dL/d(W * M)``) it is the
    summed Eq. (2), of ``W**2`` the squared norms.

    Args:
        values: ``{kernel path: array}`` shaped as the kernels, covering every kernel of the
            units of ``counts``.
        counts: ``{unit path: number of units}`` (``unit_counts``).

    Returns:
        ``{unit path: [units]}``.
    """
    return {path: cast(jax.Array, sum(_reduce(values[k], n, axis) for k, axis in members(path)))
            for path, n in counts.items()}


def unit_magnitudes(params: Any, granularity: str, num_heads: int) -> dict[str, jax.Array]:
    """``{unit path: rms}`` with ``rms_u = sqrt(mean_{ij in u} W_ij^2)`` (no gradient).

    Why the RMS: it is an L2 measure, in which a unit's largest weights count most (as in
    magnitude pruning of weights, where the largest survive), and a mean, so heads (``4 hidden
    d`` weights each) and neurons (``2 hidden``) are on one scale for a global Top-v over both
    (``hybrid``). Within one group every unit has as many weights, so it ranks as the L2 norm.

    Args:
        params: the model's parameters, a pytree.
        granularity: ``head``, ``neuron`` or ``hybrid`` (``weight``: no units, ``{}``).
        num_heads: the config's attention heads per layer.

    Returns:
        ``{unit path: [units]}``, float32.

    Raises:
        UserError: as ``unit_counts``.
    """
    counts = unit_counts(params, granularity, num_heads)
    flat = flatten(params)
    squares = {k: jnp.square(jax.lax.stop_gradient(jnp.asarray(flat[k], jnp.float32)))
               for path in counts for k, _ in members(path)}
    sizes = {path: sum(flat[k].size for k, _ in members(path)) for path in counts}
    return {path: jnp.sqrt(s * n / max(sizes[path], 1))
            for (path, s), n in zip(unit_sums(squares, counts).items(), counts.values())}


def _heads(granularity: str, num_heads: int | None) -> int:
    if num_heads is None:
        raise UserError(f"granularity {granularity!r} needs the model's num_attention_heads")
    return int(num_heads)


def prunable_paths(params: Any, patterns: Iterable[str] = DEFAULT_PRUNABLE) -> list[str]:
    """'/'-joined key paths (``mvp_jax.tree``) of the parameters matched by any regex of
    ``patterns`` (``re.search``), in leaf order. Raises for a pattern that matches nothing (the
    default patterns span every architecture: of those, some must match).

    Args:
        params: the model's parameters, a pytree.
        patterns: regexes of the prunable paths (default: every architecture's encoder
            kernels, ``mvp_jax.models.layout.PRUNABLE``).

    Returns:
        The matched paths.

    Raises:
        UserError: a pattern that matches no parameter (of the defaults: when none matches).
    """
    patterns = tuple(patterns)
    paths = list(flatten(params))
    compiled = [re.compile(p) for p in patterns]
    matched = [any(regex.search(path) for path in paths) for regex in compiled]
    for pattern, found in zip(patterns, matched):
        if not found and (pattern not in DEFAULT_PRUNABLE or not any(matched)):
            raise UserError(
                f"prunable pattern {pattern!r} matches no parameter; parameters are e.g. "
                f"{', '.join(paths[:4])}"
            )
    return [path for path in paths if any(regex.search(path) for regex in compiled)]


def prunable_weights(params: Any, patterns: Iterable[str] = DEFAULT_PRUNABLE) -> dict:
    """``{path: W}`` of the prunable kernels.

    Args:
        params: the model's parameters, a pytree.
        patterns: regexes of the prunable paths (``prunable_paths``).

    Returns:
        ``{path: W}`` in leaf order.

    Raises:
        UserError: as ``prunable_paths``.
    """
    flat = flatten(params)
    return {p: flat[p] for p in prunable_paths(params, patterns)}


def selection_inputs(params: Any, patterns: Iterable[str] = DEFAULT_PRUNABLE,
                     granularity: str = "weight", num_heads: int | None = None) -> dict:
    """What a method selects from, per selection path: the prunable kernels ``{path: W}``
    (``weight``), or one RMS magnitude per head / neuron ``{unit path: rms}`` (the others).

    Args:
        params: the model's parameters, a pytree.
        patterns: regexes of the prunable kernels (``weight`` only).
        granularity: ``weight``, ``head``, ``neuron`` or ``hybrid``.
        num_heads: the model's attention heads per layer (all but ``weight``).

    Returns:
        ``{selection path: array}``.

    Raises:
        UserError: as ``prunable_paths`` or ``unit_counts``, or no ``num_heads`` for units.
    """
    if granularity == "weight":
        return prunable_weights(params, patterns)
    return unit_magnitudes(params, granularity, _heads(granularity, num_heads))


def init_scores(params: Any, init: str = "constant", scale: float = 0.0,
                rng: jax.Array | None = None, patterns: Iterable[str] = DEFAULT_PRUNABLE, *,
                granularity: str = "weight", num_heads: int | None = None) -> dict:
    """Scores (nested dict) of the selection paths (``selection_inputs``): one per prunable
    weight, or one per head / neuron. With ``x`` a path's input (``|W|``, or ``rms_u``):

    ``constant``: all ``scale``; ``uniform``: U(-scale, scale); ``kaiming`` (weights only):
    torch's ``kaiming_uniform_(a=sqrt(5))``, i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with the
    Flax kernel layout ``(fan_in, fan_out)``, the scale ignored as in the reference;
    ``magnitude`` (not in the paper): ``S0 = scale * x / rms(x)`` per path, so Top-v of the
    initial scores is magnitude pruning and the learned movement reorders it from there.

    Args:
        params: the model's parameters, a pytree.
        init: ``constant``, ``uniform``, ``kaiming`` or ``magnitude`` (``prune.mask_init``).
        scale: the constant, the uniform half-width or the magnitude scale
            (``prune.mask_scale``).
        rng: PRNG key, required by ``uniform`` and ``kaiming``.
        patterns: regexes of the prunable kernels (``weight`` only).
        granularity: ``weight``, ``head``, ``neuron`` or ``hybrid``.
        num_heads: the model's attention heads per layer (all but ``weight``).

    Returns:
        float32 scores, a nested dict mirroring the selection paths.

    Raises:
        UserError: an unknown init (or ``kaiming`` for unit scores), no ``rng`` where one is
            needed, or as ``selection_inputs``.
    """
    if init not in SCORE_INITS:
        raise UserError(f"unknown score init {init!r}; choose one of {', '.join(SCORE_INITS)}")
    if granularity != "weight" and init not in UNIT_SCORE_INITS:
        raise UserError(f"unknown score init {init!r} for unit scores; choose one of "
                        f"{', '.join(UNIT_SCORE_INITS)}")
    if init in ("uniform", "kaiming") and rng is None:
        raise UserError(f"score init {init!r} needs a PRNG key")
    scores = {}
    for i, (path, x) in enumerate(selection_inputs(params, patterns, granularity,
                                                   num_heads).items()):
        x = jnp.abs(jnp.asarray(x, jnp.float32))
        if init == "constant":
            scores[path] = jnp.full(x.shape, scale, jnp.float32)
        elif init == "magnitude":
            rms = jnp.sqrt(jnp.mean(x * x)) if x.size else 1.0
            scores[path] = scale * x / jnp.maximum(rms, 1e-12)
        else:
            bound = scale if init == "uniform" else 1.0 / math.sqrt(x.shape[0])
            key = cast(jax.Array, rng)  # checked above: uniform and kaiming have a key
            scores[path] = jax.random.uniform(jax.random.fold_in(key, i), x.shape, jnp.float32,
                                              -bound, bound)
    return unflatten(scores)


__all__ = [
    "GRANULARITIES",
    "SCORE_INITS",
    "UNITS",
    "UNIT_SCORE_INITS",
    "check_granularity",
    "expand",
    "init_scores",
    "is_unit_path",
    "layers",
    "members",
    "prunable_paths",
    "prunable_weights",
    "selection_inputs",
    "to_weight_masks",
    "unit_counts",
    "unit_magnitudes",
    "unit_sums",
]
