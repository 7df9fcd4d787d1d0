"""Export a pruned model: Hugging Face directory ("bertarize"), remaining-weight counts, and a
compact int8 + bitmask file.

All functions take params that are already masked (``W * M`` applied, e.g. by
``mvp_jax.masking.apply_masks``); scores play no part here.

Compressed format (one zip file, each member deflated, ``header.json`` first):

* each prunable encoder kernel ``W`` (Q, K, V, attention output, FFN in/out): symmetric int8,
  ``s = max|W| / 127``, ``q = round(W / s)`` clipped to [-127, 127], so ``|W - s q| <= s / 2``
  for every entry. Stored as a **bitmask** of ``q != 0`` (``np.packbits``, row-major over the
  Flax ``(in, out)`` layout) plus the int8 values of the set bits in the same order.
  Bitmask rather than CSR with 16-bit column indices: CSR costs 16 bits per kept weight, the
  bitmask 1 bit per weight, equal at 1/16 = 6.25% density; but a sparse bitmask is mostly zero
  bytes and deflates to about its entropy (~0.33 bit/weight at 6% for a random pattern, less for
  the row/column structure movement pruning produces), while random column indices hardly
  deflate. It also has no 65,535-column limit and decodes with one ``np.unpackbits``.
* everything else (embeddings, biases, LayerNorm, pooler, task head): float16 by default
  (``float_dtype="float32"`` to keep them exact; a tensor beyond float16 range stays float32).
* ``header.json``: format name and version, the ``BertConfig``, head, num_labels, and for every
  tensor its shape, storage, scale and the SHA-256 of its stored bytes.

A truncated or corrupted file raises ``CompressedFormatError`` (zip CRC, SHA-256, shapes).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import zipfile
from typing import Any, Iterable

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mvp_jax.errors import UserError

from .masking import DEFAULT_PRUNABLE, prunable_paths
from .matrices import tally
from .models import (
    build_module,
    flax_to_hf_state_dict,
    param_shapes,
    resolve_model_path,
)

FORMAT, VERSION = "mvp-jax-compressed", 1
ARCHITECTURES = {
    None: "BertModel",
    "classification": "BertForSequenceClassification",
    "qa": "BertForQuestionAnswering",
}
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json")


class ExportError(UserError):
    """Params, config or destination that cannot be exported; the message says why."""


class CompressedFormatError(UserError):
    """A compressed model file that is truncated, corrupted or not of this format."""


def _flat(params: Any) -> dict[str, Any]:
    params = params.unfreeze() if hasattr(params, "unfreeze") else params
    return traverse_util.flatten_dict(params, sep="/")


def _num_labels(flat: dict, head: str | None, num_labels: int | None) -> int:
    if head == "qa":
        return 2
    if head == "classification":
        if "classifier/kernel" not in flat:
            raise ExportError("head='classification' but params have no classifier/kernel")
        found = int(np.shape(flat["classifier/kernel"])[-1])
        if num_labels is not None and int(num_labels) != found:
            raise ExportError(f"num_labels={num_labels} but the classifier has {found} outputs")
        return found
    return 2 if num_labels is None else int(num_labels)


def _check_params(flat: dict, config: Any, head: str | None, num_labels: int) -> None:
    """Exactly the parameters (names and shapes) of ``Bert(config, head, num_labels)``."""
    if head not in ARCHITECTURES:
        raise ExportError(f"unknown head {head!r}; choose one of {tuple(ARCHITECTURES)}")
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


def _export_config(config: Any, head: str | None, num_labels: int,
                   label_names: Iterable[str] | None = None):
    cfg = config.__class__.from_dict(config.to_dict())
    cfg.architectures = [ARCHITECTURES[head]]
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


def _prepare_destination(path: str, overwrite: bool) -> None:
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
                             "vocab.txt", "tokenizer.json", "tokenizer_config.json",
                             "special_tokens_map.json", "added_tokens.json"})


def _check_replaceable_file(path: str, overwrite: bool) -> None:
    """``path`` may be written: it does not exist, or ``overwrite`` and it is a compressed model
    file of this format (never a directory or another file)."""
    if not os.path.lexists(path):
        return
    if not overwrite:
        raise ExportError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    if os.path.isdir(path):
        raise ExportError(f"{path} is a directory; the compressed model is one file")
    try:
        _open(path)[0].close()
    except CompressedFormatError:
        raise ExportError(f"{path} exists and is not a compressed model of mvp-jax; "
                          "refusing to overwrite it") from None


def _replace(tmp: str, path: str) -> None:
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

    ``config.json`` (architectures ``BertModel`` / ``BertForSequenceClassification`` /
    ``BertForQuestionAnswering``, ``num_labels``, ``problem_type="regression"`` for one label;
    ``label_names``, one per class of a classification head, become ``id2label`` /
    ``label2id``, so ``pipeline("text-classification")`` and ``mvp-jax predict`` name them),
    ``model.safetensors`` in PyTorch naming (``kernel.T -> weight``), and the tokenizer files of
    ``tokenizer_path``. Pruned weights are plain zeros. Written to a temporary directory and
    renamed, so a failure leaves no partial export. Returns the directory.
    """
    from safetensors.numpy import save_file

    out_dir = os.path.abspath(os.fspath(out_dir))
    flat = _flat(params)
    n = _num_labels(flat, head, num_labels)
    _check_params(flat, config, head, n)
    if label_names is not None:
        label_names = [str(x) for x in label_names]
        if head != "classification" or len(label_names) != n or n < 2:
            raise ExportError(f"label_names {label_names} need a classification head with as "
                              f"many outputs, got head={head!r} with {n}")
        if len(set(label_names)) != n:
            raise ExportError(f"label_names has duplicates: {label_names}")
    _prepare_destination(out_dir, overwrite)
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
        save_file(flax_to_hf_state_dict(params, head), os.path.join(tmp, "model.safetensors"),
                  metadata={"format": "pt"})
        for f in tok_files:
            shutil.copy2(f, tmp)
        _replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


