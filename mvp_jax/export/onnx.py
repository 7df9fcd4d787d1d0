"""ONNX export of an encoder with its task head, for ONNX Runtime (optional extra ``.[onnx]``).

``onnx_model(params, config, head)`` builds the graph node by node with the ``onnx`` helper API,
from the Flax params (``W * M`` already applied) and the config. It computes what
``mvp_jax.models`` computes (BERT, RoBERTa/XLM-R, DistilBERT; post-LayerNorm)::

    h0   = LN(E_word[ids] + E_pos[positions] + E_type[types])
    A_i  = softmax(Q_i K_i^T / sqrt(d) + b),  b = 0 on attended keys, finfo(float32).min on padding
    h'   = LN(h + concat_i(A_i V_i) W_O + b_O)          (a layer with 0 heads: LN(h + b_O))
    h''  = LN(h' + act(h' W_1 + b_1) W_2 + b_2)        (a layer with 0 neurons: LN(h' + b_2))

Every layer has its own head count and FFN width, read from its kernels' shapes, so a compact
model (``mvp_jax.export.compact``: pruned heads and neurons removed) stays small in the graph, layers
that lost every head or every neuron included; a model pruned weight by weight is a dense graph
with zeros. Inputs and outputs are named as Hugging Face's ONNX exports name them:
``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the model has more than one token
type), int64 ``[batch_size, sequence_length]``; outputs ``logits`` ``[batch_size, num_labels]``
(classification), ``start_logits`` / ``end_logits`` ``[batch_size, sequence_length]`` (QA), or
``last_hidden_state`` (no head).

``quantize="int8"``: ONNX Runtime's dynamic quantization of the matrices (``MatMul`` nodes with a
constant weight: int8 weights with one scale per output column, activations quantized per
call). Per-column scales cost 0.1 point of SST-2 accuracy where one scale per matrix cost up to
1.1 (BENCHMARKS.md, Session 9).

Why a hand-built graph: jax2onnx 0.17 (tracing the Flax apply) was measured first. With a
symbolic sequence length it fails while tracing the position ids (``arange`` of a symbolic
dimension); with a fixed length it writes a graph (231 nodes for a 2-layer model) that ONNX
Runtime refuses to load when a layer has 0 heads or 0 neurons (``Gemm`` shape inference on a
zero-size dimension). It also pulls in equinox, dm-pix, netron and an older orbax.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import numpy as np

from mvp_jax import tree
from mvp_jax.errors import UserError

OPSET = 17  # LayerNormalization; ONNX Runtime 1.14 and later
MODEL_FILE = "model.onnx"
QUANTIZE = ("int8",)
INSTALL = "pip install 'mvp-jax[onnx]' (or: pip install onnx onnxruntime)"
BATCH, SEQUENCE = "batch_size", "sequence_length"

# (LayerNorm after attention, LayerNorm after the FFN) inside a layer, by the encoder's prefix
_LAYER_NORMS = {"bert": ("attention/output/LayerNorm", "output/LayerNorm"),
                "roberta": ("attention/output/LayerNorm", "output/LayerNorm"),
                "distilbert": ("sa_layer_norm", "output_layer_norm")}


def require_onnx(runtime: bool = True) -> None:
    """``UserError`` with the install line when ``onnx`` (or ONNX Runtime) is missing."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxruntime")[: 2 if runtime else 1]
               if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"ONNX needs {' and '.join(missing)}, which are not installed: {INSTALL}")


