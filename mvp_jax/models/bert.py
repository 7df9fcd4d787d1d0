"""BERT encoder and task heads in Flax linen, named like the Hugging Face Flax BERT.

The parameter tree is exactly that of ``FlaxBertForSequenceClassification`` (``bert/...`` plus
``classifier``) or ``FlaxBertForQuestionAnswering`` (``bert/...`` without ``pooler``, plus
``qa_outputs``); ``head=None`` keeps the same ``bert/...`` prefix. Kernels are ``(in, out)``, the
transpose of PyTorch's ``nn.Linear.weight``. Nothing here knows about pruning. ``Roberta``
(``roberta.py``) and ``DistilBert`` (``distilbert.py``) reuse these pieces; ``mvp_jax.models.build.build_module``
picks the module from the config's ``model_type``.

Per-layer sizes (a compact model whose pruned heads and FFN neurons were removed,
``mvp_jax.export.compact``): the config keys ``layer_num_heads`` and ``layer_intermediate_sizes`` (one
entry per layer; absent = ``num_attention_heads`` / ``intermediate_size`` everywhere) give layer
``i`` its head count ``n_i`` and FFN width. The head size stays ``d = hidden_size /
num_attention_heads``, so Q, K, V kernels are ``(hidden, n_i d)`` and the attention output kernel
``(n_i d, hidden)``. A layer with 0 heads (or 0 neurons) has zero-size kernels; its block adds only
its output-dense bias before the residual LayerNorm, as a dense layer with every unit masked does.

Layer math (post-LayerNorm BERT, Devlin et al. 2019), with ``d = hidden_size / heads``::

    h0   = LN(E_word[ids] + E_pos[0..L) + E_type[tt])
    A    = softmax(Q K^T / sqrt(d) + b),  b = 0 on attended keys, finfo(dtype).min on masked ones
    h'   = LN(h + Dense(A V))
    h''  = LN(h' + Dense(act(Dense(h'))))
    pool = tanh(Dense(h_last[:, 0]))

Parameters are float32; ``dtype`` is the compute dtype (float32 or bfloat16). Softmax and
LayerNorm statistics are computed in float32. Dropout uses the ``"dropout"`` rng stream and is
active only with ``deterministic=False``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import traverse_util

from mvp_jax.errors import UserError

from .layout import MODEL_TYPES, layout_of

HEADS = (None, "classification", "qa")

# transformers' ACT2FN names -> jax functions ("gelu" is the exact erf form).
ACTIVATIONS: dict[str, Callable] = {
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: nn.gelu(x, approximate=True),
    "relu": nn.relu,
    "silu": nn.silu,
    "swish": nn.silu,
    "tanh": jnp.tanh,
}


@dataclasses.dataclass(frozen=True)
class BertSpec:
    """The architecture fields of a ``transformers`` config of any supported ``model_type``, in
    BERT's names (hashable, for Flax modules)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    classifier_dropout: float | None = None
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    layer_num_heads: tuple[int, ...] | None = None
    layer_intermediate_sizes: tuple[int, ...] | None = None
    model_type: str = "bert"
    position_offset: int | None = None  # RoBERTa: positions start after the padding index

    @property
    def max_length(self) -> int:
        """The longest input the position embeddings cover."""
        offset = self.position_offset
        return self.max_position_embeddings - (0 if offset is None else offset + 1)

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def heads(self, layer: int) -> int:
        """Attention heads of ``layer`` (``num_attention_heads`` unless per-layer)."""
        per_layer = self.layer_num_heads
        return self.num_attention_heads if per_layer is None else per_layer[layer]

    def intermediate(self, layer: int) -> int:
        """FFN width of ``layer`` (``intermediate_size`` unless per-layer)."""
        per_layer = self.layer_intermediate_sizes
        return self.intermediate_size if per_layer is None else per_layer[layer]

    @classmethod
    def from_config(cls, config: Any) -> "BertSpec":
        """From a ``transformers`` config of a supported ``model_type`` (BERT's attribute names,
        or the architecture's own, ``layout.Layout.config_keys``)."""
        kind = getattr(config, "model_type", "bert")
        try:
            layout = layout_of(kind)
        except KeyError:
            raise UserError(f"unsupported model_type {kind!r}; supported: "
                            f"{', '.join(MODEL_TYPES)}") from None
        names = [f.name for f in dataclasses.fields(cls)]
        keys = {n: layout.config_keys.get(n, n) for n in names}
        values = {n: getattr(config, k) for n, k in keys.items()
                  if getattr(config, k, None) is not None}
        values["model_type"] = kind
        if not layout.token_types:
            values["type_vocab_size"] = 0
        if layout.padded_positions:
            values["position_offset"] = int(config.pad_token_id)
        for key in ("layer_num_heads", "layer_intermediate_sizes"):
            if key in values:
                values[key] = _per_layer(key, values[key], values["num_hidden_layers"])
        spec = cls(**values)
        if spec.hidden_act not in ACTIVATIONS:
            raise UserError(
                f"unsupported hidden_act {spec.hidden_act!r}; supported: {', '.join(ACTIVATIONS)}"
            )
        if spec.hidden_size % spec.num_attention_heads:
            raise UserError(
                f"hidden_size={spec.hidden_size} is not a multiple of "
                f"num_attention_heads={spec.num_attention_heads}"
            )
        return spec


