"""Run configuration: frozen dataclasses <- YAML files (with ``base:`` inheritance) + overrides.

One dataclass per YAML section (model, task, prune, train, data, distill, mesh) and a top-level
:class:`Config`. Every value is type-checked and range-checked on construction, so a ``Config``
that exists is valid; a bad value raises :class:`ConfigError` with one line naming the key::

    cfg = load_config("configs/lab/sst2/movement.yaml", ["train.batch_size=8"])
    save_config(cfg, "run/config.yaml")          # resolved: every key, after base: and overrides
    assert load_config("run/config.yaml") == cfg

A YAML file may start with ``base: other.yaml`` (or a list of files), resolved relative to the
file; bases are merged in order, key by key, and the file's own keys win. Numbers such as
``3e-5`` are read as floats (YAML 1.2), not as the strings plain YAML 1.1 makes of them.

This module imports no JAX (nor the data pipeline), so the command line can validate a config
before any device work: method-dependent checks read the method's properties from
:mod:`mvp_jax.pruning.methods`, built-in task names come from :mod:`mvp_jax.task_names`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tempfile
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from mvp_jax import task_names
from mvp_jax.choices import DTYPES, OPTIMIZERS, RNG_IMPLS
from mvp_jax.choices import SCORE_INITS as MASK_INITS
from mvp_jax.errors import UserError
from mvp_jax.pruning import methods

__all__ = [
    "ConfigError", "Config", "ModelConfig", "TaskConfig", "PruneConfig", "TrainConfig",
    "DataConfig", "DistillConfig", "MeshConfig", "SECTIONS", "METHODS", "MASK_INITS",
    "REGULARIZATIONS", "GRANULARITIES", "DTYPES", "load_config", "config_from_dict",
    "config_to_dict", "apply_overrides", "dump_config", "save_config",
]

METHODS = methods.NAMES  # = masking.METHODS
GRANULARITIES = methods.GRANULARITIES  # what one mask entry removes
REGULARIZATIONS = methods.REGULARIZATIONS  # the penalties the methods need
TASK_KINDS = task_names.KINDS  # = data.custom.KINDS (tested)


class ConfigError(UserError):
    """An invalid configuration: the message is one line that names the key at fault."""


# ----------------------------------------------------------------------------------------------
# YAML
# ----------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-5`` / ``3E+2`` (no dot) as floats."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_load(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"invalid YAML in {where}{at}: {problem}") from None


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
               (str, ...): "a list of strings", (int, ...): "a list of integers"}


def _is(value: Any, tp: type) -> bool:
    """``isinstance`` for config values: a bool is no number, an int is also a float."""
    if tp in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if tp is float else tp)


def _coerce(path: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp`` (a scalar, ``tuple[X, ...]``, or either
    ``| None``); ints become floats for float fields, lists tuples for tuple fields."""
    args = typing.get_args(tp)
    if type(None) in args:  # X | None
        if value is None:
            return None
        (tp,) = [a for a in args if a is not type(None)]
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        bad = [x for x in value if not _is(x, args[0])] if isinstance(value, (list, tuple)) else []
        if bad or not isinstance(value, (list, tuple)):
            got = f"item {_describe(bad[0])}" if bad else _describe(value)
            raise ConfigError(f"{path} must be {_TYPE_WORDS[args]}, got {got}")
        return tuple(value)
    if not _is(value, tp):
        raise ConfigError(f"{path} must be {_TYPE_WORDS[tp]}, got {_describe(value)}")
    if tp is float and not math.isfinite(value):
        raise ConfigError(f"{path} must be finite, got {value!r}")
    return float(value) if tp is float else value


