"""One export path for a pruned model: masked params (``W * M``) to a Hugging Face directory or
an ONNX one, whole or compact (pruned heads and FFN neurons removed, ``mvp_jax.export.compact``).

The end of a run (``runner``: ``export/`` and, for structured pruning, ``compact/``) and
``mvp-jax export`` (``rundir.export_run``, ``export_model_dir``) all write through
``export_pruned``.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

from mvp_jax.export.compact import compact_params, layer_sizes
from mvp_jax.export.huggingface import ExportError, check_destination, export_hf, export_onnx

FORMATS = ("hf", "onnx")


def compacted(masked: Any, config: Any, refuse_unchanged: bool = True) -> tuple[Any, Any]:
    """``compact_params(masked, None, config)``; with ``refuse_unchanged``, an ``ExportError``
    when no whole head or neuron was removed (weight-by-weight pruning: nothing to compact)."""
    params, small = compact_params(masked, None, config)
    if refuse_unchanged and layer_sizes(small) == layer_sizes(config):
        raise ExportError(
            "--compact: no whole attention head or FFN neuron was pruned (the masks removed "
            "single weights), so the compact model is the dense one; export without --compact "
            "(pruned weights are zeros; --compressed stores them sparsely), or fine-prune with "
            "prune.granularity head, neuron or hybrid to remove whole units")
    return params, small


def check_request(format: str, quantize: str | None, compact: bool = False,
                  compressed: str | None = None) -> None:
    """Refuse a bad combination of options before any work (``ExportError``)."""
    if format not in FORMATS:
        raise ExportError(f"unknown --format {format!r}; choose one of {', '.join(FORMATS)}")
    if quantize is not None and format != "onnx":
        raise ExportError(f"--quantize {quantize} needs --format onnx (ONNX Runtime's int8 "
                          "matrices)")
    if format == "onnx":
        from mvp_jax.export import onnx as onnx_export

        if quantize is not None and quantize not in onnx_export.QUANTIZE:
            raise ExportError(f"unknown --quantize {quantize!r}; choose one of "
                              f"{', '.join(onnx_export.QUANTIZE)}")
        onnx_export.require_onnx(runtime=quantize is not None)
    if compressed and (compact or format != "hf"):
        raise ExportError("--compressed packs the masked dense model; it cannot be combined with "
                          "--compact or --format onnx (export twice)")


def export_pruned(out_dir: str | os.PathLike, masked: Any, config: Any, head: str | None, *,
                  format: str = "hf", compact: bool = False, quantize: str | None = None,
                  tokenizer_path: str | os.PathLike | None = None,
                  num_labels: int | None = None, label_names: Iterable[str] | None = None,
                  overwrite: bool = False, refuse_unchanged: bool = True) -> str:
    """Write ``masked`` (``W * M`` applied) as a model directory of ``format`` (``hf``: config +
    safetensors; ``onnx``: config + ``model.onnx``), the compact model with ``compact``, plus the
    tokenizer files of ``tokenizer_path``. Returns the directory."""
    check_request(format, quantize, compact)
    if compact:
        masked, config = compacted(masked, config, refuse_unchanged)
    kwargs: dict[str, Any] = dict(tokenizer_path=tokenizer_path, num_labels=num_labels,
                                  overwrite=overwrite, label_names=label_names)
    if format == "onnx":
        return export_onnx(out_dir, masked, config, head, quantize=quantize, **kwargs)
    return export_hf(out_dir, masked, config, head, **kwargs)


def head_of(config: Any) -> str | None:
    """The task head of a model directory's config: ``classification``, ``qa`` or None."""
    archs = list(getattr(config, "architectures", None) or ())
    if any(a.endswith("ForQuestionAnswering") for a in archs):
        return "qa"
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "classification"
    return None


def export_model_dir(model_dir: str, output_dir: str, *, format: str = "onnx",
                     compact: bool = False, quantize: str | None = None,
                     overwrite: bool = False) -> dict:
    """``export_pruned`` of an exported model directory (e.g. ``RUN/export`` or ``RUN/compact``):
    its weights are already masked; its head, labels (``id2label``) and tokenizer are kept."""
    from mvp_jax.models import load_pretrained
    from mvp_jax.models.loading import load_model_config

    check_request(format, quantize, compact)
    check_destination(os.path.abspath(output_dir), overwrite)
    config = load_model_config(model_dir)
    head = head_of(config)
    n = int(config.num_labels) if head == "classification" else None
    pre = load_pretrained(model_dir, head=head, **({"num_labels": n} if n else {}))
    # the config is copied whole, its id2label / label2id with it
    out = export_pruned(output_dir, pre.params, pre.config, head, format=format, compact=compact,
                        quantize=quantize, tokenizer_path=model_dir, num_labels=n,
                        overwrite=overwrite)
    return {"export": out, "format": format, "compact": compact, "quantize": quantize}


__all__ = ["FORMATS", "check_request", "compacted", "export_model_dir", "export_pruned",
           "head_of"]