class _Graph:
    """Nodes and initializers of one graph; ``op`` returns its (single) output's name."""

    def __init__(self):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.initializers, self._count = [], [], 0

    def _name(self, base: str) -> str:
        self._count += 1
        return f"{base}_{self._count}"

    def const(self, value, name: str | None = None, dtype=np.float32) -> str:
        name = name or self._name("const")
        self.initializers.append(self.numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, output: str | None = None, **attrs) -> str:
        out = output or self._name(op_type)
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def dense(self, x: str, flat: dict, path: str) -> str:
        """``x W + b`` of the Dense at ``path``."""
        w = self.const(flat[f"{path}/kernel"], f"{path}/kernel")
        return self.op("Add", self.op("MatMul", x, w), self.const(flat[f"{path}/bias"],
                                                                  f"{path}/bias"))

    def layer_norm(self, x: str, flat: dict, path: str, eps: float) -> str:
        return self.op("LayerNormalization", x, self.const(flat[f"{path}/scale"], f"{path}/scale"),
                       self.const(flat[f"{path}/bias"], f"{path}/bias"), axis=-1, epsilon=eps)

    def activation(self, x: str, name: str) -> str:
        """transformers' ``ACT2FN[name]`` (``mvp_jax.models.bert.ACTIVATIONS``)."""
        if name == "gelu":  # x (1 + erf(x / sqrt 2)) / 2
            erf = self.op("Erf", self.op("Div", x, self.const(np.sqrt(2.0))))
            return self.op("Mul", self.op("Mul", x, self.op("Add", erf, self.const(1.0))),
                           self.const(0.5))
        if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):  # tanh approximation
            cube = self.op("Mul", self.op("Mul", x, x), x)
            inner = self.op("Mul", self.op("Add", x, self.op("Mul", cube, self.const(0.044715))),
                            self.const(np.sqrt(2.0 / np.pi)))
            return self.op("Mul", self.op("Mul", x, self.op("Add", self.op("Tanh", inner),
                                                            self.const(1.0))), self.const(0.5))
        if name == "relu":
            return self.op("Relu", x)
        if name in ("silu", "swish"):
            return self.op("Mul", x, self.op("Sigmoid", x))
        if name == "tanh":
            return self.op("Tanh", x)
        raise UserError(f"ONNX export: unsupported hidden_act {name!r}")


def _attention(g: _Graph, x: str, bias: str, flat: dict, layer: str, layout, d: int) -> str:
    """The attention block's output before the residual: ``concat_i(A_i V_i) W_O + b_O``."""
    q_path, k_path, v_path, o_path = (f"{layer}/{layout.path(t)}"
                                      for t in ("query", "key", "value", "attn_out"))
    heads = flat[f"{q_path}/kernel"].shape[1] // d
    if heads == 0:
        return g.const(flat[f"{o_path}/bias"], f"{o_path}/bias")
    split = g.const([0, 0, heads, d], dtype=np.int64)  # [B, S, n d] -> [B, S, n, d]

    def project(path, perm):
        return g.op("Transpose", g.op("Reshape", g.dense(x, flat, path), split), perm=perm)

    q = g.op("Div", project(q_path, [0, 2, 1, 3]), g.const(np.sqrt(d)))  # [B, n, S, d]
    k = project(k_path, [0, 2, 3, 1])  # [B, n, d, S]
    v = project(v_path, [0, 2, 1, 3])
    probs = g.op("Softmax", g.op("Add", g.op("MatMul", q, k), bias), axis=-1)
    context = g.op("Transpose", g.op("MatMul", probs, v), perm=[0, 2, 1, 3])
    merged = g.op("Reshape", context, g.const([0, 0, heads * d], dtype=np.int64))
    return g.dense(merged, flat, o_path)


def _ffn(g: _Graph, x: str, flat: dict, layer: str, layout, act: str) -> str:
    """``act(x W_1 + b_1) W_2 + b_2`` (``b_2`` alone when the layer has no neuron)."""
    in_path, out_path = (f"{layer}/{layout.path(t)}" for t in ("ffn_in", "ffn_out"))
    if flat[f"{in_path}/kernel"].shape[1] == 0:
        return g.const(flat[f"{out_path}/bias"], f"{out_path}/bias")
    return g.dense(g.activation(g.dense(x, flat, in_path), act), flat, out_path)


