"""Remaining-weight counts tallied per layer and matrix type (names from
``mvp_jax.models.layout.MATRIX_TYPES``).

Shared by :func:`mvp_jax.export.huggingface.format_counts` (text table) and :mod:`mvp_jax.plots` (heatmap).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from mvp_jax.models.layout import LAYER_MATRIX, MATRIX_TYPES

__all__ = ["MATRIX_TYPES", "layer_order", "matrix_label", "tally"]


def matrix_label(path: str) -> tuple[str, str]:
    """``(layer, type)`` of a prunable kernel path, e.g. ``("3", "ffn_in")``; other paths give
    ``(path, "matrix")``."""
    m = re.search(LAYER_MATRIX, path)
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
