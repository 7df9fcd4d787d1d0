"""Your own data: a task built from configuration instead of the GLUE/SQuAD registry.

Classification and regression read local files (CSV, TSV, JSON, JSON Lines, Parquet, the
format told by the file's extension) or any Hugging Face dataset (a hub id, a local dataset
directory, or a dataset saved with ``save_to_disk``), all through ``datasets``; extractive QA
reads SQuAD-format JSON files (or a hub dataset with SQuAD's columns). Whatever the source,
each split becomes a ``datasets.Dataset`` and goes through the same checks and the same
normalisation (``normalize_split``): the text column(s) as strings, one ``label`` column of
class indices (classification) or floats (regression). After that the pipeline is the GLUE one
(``tokenize_glue``), so batching, bucketing and metrics are shared.

Class labels may be strings or integers. Their set and order come from the training split,
sorted (numbers numerically, else as text; a hub dataset's ``ClassLabel`` column keeps its own
names and order), unless given (``labels``, e.g. the run's
``task.labels`` or a model's ``id2label``); a label of another split that is not among them is
an error, as are a missing column, an empty text, a missing label, a non-number label in a
regression task, an empty or non-UTF-8 file, and a file whose format its name does not tell.
Every such error is a ``DataError`` whose one-line message names the file (or dataset and
split), the row (counted from 1, header excluded) and the column.

    spec = custom_task("reviews", "classification", train_file="train.csv",
                       validation_file="dev.csv", text_columns=["text"], label_column="label")
    data = load_task(spec, tokenizer)          # as for any registry task
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import datasets
import pyarrow as pa
from datasets.exceptions import DatasetGenerationError

from mvp_jax.task_names import KINDS

from .tasks import DataError, Source, TaskSpec

__all__ = ["FORMATS", "KINDS", "custom_task", "task_from_config", "is_own_data", "read_data_file",
           "read_hub_split", "read_source_split", "normalize_split", "label_names_of",
           "sort_labels", "file_format"]

# extension -> (datasets packaged builder, its options, name in messages)
FORMATS: dict[str, tuple[str, dict[str, Any], str]] = {
    # only empty fields are missing values: a review that reads "NA" or "null" stays a text
    ".csv": ("csv", {"keep_default_na": False, "na_values": [""], "encoding": "utf-8-sig"}, "CSV"),
    ".tsv": ("csv", {"sep": "\t", "keep_default_na": False, "na_values": [""],
                     "encoding": "utf-8-sig"}, "TSV"),
    ".json": ("json", {}, "JSON"),
    ".jsonl": ("json", {}, "JSON Lines"),
    ".parquet": ("parquet", {}, "Parquet"),
}
_INT = re.compile(r"^[+-]?\d+$")
_METRICS = {"classification": ("accuracy", ("accuracy", "macro_f1")),
            "regression": ("pearson", ("pearson", "spearman")),
            "qa": ("f1", ("exact_match", "f1"))}
QA_COLUMNS = ("id", "context", "question", "answers")


# ----------------------------------------------------------------------------------------------
# Reading one split
# ----------------------------------------------------------------------------------------------


def file_format(path: str | os.PathLike, kind: str = "classification") -> str:
    """The extension of ``path`` if it tells a readable format, else ``DataError``. QA files are
    SQuAD-format JSON (``.json``)."""
    suffix = Path(path).suffix.lower()
    if kind == "qa":
        if suffix != ".json":
            raise DataError(f"{path}: cannot tell the format from the name; extractive QA reads "
                            f"SQuAD-format JSON files (.json)")
        return suffix
    if suffix not in FORMATS:
        listed = ", ".join(FORMATS)
        raise DataError(f"{path}: cannot tell the format from the name (extension "
                        f"{suffix or 'none'!r}); use one of {listed}")
    return suffix


def _check_utf8(path: Path) -> None:
    """Text formats must be UTF-8: name the first line (and byte) that is not. Lines split on
    b'\\n', which never occurs inside a multi-byte UTF-8 sequence."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: line {lineno} is not UTF-8 text (byte "
                                f"0x{raw[e.start]:02x} at position {e.start + 1}); save the file "
                                f"as UTF-8") from None