# ----------------------------------------------------------------------------------------------
# Remaining-weight counts
# ----------------------------------------------------------------------------------------------

def count_remaining(params: Any, patterns: Iterable[str] = DEFAULT_PRUNABLE) -> dict:
    """Non-zeros of the prunable matrices: ``{"matrices": {path: {"remaining", "total"}},
    "remaining": sum nnz, "total": sum size, "fraction": remaining / total}`` (JSON-ready).

    This is the paper's "remaining weights": encoder Q, K, V, attention-output and FFN matrices
    only (embeddings, pooler, head, biases and LayerNorm excluded).
    """
    flat = _flat(params)
    matrices = {}
    for path in prunable_paths(params, patterns):
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


# ----------------------------------------------------------------------------------------------
# Compressed storage: int8 + bitmask for pruned matrices, float16 elsewhere, one zip file
# ----------------------------------------------------------------------------------------------


def quantize_int8(w: np.ndarray) -> tuple[np.ndarray, float]:
    """Symmetric per-tensor int8: ``s = max|W| / 127`` (1 if W == 0), ``q = clip(round(W/s))``."""
    w = np.asarray(w, np.float32)
    m = float(np.max(np.abs(w))) if w.size else 0.0
    scale = m / 127.0 if m > 0 else 1.0
    q = np.clip(np.rint(w / np.float32(scale)), -127, 127).astype(np.int8)
    return q, scale


def _sha(*blobs: bytes) -> str:
    h = hashlib.sha256()
    for b in blobs:
        h.update(b)
    return h.hexdigest()


def save_compressed(
    path: str | os.PathLike,
    params: Any,
    config: Any,
    head: str | None,
    num_labels: int | None = None,
    float_dtype: str = "float16",
    patterns: Iterable[str] = DEFAULT_PRUNABLE,
    overwrite: bool = False,
) -> dict:
    """Write masked ``params`` to one compressed file (format in the module docstring) and
    return ``compression_report(path)``. Written to a temporary file and renamed."""
    if float_dtype not in ("float16", "float32"):
        raise ExportError(f"float_dtype must be 'float16' or 'float32', got {float_dtype!r}")
    path = os.path.abspath(os.fspath(path))
    flat = _flat(params)
    n = _num_labels(flat, head, num_labels)
    _check_params(flat, config, head, n)
    _check_replaceable_file(path, overwrite)
    quantized = set(prunable_paths(params, patterns))
    header = {"format": FORMAT, "version": VERSION, "config": config.to_dict(), "head": head,
              "num_labels": n, "float_dtype": float_dtype, "tensors": {}}
    members: dict[str, bytes] = {}
    for name, value in flat.items():
        w = np.asarray(value, np.float32)
        entry = {"shape": list(w.shape)}
        if name in quantized:
            q, scale = quantize_int8(w)
            mask = q != 0
            blobs = (np.packbits(mask.ravel()).tobytes(), q[mask].tobytes())
            members[name + ".mask"], members[name + ".values"] = blobs
            entry.update(storage="int8_bitmask", scale=scale, nnz=int(mask.sum()))
        else:
            dtype = float_dtype
            if dtype == "float16" and w.size and np.max(np.abs(w)) > np.finfo(np.float16).max:
                dtype = "float32"
            blobs = (w.astype(dtype).tobytes(),)
            members[name] = blobs[0]
            entry.update(storage=dtype)
        entry["sha256"] = _sha(*blobs)
        header["tensors"][name] = entry
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.tmp-")
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
            z.writestr("header.json", json.dumps(header))
            for name, blob in members.items():
                z.writestr(name, blob)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return compression_report(path)