def _per_layer(key: str, sizes: Any, layers: int) -> tuple[int, ...]:
    """``sizes`` as a tuple of ``layers`` non-negative ints, else ``UserError``."""
    try:
        out = tuple(int(n) for n in sizes)
        valid = len(out) == layers and all(n >= 0 and n == m for n, m in zip(out, sizes))
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise UserError(f"config {key}={sizes!r}: expected {layers} non-negative integers, one per "
                        "layer")
    return out


def _dense(spec: BertSpec, features: int, dtype, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.initializers.normal(spec.initializer_range),
        name=name,
    )


def _layer_norm(spec: BertSpec, dtype, name: str = "LayerNorm") -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=spec.layer_norm_eps, dtype=dtype, param_dtype=jnp.float32,
                        name=name)


class BertEmbeddings(nn.Module):
    spec: BertSpec
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, token_type_ids, deterministic: bool):
        s = self.spec
        init = nn.initializers.normal(s.initializer_range)

        def embed(n, name):
            return nn.Embed(n, s.hidden_size, embedding_init=init, dtype=self.dtype, name=name)

        if s.position_offset is None:
            positions = jnp.arange(input_ids.shape[-1])[None, :]
        else:  # transformers' create_position_ids_from_input_ids
            keep = (input_ids != s.position_offset).astype(jnp.int32)
            positions = jnp.cumsum(keep, axis=1) * keep + s.position_offset
        h = (embed(s.vocab_size, "word_embeddings")(input_ids)
             + embed(s.max_position_embeddings, "position_embeddings")(positions))
        if s.type_vocab_size:  # DistilBERT has none
            h = h + embed(s.type_vocab_size, "token_type_embeddings")(token_type_ids)
        h = _layer_norm(s, self.dtype)(h)
        return nn.Dropout(s.hidden_dropout_prob)(h, deterministic=deterministic)


ATTENTION_SCORES = "attention_scores"  # the name sown into the "intermediates" collection


def self_attention(module: nn.Module, spec: BertSpec, dtype, heads: int, h, mask_bias,
                   deterministic: bool, names=("query", "key", "value")):
    """Multi-head self-attention before its output dense, ``[B, L, heads d]``; the Q, K, V
    denses (``names``) belong to the calling compact ``module``, which also sows the masked
    attention scores ``Q K^T / sqrt(d) + b`` (float32 ``[B, heads, L, L]``, before softmax and
    dropout) as ``intermediates/.../attention_scores`` when that collection is mutable
    (``attention_scores_of``); otherwise nothing is stored and the computation is unchanged."""
    d = spec.head_size

    def project(name):
        x = _dense(spec, heads * d, dtype, name)(h)
        return x.reshape(x.shape[:2] + (heads, d))

    q, k, v = (project(name) for name in names)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q / jnp.sqrt(d).astype(dtype), k)
    scores = logits.astype(jnp.float32) + mask_bias
    module.sow("intermediates", ATTENTION_SCORES, scores)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    probs = nn.Dropout(spec.attention_probs_dropout_prob)(probs, deterministic=deterministic)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    return out.reshape(out.shape[:2] + (heads * d,))


def attention_scores_of(intermediates) -> tuple[jax.Array, ...]:
    """The sown attention scores ``[B, heads, L, L]`` of every layer, in layer order, from the
    ``intermediates`` collection of ``module.apply(..., mutable=["intermediates"])`` (any
    architecture: the layer index is the path entry after ``layer``). ``softmax`` over the last
    axis gives the attention distributions; masked keys carry ``finfo.min``."""
    found = {}
    for path, value in traverse_util.flatten_dict(dict(intermediates)).items():
        if path[-1] == ATTENTION_SCORES:
            found[int(path[path.index("layer") + 1])] = value[0]
    return tuple(found[i] for i in sorted(found))


