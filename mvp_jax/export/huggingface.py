"""Export a pruned model: Hugging Face directory ("bertarize") and remaining-weight counts
(``mvp_jax.training.rundir.export_run`` does both, and the compressed file of ``mvp_jax.export.compressed``,
for a run).

All functions take params that are already masked (``W * M`` applied, e.g. by
``mvp_jax.pruning.masking.multiply_masks``); scores play no part here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Iterable

import numpy as np

from mvp_jax import tree
from mvp_jax.errors import UserError
from mvp_jax.export.matrices import tally
from mvp_jax.models import (
    HEADS,
    build_module,
    flax_to_hf_state_dict,
    param_shapes,
    resolve_model_path,
)
from mvp_jax.models.layout import PRUNABLE, TOKENIZER_FILES, layout_of
from mvp_jax.pruning import masking


class ExportError(UserError):
    """Params, config or destination that cannot be exported; the message says why."""


def _num_labels(flat: dict, head: str | None, num_labels: int | None, logits: str) -> int:
    if head == "qa":
        return 2
    if head == "classification":
        if logits not in flat:
            raise ExportError(f"head='classification' but params have no {logits}")
        found = int(np.shape(flat[logits])[-1])
        if num_labels is not None and int(num_labels) != found:
            raise ExportError(f"num_labels={num_labels} but the classifier has {found} outputs")
        return found
    return 2 if num_labels is None else int(num_labels)


def checked_num_labels(flat: dict, config: Any, head: str | None,
                       num_labels: int | None = None) -> int:
    """The number of outputs of ``head``, once ``flat`` (``{path: array}``) is checked to hold
    exactly the parameters (names and shapes) of ``build_module(config, head, num_labels)``."""
    if head not in HEADS:
        raise ExportError(f"unknown head {head!r}; choose one of {HEADS}")
    num_labels = _num_labels(flat, head, num_labels, _layout(config).logits + "/kernel")
    expected = param_shapes(build_module(config, head, num_labels))
    missing = sorted(set(expected) - set(flat))
    unexpected = sorted(set(flat) - set(expected))
    bad = [f"{p}: {tuple(np.shape(flat[p]))} vs {expected[p]}"
           for p in expected if p in flat and tuple(np.shape(flat[p])) != expected[p]]
    if missing or unexpected or bad:
        raise ExportError(
            f"params do not match the config for head={head!r}: missing {missing or 'none'}, "
            f"unexpected {unexpected or 'none'}, shape mismatches {bad or 'none'}"
        )
    return num_labels


def _layout(config: Any):
    try:
        return layout_of(getattr(config, "model_type", "bert"))
    except KeyError:
        raise ExportError(f"unsupported model_type {config.model_type!r}") from None


def _export_config(config: Any, head: str | None, num_labels: int,
                   label_names: Iterable[str] | None = None):
    cfg = config.__class__.from_dict(config.to_dict())
    cfg.architectures = [_layout(config).architectures[cfg.model_type][head]]
    if head is not None:
        cfg.num_labels = num_labels
    if label_names is not None:  # the task's class names: id2label / label2id of the model
        cfg.id2label = dict(enumerate(label_names))
        cfg.label2id = {name: i for i, name in enumerate(label_names)}
    if head == "classification":
        if num_labels == 1:
            cfg.problem_type = "regression"
        elif cfg.problem_type == "regression":
            cfg.problem_type = None
    return cfg


def check_destination(path: str, overwrite: bool) -> None:
    """``path`` may become a model directory: it is absent or empty, or ``overwrite`` and it holds
    only the files of a model directory (``MODEL_DIR_FILES``); a user's other files are never
    replaced."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ExportError(f"{path} exists and is not a directory" if overwrite else
                          f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    entries = sorted(os.listdir(path)) if os.path.isdir(path) else []
    if entries and not overwrite:
        raise ExportError(f"{path} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    foreign = [e for e in entries if e not in MODEL_DIR_FILES]
    if foreign:
        raise ExportError(f"{path} holds {foreign[0]!r}, which is not a model file; refusing to "
                          "replace the directory (choose an empty or new one)")


# what a model directory may hold for ``overwrite=True`` to replace it (nothing else is deleted)
MODEL_DIR_FILES = frozenset({"config.json", "model.safetensors", "model.safetensors.index.json",
                             "pytorch_model.bin", "flax_model.msgpack", "generation_config.json",
                             "model.onnx",
                             *TOKENIZER_FILES})


def replace_directory(tmp: str, path: str) -> None:
    """Move ``tmp`` to ``path``; an existing ``path`` is moved aside first and removed after."""
    old = None
    if os.path.lexists(path):
        old = tempfile.mkdtemp(dir=os.path.dirname(path) or ".", prefix=".old-")
        os.replace(path, os.path.join(old, "x"))
    os.replace(tmp, path)
    if old:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Hugging Face directory
# ----------------------------------------------------------------------------------------------


def export_hf(
    out_dir: str | os.PathLike,
    params: Any,
    config: Any,
    head: str | None,
    tokenizer_path: str | os.PathLike | None = None,
    num_labels: int | None = None,
    overwrite: bool = False,
    label_names: Iterable[str] | None = None,
) -> str:
    """Write a standard Hugging Face model directory for PyTorch ``transformers``.

    ``config.json`` (architectures ``{Name}Model`` / ``{Name}ForSequenceClassification`` /
    ``{Name}ForQuestionAnswering`` of the config's architecture, ``num_labels``, ``problem_type="regression"`` for one label;
    ``label_names``, one per class of a classification head, become ``id2label`` /
    ``label2id``, so ``pipeline("text-classification")`` and ``mvp-jax predict`` name them),
    ``model.safetensors`` in PyTorch naming (``kernel.T -> weight``), and the tokenizer files of
    ``tokenizer_path``. Pruned weights are plain zeros. Written to a temporary directory and
    renamed, so a failure leaves no partial export. Returns the directory.
    """
    from safetensors.numpy import save_file

    def weights(tmp):
        save_file(flax_to_hf_state_dict(params, head, _layout(config)),
                  os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})

    return _write_model_dir(out_dir, params, config, head, weights, tokenizer_path,
                            num_labels, overwrite, label_names)