def _embeddings(g: _Graph, flat: dict, prefix: str, spec, token_types: bool) -> str:
    emb = f"{prefix}/embeddings"

    def table(name):
        return g.const(flat[f"{emb}/{name}/embedding"], f"{emb}/{name}/embedding")

    h = g.op("Gather", table("word_embeddings"), "input_ids")
    if spec.position_offset is None:  # 0 .. S-1
        length = g.op("Gather", g.op("Shape", "input_ids"), g.const(1, dtype=np.int64), axis=0)
        positions = g.op("Range", g.const(0, dtype=np.int64), length,
                         g.const(1, dtype=np.int64))
    else:  # RoBERTa: pad + cumsum(ids != pad) on tokens, pad on padding
        pad = g.const(spec.position_offset, dtype=np.int64)
        keep = g.op("Cast", g.op("Not", g.op("Equal", "input_ids", pad)), to=7)  # int64
        counted = g.op("CumSum", keep, g.const(1, dtype=np.int64))
        positions = g.op("Add", g.op("Mul", counted, keep), pad)
    h = g.op("Add", h, g.op("Gather", table("position_embeddings"), positions))
    if token_types:
        h = g.op("Add", h, g.op("Gather", table("token_type_embeddings"), "token_type_ids"))
    elif spec.type_vocab_size:  # one token type: its embedding is a constant
        h = g.op("Add", h, g.const(flat[f"{emb}/token_type_embeddings/embedding"][0]))
    return g.layer_norm(h, flat, f"{emb}/LayerNorm", spec.layer_norm_eps)


def _classify(g: _Graph, last: str, flat: dict, prefix: str) -> str:
    """Logits ``[B, C]`` from the first token: BERT's pooler, RoBERTa's or DistilBERT's head."""
    first = g.op("Gather", last, g.const(0, dtype=np.int64), axis=1)
    if "classifier/out_proj/kernel" in flat:  # RoBERTa
        hidden = g.op("Tanh", g.dense(first, flat, "classifier/dense"))
        return g.dense(hidden, flat, "classifier/out_proj")
    if "pre_classifier/kernel" in flat:  # DistilBERT
        return g.dense(g.op("Relu", g.dense(first, flat, "pre_classifier")), flat, "classifier")
    pooled = g.op("Tanh", g.dense(first, flat, f"{prefix}/pooler/dense"))
    return g.dense(pooled, flat, "classifier")


def onnx_model(params: Any, config: Any, head: str | None):
    """The ``onnx.ModelProto`` of ``build_module(config, head)`` with these params (module
    docstring); the caller checks that the params fit the config
    (``mvp_jax.export.huggingface.checked_num_labels``)."""
    require_onnx(runtime=False)
    from onnx import TensorProto, helper

    from mvp_jax.models.bert import BertSpec
    from mvp_jax.models.layout import layout_of

    spec = BertSpec.from_config(config)
    layout = layout_of(spec.model_type)
    flat = {k: np.asarray(v, np.float32) for k, v in tree.flatten(params).items()}
    token_types = spec.type_vocab_size > 1
    g = _Graph()
    h = _embeddings(g, flat, layout.prefix, spec, token_types)
    keep = g.op("Greater", "attention_mask", g.const(0, dtype=np.int64))
    bias = g.op("Unsqueeze", g.op("Where", keep, g.const(0.0),
                                  g.const(np.finfo(np.float32).min)),
                g.const([1, 2], dtype=np.int64))  # [B, 1, 1, S]
    norm_attn, norm_ffn = _LAYER_NORMS[layout.prefix]
    for i in range(spec.num_hidden_layers):
        layer = f"{layout.prefix}/{layout.layers}/{i}"
        a = g.op("Add", h, _attention(g, h, bias, flat, layer, layout, spec.head_size))
        a = g.layer_norm(a, flat, f"{layer}/{norm_attn}", spec.layer_norm_eps)
        f = g.op("Add", a, _ffn(g, a, flat, layer, layout, spec.hidden_act))
        h = g.layer_norm(f, flat, f"{layer}/{norm_ffn}", spec.layer_norm_eps)

    def output(name, value, dims):
        g.op("Identity", value, output=name)
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)

    if head == "classification":
        logits = _classify(g, h, flat, layout.prefix)
        outputs = [output("logits", logits, [BATCH, int(flat[_logits_kernel(flat)].shape[1])])]
    elif head == "qa":
        both = g.dense(h, flat, "qa_outputs")  # [B, S, 2]
        outputs = [output(name, g.op("Gather", both, g.const(i, dtype=np.int64), axis=2),
                          [BATCH, SEQUENCE]) for i, name in enumerate(("start_logits",
                                                                       "end_logits"))]
    else:
        outputs = [output("last_hidden_state", h, [BATCH, SEQUENCE, spec.hidden_size])]
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if token_types else [])
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, [BATCH, SEQUENCE])
              for n in names]
    graph = helper.make_graph(g.nodes, f"mvp_jax_{spec.model_type}", inputs, outputs,
                              g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="mvp-jax")
    model.ir_version = 8  # readable by ONNX Runtime 1.14+
    return model