def _choice(path: str, value: str, choices: Sequence[str], nullable: bool = False,
            aliases: Mapping[str, str] | None = None) -> None:
    """``value`` is one of ``choices``, else a ConfigError with the closest (or the alias's)."""
    if value in choices:
        return
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(str(value).lower(), list(lowered), n=1, cutoff=0.5)
    guess = (aliases or {}).get(value) or (lowered[close[0]] if close else None)
    hint = f"; did you mean '{guess}'?" if guess else ""
    listed = ", ".join(choices) + (", or null" if nullable else "")
    raise ConfigError(f"unknown {path} {value!r}{hint} (choices: {listed})")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class _Section:
    """Base of the section dataclasses: coerce and check every field on construction."""

    SECTION: typing.ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = _coerce(f"{self.SECTION}.{f.name}", getattr(self, f.name), hints[f.name])
            object.__setattr__(self, f.name, value)
        self._check()

    def _check(self) -> None:
        """Range and choice checks of the section; raise ConfigError."""

    def replace(self, **changes: Any):
        """A validated copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ModelConfig(_Section):
    """The pretrained encoder to fine-prune.

    Attributes:
        name: ``minilm-l6`` (the embedded MiniLM), a hub id or a local path.
        dtype: the compute dtype, ``float32`` or ``bfloat16`` (parameters stay float32).
        dropout: the dropout rate, in ``[0, 1)``; None: the model config's own.
    """

    SECTION: typing.ClassVar[str] = "model"

    name: str = "minilm-l6"  # "minilm-l6" = the embedded MiniLM, else a hub id or local path
    dtype: str = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)
    dropout: float | None = None  # null = the model config's own dropout

    def _check(self) -> None:
        _require(bool(self.name.strip()), "model.name must not be empty")
        _choice("model.dtype", self.dtype, DTYPES)
        _require(self.dropout is None or 0.0 <= self.dropout < 1.0,
                 f"model.dropout must be in [0, 1), got {self.dropout}")


_OWN_SOURCES = ("train_file", "validation_file", "test_file", "hub_path")
_OWN_ONLY = ("kind", "hub_config", "text_columns", "label_column", "labels")
_HUB_SPLITS = {"train_split": "train", "validation_split": "validation", "test_split": None}


@dataclass(frozen=True)
class TaskConfig(_Section):
    """The end task and its inputs: a built-in task (GLUE, SQuAD) by ``name``, or your own data
    (files or a hub dataset; ``mvp_jax.data.custom``), which ``name`` then only names.

    Attributes:
        name: a GLUE task (``sst2``, ``mnli``, ``qqp`` ...) or ``squad``; own data: a name of
            its own.
        data_dir: a local GLUE / SQuAD directory; None: the Hugging Face hub.
        max_seq_length: tokens per example (>= 8); None: the task's default (128 GLUE, 384
            SQuAD).
        doc_stride: SQuAD only: the overlap stride of long contexts.
        train_file, validation_file, test_file: own data in files (``.csv``, ``.tsv``,
            ``.json``, ``.jsonl``, ``.parquet``; SQuAD-format ``.json`` for ``qa``) ...
        hub_path: ... or a dataset: a hub id, a local dataset or a ``save_to_disk`` directory.
        hub_config: the dataset's configuration name.
        train_split, validation_split, test_split: the dataset's split names (None: leave the
            split out).
        kind: own data: ``classification`` (None), ``regression`` or ``qa``.
        text_columns: own data: one text column, or two for pairs; None: ``text``.
        label_column: own data: the label column; None: ``label``.
        labels: own data: the class names in order; None: the training split's labels,
            sorted (stored in the run).
    """

    SECTION: typing.ClassVar[str] = "task"

    name: str = "sst2"  # a GLUE task (sst2, mnli, qqp, ...) or squad; own data: any name
    data_dir: str | None = None  # local GLUE/SQuAD directory; null = Hugging Face hub
    max_seq_length: int | None = None  # null = task default (128 GLUE, 384 SQuAD)
    doc_stride: int = 128  # SQuAD only: overlap stride of long contexts
    # Your own data: files (.csv, .tsv, .json, .jsonl, .parquet; SQuAD-format .json for qa) ...
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    # ... or a dataset: hub id, local dataset directory, or a save_to_disk directory
    hub_path: str | None = None
    hub_config: str | None = None
    train_split: str | None = "train"  # the dataset's split names (null: leave the split out)
    validation_split: str | None = "validation"
    test_split: str | None = None
    kind: str | None = None  # own data: classification (null) | regression | qa
    text_columns: tuple[str, ...] | None = None  # one column, or two for pairs; null = [text]
    label_column: str | None = None  # null = label
    # class names in order; null = the training split's labels, sorted (stored in the run)
    labels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.text_columns, str):  # task.text_columns=review: one column
            object.__setattr__(self, "text_columns", (self.text_columns,))
        if isinstance(self.labels, (list, tuple)):  # task.labels=[0, 1]: class names are text
            object.__setattr__(self, "labels", tuple(
                str(x) if isinstance(x, int) and not isinstance(x, bool) else x
                for x in self.labels))
        super().__post_init__()

    @property
    def own_data(self) -> bool:
        """Files or a dataset of your own (``task.train_file`` ... or ``task.hub_path``)."""
        return any(getattr(self, k) is not None for k in _OWN_SOURCES)

    @property
    def is_qa(self) -> bool:
        return self.kind == "qa" if self.own_data else self.name.startswith("squad")

    def _check(self) -> None:
        _require(bool(self.name.strip()), "task.name must not be empty")
        for key in (*_OWN_SOURCES, "hub_config", "label_column", "data_dir", *_HUB_SPLITS):
            value = getattr(self, key)
            _require(value is None or bool(value.strip()),
                     f"task.{key} must not be empty (use null)")
        if self.own_data:
            self._check_own_data()
        else:
            object.__setattr__(self, "name", task_names.canonical_task(
                self.name, lambda message: ConfigError(f"task.name: {message}")))
            for key in _OWN_ONLY:
                _require(getattr(self, key) is None,
                         f"task.{key} applies to your own data: set task.train_file, "
                         f"task.validation_file, task.test_file or task.hub_path")
            for key, default in _HUB_SPLITS.items():
                _require(getattr(self, key) == default,
                         f"task.{key} applies to a dataset of your own (task.hub_path)")
        _require(self.data_dir is None or bool(self.data_dir.strip()),
                 "task.data_dir must not be empty (use null for the hub)")
        _require(self.max_seq_length is None or self.max_seq_length >= 8,
                 f"task.max_seq_length must be >= 8, got {self.max_seq_length}")
        _require(self.doc_stride >= 1, f"task.doc_stride must be >= 1, got {self.doc_stride}")
        _require(not self.is_qa or self.max_seq_length is None
                 or self.doc_stride < self.max_seq_length,
                 f"task.doc_stride ({self.doc_stride}) must be < task.max_seq_length "
                 f"({self.max_seq_length})")

    def _check_own_data(self) -> None:
        lowered = self.name.strip().lower()
        _require(lowered not in (*task_names.NAMES, *task_names.ALIASES),
                 f"task.name {self.name!r} is a built-in task; give your own data a name of its "
                 f"own (e.g. task.name=reviews), or drop the file/dataset keys")
        _require(self.data_dir is None,
                 "task.data_dir is for the built-in tasks; your own data is read from "
                 "task.train_file / task.validation_file / task.test_file or task.hub_path")
        files = [k for k in _OWN_SOURCES[:3] if getattr(self, k) is not None]
        _require(self.hub_path is None or not files,
                 f"task.hub_path and task.{files[0] if files else ''} exclude each other: read "
                 f"files or a dataset")
        if self.hub_path is None:
            _require(self.hub_config is None, "task.hub_config applies with task.hub_path")
            for key, default in _HUB_SPLITS.items():
                _require(getattr(self, key) == default,
                         f"task.{key} applies with task.hub_path (files: task.train_file, ...)")
        if self.kind is not None:
            _choice("task.kind", self.kind, TASK_KINDS)
        kind = self.kind or "classification"
        if kind == "qa":
            for key in ("text_columns", "label_column", "labels"):
                _require(getattr(self, key) is None,
                         f"task.{key} does not apply to task.kind qa (SQuAD-format data)")
            return
        cols = self.text_columns
        if cols is not None:
            _require(1 <= len(cols) <= 2, f"task.text_columns must name one column, or two for "
                                          f"pairs, got {list(cols)}")
            _require(all(c.strip() for c in cols), "task.text_columns must not hold empty names")
            _require(len(set(cols)) == len(cols),
                     f"task.text_columns names a column twice: {list(cols)}")
        label = self.label_column or "label"
        _require(label not in (cols or ("text",)),
                 f"task.label_column {label!r} is also a text column (task.text_columns)")
        if self.labels is not None:
            _require(kind == "classification",
                     f"task.labels applies to classification, not task.kind {kind}")
            _require(len(self.labels) >= 2,
                     f"task.labels must name at least two classes, got {list(self.labels)}")
            _require(len(set(self.labels)) == len(self.labels),
                     f"task.labels has duplicates: {list(self.labels)}")


# How messages name a penalty (prune.regularization) and what it measures.
_PENALTY_NAMES = {"l1": "l1 (soft movement)", "l0": "l0"}
_PENALTY_MEASURES = {"l1": "L1-of-sigmoid", "l0": "expected-L0"}


def _and(names: Sequence[str]) -> str:
    return ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else "".join(names)


@dataclass(frozen=True)
class PruneConfig(_Section):
    """Pruning method, its threshold schedule and its regularization (paper Sections 3-4).

    ``initial_threshold`` / ``final_threshold`` mean what the method's ``threshold`` says
    (:mod:`mvp_jax.pruning.methods`): the fraction of weights kept (topk, magnitude, random), the
    sigmoid threshold tau (sigmoied_threshold), or for l0 only a scale of lambda, which follows
    ``final_lambda * threshold / final_threshold`` as in the reference code.

    Attributes:
        method: ``none``, ``magnitude``, ``topk`` (movement), ``sigmoied_threshold`` (soft
            movement), ``l0`` or ``random`` (the control: Top-v of fixed random scores).
        granularity: what one mask entry removes: ``weight``, ``head`` (an attention head),
            ``neuron`` (an FFN unit) or ``hybrid`` (heads in attention, neurons in the FFN);
            the method must support it.
        global_topk: one Top-v over all prunable matrices (topk, magnitude, random).
        initial_threshold, final_threshold: the ends of the cubic threshold schedule.
        initial_warmup: the threshold is held at ``initial_threshold`` for
            ``initial_warmup * train.warmup_steps`` steps.
        final_warmup: the threshold is held at ``final_threshold`` for the last
            ``final_warmup * train.warmup_steps`` steps.
        mask_init: how learned scores start: ``constant``, ``uniform``, ``kaiming`` or
            ``magnitude`` (``mvp_jax.pruning.structured.init_scores``).
        mask_scale: the constant / the uniform half-width / the magnitude scale (ignored by
            ``kaiming``).
        regularization: None, ``l1`` (soft movement) or ``l0`` (L0 regularization).
        final_lambda: the penalty weight at the end of the schedule.
        patterns: regexes of the prunable kernels; None: the encoder default.
        global_topk_frequency: recompute the global Top-v threshold every N steps.
    """

    SECTION: typing.ClassVar[str] = "prune"

    # none | magnitude | topk (movement) | sigmoied_threshold (soft) | l0 | random (control:
    # Top-v of fixed random scores); see mvp_jax.pruning.methods
    method: str = "topk"
    # what one mask entry removes: weight | head (attention head) | neuron (FFN unit) | hybrid
    # (heads in attention, neurons in the FFN); the method must support it
    granularity: str = "weight"
    global_topk: bool = False  # one Top-v over all prunable matrices (topk, magnitude, random)
    initial_threshold: float = 1.0
    final_threshold: float = 0.15
    initial_warmup: float = 1.0  # threshold held at initial for initial_warmup * train.warmup_steps
    final_warmup: float = 2.0  # threshold held at final for the last final_warmup * warmup_steps
    mask_init: str = "constant"  # scores init: constant | uniform | kaiming | magnitude
    mask_scale: float = 0.0  # constant value / uniform half-width (ignored by kaiming)
    regularization: str | None = None  # null | l1 (soft movement) | l0 (L0 regularization)
    final_lambda: float = 0.0  # penalty weight at the end of the schedule
    patterns: tuple[str, ...] | None = None  # regexes of prunable kernels; null = encoder default
    global_topk_frequency: int = 1  # recompute the global threshold every N steps

    def _check(self) -> None:
        m, reg = self.method, self.regularization
        _choice("prune.method", m, tuple(methods.REGISTRY), aliases=methods.PLAIN_NAMES)
        spec = methods.get(m)
        _choice("prune.granularity", self.granularity, GRANULARITIES)
        _require(self.granularity in spec.granularities,
                 f"prune.granularity {self.granularity} does not apply to method {m} "
                 f"(it supports: {', '.join(spec.granularities)})")
        _choice("prune.mask_init", self.mask_init, MASK_INITS)
        _require(self.granularity == "weight" or self.mask_init != "kaiming",
                 f"prune.mask_init kaiming applies to weight scores; unit scores (prune."
                 f"granularity {self.granularity}) take constant, uniform or magnitude")
        _require(self.granularity == "weight" or self.patterns is None,
                 f"prune.patterns applies to prune.granularity weight; {self.granularity} "
                 f"prunes the encoder's attention heads and FFN neurons")
        if reg is not None:
            _choice("prune.regularization", reg, REGULARIZATIONS, nullable=True)
        for name in ("initial_warmup", "final_warmup", "final_lambda"):
            value = getattr(self, name)
            _require(value >= 0, f"prune.{name} must be >= 0, got {value}")
        _require(self.global_topk_frequency >= 1,
                 f"prune.global_topk_frequency must be >= 1, got {self.global_topk_frequency}")
        for name in ("initial_threshold", "final_threshold"):
            t, final = getattr(self, name), name == "final_threshold"
            if spec.threshold == "fraction":
                _require(0.0 < t <= 1.0,
                         f"prune.{name} is the fraction of weights kept by {m} and must be in "
                         f"(0, 1], got {t}")
            elif spec.threshold == "sigmoid":
                _require((t > 0.0 if final else t >= 0.0) and t < 1.0,
                         f"prune.{name} is the sigmoid threshold of {m} and must be in "
                         f"{'(0, 1)' if final else '[0, 1)'}, got {t}")
            elif spec.threshold == "lambda_scale":
                _require(t > 0.0 if final else t >= 0.0,
                         f"prune.{name} scales lambda for {m} (lambda = final_lambda * "
                         f"threshold / final_threshold) and must be {'> 0' if final else '>= 0'}"
                         f", got {t}")
        if self.global_topk:
            takers = [n for n, x in methods.REGISTRY.items() if x.global_selection]
            takers.sort(key=lambda n: not methods.get(n).learns_scores)  # learned first
            _require(spec.global_selection,
                     f"prune.global_topk applies to methods {_and(takers)}, not {m!r}")
        # The reference code accepts any combination and silently computes a meaningless or
        # missing penalty; these are the combinations of its README (Sanh et al. 2020).
        if reg is not None:
            needs = [n for n, x in methods.REGISTRY.items() if x.regularization == reg]
            _require(spec.regularization == reg,
                     f"prune.regularization {_PENALTY_NAMES.get(reg, str(reg))} requires "
                     f"prune.method {' or '.join(needs)}, got {m!r}")
        if spec.threshold == "lambda_scale":  # the penalty alone makes the sparsity
            _require(reg == spec.regularization,
                     f"prune.method {m} requires prune.regularization {spec.regularization}, "
                     f"got {'null' if reg is None else repr(reg)} (its sparsity comes from the "
                     f"{_PENALTY_MEASURES.get(spec.regularization or '', '')} penalty; use "
                     f"final_lambda 0 to disable)")
        if reg is None:
            _require(self.final_lambda == 0.0,
                     f"prune.final_lambda={self.final_lambda} has no effect without "
                     f"prune.regularization")
        if self.patterns is not None:
            _require(len(self.patterns) > 0, "prune.patterns must not be empty "
                                             "(use null for the default prunable list)")
            for p in self.patterns:
                try:
                    re.compile(p)
                except re.error as e:
                    raise ConfigError(f"prune.patterns: invalid regex {p!r}: {e}") from None


@dataclass(frozen=True)
class TrainConfig(_Section):
    """Optimization and the training loop.

    Attributes:
        batch_size: examples per forward pass, all devices together (one update sees
            ``batch_size * gradient_accumulation_steps``, as in the reference code).
        epochs: passes over the training data (unless ``max_steps`` is set).
        max_steps: optimizer steps; None: ``epochs`` times the steps per epoch.
        learning_rate: of the weights: linear warm-up, then linear decay.
        scores_learning_rate: of the importance scores, the same schedule shape.
        warmup_steps: the learning-rate warm-up, also the unit of ``prune.initial_warmup`` /
            ``prune.final_warmup``.
        weight_decay: AdamW's weight decay.
        max_grad_norm: global-norm clipping over weights and scores; 0: no clipping.
        adam_epsilon: Adam's epsilon.
        optimizer: ``reference_adamw`` (transformers' AdamW of 2020, as the paper's code) or
            ``adamw`` (``optax.adamw``).
        gradient_accumulation_steps: micro-batches per optimizer step.
        seed: the run's random seed.
        rng_impl: the dropout / L0 sampling keys: ``threefry`` (the same bits on every backend
            and mesh), ``rbg`` or ``unsafe_rbg`` (faster on TPU/GPU, backend-dependent bits).
        freeze_embeddings: whether the embedding modules stay frozen (as in the paper).
        eval_every: evaluate every N steps; 0: only at the end.
        save_every: checkpoint every N steps; 0: only at the end.
        keep_checkpoints: checkpoints kept.
        eval_batch_size: None: ``batch_size``.
        log_every: log every N steps.
    """

    SECTION: typing.ClassVar[str] = "train"

    # Examples per forward pass, all devices together. As in the reference code, one update
    # sees batch_size * gradient_accumulation_steps examples.
    batch_size: int = 16
    epochs: float = 3.0
    max_steps: int | None = None  # null = epochs * steps per epoch; else overrides epochs
    learning_rate: float = 3e-5  # weights: linear warm-up then linear decay
    scores_learning_rate: float = 1e-2  # importance scores, same schedule shape
    # LR warm-up, and also the unit of prune.initial_warmup / prune.final_warmup
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # global-norm clipping over weights and scores; 0 = no clipping
    adam_epsilon: float = 1e-8
    # reference_adamw: transformers' AdamW of 2020 as the paper's code; adamw: optax.adamw
    optimizer: str = "reference_adamw"
    gradient_accumulation_steps: int = 1
    seed: int = 42
    # dropout / L0 sampling keys: threefry (the same bits on every backend and mesh) | rbg |
    # unsafe_rbg (XLA's RngBitGenerator: faster on TPU/GPU, slower on the CPU, bits depend on
    # the backend); resume is exact with either
    rng_impl: str = "threefry"
    freeze_embeddings: bool = True
    eval_every: int = 0  # steps; 0 = only at the end
    save_every: int = 0  # steps; 0 = only at the end
    keep_checkpoints: int = 2
    eval_batch_size: int | None = None  # null = batch_size
    log_every: int = 10

    def _check(self) -> None:
        for name in ("batch_size", "gradient_accumulation_steps", "keep_checkpoints", "log_every"):
            value = getattr(self, name)
            _require(value >= 1, f"train.{name} must be >= 1, got {value}")
        for name in ("warmup_steps", "eval_every", "save_every", "weight_decay", "max_grad_norm"):
            value = getattr(self, name)
            _require(value >= 0, f"train.{name} must be >= 0, got {value}")
        for name in ("epochs", "learning_rate", "scores_learning_rate", "adam_epsilon"):
            value = getattr(self, name)
            _require(value > 0, f"train.{name} must be > 0, got {value}")
        _require(self.max_steps is None or self.max_steps >= 1,
                 f"train.max_steps must be >= 1 (or null), got {self.max_steps}")
        _require(self.eval_batch_size is None or self.eval_batch_size >= 1,
                 f"train.eval_batch_size must be >= 1 (or null), got {self.eval_batch_size}")
        _choice("train.rng_impl", self.rng_impl, RNG_IMPLS)
        _choice("train.optimizer", self.optimizer, OPTIMIZERS)


@dataclass(frozen=True)
class DataConfig(_Section):
    """Subsampling of the datasets (quick runs, tests) and length-bucketed batches.

    Attributes:
        max_train_samples: training examples used; None: all.
        max_eval_samples: evaluation examples used; None: all.
        bucket_lengths: strictly increasing sequence lengths; each batch is cut to the
            smallest that holds its longest sequence (``task.max_seq_length`` is always one);
            None: every batch padded to ``task.max_seq_length``. Classification and
            regression only.
        bucket_mega_batch: steps' worth of examples sorted by length together.
    """

    SECTION: typing.ClassVar[str] = "data"

    max_train_samples: int | None = None  # null = all
    max_eval_samples: int | None = None  # null = all
    # Length buckets: each batch is cut to the smallest of these lengths that holds its longest
    # sequence (at most len(buckets) compiled shapes); training batches group examples of
    # similar length (see data.batching). null = every batch padded to task.max_seq_length.
    # task.max_seq_length is always a bucket (appended when missing). Classification and
    # regression tasks only (SQuAD keeps fixed-length windows).
    bucket_lengths: tuple[int, ...] | None = None
    bucket_mega_batch: int = 50  # steps' worth of examples sorted by length together

    def _check(self) -> None:
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            _require(value is None or value >= 1,
                     f"data.{name} must be >= 1 (or null), got {value}")
        b = self.bucket_lengths
        if b is not None:
            _require(len(b) > 0, "data.bucket_lengths must not be empty (use null for no "
                                 "bucketing)")
            _require(min(b) >= 1, f"data.bucket_lengths must be >= 1, got {list(b)}")
            _require(all(x < y for x, y in zip(b, b[1:])),
                     f"data.bucket_lengths must be strictly increasing, got {list(b)}")
        _require(self.bucket_mega_batch >= 1,
                 f"data.bucket_mega_batch must be >= 1, got {self.bucket_mega_batch}")


@dataclass(frozen=True)
class DistillConfig(_Section):
    """Knowledge distillation from a fine-tuned teacher (used only when ``teacher`` is set).

    ``loss = alpha_ce * task_loss + alpha_distil * T^2 * KL(softmax(t/T) || softmax(s/T))
    + alpha_hidden * L_hidden + alpha_attention * L_attention``, the layer-wise terms
    (``mvp_jax.training.distill``; 0 = not computed) over real tokens, per matched pair of layers:
    ``L_hidden`` the mean squared error of the hidden states (embedding output and every
    layer's output), ``L_attention`` the KL of the teacher's attention distributions to the
    student's, averaged over heads and query positions. ``layer_map`` pairs the layers:
    ``identity`` (same depth), ``uniform`` (student layer s <- teacher layer floor(s N / M),
    TinyBERT), ``dynamic`` (each teacher layer <- the student layer closest in MSE, matches
    non-decreasing in depth, recomputed every micro-batch, CoFi). The teacher must have the
    student's hidden size, and matched layers the same head count.

    Attributes:
        teacher: a hub id or local path of a fine-tuned model; None: no teacher.
        alpha_ce: the task loss's weight.
        alpha_distil: the logit distillation's weight.
        temperature: ``T``.
        alpha_hidden: the hidden-state MSE's weight; 0: off.
        alpha_attention: the attention KL's weight; 0: off.
        layer_map: ``identity``, ``uniform`` or ``dynamic``.
    """

    SECTION: typing.ClassVar[str] = "distill"
    LAYER_MAPS: typing.ClassVar[tuple[str, ...]] = ("identity", "uniform", "dynamic")

    teacher: str | None = None  # hub id or local path of a fine-tuned model; null = no teacher
    alpha_ce: float = 0.5
    alpha_distil: float = 0.5
    temperature: float = 2.0
    alpha_hidden: float = 0.0  # hidden-state MSE weight; 0 = off
    alpha_attention: float = 0.0  # attention KL weight; 0 = off
    layer_map: str = "identity"  # identity | uniform | dynamic

    def _check(self) -> None:
        _require(self.teacher is None or bool(self.teacher.strip()),
                 "distill.teacher must not be empty (use null for no teacher)")
        _choice("distill.layer_map", self.layer_map, self.LAYER_MAPS)
        for name in ("alpha_ce", "alpha_distil", "alpha_hidden", "alpha_attention"):
            value = getattr(self, name)
            _require(value >= 0, f"distill.{name} must be >= 0, got {value}")
        _require(self.alpha_ce + self.alpha_distil > 0,
                 "distill.alpha_ce and distill.alpha_distil must not both be 0")
        _require(self.temperature > 0, f"distill.temperature must be > 0, got {self.temperature}")


@dataclass(frozen=True)
class MeshConfig(_Section):
    """Device mesh: data-parallel x model-parallel axes.

    Attributes:
        data: the data-parallel axis size; None: all devices / ``model``.
        model: the model-parallel axis size.
    """

    SECTION: typing.ClassVar[str] = "mesh"

    data: int | None = None  # null = all devices / model
    model: int = 1

    def _check(self) -> None:
        _require(self.data is None or self.data >= 1,
                 f"mesh.data must be >= 1 (or null), got {self.data}")
        _require(self.model >= 1, f"mesh.model must be >= 1, got {self.model}")


SECTIONS: dict[str, type[_Section]] = {
    "model": ModelConfig, "task": TaskConfig, "prune": PruneConfig, "train": TrainConfig,
    "data": DataConfig, "distill": DistillConfig, "mesh": MeshConfig,
}


@dataclass(frozen=True)
class Config:
    """A complete, validated run configuration (see the section classes for each key).

    Attributes:
        model: ``ModelConfig``.
        task: ``TaskConfig``.
        prune: ``PruneConfig``.
        train: ``TrainConfig``.
        data: ``DataConfig``.
        distill: ``DistillConfig``.
        mesh: ``MeshConfig``.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)

    def __post_init__(self) -> None:
        for name, cls in SECTIONS.items():
            value = getattr(self, name)
            if not isinstance(value, cls):
                raise ConfigError(f"config section '{name}' must be a {cls.__name__}, "
                                  f"got {type(value).__name__}")
        # Cross-section: the cubic schedule needs a non-empty window between the warm-ups.
        p, t = self.prune, self.train
        scheduled = methods.get(p.method).threshold in ("fraction", "sigmoid")
        if scheduled and t.max_steps is not None:
            held = (p.initial_warmup + p.final_warmup) * t.warmup_steps
            _require(held < t.max_steps,
                     f"(prune.initial_warmup + prune.final_warmup) * train.warmup_steps = {held:g} "
                     f"leaves no pruning steps within train.max_steps = {t.max_steps}")
        buckets, task = self.data.bucket_lengths, self.task
        if buckets is not None:
            _require(not task.is_qa,
                     f"data.bucket_lengths applies to classification and regression tasks, not "
                     f"{task.name} (its loss and answer search read every position of a window); "
                     f"use null")
            _require(task.max_seq_length is None or buckets[-1] <= task.max_seq_length,
                     f"data.bucket_lengths must be <= task.max_seq_length "
                     f"({task.max_seq_length}), got {list(buckets)}")

    def replace(self, **changes: Any) -> Config:
        """A validated copy with whole sections replaced, e.g. ``cfg.replace(train=...)``."""
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------------------------
# dict <-> Config
# ----------------------------------------------------------------------------------------------