class BertSelfAttention(nn.Module):
    spec: BertSpec
    dtype: Any = jnp.float32
    num_heads: int | None = None  # None: spec.num_attention_heads

    @nn.compact
    def __call__(self, h, mask_bias, deterministic: bool):
        heads = self.spec.num_attention_heads if self.num_heads is None else self.num_heads
        return self_attention(self, self.spec, self.dtype, heads, h, mask_bias, deterministic)


class BertAttention(nn.Module):
    spec: BertSpec
    dtype: Any = jnp.float32
    num_heads: int | None = None

    def setup(self):
        self.self = BertSelfAttention(self.spec, self.dtype, self.num_heads)
        self.output = _SubOutput(self.spec, self.dtype)

    def __call__(self, h, mask_bias, deterministic: bool):
        return self.output(self.self(h, mask_bias, deterministic), h, deterministic)


class _SubOutput(nn.Module):
    """``LN(residual + Dropout(Dense(x)))``: HF's ``BertSelfOutput`` / ``BertOutput``."""

    spec: BertSpec
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, residual, deterministic: bool):
        x = _dense(self.spec, self.spec.hidden_size, self.dtype, "dense")(x)
        x = nn.Dropout(self.spec.hidden_dropout_prob)(x, deterministic=deterministic)
        return _layer_norm(self.spec, self.dtype)(x + residual)


class BertIntermediate(nn.Module):
    spec: BertSpec
    dtype: Any = jnp.float32
    size: int | None = None  # None: spec.intermediate_size

    @nn.compact
    def __call__(self, h):
        size = self.spec.intermediate_size if self.size is None else self.size
        h = _dense(self.spec, size, self.dtype, "dense")(h)
        return ACTIVATIONS[self.spec.hidden_act](h)


class BertLayer(nn.Module):
    spec: BertSpec
    dtype: Any = jnp.float32
    index: int = 0  # which layer: its per-layer head count and FFN width

    def setup(self):
        s, i = self.spec, self.index
        self.attention = BertAttention(s, self.dtype, s.heads(i))
        self.intermediate = BertIntermediate(s, self.dtype, s.intermediate(i))
        self.output = _SubOutput(self.spec, self.dtype)

    def __call__(self, h, mask_bias, deterministic: bool):
        a = self.attention(h, mask_bias, deterministic)
        return self.output(self.intermediate(a), a, deterministic)


class BertLayerCollection(nn.Module):
    spec: BertSpec
    dtype: Any = jnp.float32
    layer_cls: Any = BertLayer  # the module of one layer, called (spec, dtype, index)

    @nn.compact
    def __call__(self, h, mask_bias, deterministic: bool):
        hidden = [h]
        for i in range(self.spec.num_hidden_layers):
            h = self.layer_cls(self.spec, self.dtype, i, name=str(i))(h, mask_bias, deterministic)
            hidden.append(h)
        return hidden


class BertEncoder(nn.Module):
    spec: BertSpec
    dtype: Any = jnp.float32
    layer_cls: Any = BertLayer

    def setup(self):
        self.layer = BertLayerCollection(self.spec, self.dtype, self.layer_cls)

    def __call__(self, h, mask_bias, deterministic: bool):
        return self.layer(h, mask_bias, deterministic)


class BertPooler(nn.Module):
    spec: BertSpec
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h):
        return jnp.tanh(_dense(self.spec, self.spec.hidden_size, self.dtype, "dense")(h[:, 0]))


def attention_bias(attention_mask, dtype=jnp.float32) -> jax.Array:
    """Additive key bias ``[B, 1, 1, L]``: 0 where ``attention_mask > 0``, ``finfo(dtype).min``
    elsewhere (as transformers)."""
    keep = (attention_mask > 0)[:, None, None, :]
    return jnp.where(keep, 0.0, jnp.finfo(dtype).min).astype(jnp.float32)


