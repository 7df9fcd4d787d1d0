"""The BERT layout in one place: which kernels are prunable, how parameters are sharded, what
each encoder matrix is called, how Hugging Face names the architectures. Masking, sharding,
counts, plots and export read it from here (or take their own as arguments). Paths are
'/'-joined key paths (``mvp_jax.tree``) of the Hugging Face Flax BERT parameters. Plain data.
"""

from __future__ import annotations

# Every Dense kernel of the encoder's self-attention (Q, K, V, output) and FFN (in, out) layers.
# Embeddings, pooler, heads, biases, LayerNorm never match.
PRUNABLE = (
    r"encoder/layer/\d+/attention/self/(query|key|value)/kernel$",
    r"encoder/layer/\d+/attention/output/dense/kernel$",
    r"encoder/layer/\d+/intermediate/dense/kernel$",
    r"encoder/layer/\d+/output/dense/kernel$",
)

# Megatron-style layout over the mesh axes ("data", "model"): (regex searched in the path, mesh
# axis of each dimension of an array of that rank); first match wins, no match is replicated.
# Q, K, V, FFN-in kernels (in, out): column parallel; attention-output, FFN-out: row parallel
# (one all-reduce per pair); embedding tables on the hidden dimension.
MESH_AXES = ("data", "model")
PARTITION_RULES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"attention/self/(query|key|value)/kernel$", (None, "model")),
    (r"intermediate/dense/kernel$", (None, "model")),
    (r"attention/output/dense/kernel$", ("model", None)),
    (r"layer/\d+/output/dense/kernel$", ("model", None)),
    (r"embeddings/[^/]+/embedding$", (None, "model")),
)

# Encoder matrix types (path inside a layer -> short name), in table/heatmap column order, and
# the path of a layer's matrix: groups (layer index, path inside the layer).
MATRIX_TYPES = {
    "attention/self/query": "query",
    "attention/self/key": "key",
    "attention/self/value": "value",
    "attention/output/dense": "attn_out",
    "intermediate/dense": "ffn_in",
    "output/dense": "ffn_out",
}
LAYER_MATRIX = r"layer/(\d+)/(.+)/kernel$"
EMBEDDINGS = "bert/embeddings/"  # path prefix of the embedding tables and their LayerNorm

# Hugging Face: the PyTorch architecture of each head, and a model directory's tokenizer files.
HF_ARCHITECTURES = {
    None: "BertModel",
    "classification": "BertForSequenceClassification",
    "qa": "BertForQuestionAnswering",
}
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json")