def _root_cause(e: BaseException) -> str:
    """The innermost cause's first line: ``datasets`` wraps a parser's error in its own."""
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        inner = e.__cause__ or e.__context__
        if inner is None:
            break
        e = inner
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


class _QuietDatasets:
    """No ``datasets`` progress bars while a file is read (its messages would interleave with
    ours; files of labelled examples read in seconds)."""

    def __enter__(self):
        self.was_disabled = datasets.utils.are_progress_bars_disabled()
        datasets.utils.disable_progress_bars()

    def __exit__(self, *exc):
        if not self.was_disabled:
            datasets.utils.enable_progress_bars()


def read_data_file(path: str | os.PathLike) -> datasets.Dataset:
    """Read one local file into a Dataset with the file's columns, through ``datasets``' packaged
    readers (pandas for CSV/TSV: standard quoting, so quoted multi-line texts work; pyarrow for
    JSON, JSON Lines and Parquet). Raises ``DataError`` naming the file: not found, format not
    told by the name, empty, not UTF-8, or not parseable."""
    path = Path(path)
    fmt = file_format(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    builder, options, name = FORMATS[fmt]
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    if builder != "parquet":
        _check_utf8(path)
    try:
        with _QuietDatasets():
            ds = datasets.load_dataset(builder, data_files={"data": str(path.resolve())},
                                       split="data", **options)
    except (DatasetGenerationError, pa.ArrowException, ValueError, OSError) as e:
        raise DataError(f"{path}: cannot read it as {name}: {_root_cause(e)}") from None
    if len(ds) == 0:
        raise DataError(f"{path}: no rows (an empty file or a header alone)")
    return ds


def _is_saved_dataset(path: str) -> bool:
    return os.path.isdir(path) and (
        os.path.isfile(os.path.join(path, "dataset_dict.json"))
        or os.path.isfile(os.path.join(path, "state.json")))


def read_hub_split(path: str, config: str | None, split: str) -> datasets.Dataset:
    """One split of a hub dataset (``datasets.load_dataset(path, config, split=split)``: a hub
    id, or a local directory of data files), or of a dataset saved with ``save_to_disk``."""
    where = f"{path}" + (f" (config {config!r})" if config else "")
    if _is_saved_dataset(path):
        try:
            saved = datasets.load_from_disk(path)
        except Exception as e:  # noqa: BLE001 - a corrupt or foreign directory
            raise DataError(f"{where}: cannot load the saved dataset: {_root_cause(e)}") from None
        if not isinstance(saved, datasets.DatasetDict):
            raise DataError(f"{where} is a saved Dataset without splits; save a DatasetDict "
                            f"(with a {split!r} split)")
        if split not in saved:
            raise DataError(f"{where} has no split {split!r}; its splits: {', '.join(saved)}")
        ds = saved[split]
    else:
        try:
            with _QuietDatasets():
                ds = datasets.load_dataset(path, config, split=split)
        except Exception as e:  # noqa: BLE001 - offline, unknown dataset, config or split, ...
            raise DataError(f"{where}: could not load split {split!r}: {_root_cause(e)}"
                            ) from None
    if len(ds) == 0:
        raise DataError(f"{where}: split {split!r} has no rows")
    return ds


def _describe(source: Source, split: str) -> str:
    files = dict(source.files)
    if split in files:
        return files[split]
    hub_split = dict(source.hub_splits).get(split, split)
    return f"{source.hub_path}[{hub_split}]"


def read_source_split(spec: TaskSpec, split: str) -> datasets.Dataset:
    """The raw Dataset of one split of a task of your own data (not yet checked)."""
    source = spec.source
    files = dict(source.files)
    if source.hub_path is None:
        if split not in files:
            key = f"task.{split}_file" if split in ("train", "validation", "test") else split
            raise DataError(f"{spec.name}: no {split} data (set {key})")
        if spec.kind == "qa":
            from .squad import read_squad_json

            path = Path(files[split])
            file_format(path, "qa")
            if path.is_file():
                if path.stat().st_size == 0:
                    raise DataError(f"{path}: empty file")
                _check_utf8(path)
            return read_squad_json(path)
        return read_data_file(files[split])
    hub_splits = dict(source.hub_splits)
    if split not in hub_splits:
        raise DataError(f"{spec.name}: no {split} split (set task.{split}_split)")
    return read_hub_split(source.hub_path, source.hub_config, hub_splits[split])


# ----------------------------------------------------------------------------------------------
# Checks and normalisation
# ----------------------------------------------------------------------------------------------


def _check_columns(ds: datasets.Dataset, where: str, needed: Iterable[tuple[str, str]]) -> None:
    for column, key in needed:
        if column not in ds.column_names:
            raise DataError(f"{where}: no column {column!r} ({key}); its columns are: "
                            f"{', '.join(ds.column_names)}")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, str) and not value.strip())