def export_onnx(out_dir: str | os.PathLike, params: Any, config: Any, head: str | None,
                quantize: str | None = None, **kwargs) -> str:
    """``export_hf``'s directory (``kwargs``: its ``tokenizer_path``, ``num_labels``,
    ``overwrite``, ``label_names``) with ``model.onnx`` (``mvp_jax.export.onnx``; int8 matrices
    with ``quantize="int8"``) in place of the weights: ``config.json`` (per-layer sizes of a
    compact model kept, ``id2label`` / ``label2id``) and the tokenizer files beside it, for ONNX
    Runtime and ``mvp-jax predict``."""
    from mvp_jax.export import onnx as onnx_export

    onnx_export.require_onnx(runtime=quantize is not None)

    def weights(tmp):
        onnx_export.write_onnx(tmp, params, config, head, quantize)

    return _write_model_dir(out_dir, params, config, head, weights, **kwargs)


def _write_model_dir(out_dir, params, config, head, write_weights, tokenizer_path=None,
                     num_labels=None, overwrite=False, label_names=None) -> str:
    """Check params, labels and destination; write config, weights (``write_weights(tmp)``) and
    tokenizer to a temporary directory, renamed to ``out_dir`` once complete."""
    out_dir = os.path.abspath(os.fspath(out_dir))
    flat = tree.flatten(params)
    n = checked_num_labels(flat, config, head, num_labels)
    if label_names is not None:
        label_names = [str(x) for x in label_names]
        if head != "classification" or len(label_names) != n or n < 2:
            raise ExportError(f"label_names {label_names} need a classification head with as "
                              f"many outputs, got head={head!r} with {n}")
        if len(set(label_names)) != n:
            raise ExportError(f"label_names has duplicates: {label_names}")
    check_destination(out_dir, overwrite)
    tok_files = []
    if tokenizer_path is not None:
        src = resolve_model_path(tokenizer_path)
        tok_files = [os.path.join(src, f) for f in TOKENIZER_FILES
                     if os.path.isfile(os.path.join(src, f))]
        if not tok_files:
            raise ExportError(f"no tokenizer files ({', '.join(TOKENIZER_FILES)}) in {src}")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out_dir)}.tmp-")
    try:
        _export_config(config, head, n, label_names).to_json_file(
            os.path.join(tmp, "config.json"))
        write_weights(tmp)
        for f in tok_files:
            shutil.copy2(f, tmp)
        replace_directory(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


# ----------------------------------------------------------------------------------------------
# Remaining-weight counts
# ----------------------------------------------------------------------------------------------

def count_remaining(params: Any, patterns: Iterable[str] = PRUNABLE) -> dict:
    """Non-zeros of the prunable matrices: ``{"matrices": {path: {"remaining", "total"}},
    "remaining": sum nnz, "total": sum size, "fraction": remaining / total}`` (JSON-ready).

    This is the paper's "remaining weights": encoder Q, K, V, attention-output and FFN matrices
    only (embeddings, pooler, head, biases and LayerNorm excluded).
    """
    flat = tree.flatten(params)
    matrices = {}
    for path in masking.prunable_paths(params, patterns):
        w = np.asarray(flat[path])
        matrices[path] = {"remaining": int(np.count_nonzero(w)), "total": int(w.size)}
    remaining = sum(m["remaining"] for m in matrices.values())
    total = sum(m["total"] for m in matrices.values())
    return {"matrices": matrices, "remaining": remaining, "total": total,
            "fraction": remaining / total if total else 0.0}


def format_counts(counts: dict) -> str:
    """Text table of remaining percentages: one row per layer, one column per matrix type."""
    layers, columns, cells = tally(counts)

    def pct(r, t):
        return f"{100.0 * r / t:.1f}%" if t else "-"

    width = max([5] + [len(r) for r in layers])
    head = [f"{'layer':<{width}}"] + [f"{c:>9}" for c in columns] + [f"{'all':>9}"]
    lines = [" ".join(head)]
    for layer in layers:
        row = {c: cells[(layer, c)] for c in columns if (layer, c) in cells}
        r, t = sum(v[0] for v in row.values()), sum(v[1] for v in row.values())
        lines.append(" ".join([f"{layer:<{width}}"]
                              + [f"{pct(*row[c]) if c in row else '-':>9}" for c in columns]
                              + [f"{pct(r, t):>9}"]))
    lines.append(f"remaining {counts['remaining']:,} / {counts['total']:,} prunable weights "
                 f"({100.0 * counts['fraction']:.2f}%) in {len(counts['matrices'])} matrices")
    return "\n".join(lines)


__all__ = [
    "ExportError",
    "checked_num_labels",
    "count_remaining",
    "export_hf",
    "export_onnx",
    "format_counts",
]