_KEYS = {name: tuple(f.name for f in dataclasses.fields(cls)) for name, cls in SECTIONS.items()}


def _suggest_key(section: str, key: str) -> str | None:
    """Closest valid 'section.key' for an unknown key: same key elsewhere, then spelling."""
    for other, keys in _KEYS.items():
        if key in keys and other != section:
            return f"{other}.{key}"
    if section in _KEYS:
        close = difflib.get_close_matches(key, _KEYS[section], n=1, cutoff=0.6)
        if close:
            return f"{section}.{close[0]}"
    dotted = [f"{s}.{k}" for s, keys in _KEYS.items() for k in keys]
    close = difflib.get_close_matches(f"{section}.{key}", dotted, n=1, cutoff=0.6)
    return close[0] if close else None


def _check_tree(tree: Mapping[str, Any], where: str | None) -> dict[str, dict[str, Any]]:
    """Check section and key names of a raw mapping; return a plain {section: {key: value}}."""
    suffix = f" (in {where})" if where else ""
    out: dict[str, dict[str, Any]] = {}
    for section, body in tree.items():
        if section not in SECTIONS:  # a misspelt section, or a key without its section
            guess = difflib.get_close_matches(str(section), list(SECTIONS), n=1, cutoff=0.6) \
                or [f"{s}.{section}" for s, keys in _KEYS.items() if section in keys]
            hint = f"; did you mean '{guess[0]}'?" if guess else \
                f" (sections: {', '.join(SECTIONS)})"
            raise ConfigError(f"unknown config section {str(section)!r}{hint}{suffix}")
        if body is None:
            body = {}
        if not isinstance(body, Mapping):
            raise ConfigError(f"config section '{section}' must be a mapping of keys, "
                              f"got {_describe(body)}{suffix}")
        for key in body:
            if key not in _KEYS[section]:
                close = _suggest_key(section, str(key))
                hint = f"; did you mean '{close}'?" if close else \
                    f" (keys of '{section}': {', '.join(_KEYS[section])})"
                raise ConfigError(f"unknown config key '{section}.{key}'{hint}{suffix}")
        out[section] = dict(body)
    return out