def label_name(value: Any, where: str, row: int, column: str) -> str:
    """The class name of one label cell: strings stripped, integers (and integral floats, as
    pandas reads an integer column with gaps) in decimal, booleans "true"/"false"."""
    if _missing(value):
        raise DataError(f"{where}: row {row}: no label in column {column!r}")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        raise DataError(f"{where}: row {row}: label {value!r} in column {column!r} is not a "
                        f"class; for numbers use task.kind: regression")
    if isinstance(value, str):
        return value.strip()
    raise DataError(f"{where}: row {row}: label in column {column!r} is a "
                    f"{type(value).__name__}, not a class name or number")


def label_value(value: Any, where: str, row: int, column: str) -> float:
    """The target of one regression label cell: a finite number (or a text that reads as one)."""
    if _missing(value):
        raise DataError(f"{where}: row {row}: no label in column {column!r}")
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            pass
    if number is None or not math.isfinite(number):
        raise DataError(f"{where}: row {row}: label {value!r} in column {column!r} is not a "
                        f"number (task.kind regression needs a number in every row)")
    return number


def sort_labels(names: Iterable[str]) -> tuple[str, ...]:
    """Distinct class names, sorted: numerically when every name is an integer, else as text."""
    names = set(names)
    if names and all(_INT.match(n) for n in names):
        return tuple(sorted(names, key=int))
    return tuple(sorted(names))


def _class_label(ds: datasets.Dataset, column: str) -> datasets.ClassLabel | None:
    feature = ds.features.get(column)
    return feature if isinstance(feature, datasets.ClassLabel) else None


def label_cells(ds: datasets.Dataset, column: str) -> list:
    """The label column's values; a ``ClassLabel`` column (hub datasets) read as its names
    (-1, "no label", as None)."""
    values = list(ds[column])
    cl = _class_label(ds, column)
    if cl is not None:
        values = [cl.int2str(int(v)) if v is not None and int(v) >= 0 else None for v in values]
    return values


def label_names_of(ds: datasets.Dataset, where: str, column: str) -> tuple[str, ...]:
    """The class names of the label column of ``ds`` (the training split): sorted, or, for a
    ``ClassLabel`` column, the dataset's own names in its own order. Every row must have one."""
    _check_columns(ds, where, [(column, "task.label_column")])
    names = sort_labels(label_name(v, where, i + 1, column)
                        for i, v in enumerate(label_cells(ds, column)))
    cl = _class_label(ds, column)
    return tuple(cl.names) if cl is not None else names