class BertModule(nn.Module):
    """Embeddings, ``num_hidden_layers`` layers and (optionally) the pooler; the ``bert`` subtree.

    Returns ``(last_hidden_state [B, L, H], pooled [B, H] or None, all_hidden_states)`` where
    ``all_hidden_states`` is the embedding output followed by each layer's output. Subclasses
    set ``encoder_name`` and ``layer_cls`` (class attributes, not fields).
    """

    spec: BertSpec
    dtype: Any = jnp.float32
    add_pooling_layer: bool = True
    encoder_name = "encoder"
    layer_cls = BertLayer

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids, deterministic: bool):
        s, dtype = self.spec, self.dtype
        h = BertEmbeddings(s, dtype, name="embeddings")(input_ids, token_type_ids, deterministic)
        hidden = BertEncoder(s, dtype, self.layer_cls, name=self.encoder_name)(
            h, attention_bias(attention_mask, dtype), deterministic)
        pooled = BertPooler(s, dtype, name="pooler")(hidden[-1]) if self.add_pooling_layer else None
        return hidden[-1], pooled, tuple(hidden)


class Bert(nn.Module):
    """BERT with an optional task head.

    ``head=None``: returns ``(last_hidden_state [B, L, H], pooled [B, H])``.
    ``head="classification"``: ``logits = Dense(Dropout(pooled))``, ``[B, num_labels]``
    (``num_labels=1`` is regression).
    ``head="qa"``: ``(start, end) = split(Dense(h_last), 2)``, each ``[B, L]``; no pooler.

    Call: ``module.apply({"params": p}, input_ids, attention_mask=None, token_type_ids=None,
    deterministic=True, rngs={"dropout": key})``; with ``output_hidden_states=True`` the result
    is ``(outputs, all_hidden_states)``; with ``mutable=["intermediates"]`` apply also returns
    each layer's sown attention scores (``attention_scores_of``). Other architectures subclass
    it and override the ``encoder`` / ``classify`` / ``qa`` hooks.
    """

    spec: BertSpec
    head: str | None = "classification"
    num_labels: int = 2
    dtype: Any = jnp.float32

    @nn.nowrap
    def encoder(self) -> nn.Module:
        """The encoder submodule (its name is the params prefix)."""
        return BertModule(self.spec, self.dtype, add_pooling_layer=self.head != "qa", name="bert")

    @nn.nowrap
    def classifier_dropout(self) -> float:
        rate = self.spec.classifier_dropout
        return self.spec.hidden_dropout_prob if rate is None else rate

    @nn.nowrap
    def classify(self, last, pooled, deterministic: bool):
        """Logits ``[B, num_labels]`` of the classification head."""
        pooled = nn.Dropout(self.classifier_dropout())(pooled, deterministic=deterministic)
        return _dense(self.spec, self.num_labels, self.dtype, "classifier")(pooled)

    @nn.nowrap
    def qa(self, last, deterministic: bool):
        """Start/end logits ``[B, L, 2]`` of the QA head."""
        return _dense(self.spec, 2, self.dtype, "qa_outputs")(last)

    @nn.compact
    def __call__(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        deterministic: bool = True,
        output_hidden_states: bool = False,
    ):
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if self.head not in HEADS:
            raise UserError(f"unknown head {self.head!r}; choose one of {HEADS}")
        last, pooled, hidden = self.encoder()(input_ids, attention_mask, token_type_ids,
                                              deterministic)
        if self.head == "classification":
            out = self.classify(last, pooled, deterministic).astype(jnp.float32)
        elif self.head == "qa":
            logits = self.qa(last, deterministic).astype(jnp.float32)
            out = (logits[..., 0], logits[..., 1])
        else:
            out = (last, pooled)
        return (out, hidden) if output_hidden_states else out


def param_shapes(module: Bert) -> dict[str, tuple[int, ...]]:
    """Flat ``{"a/b/kernel": shape}`` of the module's parameters (no computation)."""
    ids = jnp.zeros((1, 2), jnp.int32)
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), ids)["params"])
    return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(shapes, sep="/").items()}


def init_params(module: Bert, seed: int = 0) -> dict:
    """Freshly initialised parameters: normal(initializer_range) kernels/embeddings, zero bias,
    LayerNorm scale 1 and bias 0."""
    ids = jnp.zeros((1, 2), jnp.int32)
    return jax.jit(module.init)(jax.random.PRNGKey(seed), ids)["params"]


__all__ = [
    "ACTIVATIONS",
    "Bert",
    "BertModule",
    "BertSpec",
    "HEADS",
    "attention_bias",
    "attention_scores_of",
    "init_params",
    "param_shapes",
]
