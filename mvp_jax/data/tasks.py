"""Task registry: what each GLUE task and SQuAD v1.1 is, where it lives, how it is scored."""

from __future__ import annotations

import dataclasses
from typing import Literal

from mvp_jax.errors import UserError
from mvp_jax.task_names import canonical_task

__all__ = ["DataError", "Source", "TaskSpec", "TASKS", "get_task"]


class DataError(UserError):
    """Bad task name, missing data file or malformed data."""


@dataclasses.dataclass(frozen=True)
class Source:
    """Where the splits of a task of your own data come from (``mvp_jax.data.custom``): local
    files by split, or a hub dataset (``hub_path``, ``hub_config``) with its split names by
    split. ``label_column`` is the user's label column; ``labels_from_train`` tells whether the
    class names were read from the training split (for messages)."""

    files: tuple[tuple[str, str], ...] = ()
    hub_path: str | None = None
    hub_config: str | None = None
    hub_splits: tuple[tuple[str, str], ...] = ()
    label_column: str = "label"
    labels_from_train: bool = True


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """Static description of a task.

    Columns (`text_keys`, `label_key`) are the Hugging Face hub dataset's column names; local
    files are read into datasets with the same columns. `label_names[i]` is the name of class i
    (as on the hub). `eval_splits` are hub split names; `local_files` maps every split to its
    file name inside the local task directory (`local_dir`). `source` is set for a task of your
    own data (`mvp_jax.data.custom.custom_task`) and None for the registry's tasks.
    """

    name: str
    kind: Literal["classification", "regression", "qa"]
    num_labels: int
    eval_splits: tuple[str, ...]
    main_metric: str
    metrics: tuple[str, ...]
    hub_path: str
    hub_config: str | None
    local_dir: str
    local_files: tuple[tuple[str, str], ...]
    text_keys: tuple[str, ...] = ()
    label_key: str = "label"
    label_names: tuple[str, ...] = ()
    max_seq_length: int = 128
    source: Source | None = None

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train",) + self.eval_splits

    @property
    def head(self) -> str:
        """The model head the task needs: ``qa`` (start/end logits) or ``classification``
        (``num_labels`` outputs; one for regression)."""
        return "qa" if self.kind == "qa" else "classification"

    def local_file(self, split: str) -> str:
        return dict(self.local_files)[split]


def _glue(name, local_dir, kind, text_keys, label_names, main, metrics, eval_splits=("validation",),
          files=None):
    files = files or {"train": "train.tsv", "validation": "dev.tsv"}
    return TaskSpec(
        name=name, kind=kind, num_labels=1 if kind == "regression" else len(label_names),
        eval_splits=eval_splits, main_metric=main, metrics=metrics, hub_path="nyu-mll/glue",
        hub_config=name, local_dir=local_dir, local_files=tuple(files.items()),
        text_keys=text_keys, label_names=label_names, max_seq_length=128)



def _squad(name: str, train_file: str) -> TaskSpec:
    """SQuAD v1.1 (hub: rajpurkar/squad; local: squad_v1.1/), training on ``train_file``."""
    return TaskSpec(
        name=name, kind="qa", num_labels=2, eval_splits=("validation",),
        main_metric="f1", metrics=("exact_match", "f1"), hub_path="rajpurkar/squad",
        hub_config=None, local_dir="squad_v1.1",
        local_files=(("train", train_file), ("validation", "dev-v1.1.json")),
        text_keys=("question", "context"), label_key="answers", max_seq_length=384)

TASKS: dict[str, TaskSpec] = {
    "cola": _glue("cola", "CoLA", "classification", ("sentence",), ("unacceptable", "acceptable"),
                  "mcc", ("mcc",)),
    "sst2": _glue("sst2", "SST-2", "classification", ("sentence",), ("negative", "positive"),
                  "accuracy", ("accuracy",)),
    "mrpc": _glue("mrpc", "MRPC", "classification", ("sentence1", "sentence2"),
                  ("not_equivalent", "equivalent"), "f1", ("accuracy", "f1")),
    "stsb": _glue("stsb", "STS-B", "regression", ("sentence1", "sentence2"), (),
                  "pearson", ("pearson", "spearman")),
    "qqp": _glue("qqp", "QQP", "classification", ("question1", "question2"),
                 ("not_duplicate", "duplicate"), "accuracy", ("accuracy", "f1")),
    "mnli": _glue("mnli", "MNLI", "classification", ("premise", "hypothesis"),
                  ("entailment", "neutral", "contradiction"), "accuracy", ("accuracy",),
                  eval_splits=("validation_matched", "validation_mismatched"),
                  files={"train": "train.tsv", "validation_matched": "dev_matched.tsv",
                         "validation_mismatched": "dev_mismatched.tsv"}),
    "qnli": _glue("qnli", "QNLI", "classification", ("question", "sentence"),
                  ("entailment", "not_entailment"), "accuracy", ("accuracy",)),
    "rte": _glue("rte", "RTE", "classification", ("sentence1", "sentence2"),
                 ("entailment", "not_entailment"), "accuracy", ("accuracy",)),
    "wnli": _glue("wnli", "WNLI", "classification", ("sentence1", "sentence2"),
                  ("not_entailment", "entailment"), "accuracy", ("accuracy",)),
    "squad": _squad("squad", "train-v1.1.json"),
    # Lab-scale only: SQuAD v1.1 *dev* split by article (first 38 train, last 10 eval).
    # Report results as "SQuAD-dev split", never as SQuAD.
    "squad_dev_split": _squad("squad_dev_split", "dev-v1.1.json"),
}

SQUAD_DEV_SPLIT_TRAIN_ARTICLES = 38


def get_task(name: str | TaskSpec) -> TaskSpec:
    """Look a task up by name (case-insensitive; "SST-2", "STS-B" also accepted)."""
    if isinstance(name, TaskSpec):
        return name
    return TASKS[canonical_task(name, DataError)]
