"""load_task: raw splits (hub or local files) -> tokenised, fixed-shape numpy arrays."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from mvp_jax.errors import UserError

from .glue import read_glue_tsv, tokenize_glue
from .squad import read_squad_json, squad_features
from .tasks import SQUAD_DEV_SPLIT_TRAIN_ARTICLES, DataError, TaskSpec, get_task

__all__ = ["EvalSet", "TaskData", "load_raw", "load_task", "find_local_file"]

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclasses.dataclass
class EvalSet:
    """One evaluation split.

    features: model inputs int32 [N, L] plus "labels" (GLUE) or "start_positions" /
      "end_positions" (SQuAD); N counts features (SQuAD: windows, several per example).
    labels: GLUE gold labels [N] (None for SQuAD).
    example_index: row of the raw split for each feature [N].
    examples: SQuAD only, one dict per example: id, question, context, answers (list of texts).
    offsets: SQuAD only, [N, L, 2] character spans in the context, -1 outside the context.
    """

    name: str
    features: dict[str, np.ndarray]
    labels: np.ndarray | None
    example_index: np.ndarray
    examples: list[dict[str, Any]] | None = None
    offsets: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.example_index)

    @property
    def feature_example_index(self) -> np.ndarray:
        return self.example_index

    @property
    def num_examples(self) -> int:
        return len(self.examples) if self.examples is not None else len(self.example_index)


@dataclasses.dataclass
class TaskData:
    """Tokenised task: train arrays (empty dict if not loaded) and eval sets by split name.

    train_example_index: row of the raw train split behind each train row (SQuAD: per feature).
    """

    spec: TaskSpec
    train: dict[str, np.ndarray]
    evals: dict[str, EvalSet]
    train_example_index: np.ndarray
    max_seq_length: int


def find_local_file(spec: TaskSpec, split: str, data_dir: str | Path) -> Path:
    """The local file of `split`, looked up in data_dir, data_dir/<TaskDir> and
    data_dir/glue/<TaskDir> (so a task directory, a GLUE root or ../shared/data all work)."""
    data_dir = Path(data_dir)
    name = spec.local_file(split)
    sub = "glue" if spec.hub_path == "nyu-mll/glue" else "."
    candidates = [data_dir / name, data_dir / spec.local_dir / name,
                  data_dir / sub / spec.local_dir / name]
    for c in candidates:
        if c.is_file():
            return c
    tried = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise DataError(f"{spec.name}: {split} file {name!r} not found; looked for {tried}")


def _split_by_article(ds: datasets.Dataset, split: str) -> datasets.Dataset:
    titles = list(dict.fromkeys(ds["title"]))
    if len(titles) <= SQUAD_DEV_SPLIT_TRAIN_ARTICLES:
        raise DataError(f"squad_dev_split needs more than {SQUAD_DEV_SPLIT_TRAIN_ARTICLES} "
                        f"articles, got {len(titles)}")
    train_titles = set(titles[:SQUAD_DEV_SPLIT_TRAIN_ARTICLES])
    keep = [(t in train_titles) == (split == "train") for t in ds["title"]]
    return ds.select(np.flatnonzero(keep))


def load_raw(spec: TaskSpec | str, split: str, data_dir: str | Path | None = None
             ) -> datasets.Dataset:
    """One raw split as a Dataset with the hub's columns: from the hub when `data_dir` is None
    (datasets.load_dataset(spec.hub_path, spec.hub_config)), else from local files. A task of
    your own data (`spec.source`) reads its own files or dataset (`data_dir` unused) and returns
    the split checked and normalised (`mvp_jax.data.custom.normalize_split`)."""
    spec = get_task(spec)
    if spec.source is not None:  # your own data: files or a hub dataset, checked and normalised
        from .custom import normalize_split, read_source_split

        return normalize_split(spec, read_source_split(spec, split), split)
    if split not in spec.splits:
        raise DataError(f"{spec.name} has no split {split!r}; splits: {spec.splits}")
    if data_dir is not None:
        path = find_local_file(spec, split, data_dir)
        ds = read_squad_json(path) if spec.kind == "qa" else read_glue_tsv(spec, path)
    else:
        hub_split = "validation" if spec.name == "squad_dev_split" else split
        try:
            ds = datasets.load_dataset(spec.hub_path, spec.hub_config, split=hub_split)
        except Exception as e:  # offline, unknown config, ...
            raise DataError(f"{spec.name}: could not load {spec.hub_path!r} "
                            f"(config {spec.hub_config!r}, split {hub_split!r}) from the hub: "
                            f"{type(e).__name__}: {e}. Offline, pass data_dir= for local files."
                            ) from e
    if spec.name == "squad_dev_split":
        ds = _split_by_article(ds, split)
    return ds


def _as_tokenizer(tokenizer):
    if isinstance(tokenizer, (str, Path)):
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(str(tokenizer))
    return tokenizer


def _subsample(n: int, k: int | None, seed: int | None) -> np.ndarray:
    if k is None or k >= n:
        return np.arange(n)
    if k < 0:
        raise UserError(f"max samples must be >= 0, got {k}")
    if seed is None:
        return np.arange(k)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def _tokenize(spec, ds, tokenizer, max_seq_length, doc_stride):
    """-> (arrays, example_index, offsets or None)."""
    if spec.kind == "qa":
        feats = squad_features(ds, tokenizer, max_seq_length, doc_stride)
        return feats, feats.pop("example_index"), feats.pop("offsets")
    arrays = tokenize_glue(spec, ds, tokenizer, max_seq_length)
    return arrays, np.arange(len(ds), dtype=np.int32), None


def load_task(name: str | TaskSpec, tokenizer, *, data_dir: str | Path | None = None,
              max_seq_length: int | None = None, doc_stride: int = 128,
              max_train_samples: int | None = None, max_eval_samples: int | None = None,
              seed: int = 0, with_train: bool = True, with_eval: bool = True) -> TaskData:
    """Load, tokenise and pad one task to fixed shapes.

    name: a registry task name, or a TaskSpec (e.g. one of your own data, from
      `mvp_jax.data.custom_task` / `task_from_config`).
    tokenizer: a (fast) HF tokenizer, or a path / name for AutoTokenizer.
    data_dir: None reads the hub; else local files (see `find_local_file`).
    max_seq_length: default 128 for GLUE, 384 for SQuAD (windows with `doc_stride` overlap).
    max_train_samples: a seeded random subset (numpy default_rng(seed), without replacement)
      of the train examples, kept in file order. max_eval_samples: the first N examples of each
      eval split. For SQuAD both count examples (questions), each giving one or more features.
    Train arrays: input_ids, attention_mask, token_type_ids int32 [N, L], then labels [N]
    (int32, float32 for regression) or start_positions, end_positions int32 [N].
    """
    spec = get_task(name)
    tokenizer = _as_tokenizer(tokenizer)
    L = int(max_seq_length or spec.max_seq_length)
    if spec.kind == "qa" and not doc_stride < L:
        raise UserError(f"doc_stride ({doc_stride}) must be smaller than max_seq_length ({L})")
    train, train_index = {}, np.zeros((0,), np.int32)
    if with_train:
        raw = load_raw(spec, "train", data_dir)
        rows = _subsample(len(raw), max_train_samples, seed)
        train, ex_index, _ = _tokenize(spec, raw.select(rows), tokenizer, L, doc_stride)
        train_index = rows[ex_index].astype(np.int32)
    evals = {}
    for split in spec.eval_splits if with_eval else ():
        raw = load_raw(spec, split, data_dir)
        raw = raw.select(_subsample(len(raw), max_eval_samples, None))
        feats, ex_index, offsets = _tokenize(spec, raw, tokenizer, L, doc_stride)
        if spec.kind == "qa":
            cols = raw.to_dict()
            examples = [{"id": i, "question": q, "context": c, "answers": list(a["text"])}
                        for i, q, c, a in zip(cols["id"], cols["question"], cols["context"],
                                              cols["answers"])]
            evals[split] = EvalSet(split, feats, None, ex_index, examples, offsets)
        else:
            evals[split] = EvalSet(split, feats, feats["labels"], ex_index)
    return TaskData(spec, train, evals, train_index, L)