def text_cell(value: Any, where: str, row: int, column: str) -> str:
    """One text cell as a string (numbers read by pandas as numbers included); a missing or
    non-text cell raises ``DataError`` naming ``where``, the 1-based ``row`` and the ``column``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not _missing(value):
        return str(value)  # pandas reads a column of numbers as numbers
    if isinstance(value, bool):
        return str(value)
    if _missing(value):
        raise DataError(f"{where}: row {row}: empty text in column {column!r}")
    if not isinstance(value, str):
        raise DataError(f"{where}: row {row}: column {column!r} holds a "
                        f"{type(value).__name__}, not a text")
    return value


def normalize_split(spec: TaskSpec, ds: datasets.Dataset, split: str) -> datasets.Dataset:
    """Check one raw split and return it with the pipeline's columns: ``spec.text_keys`` as
    strings and ``spec.label_key`` as int64 class indices into ``spec.label_names``
    (classification) or float32 (regression); QA splits are checked for SQuAD's columns."""
    source = spec.source
    where = _describe(source, split)
    if spec.kind == "qa":
        _check_columns(ds, where, [(c, "SQuAD format") for c in QA_COLUMNS])
        return ds
    label_column = source.label_column
    _check_columns(ds, where, [(c, "task.text_columns") for c in spec.text_keys]
                   + [(label_column, "task.label_column")])
    out: dict[str, list] = {}
    for column in spec.text_keys:
        out[column] = [text_cell(v, where, i + 1, column) for i, v in enumerate(ds[column])]
    labels = label_cells(ds, label_column)
    if spec.kind == "regression":
        out[spec.label_key] = [label_value(v, where, i + 1, label_column)
                               for i, v in enumerate(labels)]
        features = {spec.label_key: datasets.Value("float32")}
    else:
        index = {n: i for i, n in enumerate(spec.label_names)}
        ids = []
        for i, v in enumerate(labels):
            name = label_name(v, where, i + 1, label_column)
            if name not in index:
                seen = ("the training split's" if split != "train" and spec.source.labels_from_train
                        else "the task's")
                raise DataError(f"{where}: row {i + 1}: label {name!r} in column "
                                f"{label_column!r} is not one of {seen} labels "
                                f"({', '.join(spec.label_names)})")
            ids.append(index[name])
        out[spec.label_key] = ids
        features = {spec.label_key: datasets.Value("int64")}
    features = datasets.Features({**{c: datasets.Value("string") for c in spec.text_keys},
                                  **features})
    return datasets.Dataset.from_dict(out, features=features)


# ----------------------------------------------------------------------------------------------
# The task
# ----------------------------------------------------------------------------------------------