def _merge(base: Mapping[str, Mapping[str, Any]], top: Mapping[str, Mapping[str, Any]]):
    merged = {s: dict(body) for s, body in base.items()}
    for section, body in top.items():
        merged.setdefault(section, {}).update(body)
    return merged


def config_from_dict(tree: Mapping[str, Any] | None) -> Config:
    """Build a validated Config from ``{section: {key: value}}``; missing keys take defaults.

    Args:
        tree: ``{section: {key: value}}`` (as ``config_to_dict`` gives); None: all defaults.

    Returns:
        The ``Config``.

    Raises:
        ConfigError: an unknown section or key (with the closest as a hint), or a bad value.
    """
    if tree is None:
        tree = {}
    if not isinstance(tree, Mapping):
        raise ConfigError(f"a config must be a mapping of sections, got {_describe(tree)}")
    checked = _check_tree(tree, None)
    sections: dict[str, Any] = {name: cls(**checked.get(name, {})) for name, cls in SECTIONS.items()}
    return Config(**sections)


def config_to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """``{section: {key: value}}`` with every key (lists for tuples): plain YAML/JSON data.

    Args:
        cfg: the config.

    Returns:
        A new dict; ``config_from_dict`` of it equals ``cfg``.
    """
    out: dict[str, dict[str, Any]] = {}
    for name in SECTIONS:
        section = getattr(cfg, name)
        out[name] = {f.name: (list(v) if isinstance(v := getattr(section, f.name), tuple) else v)
                     for f in dataclasses.fields(section)}
    return out


