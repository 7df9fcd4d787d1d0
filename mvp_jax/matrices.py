"""Names of the prunable encoder matrices, and remaining-weight counts tallied per layer and type.

Shared by :func:`mvp_jax.export.format_counts` (text table) and :mod:`mvp_jax.plots` (heatmap);
plain Python, no JAX.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# Encoder matrix types (Hugging Face BERT path -> short name), in table/heatmap column order.
MATRIX_TYPES = {
    "attention/self/query": "query",
    "attention/self/key": "key",
    "attention/self/value": "value",
    "attention/output/dense": "attn_out",
    "intermediate/dense": "ffn_in",
    "output/dense": "ffn_out",
}
_LAYER = re.compile(r"layer/(\d+)/(.+)/kernel$")


def matrix_label(path: str) -> tuple[str, str]:
    """``(layer, type)`` of a prunable kernel path, e.g. ``("3", "ffn_in")``; other paths give
    ``(path, "matrix")``."""
    m = _LAYER.search(path)
    if not m:
        return path, "matrix"
    return m.group(1), MATRIX_TYPES.get(m.group(2), m.group(2))


def layer_order(layer: str) -> tuple:
    """Sort key of layer names: ``"2" < "10"``, non-numeric names last."""
    return (not layer.isdigit(), int(layer) if layer.isdigit() else 0, layer)


def tally(counts: Mapping) -> tuple[list[str], list[str], dict[tuple[str, str], tuple[int, int]]]:
    """``(layers, types, {(layer, type): (remaining, total)})`` from a ``count_remaining`` dict;
    layers in numeric order (other names last), types in ``MATRIX_TYPES`` order."""
    cells: dict[tuple[str, str], tuple[int, int]] = {}
    for path, c in counts["matrices"].items():
        key = matrix_label(path)
        r, t = cells.get(key, (0, 0))
        cells[key] = (r + int(c["remaining"]), t + int(c["total"]))
    order = list(MATRIX_TYPES.values())
    layers = sorted({layer for layer, _ in cells}, key=layer_order)
    types = sorted({kind for _, kind in cells},
                   key=lambda k: (order.index(k) if k in order else len(order), k))
    return layers, types, cells
