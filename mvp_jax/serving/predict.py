"""``mvp-jax predict``: label texts with a fine-pruned model, in JAX or ONNX Runtime.

The model is an exported Hugging Face directory (``RUN/export``, ``mvp-jax export``'s output, or
any BERT classifier), an ONNX directory (``mvp-jax export --format onnx``: its ``model.onnx``
runs in ONNX Runtime, the rest is the same) or a finished run directory (its ``export/``). Texts are tokenised in
chunks, each chunk sorted by length and cut into batches of ``batch_size`` rows padded to the
smallest length bucket that holds their longest text (``mvp_jax.data.batching``: at most one
compiled program per bucket), run by the jit-compiled Flax model, and put back in input order.

For each input the result is a dict: ``text`` (and ``text_pair`` for pairs), then

* classification: ``label`` (the class name of the highest probability, from the model's
  ``id2label``) and ``probabilities`` ({class name: softmax probability});
* regression (one output): ``value``.

    predictor = load_predictor("runs/reviews")
    rows = predict_texts(predictor, ["Great value.", "Broke in a week."])
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence, cast

import numpy as np

from mvp_jax.errors import UserError

__all__ = ["Predictor", "PredictError", "OUTPUT_FORMATS", "load_predictor",
           "predict_texts", "read_texts", "write_predictions", "run_predict", "default_buckets"]

OUTPUT_FORMATS = (".jsonl", ".csv")
CHUNK_BATCHES = 64  # texts are tokenised and sorted by length this many batches at a time


class PredictError(UserError):
    """Inputs ``predict`` cannot use (texts, columns, output file, model head)."""


@dataclasses.dataclass
class Predictor:
    """A loaded model ready to predict: ``apply(params, ids, mask, types) -> outputs [B, C]``."""

    model_dir: str
    apply: Any
    params: Any
    tokenizer: Any
    kind: str  # classification | regression
    label_names: tuple[str, ...]  # classification: one per output; regression: ()
    max_seq_length: int
    # lengths a batch is padded to (None: ``default_buckets``, one compiled program each); ONNX
    # Runtime takes any shape, so its batches are padded only to their longest text
    buckets: tuple[int, ...] | None = None


def load_predictor(model_or_run: str | os.PathLike, max_seq_length: int | None = None,
                   dtype=None, threads: int | None = None) -> Predictor:
    """Load a classification or regression model (a model or run directory,
    ``mvp_jax.training.rundir.locate``) for ``predict_texts``.

    ``max_seq_length``: texts are truncated to it; default the run's ``task.max_seq_length``,
    else the model's position embeddings (at most 512), so that texts are cut only where the
    model cannot read further. ``threads``: ONNX Runtime's intra-op threads for an ONNX
    directory (None: one per core); a JAX model ignores it."""
    import jax

    from mvp_jax.models import load_model_config, load_pretrained, load_tokenizer
    from mvp_jax.training.evaluation import model_kind
    from mvp_jax.training.rundir import locate

    found = locate(model_or_run)  # need_model: it has a model directory, or raised
    model_dir, run_cfg = cast(str, found.model_dir), found.cfg
    kind = model_kind(model_dir)
    if kind == "qa":
        raise PredictError(f"{model_dir} is a question-answering model; predict labels texts "
                           f"with classification and regression models")
    config = load_model_config(model_dir)
    archs = list(config.architectures or ())
    if archs and not any(a.endswith("ForSequenceClassification") for a in archs):
        raise PredictError(f"{model_dir} has no classification or regression head "
                           f"(architectures: {', '.join(archs)}); predict needs a fine-tuned "
                           f"model such as RUN/export")
    n = int(config.num_labels)
    names = () if kind == "regression" else tuple(  # the model's id2label, as transformers names
        str(config.id2label.get(i, config.id2label.get(str(i), f"LABEL_{i}"))) for i in range(n))
    from mvp_jax.export.onnx import inference_session, is_onnx_dir, session_apply
    from mvp_jax.models.bert import BertSpec

    longest = BertSpec.from_config(config).max_length  # the longest input its positions cover
    limit = min(longest, 512)
    if max_seq_length is None and run_cfg is not None:
        max_seq_length = run_cfg.task.max_seq_length
    L = int(max_seq_length or limit)
    if not 2 <= L <= longest:
        raise PredictError(f"max_seq_length must be in 2..{longest} "
                           f"(the model's position embeddings), got {L}")
    if is_onnx_dir(model_dir):  # ONNX Runtime runs model.onnx
        session = inference_session(model_dir, threads=threads)
        return Predictor(model_dir, session_apply(session), session, load_tokenizer(model_dir),
                         kind, names, L, buckets=tuple(range(1, L + 1)))
    kwargs = {} if dtype is None else {"dtype": dtype}
    pre = load_pretrained(model_dir, head="classification", num_labels=n, **kwargs)
    module = pre.module

    @jax.jit
    def apply(params, input_ids, attention_mask, token_type_ids):
        return module.apply({"params": params}, input_ids, attention_mask, token_type_ids)

    return Predictor(model_dir, apply, pre.params, load_tokenizer(pre.path), kind, names, L)


def default_buckets(max_length: int) -> tuple[int, ...]:
    """Powers of two from 16 below ``max_length``, then ``max_length``."""
    out, b = [], 16
    while b < max_length:
        out.append(b)
        b *= 2
    return (*out, int(max_length))


def _encode(tokenizer, texts, pairs, max_length):
    enc = tokenizer(list(texts), list(pairs) if pairs is not None else None, truncation=True,
                    max_length=max_length)
    ids = enc["input_ids"]
    types = enc.get("token_type_ids") or [[0] * len(x) for x in ids]
    return ids, types


def _outputs(predictor: Predictor, texts, pairs, batch_size: int, buckets) -> np.ndarray:
    """Raw model outputs [N, C] of one chunk, in input order."""
    from mvp_jax.data.batching import batch_plan, bucket_length

    ids, types = _encode(predictor.tokenizer, texts, pairs, predictor.max_seq_length)
    lengths = np.asarray([len(x) for x in ids], np.int64)
    pad = predictor.tokenizer.pad_token_id or 0
    out = None
    for idx in batch_plan(len(ids), batch_size, shuffle=False, lengths=lengths):
        L = bucket_length(int(lengths[idx].max()), buckets)
        input_ids = np.full((batch_size, L), pad, np.int32)
        mask = np.zeros((batch_size, L), np.int32)
        token_types = np.zeros((batch_size, L), np.int32)
        for r, i in enumerate(idx):
            n = lengths[i]
            input_ids[r, :n], mask[r, :n], token_types[r, :n] = ids[i], 1, types[i]
        mask[len(idx):, 0] = 1  # filler rows (dropped below) attend to one token
        y = np.asarray(predictor.apply(predictor.params, input_ids, mask, token_types),
                       np.float32)[:len(idx)]
        if out is None:
            out = np.zeros((len(ids), y.shape[-1]), np.float32)
        out[idx] = y
    return out if out is not None else np.zeros((0, max(1, len(predictor.label_names))), np.float32)


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.float64) - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def _check_texts(texts: Sequence[Any], what: str) -> None:
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise PredictError(f"{what} {i + 1} is empty" if isinstance(t, str) or t is None else
                               f"{what} {i + 1} is a {type(t).__name__}, not a text")


def predict_texts(predictor: Predictor, texts: Sequence[str],
                  pairs: Sequence[str] | None = None, *, batch_size: int = 32,
                  progress: bool = False, buckets: Sequence[int] | None = None
                  ) -> Iterator[dict]:
    """Yield one result dict per text (module docstring), in input order.

    ``pairs``: second texts of sentence-pair inputs (same length as ``texts``). Texts are
    handled ``CHUNK_BATCHES * batch_size`` at a time; ``progress`` shows a bar on stderr."""
    if batch_size < 1:
        raise PredictError(f"batch size must be >= 1, got {batch_size}")
    if pairs is not None and len(pairs) != len(texts):
        raise PredictError(f"{len(texts)} texts but {len(pairs)} second texts")
    from mvp_jax.data.batching import resolve_buckets

    L = predictor.max_seq_length
    buckets = resolve_buckets(buckets or predictor.buckets or default_buckets(L), L)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(texts), desc="predict", unit="ex", dynamic_ncols=True)
    chunk = CHUNK_BATCHES * batch_size
    try:
        for start in range(0, len(texts), chunk):
            part = list(texts[start:start + chunk])
            part_pairs = list(pairs[start:start + chunk]) if pairs is not None else None
            outputs = _outputs(predictor, part, part_pairs, batch_size, buckets)
            for i, y in enumerate(outputs):
                row: dict[str, Any] = {"text": part[i]}
                if part_pairs is not None:
                    row["text_pair"] = part_pairs[i]
                if predictor.kind == "regression":
                    row["value"] = float(y[0])
                else:
                    p = _softmax(y)
                    row["label"] = predictor.label_names[int(np.argmax(p))]
                    row["probabilities"] = {n: float(v) for n, v in
                                            zip(predictor.label_names, p)}
                yield row
            if bar is not None:
                bar.update(len(part))
    finally:
        if bar is not None:
            bar.close()


def read_texts(path: str | os.PathLike, columns: Sequence[str] | None
               ) -> tuple[list[str], list[str] | None]:
    """The texts of a data file (CSV, TSV, JSON, JSON Lines, Parquet; the same reader and checks as
    training data): one column, or two for pairs (``None``: the file's only column, else
    ``text``). A missing column, an empty text or an empty file is a ``DataError`` naming the
    file, row and column."""
    from mvp_jax.data.custom import read_data_file, text_cell
    from mvp_jax.data.tasks import DataError

    ds = read_data_file(path)
    if columns is None:  # a file of one column needs no name; else the usual "text"
        columns = tuple(ds.column_names) if len(ds.column_names) == 1 else ("text",)
    if not 1 <= len(columns) <= 2:
        raise PredictError(f"--text-column: one column, or two for pairs, got {list(columns)}")
    for c in columns:
        if c not in ds.column_names:
            raise DataError(f"{path}: no column {c!r} (--text-column); its columns are: "
                            f"{', '.join(ds.column_names)}")
    cols = [[text_cell(v, str(path), i + 1, c) for i, v in enumerate(ds[c])] for c in columns]
    return cols[0], (cols[1] if len(cols) == 2 else None)


def _check_output(path: str, overwrite: bool) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise PredictError(f"--output {path}: cannot tell the format from the name; use "
                           f"{' or '.join(OUTPUT_FORMATS)}")
    if os.path.isdir(path):
        raise PredictError(f"--output {path} is a directory")
    if os.path.lexists(path) and not overwrite:
        raise PredictError(f"--output {path} exists; pass --overwrite to replace it")
    return suffix


def _csv_text(rows: list[dict], label_names: Sequence[str]) -> str:
    buf = io.StringIO()
    keys = [k for k in ("text", "text_pair") if rows and k in rows[0]] or ["text"]
    if rows and "value" in rows[0]:
        keys.append("value")
    else:
        keys += ["label", *[f"p_{n}" for n in label_names]]
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(keys)
    for r in rows:
        flat = dict(r)
        for n, p in r.get("probabilities", {}).items():
            flat[f"p_{n}"] = p
        writer.writerow([flat.get(k) for k in keys])
    return buf.getvalue()


def write_predictions(path: str, rows: list[dict], label_names: Sequence[str] = (),
                      overwrite: bool = False) -> None:
    """Write results as JSON Lines (one dict a line) or CSV (text[, text_pair], label,
    ``p_<class>`` columns; or value), by the extension; atomically (temporary file + rename)."""
    suffix = _check_output(path, overwrite)
    text = (_csv_text(rows, label_names) if suffix == ".csv" else
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def run_text_columns(run_cfg) -> tuple[str, ...] | None:
    """The text columns a run read: its own data's (``text`` by default), a built-in task's
    (SST-2's ``sentence``, MNLI's ``premise`` and ``hypothesis`` ...); None without a run."""
    if run_cfg is None or run_cfg.task.is_qa:
        return None
    if run_cfg.task.own_data:
        return tuple(run_cfg.task.text_columns or ("text",))
    from mvp_jax.data.tasks import get_task

    return tuple(get_task(run_cfg.task.name).text_keys) or None


def run_predict(model: str, *, texts: Sequence[str] | None = None, file: str | None = None,
                text_columns: Sequence[str] | None = None, output: str | None = None,
                batch_size: int = 32, max_seq_length: int | None = None,
                overwrite: bool = False, progress: bool = True) -> list[dict]:
    """The ``predict`` command: texts (``texts``) or a file's column(s) -> results, written to
    ``output`` (.jsonl / .csv) when given. Every input is checked before the model runs, and the
    output is written only when all of them succeeded."""
    if (texts is None) == (file is None):
        raise PredictError("give texts (--text) or a file (--file), not both")
    if output is not None:
        _check_output(output, overwrite)
    pairs = None
    if texts is not None:
        if text_columns:
            raise PredictError("--text-column applies to --file")
        _check_texts(texts, "--text")
    from mvp_jax.training.rundir import locate

    run_cfg = locate(model).cfg  # the model itself is loaded after the inputs are read
    if file is not None:
        columns = text_columns or run_text_columns(run_cfg)
        texts, pairs = read_texts(file, tuple(columns) if columns else None)
    predictor = load_predictor(model, max_seq_length)
    rows = list(predict_texts(predictor, cast(Sequence[str], texts), pairs, batch_size=batch_size,
                              progress=progress and file is not None))
    if output is not None:
        write_predictions(output, rows, predictor.label_names, overwrite=overwrite)
    return rows