def _read_member(z: zipfile.ZipFile, name: str) -> bytes:
    try:
        return z.read(name)
    except KeyError:
        raise CompressedFormatError(f"{z.filename}: member {name!r} is missing") from None


def _open(path: str) -> tuple[zipfile.ZipFile, dict]:
    try:
        z = zipfile.ZipFile(path)
        header = json.loads(_read_member(z, "header.json"))
    except CompressedFormatError:
        raise
    except FileNotFoundError:
        raise
    except Exception as e:  # BadZipFile, zlib.error, CRC error, JSON error, ...
        raise CompressedFormatError(
            f"{path}: not a readable {FORMAT} file (truncated or corrupted?): "
            f"{type(e).__name__}: {e}") from e
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CompressedFormatError(f"{path}: not a {FORMAT} file")
    if header.get("version") != VERSION:
        raise CompressedFormatError(f"{path}: format version {header.get('version')} unsupported")
    return z, header


def load_compressed(path: str | os.PathLike, dtype=jnp.float32):
    """``(module, params, config)`` from a ``save_compressed`` file; int8 weights become
    ``s * q`` (zeros where the bitmask is 0), other tensors float32 again."""
    from transformers import BertConfig

    path = os.fspath(path)
    z, header = _open(path)
    with z:
        try:
            config = BertConfig.from_dict(header["config"])
            head, n = header["head"], header["num_labels"]
            module = build_module(config, head, n, dtype)
            flat = {}
            for name, e in header["tensors"].items():
                shape = tuple(e["shape"])
                size = int(np.prod(shape))
                if e["storage"] == "int8_bitmask":
                    blobs = (_read_member(z, name + ".mask"), _read_member(z, name + ".values"))
                else:
                    blobs = (_read_member(z, name),)
                if _sha(*blobs) != e["sha256"]:
                    raise CompressedFormatError(f"{path}: checksum mismatch for {name}")
                if e["storage"] == "int8_bitmask":
                    mask = np.unpackbits(np.frombuffer(blobs[0], np.uint8), count=size)
                    mask = mask.astype(bool)
                    w = np.zeros(size, np.float32)
                    w[mask] = np.frombuffer(blobs[1], np.int8).astype(np.float32) * np.float32(
                        e["scale"])
                else:
                    w = np.frombuffer(blobs[0], e["storage"]).astype(np.float32)
                flat[name] = jnp.asarray(w.reshape(shape))
            _check_params(flat, config, head, n)
        except CompressedFormatError:
            raise
        except Exception as err:  # zlib / CRC errors surface on read, bad sizes on reshape
            raise CompressedFormatError(
                f"{path}: corrupted ({type(err).__name__}: {err})") from err
    return module, traverse_util.unflatten_dict(flat, sep="/"), config


def compression_report(path: str | os.PathLike) -> dict:
    """Sizes of a ``save_compressed`` file against dense float32 (JSON-ready).

    ``file_bytes`` / ``dense_float32_bytes`` / ``ratio`` for the whole model, and the same for
    ``"encoder+head"`` (encoder layers, pooler, task head: the paper's 340 MB for BERT-base) and
    ``"embeddings"``, from the zip's per-member compressed sizes (``overhead_bytes``: header and
    zip directory); ``density`` is the fraction of non-zero int8 weights in the quantised
    (prunable) matrices.
    """
    path = os.fspath(path)
    z, header = _open(path)
    with z:
        stored = {}
        for info in z.infolist():
            base = re.sub(r"\.(mask|values)$", "", info.filename)
            stored[base] = stored.get(base, 0) + info.compress_size
    groups = {"encoder+head": [0, 0], "embeddings": [0, 0]}
    nnz = total_q = 0
    for name, e in header["tensors"].items():
        dense = 4 * int(np.prod(e["shape"]))
        g = groups["embeddings" if name.startswith("bert/embeddings/") else "encoder+head"]
        g[0] += stored.get(name, 0)
        g[1] += dense
        if e["storage"] == "int8_bitmask":
            nnz += e["nnz"]
            total_q += dense // 4
    file_bytes = os.path.getsize(path)
    dense_bytes = sum(g[1] for g in groups.values())
    report = {"file_bytes": file_bytes, "dense_float32_bytes": dense_bytes,
              "ratio": dense_bytes / file_bytes, "density": nnz / total_q if total_q else 1.0,
              "float_dtype": header["float_dtype"],
              "overhead_bytes": file_bytes - sum(g[0] for g in groups.values())}
    for name, (b, d) in groups.items():
        report[name] = {"bytes": b, "dense_float32_bytes": d, "ratio": d / b if b else 0.0}
    return report


__all__ = [
    "CompressedFormatError",
    "ExportError",
    "compression_report",
    "count_remaining",
    "export_hf",
    "format_counts",
    "load_compressed",
    "quantize_int8",
    "save_compressed",
]
