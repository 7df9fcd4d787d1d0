"""Compact models: pruned attention heads and FFN neurons physically removed.

``compact_params`` applies the masks (``W * M``) and removes every unit that is dead in the
masked params; what is left is a smaller dense BERT computing the same function (up to float
rounding). In a layer with head size ``d``, a head ``h`` is dead when

* its attention-output rows ``O[h d:(h+1) d]`` are all zero: it adds nothing; or
* its V columns are all zero: its output is ``softmax(.) (1 b_v) = b_v`` at every position (the
  attention probabilities sum to 1), a constant; ``b_v[h] O[h]`` is folded into the output bias.

An FFN neuron ``j`` is dead when its FFN-out row is zero, or its FFN-in column is zero (then
``act(b_in[j]) W_out[j]`` is a constant, folded into the FFN-out bias). Under unit masks (head,
neuron, hybrid) every masked unit is dead by the first rule; under weight masks of any
granularity the rows and columns that unstructured pruning emptied are removed too.

The compact config is a ``BertConfig`` with ``layer_num_heads`` and ``layer_intermediate_sizes``
(read by ``mvp_jax.models.bert``), or a plain one when the result is uniform (every head kept,
one FFN width). ``save_compact`` writes it for ``load_pretrained``.

transformers 5 (``BertConfig``/``BertSelfAttention``) has one ``num_attention_heads`` and one
``intermediate_size`` for all layers and the head size is ``hidden_size / num_attention_heads``;
``pruned_heads`` and ``prune_heads`` no longer exist. So it can represent the FFN at one width
(the widest kept layer; narrower layers padded with zero neurons) but no removed head: heads stay
as zeros. ``to_transformers`` / ``save_transformers`` write that exact, partly compacted model.
"""

from __future__ import annotations

import os
from typing import Any

import jax.numpy as jnp
import numpy as np

from mvp_jax.export.huggingface import ExportError, export_hf
from mvp_jax.models.bert import ACTIVATIONS, BertSpec
from mvp_jax.models.layout import layout_of, layout_of_path
from mvp_jax.pruning.masking import multiply_masks
from mvp_jax.pruning.structured import UNITS, layers, members, to_weight_masks
from mvp_jax.tree import flatten, unflatten

PER_LAYER = ("layer_num_heads", "layer_intermediate_sizes")

# unit kind -> (the matrix whose zero columns make a unit constant, the matrix it feeds)
_FOLD = {"heads": ("value", "attn_out"), "neurons": ("ffn_in", "ffn_out")}


def layer_sizes(config: Any) -> tuple[list[int], list[int]]:
    """``(heads per layer, FFN width per layer)`` of a (compact or plain) ``BertConfig``."""
    spec = BertSpec.from_config(config)
    n = range(spec.num_hidden_layers)
    return [spec.heads(i) for i in n], [spec.intermediate(i) for i in n]


def with_layer_sizes(config: Any, heads: list[int], sizes: list[int]) -> Any:
    """A copy of ``config`` with these per-layer sizes; plain BERT keys when uniform."""
    cfg = config.__class__.from_dict(config.to_dict())
    for key in PER_LAYER:
        if hasattr(cfg, key):
            delattr(cfg, key)
    if all(h == cfg.num_attention_heads for h in heads) and len(set(sizes)) == 1:
        key = layout_of(cfg.model_type).config_keys.get("intermediate_size", "intermediate_size")
        setattr(cfg, key, int(sizes[0]))
    else:
        cfg.layer_num_heads = [int(h) for h in heads]
        cfg.layer_intermediate_sizes = [int(s) for s in sizes]
    return cfg


def _bias(kernel: str) -> str:
    return kernel[: -len("kernel")] + "bias"


def _take_units(flat: dict, unit_path: str, index: np.ndarray) -> None:
    """Keep entries ``index`` along each member kernel's unit axis (and of the biases of the
    column-indexed kernels, whose outputs are the units)."""
    for kernel, axis in members(unit_path):
        flat[kernel] = np.take(flat[kernel], index, axis=axis)
        if axis == 1:
            flat[_bias(kernel)] = flat[_bias(kernel)][index]


def _remove_dead(flat: dict, layer: str, kind: str, d: int, act) -> int:
    """Fold constant units into the output bias, drop dead ones; returns the units kept."""
    src, dst = (f"{layer}/{layout_of_path(layer).path(t)}" for t in _FOLD[kind])
    w_out = flat[f"{dst}/kernel"]
    n = w_out.shape[0] // d
    if n == 0:
        return 0
    live_out = np.any(w_out.reshape(n, -1) != 0, axis=1)
    live_in = np.any(flat[f"{src}/kernel"].T.reshape(n, -1) != 0, axis=1)
    constant = np.repeat(live_out & ~live_in, d)
    if constant.any():
        b_in = np.asarray(act(flat[f"{src}/bias"]), np.float32)
        flat[f"{dst}/bias"] = flat[f"{dst}/bias"] + np.where(constant, b_in, 0.0) @ w_out
    kept = np.nonzero(live_out & live_in)[0]
    _take_units(flat, f"{layer}/{UNITS[kind][0]}", (kept[:, None] * d + np.arange(d)).ravel())
    return len(kept)