def _logits_kernel(flat: dict) -> str:
    return "classifier/out_proj/kernel" if "classifier/out_proj/kernel" in flat else \
        "classifier/kernel"


def write_onnx(directory: str, params: Any, config: Any, head: str | None,
               quantize: str | None = None) -> str:
    """Write ``directory/model.onnx`` (``onnx_model``; int8 matrices with ``quantize="int8"``);
    returns its path."""
    import onnx

    if quantize not in (None, *QUANTIZE):
        raise UserError(f"unknown quantization {quantize!r}; choose one of {', '.join(QUANTIZE)}")
    path = os.path.join(directory, MODEL_FILE)
    model = onnx_model(params, config, head)
    if quantize is None:
        onnx.save(model, path)
        return path
    require_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = os.path.join(directory, ".model-fp32.onnx")
    onnx.save(model, fp32)
    try:
        with _quiet_root_logger():  # its advice to pre-process is for convolutional models
            quantize_dynamic(fp32, path, weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul"], per_channel=True,
                             extra_options={"MatMulConstBOnly": True})
    finally:
        os.remove(fp32)
    return path


@contextlib.contextmanager
def _quiet_root_logger():
    """ONNX Runtime's quantizer warns through ``logging.warning``, which would also install a
    stderr handler on the root logger: neither happens inside this block."""
    root = logging.getLogger()
    level, null = root.level, logging.NullHandler()
    root.addHandler(null)
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
        root.removeHandler(null)


_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu", "swish",
                "tanh")


def unsupported_reason(config: Any) -> str | None:
    """Why ``onnx_model`` cannot export a model of this config (None when it can): an
    architecture without an ONNX layout here, or an activation ``_Graph.activation`` lacks."""
    from mvp_jax.models.bert import BertSpec
    from mvp_jax.models.layout import layout_of

    try:
        spec = BertSpec.from_config(config)
    except UserError as e:
        return str(e)
    if layout_of(spec.model_type).prefix not in _LAYER_NORMS:
        return f"ONNX export does not support model_type {spec.model_type!r}"
    if spec.hidden_act not in _ACTIVATIONS:
        return f"ONNX export does not support the activation {spec.hidden_act!r}"
    return None


def is_onnx_dir(path: str) -> bool:
    """True when ``path`` is a model directory holding ``model.onnx``."""
    return os.path.isfile(os.path.join(path, MODEL_FILE))


def inference_session(directory: str, threads: int | None = None):
    """An ONNX Runtime CPU session of ``directory/model.onnx`` (every graph optimization on)."""
    require_onnx()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
    options.log_severity_level = 3
    return ort.InferenceSession(os.path.join(directory, MODEL_FILE), options,
                                providers=["CPUExecutionProvider"])


def session_apply(session):
    """``apply(session, ids, mask, types) -> first output`` (int inputs cast to int64; the
    token types passed only when the graph takes them), the ``Predictor.apply`` contract."""
    wanted = {i.name for i in session.get_inputs()}

    def apply(sess, input_ids, attention_mask, token_type_ids):
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "token_type_ids": token_type_ids}
        return sess.run(None, {k: np.asarray(v, np.int64) for k, v in feeds.items()
                               if k in wanted})[0]

    return apply


__all__ = ["INSTALL", "MODEL_FILE", "OPSET", "QUANTIZE", "inference_session", "is_onnx_dir",
           "onnx_model", "require_onnx", "session_apply", "unsupported_reason", "write_onnx"]
