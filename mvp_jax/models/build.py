"""The module of each architecture: ``build_module`` picks ``Bert``, ``Roberta`` or
``DistilBert`` from a config's ``model_type`` (its layout's prefix)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from mvp_jax.errors import UserError

from .bert import HEADS, Bert, BertSpec
from .distilbert import DistilBert
from .layout import layout_of
from .roberta import Roberta

MODULES = {"bert": Bert, "roberta": Roberta, "distilbert": DistilBert}


def build_module(config: Any, head: str | None = "classification", num_labels: int = 2,
                 dtype=jnp.float32) -> Bert:
    """The module of a ``transformers`` config's architecture (``Bert``, ``Roberta``,
    ``DistilBert``) with ``head``."""
    if head not in HEADS:
        raise UserError(f"unknown head {head!r}; choose one of {HEADS}")
    if head == "classification" and int(num_labels) < 1:
        raise UserError(f"num_labels must be >= 1, got {num_labels}")
    spec = BertSpec.from_config(config)
    cls = MODULES[layout_of(spec.model_type).prefix]
    return cls(spec, head=head, num_labels=int(num_labels), dtype=dtype)