def custom_task(
    name: str,
    kind: str = "classification",
    *,
    train_file: str | None = None,
    validation_file: str | None = None,
    test_file: str | None = None,
    hub_path: str | None = None,
    hub_config: str | None = None,
    train_split: str | None = "train",
    validation_split: str | None = "validation",
    test_split: str | None = None,
    text_columns: Sequence[str] | None = None,
    label_column: str | None = None,
    labels: Sequence[str] | None = None,
    max_seq_length: int | None = None,
) -> TaskSpec:
    """A ``TaskSpec`` for your own data.

    Files (``*_file``) or a hub dataset (``hub_path``, ``hub_config`` and split names; a split
    name None leaves the split out). ``text_columns``: one column, or two for pairs (default
    ``["text"]``); ``label_column`` (default ``"label"``). Classification: ``labels`` fixes the
    class names and their order; None reads the training split and sorts its labels (numbers
    numerically). Eval splits are "validation" and "test", those given. Metrics: accuracy and
    macro-F1 (classification), Pearson and Spearman (regression), EM and F1 (qa).
    """
    if kind not in KINDS:
        raise DataError(f"unknown task kind {kind!r}; choose one of {', '.join(KINDS)}")
    files = {s: f for s, f in (("train", train_file), ("validation", validation_file),
                               ("test", test_file)) if f is not None}
    if hub_path is not None and files:
        raise DataError(f"{name}: give files or a hub dataset, not both")
    if hub_path is None and not files:
        raise DataError(f"{name}: no data; set task.train_file / task.validation_file / "
                        f"task.test_file, or task.hub_path")
    for f in files.values():  # every format is told before anything is read
        file_format(f, kind)
    if hub_path is not None:
        hub_splits = {s: h for s, h in (("train", train_split), ("validation", validation_split),
                                        ("test", test_split)) if h is not None}
    else:
        hub_splits = {}
    available = files or hub_splits
    eval_splits = tuple(s for s in ("validation", "test") if s in available)
    if kind == "qa":
        if text_columns or label_column or labels:
            raise DataError(f"{name}: task.text_columns, task.label_column and task.labels do "
                            f"not apply to extractive QA (SQuAD format)")
        text_keys, label_column, label_key = ("question", "context"), "answers", "answers"
    else:
        text_keys = tuple(text_columns) if text_columns else ("text",)
        label_column = label_column or "label"
        label_key = "label" if "label" not in text_keys else "__label__"
    source = Source(files=tuple(files.items()), hub_path=hub_path, hub_config=hub_config,
                    hub_splits=tuple(hub_splits.items()), label_column=label_column,
                    labels_from_train=labels is None)
    main, metrics = _METRICS[kind]
    spec = TaskSpec(
        name=name, kind=kind, num_labels=2 if kind == "qa" else 1, eval_splits=eval_splits,
        main_metric=main, metrics=metrics, hub_path=hub_path or "", hub_config=hub_config,
        local_dir="", local_files=(), text_keys=text_keys, label_key=label_key,
        label_names=(), max_seq_length=int(max_seq_length or (384 if kind == "qa" else 128)),
        source=source)
    if kind != "classification":
        if labels:
            raise DataError(f"{name}: task.labels applies to classification, not {kind}")
        return spec
    if labels is None:
        if "train" not in available:
            raise DataError(f"{name}: the class labels are unknown without training data; set "
                            f"task.labels (or task.train_file)")
        raw = read_source_split(spec, "train")
        labels = label_names_of(raw, _describe(source, "train"), label_column)
    labels = tuple(str(n) for n in labels)
    if len(labels) < 2:
        where = _describe(source, "train") if source.labels_from_train else "task.labels"
        raise DataError(f"{where}: classification needs at least two labels in column "
                        f"{label_column!r}, found {list(labels)}")
    if len(set(labels)) != len(labels):
        raise DataError(f"{name}: task.labels has duplicates: {list(labels)}")
    return dataclasses.replace(spec, num_labels=len(labels), label_names=labels)


def is_own_data(task_cfg) -> bool:
    """Whether a ``TaskConfig`` names your own data (files or a hub dataset)."""
    return any(getattr(task_cfg, k, None) is not None
               for k in ("train_file", "validation_file", "test_file", "hub_path"))


def task_from_config(task_cfg, labels: Sequence[str] | None = None) -> TaskSpec:
    """The ``TaskSpec`` of a ``TaskConfig``: the registry's task, or your own data
    (``custom_task``). Class names: ``task.labels``, else ``labels`` (e.g. a model's
    ``id2label``), else the training split's."""
    if not is_own_data(task_cfg):
        from .tasks import get_task

        return get_task(task_cfg.name)
    return custom_task(
        task_cfg.name, task_cfg.kind or "classification",
        train_file=task_cfg.train_file, validation_file=task_cfg.validation_file,
        test_file=task_cfg.test_file, hub_path=task_cfg.hub_path, hub_config=task_cfg.hub_config,
        train_split=task_cfg.train_split, validation_split=task_cfg.validation_split,
        test_split=task_cfg.test_split, text_columns=task_cfg.text_columns,
        label_column=task_cfg.label_column,
        labels=task_cfg.labels if task_cfg.labels is not None else labels,
        max_seq_length=task_cfg.max_seq_length)