# ----------------------------------------------------------------------------------------------
# Overrides
# ----------------------------------------------------------------------------------------------


def _parse_override(text: str) -> dict[str, dict[str, Any]]:
    """``"train.batch_size=32"`` -> ``{"train": {"batch_size": 32}}`` (value read as YAML)."""
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"malformed override {text!r}: expected section.key=value, "
                          f"e.g. train.batch_size=32")
    lhs, _, raw = text.partition("=")
    parts = lhs.strip().split(".")
    if len(parts) != 2 or not all(parts):
        hint = ""
        if len(parts) == 1 and parts[0]:
            owner = [s for s, keys in _KEYS.items() if parts[0] in keys]
            if owner:
                hint = f"; did you mean '{owner[0]}.{parts[0]}={raw}'?"
        raise ConfigError(f"malformed override {text!r}: expected section.key=value, "
                          f"e.g. train.batch_size=32{hint}")
    section, key = parts
    tree = _check_tree({section: {key: None}}, f"--set {text}")  # names first, then the value
    value = _yaml_load(raw, f"--set {text}")
    # A string key given a bare scalar YAML reads as another type (model.name=123): keep the text.
    tp = typing.get_type_hints(SECTIONS[section])[key]
    if str in (tp, *typing.get_args(tp)) and isinstance(value, (bool, int, float)):
        value = raw.strip()
    tree[section][key] = value
    return tree


