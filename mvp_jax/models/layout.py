"""The layout of each supported architecture in one place: which kernels are prunable, which
heads and FFN neurons structured pruning removes, how parameters are sharded, what each encoder
matrix is called, how Hugging Face names the architectures and their checkpoints. Masking,
sharding, counts, plots and export read it from here (or take their own as arguments). Paths are
'/'-joined key paths (``mvp_jax.tree``) of the Hugging Face Flax parameters. Plain data.

The module-level names (``PRUNABLE``, ``PARTITION_RULES``, ``MATRIX_TYPES``, ...) are the union
over the architectures: their encoder paths never collide, so one set of patterns serves all.
"""

from __future__ import annotations

import dataclasses
import re

# The six encoder matrix types, in table/heatmap column order.
TYPES = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")


@dataclasses.dataclass(frozen=True)
class Layout:
    """One architecture. ``matrices``: the path inside a layer of each of ``TYPES``."""

    model_types: tuple[str, ...]  # config.json model_type values
    prefix: str  # params subtree of the encoder ("bert")
    layers: str  # path of the layer list below ``prefix`` ("encoder/layer")
    matrices: tuple[str, ...]  # one per TYPES
    children: tuple[str, ...]  # the encoder's top-level modules (a bare-encoder checkpoint)
    heads: tuple[str, ...]  # task-head modules at the top level
    ignored: tuple[str, ...]  # checkpoint name prefixes that are not ours (pretraining heads)
    architectures: dict  # {model_type: {head: transformers class name}}
    config_keys: dict = dataclasses.field(default_factory=dict)  # spec field -> config key
    token_types: bool = True  # a token-type embedding (DistilBERT has none)
    logits: str = "classifier"  # the dense that outputs the classification logits
    padded_positions: bool = False  # position ids count from the padding index (RoBERTa)

    def path(self, kind: str) -> str:
        """The path inside a layer of matrix type ``kind``."""
        return self.matrices[TYPES.index(kind)]

    @property
    def prunable(self) -> tuple[str, ...]:
        """Regexes of the prunable kernels: every Q, K, V, attention-output, FFN kernel."""
        return tuple(rf"{self.layers}/\d+/{m}/kernel$" for m in self.matrices)

    @property
    def partition_rules(self) -> tuple[tuple[str, tuple[str | None, ...]], ...]:
        """Megatron style: Q, K, V, FFN-in column parallel, attention-out and FFN-out row
        parallel (one all-reduce per pair)."""
        col, row = (None, "model"), ("model", None)
        return tuple((rf"{self.layers}/\d+/{m}/kernel$", col if t in ("query", "key", "value",
                                                                       "ffn_in") else row)
                     for t, m in zip(TYPES, self.matrices))


def _arch(name: str) -> dict:
    return {None: f"{name}Model", "classification": f"{name}ForSequenceClassification",
            "qa": f"{name}ForQuestionAnswering"}


BERT = Layout(
    model_types=("bert",), prefix="bert", layers="encoder/layer",
    matrices=("attention/self/query", "attention/self/key", "attention/self/value",
              "attention/output/dense", "intermediate/dense", "output/dense"),
    children=("embeddings", "encoder", "pooler"), heads=("classifier", "qa_outputs"),
    ignored=("cls.",), architectures={"bert": _arch("Bert")})
# RoBERTa and XLM-R: BERT's encoder under ``roberta/``, a two-layer classification head
ROBERTA = dataclasses.replace(
    BERT, model_types=("roberta", "xlm-roberta"), prefix="roberta", ignored=("lm_head.",),
    logits="classifier/out_proj", padded_positions=True,
    architectures={"roberta": _arch("Roberta"), "xlm-roberta": _arch("XLMRoberta")})
DISTILBERT = Layout(
    model_types=("distilbert",), prefix="distilbert", layers="transformer/layer",
    matrices=("attention/q_lin", "attention/k_lin", "attention/v_lin", "attention/out_lin",
              "ffn/lin1", "ffn/lin2"),
    children=("embeddings", "transformer"), heads=("pre_classifier", "classifier", "qa_outputs"),
    ignored=("vocab_transform.", "vocab_layer_norm.", "vocab_projector."),
    architectures={"distilbert": _arch("DistilBert")},
    config_keys={"intermediate_size": "hidden_dim", "hidden_act": "activation",
                 "hidden_dropout_prob": "dropout", "attention_probs_dropout_prob":
                 "attention_dropout", "classifier_dropout": "seq_classif_dropout"},
    token_types=False)
LAYOUTS = (BERT, ROBERTA, DISTILBERT)
MODEL_TYPES = tuple(t for layout in LAYOUTS for t in layout.model_types)


def layout_of(model_type: str) -> Layout:
    """The layout of a config's ``model_type``; ``KeyError`` for an unsupported one."""
    for layout in LAYOUTS:
        if model_type in layout.model_types:
            return layout
    raise KeyError(model_type)


def layout_of_path(path: str) -> Layout:
    """The layout whose layer list a params path lies in (BERT and RoBERTa share one)."""
    for layout in LAYOUTS:
        if re.search(rf"(^|/){layout.layers}/\d+(/|$)", path):
            return layout
    raise KeyError(path)


def _union(items):
    return tuple(dict.fromkeys(items))


# Every Dense kernel of the encoder's self-attention (Q, K, V, output) and FFN (in, out) layers.
# Embeddings, pooler, heads, biases, LayerNorm never match.
PRUNABLE = _union(p for layout in LAYOUTS for p in layout.prunable)

# Megatron-style layout over the mesh axes ("data", "model"): (regex searched in the path, mesh
# axis of each dimension of an array of that rank); first match wins, no match is replicated.
# Embedding tables are split on the hidden dimension.
MESH_AXES = ("data", "model")
PARTITION_RULES: tuple[tuple[str, tuple[str | None, ...]], ...] = _union(
    [r for layout in LAYOUTS for r in layout.partition_rules]
    + [(r"embeddings/[^/]+/embedding$", (None, "model"))])

# Encoder matrix types (path inside a layer -> short name), and the path of a layer's matrix:
# groups (layer index, path inside the layer).
MATRIX_TYPES = {m: t for layout in LAYOUTS for t, m in zip(TYPES, layout.matrices)}
LAYER_MATRIX = r"layer/(\d+)/(.+)/kernel$"
# path prefixes of the embedding tables and their LayerNorm (a tuple for ``str.startswith``)
EMBEDDINGS = _union(f"{layout.prefix}/embeddings/" for layout in LAYOUTS)

# Hugging Face: a model directory's tokenizer files (WordPiece, byte-level BPE, SentencePiece).
TOKENIZER_VOCABS = ("vocab.txt", "vocab.json", "sentencepiece.bpe.model", "tokenizer.json")
TOKENIZER_FILES = ("vocab.txt", "vocab.json", "merges.txt", "sentencepiece.bpe.model",
                   "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")
