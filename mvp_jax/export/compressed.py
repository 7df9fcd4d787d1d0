"""Compressed storage of a pruned model: int8 + bitmask for the pruned matrices, float16
elsewhere.

Format (one zip file, each member deflated, ``header.json`` first):

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
* ``header.json``: format name and version, the model's config, head, num_labels, and for every
  tensor its shape, storage, scale and the SHA-256 of its stored bytes.

A truncated or corrupted file raises ``CompressedFormatError`` (zip CRC, SHA-256, shapes).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import zipfile
from typing import Any, Iterable

import jax.numpy as jnp
import numpy as np

from mvp_jax import tree
from mvp_jax.errors import UserError
from mvp_jax.export.huggingface import ExportError, checked_num_labels
from mvp_jax.models import build_module
from mvp_jax.models.layout import EMBEDDINGS, PRUNABLE
from mvp_jax.pruning import masking

FORMAT, VERSION = "mvp-jax-compressed", 1


class CompressedFormatError(UserError):
    """A compressed model file that is truncated, corrupted or not of this format."""


def check_replaceable(path: str, overwrite: bool) -> None:
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
    patterns: Iterable[str] = PRUNABLE,
    overwrite: bool = False,
) -> dict:
    """Write masked ``params`` to one compressed file (format in the module docstring) and
    return ``compression_report(path)``. Written to a temporary file and renamed."""
    if float_dtype not in ("float16", "float32"):
        raise ExportError(f"float_dtype must be 'float16' or 'float32', got {float_dtype!r}")
    path = os.path.abspath(os.fspath(path))
    flat = tree.flatten(params)
    n = checked_num_labels(flat, config, head, num_labels)
    check_replaceable(path, overwrite)
    quantized = set(masking.prunable_paths(params, patterns))
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
    from transformers import CONFIG_MAPPING

    path = os.fspath(path)
    z, header = _open(path)
    with z:
        try:
            d = header["config"]
            config = CONFIG_MAPPING[d.get("model_type", "bert")].from_dict(d)
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
            checked_num_labels(flat, config, head, n)
        except CompressedFormatError:
            raise
        except Exception as err:  # zlib / CRC errors surface on read, bad sizes on reshape
            raise CompressedFormatError(
                f"{path}: corrupted ({type(err).__name__}: {err})") from err
    return module, tree.unflatten(flat), config


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
        g = groups["embeddings" if name.startswith(EMBEDDINGS) else "encoder+head"]
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
    "check_replaceable",
    "compression_report",
    "load_compressed",
    "quantize_int8",
    "save_compressed",
]