def apply_overrides(cfg: Config, overrides: Iterable[str]) -> Config:
    """``cfg`` with ``section.key=value`` overrides applied (values read as YAML).

    Args:
        cfg: the config.
        overrides: ``section.key=value`` strings, applied in order.

    Returns:
        A new, validated ``Config``.

    Raises:
        ConfigError: a malformed override, an unknown key, or a bad value.
    """
    tree = config_to_dict(cfg)
    for text in overrides:
        tree = _merge(tree, _parse_override(text))
    return config_from_dict(tree)


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def _read_tree(path: Path, chain: tuple[Path, ...]) -> dict[str, dict[str, Any]]:
    """The merged raw tree of one YAML file and its ``base:`` files."""
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain[chain.index(resolved):], resolved))
        raise ConfigError(f"config inheritance cycle: {cycle}")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        reason = e.strerror or type(e).__name__
        via = f" (base of {chain[-1]})" if chain else ""
        raise ConfigError(f"cannot read config file '{path}': {reason}{via}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"cannot read config file '{path}': not UTF-8 text") from None
    raw = _yaml_load(text, f"'{path}'")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file '{path}' must be a mapping of sections, "
                          f"got {type(raw).__name__}")
    raw = dict(raw)
    bases = raw.pop("base", None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    elif not (isinstance(bases, list) and all(isinstance(b, str) for b in bases)):
        raise ConfigError(f"'base' in '{path}' must be a file name or a list of file names, "
                          f"got {_describe(bases)}")
    tree: dict[str, dict[str, Any]] = {}
    for base in bases:
        base_path = Path(base) if os.path.isabs(base) else path.parent / base
        tree = _merge(tree, _read_tree(base_path, (*chain, resolved)))
    return _merge(tree, _check_tree(raw, f"'{path}'"))


def load_config(path: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
                overrides: Iterable[str] = ()) -> Config:
    """Read a YAML config (or several, merged in order; None = defaults), then ``overrides``.

    Each override is ``section.key=value``; the value is read as YAML (``16``, ``3e-5``,
    ``true``, ``null``, ``[a, b]``). Raises ConfigError for any problem.

    Args:
        path: a YAML file, a sequence of them merged in order (each with its ``base:``
            files), or None for the defaults.
        overrides: ``section.key=value`` strings (one string: one override), applied after
            the files.

    Returns:
        The validated ``Config``.

    Raises:
        ConfigError: an unreadable file, invalid YAML, a ``base:`` cycle, an unknown section
            or key, a malformed override, or a bad value (naming the files).
    """
    if path is None:
        paths: list = []
    elif isinstance(path, (str, os.PathLike)):
        paths = [path]
    else:
        paths = list(path)
    tree: dict[str, dict[str, Any]] = {}
    for p in paths:
        tree = _merge(tree, _read_tree(Path(p), ()))
    if isinstance(overrides, str):
        overrides = [overrides]
    overrides = list(overrides)
    for text in overrides:
        tree = _merge(tree, _parse_override(text))
    try:
        return config_from_dict(tree)
    except ConfigError as e:
        if not paths:
            raise
        origin = ", ".join(str(p) for p in paths) + (" and --set overrides" if overrides else "")
        raise ConfigError(f"{e} (config: {origin})") from None


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML text (every key; readable by :func:`load_config`).

    Args:
        cfg: the config.

    Returns:
        YAML text, with a header comment.
    """
    header = "# mvp-jax resolved config: every key, after base: files and --set overrides\n"
    return header + yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config atomically (temporary file in the same folder + os.replace).

    Args:
        cfg: the config.
        path: the YAML file to write (its folder is created).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(dump_config(cfg))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