def _masked_flat(params: Any, masks: dict | None) -> dict[str, np.ndarray]:
    """Flat float32 numpy ``W * M``, unit masks expanded to their kernels (``to_weight_masks``)."""
    masked = multiply_masks(params, to_weight_masks(dict(masks or {}), params))
    return {k: np.asarray(v, np.float32) for k, v in flatten(masked).items()}


def compact_params(params: Any, masks: dict | None, config: Any) -> tuple[dict, Any]:
    """``(params, config)`` of the compact model: ``W * M`` with dead heads and neurons removed
    (module docstring). ``masks``: unit masks (``mvp_jax.pruning.structured``), weight masks
    ``{kernel path: M}``, or None for params that are already masked. Returns nested float32
    params and a ``BertConfig`` with the per-layer sizes; ``build_module(config, ...)`` runs them.
    """
    flat = _masked_flat(params, masks)
    d = config.hidden_size // config.num_attention_heads
    act = ACTIVATIONS[BertSpec.from_config(config).hidden_act]
    found = layers(flat)
    heads = [_remove_dead(flat, layer, "heads", d, lambda b: b) for layer in found]
    sizes = [_remove_dead(flat, layer, "neurons", 1, act) for layer in found]
    out = unflatten({k: jnp.asarray(v) for k, v in flat.items()})
    return out, with_layer_sizes(config, heads, sizes)


def _pad_units(flat: dict, unit_path: str, extra: int) -> None:
    """Append ``extra`` zero entries along each member kernel's unit axis (and biases)."""
    if extra < 0:
        raise ExportError(f"{unit_path}: more units than the config's uniform size")
    for kernel, axis in members(unit_path):
        flat[kernel] = np.pad(flat[kernel], [(0, extra) if a == axis else (0, 0) for a in (0, 1)])
        if axis == 1:
            flat[_bias(kernel)] = np.pad(flat[_bias(kernel)], (0, extra))


def to_transformers(params: Any, config: Any) -> tuple[dict, Any]:
    """``(params, config)`` that transformers 5 can hold: every layer padded with zero heads to
    ``num_attention_heads`` and with zero neurons to the widest layer's FFN width. A zero head
    (zero Q/K/V columns and biases, zero output rows) and a zero neuron add exactly nothing
    (``act(0) = 0`` for every supported activation, and their output rows are zero anyway)."""
    heads, sizes = layer_sizes(config)
    d = config.hidden_size // config.num_attention_heads
    width = max(sizes, default=0)
    flat = {k: np.asarray(v, np.float32) for k, v in flatten(params).items()}
    for layer, n_heads, size in zip(layers(flat), heads, sizes):
        _pad_units(flat, f"{layer}/{UNITS['heads'][0]}", (config.num_attention_heads - n_heads) * d)
        _pad_units(flat, f"{layer}/{UNITS['neurons'][0]}", width - size)
    out = unflatten({k: jnp.asarray(v) for k, v in flat.items()})
    full = [config.num_attention_heads] * len(heads)
    return out, with_layer_sizes(config, full, [width] * len(sizes))


def save_compact(out_dir: str | os.PathLike, params: Any, config: Any, head: str | None,
                 tokenizer_path: str | os.PathLike | None = None, **export_kwargs) -> str:
    """Write a compact model (``compact_params``) as ``config.json`` (with the per-layer sizes)
    + ``model.safetensors`` (PyTorch naming) + tokenizer files, for ``load_pretrained``,
    ``mvp-jax evaluate`` and ``predict``. ``export_kwargs``: ``num_labels``, ``overwrite``,
    ``label_names`` of ``export_hf``. transformers loads it only when the config is plain
    (uniform); otherwise it refuses the mis-shaped weights (use ``save_transformers``)."""
    return export_hf(out_dir, params, config, head, tokenizer_path, **export_kwargs)


def save_transformers(out_dir: str | os.PathLike, params: Any, config: Any, head: str | None,
                      tokenizer_path: str | os.PathLike | None = None, **export_kwargs) -> str:
    """``save_compact`` of ``to_transformers(params, config)``: a standard directory that
    ``transformers`` (and ``load_pretrained``) loads, with the same logits."""
    return export_hf(out_dir, *to_transformers(params, config), head, tokenizer_path,
                     **export_kwargs)


__all__ = [
    "PER_LAYER",
    "compact_params",
    "layer_sizes",
    "save_compact",
    "save_transformers",
    "to_transformers",
    "with_layer_sizes",
]
