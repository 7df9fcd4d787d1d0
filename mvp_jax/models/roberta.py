"""RoBERTa (and XLM-RoBERTa) in Flax linen, named like Hugging Face's ``FlaxRoberta*`` models.

BERT's encoder (``mvp_jax.models.bert``) under ``roberta/``, with two differences: position ids
count from the padding index (``pad + cumsum(ids != pad)`` on tokens, ``pad`` on padding, as
transformers' ``create_position_ids_from_input_ids``; ``BertSpec.position_offset``) and one
token type. The classification head reads ``<s>``: ``out_proj(Dropout(tanh(dense(Dropout(h0)))))``
under ``classifier/``; no pooler below a head. The QA head is BERT's.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from .bert import Bert, BertModule, BertSpec, _dense


class RobertaClassificationHead(nn.Module):
    spec: BertSpec
    num_labels: int
    dtype: Any = jnp.float32
    rate: float = 0.1

    @nn.compact
    def __call__(self, last, deterministic: bool):
        s = self.spec
        x = nn.Dropout(self.rate)(last[:, 0], deterministic=deterministic)
        x = jnp.tanh(_dense(s, s.hidden_size, self.dtype, "dense")(x))
        x = nn.Dropout(self.rate)(x, deterministic=deterministic)
        return _dense(s, self.num_labels, self.dtype, "out_proj")(x)


class Roberta(Bert):
    """RoBERTa with an optional task head; called as ``Bert``."""

    @nn.nowrap
    def encoder(self) -> nn.Module:
        return BertModule(self.spec, self.dtype, add_pooling_layer=self.head is None,
                          name="roberta")

    @nn.nowrap
    def classify(self, last, pooled, deterministic: bool):
        return RobertaClassificationHead(self.spec, self.num_labels, self.dtype,
                                         self.classifier_dropout(), name="classifier")(
            last, deterministic)
