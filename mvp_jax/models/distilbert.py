"""DistilBERT in Flax linen, named like Hugging Face's ``FlaxDistilBert*`` models.

``distilbert/embeddings`` (word + position, no token types), ``distilbert/transformer/layer/i``
with ``attention/{q_lin,k_lin,v_lin,out_lin}``, ``sa_layer_norm``, ``ffn/{lin1,lin2}``,
``output_layer_norm``; no pooler. Per layer (post-LayerNorm, as BERT)::

    h'  = sa_layer_norm(h + out_lin(A V))
    h'' = output_layer_norm(h' + Dropout(lin2(act(lin1(h')))))

Classification: ``classifier(Dropout(relu(pre_classifier(h_last[:, 0]))))``; QA:
``qa_outputs(Dropout(h_last))``. Per-layer head counts and FFN widths as in ``BertSpec``.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from .bert import ACTIVATIONS, Bert, BertModule, BertSpec, _dense, _layer_norm, self_attention


class MultiHeadSelfAttention(nn.Module):
    spec: BertSpec
    dtype: Any = jnp.float32
    num_heads: int | None = None

    @nn.compact
    def __call__(self, h, mask_bias, deterministic: bool):
        s = self.spec
        heads = s.num_attention_heads if self.num_heads is None else self.num_heads
        x = self_attention(self, s, self.dtype, heads, h, mask_bias, deterministic,
                           ("q_lin", "k_lin", "v_lin"))
        return _dense(s, s.hidden_size, self.dtype, "out_lin")(x)


class FFN(nn.Module):
    spec: BertSpec
    dtype: Any = jnp.float32
    size: int | None = None

    @nn.compact
    def __call__(self, h, deterministic: bool):
        s = self.spec
        size = s.intermediate_size if self.size is None else self.size
        x = ACTIVATIONS[s.hidden_act](_dense(s, size, self.dtype, "lin1")(h))
        x = _dense(s, s.hidden_size, self.dtype, "lin2")(x)
        return nn.Dropout(s.hidden_dropout_prob)(x, deterministic=deterministic)


class TransformerBlock(nn.Module):
    spec: BertSpec
    dtype: Any = jnp.float32
    index: int = 0

    @nn.compact
    def __call__(self, h, mask_bias, deterministic: bool):
        s, i, dtype = self.spec, self.index, self.dtype
        a = MultiHeadSelfAttention(s, dtype, s.heads(i), name="attention")(
            h, mask_bias, deterministic)
        a = _layer_norm(s, dtype, "sa_layer_norm")(a + h)
        f = FFN(s, dtype, s.intermediate(i), name="ffn")(a, deterministic)
        return _layer_norm(s, dtype, "output_layer_norm")(f + a)


class DistilBertModule(BertModule):
    """The ``distilbert`` subtree: ``BertModule`` with a ``transformer`` of ``TransformerBlock``s."""

    encoder_name = "transformer"
    layer_cls = TransformerBlock


class DistilBert(Bert):
    """DistilBERT with an optional task head; called as ``Bert`` (token types are ignored)."""

    @nn.nowrap
    def encoder(self) -> nn.Module:
        return DistilBertModule(self.spec, self.dtype, add_pooling_layer=False, name="distilbert")

    @nn.nowrap
    def classify(self, last, pooled, deterministic: bool):
        s = self.spec
        x = nn.relu(_dense(s, s.hidden_size, self.dtype, "pre_classifier")(last[:, 0]))
        x = nn.Dropout(self.classifier_dropout())(x, deterministic=deterministic)
        return _dense(s, self.num_labels, self.dtype, "classifier")(x)

    @nn.nowrap
    def qa(self, last, deterministic: bool):
        last = nn.Dropout(self.spec.hidden_dropout_prob)(last, deterministic=deterministic)
        return super().qa(last, deterministic)
