"""Evaluation: the eval step (masks once per evaluation), predictions over a split, metrics, and
the evaluation of a model directory on a task."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import jax
import numpy as np

from mvp_jax.pruning import masking
from mvp_jax.pruning.pruner import Pruner
from mvp_jax.training import sharding as shd
from mvp_jax.training.train import model_inputs


def _model_config(model_dir: str):
    """The config.json of a model directory (or hub name)."""
    from mvp_jax.models import load_model_config, resolve_model_path

    return load_model_config(resolve_model_path(model_dir))


def _labels_of(config) -> tuple[str, ...] | None:
    """The class names of a classification config (its ``id2label`` in index order;
    transformers' generic ``LABEL_i`` read as ``"i"``), None for one output (regression)."""
    if config.num_labels < 2:
        return None
    names = [str(config.id2label.get(i, config.id2label.get(str(i), f"LABEL_{i}")))
             for i in range(config.num_labels)]
    if names == [f"LABEL_{i}" for i in range(len(names))]:
        return tuple(str(i) for i in range(len(names)))
    return tuple(names)


def _kind_of(config) -> str:
    """``qa``, ``regression`` (one output) or ``classification``, of a model config."""
    if any("QuestionAnswering" in a for a in (config.architectures or ())):
        return "qa"
    return "regression" if config.num_labels == 1 else "classification"


def model_kind(model_dir: str) -> str:
    """``qa``, ``regression`` (one output) or ``classification``, from a model's config.json."""
    return _kind_of(_model_config(model_dir))


def _own_task_for_model(task, model_dir: str):
    """``task`` (your own data) with the model's kind when null, and the model's class names:
    its outputs mean them (``task.labels`` must agree, unless the model's are generic).
    Reads the model's config.json once."""
    from mvp_jax.data import DataError

    config = _model_config(model_dir)
    if task.kind is None:
        task = task.replace(kind=_kind_of(config))
    if task.kind != "classification":
        return task
    names = _labels_of(config)
    if names is None:
        raise DataError(f"{task.name}: task.kind classification, but the model in {model_dir} "
                        f"has one output (regression)")
    generic = names == tuple(str(i) for i in range(len(names)))
    if task.labels is not None and task.labels != names:
        if not generic or len(task.labels) != len(names):
            raise DataError(f"{task.name}: task.labels {list(task.labels)} differ from the "
                            f"labels of the model in {model_dir} ({', '.join(names)})")
        return task
    return task.replace(labels=names)


@dataclass(frozen=True)
class EvalLayout:
    """How a run scored its evaluations: batch size, length buckets (None: fixed length) and
    device mesh (None: one device). Evaluating the same model with the same layout runs the same
    compiled programs on the same batches, so it gives the run's numbers exactly."""

    batch_size: int = 64
    bucket_lengths: tuple[int, ...] | None = None
    mesh: Any = None  # a jax.sharding.Mesh

    @classmethod
    def of_run(cls, cfg) -> "EvalLayout":
        """The layout of a run's config: ``train.eval_batch_size`` (else ``batch_size``), its
        ``data.bucket_lengths`` and its mesh (on this machine's devices; one device where that
        mesh does not fit them)."""
        from mvp_jax import data

        max_len = cfg.task.max_seq_length or data.task_from_config(cfg.task).max_seq_length
        buckets = (data.resolve_buckets(cfg.data.bucket_lengths, max_len)
                   if cfg.data.bucket_lengths is not None else None)
        try:
            mesh = shd.make_mesh(cfg.mesh.data, cfg.mesh.model)
        except ValueError:  # the run's mesh does not fit this machine's devices: one device
            mesh = None
        return cls(cfg.train.eval_batch_size or cfg.train.batch_size, buckets, mesh)


def evaluate_model_dir(model_dir: str, task, *, data_dir=None, max_eval_samples=None,
                       batch_size: int = 64, max_seq_length=None,
                       layout: EvalLayout | None = None) -> dict:
    """``{split: metrics}`` of the (already pruned, dense-stored) model in ``model_dir``.

    ``task``: a registry task name, a ``TaskSpec``, or a ``TaskConfig`` -- your own data (files
    or a dataset, e.g. one the model never saw) scored with the class names of ``task.labels``,
    else of the model's ``id2label``; its kind, when null, is the model's.
    ``layout``: batch size, buckets and mesh (a run's: ``EvalLayout.of_run``); None: one
    device, fixed length, ``batch_size``."""
    from mvp_jax import data
    from mvp_jax.config import TaskConfig
    from mvp_jax.models import load_pretrained, load_tokenizer

    if isinstance(task, TaskConfig):
        if task.own_data:
            task = _own_task_for_model(task, model_dir)
        spec = data.task_from_config(task)
        data_dir = data_dir if data_dir is not None else task.data_dir
        max_seq_length = max_seq_length or task.max_seq_length
    else:
        spec = data.get_task(task)
    pre = load_pretrained(model_dir, head=spec.head, num_labels=spec.num_labels)
    task_data = data.load_task(spec, load_tokenizer(pre.path), data_dir=data_dir,
                               max_seq_length=max_seq_length, max_eval_samples=max_eval_samples,
                               with_train=False)
    layout = layout or EvalLayout(batch_size)
    if layout.mesh is None:
        return evaluate_splits(make_eval_step(pre.module).jit(), pre.params, {}, task_data,
                               layout.batch_size, bucket_lengths=layout.bucket_lengths)
    mesh, bs = layout.mesh, layout.batch_size
    params = shd.place(pre.params, shd.tree_shardings(pre.params, mesh))
    eval_step = jit_eval_step(make_eval_step(pre.module), mesh, params, {}, bs)
    sharding = shd.batch_sharding(mesh, bs, micro=False)
    return evaluate_splits(eval_step, params, {}, task_data, bs,
                           put=lambda batch: shd.put_batch(batch, sharding),
                           bucket_lengths=layout.bucket_lengths)


# ----------------------------------------------------------------------------------------------
# The eval step: masks once per evaluation, then the plain model per batch
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalStep:
    """Evaluation in two parts, so the masks are computed once per evaluation, not per batch:

    ``mask(params, scores) -> masked``: ``W * M`` with the deterministic masks at the final
    threshold (a full Top-v selection); ``apply(masked, batch) -> outputs``: the model without
    dropout. Calling it, ``eval_step(params, scores, batch)``, does both (one batch)."""

    mask: Callable
    apply: Callable

    def __call__(self, params, scores, batch):
        return self.apply(self.mask(params, scores), batch)

    def jit(self, **kwargs) -> "EvalStep":
        """Both parts under ``jax.jit(..., **kwargs)`` (one device; a mesh: ``jit_eval_step``)."""
        return EvalStep(jax.jit(self.mask, **kwargs), jax.jit(self.apply, **kwargs))


def make_eval_step(module, pruner: Pruner | None = None) -> EvalStep:
    """The ``EvalStep`` of ``module`` pruned as ``pruner`` says (its final masks,
    ``Pruner.final_masks``; None: no pruning), without dropout."""

    def mask(params, scores):
        if pruner is None:
            return params
        return masking.multiply_masks(params, pruner.final_masks(params, scores))

    def apply(masked, batch):
        return module.apply({"params": masked}, *model_inputs(batch), deterministic=True)

    return EvalStep(mask, apply)


def jit_eval_step(eval_step: EvalStep, mesh, params, scores, batch_size: int,
                  compiler_options: dict | None = None) -> EvalStep:
    """``eval_step``'s parts compiled for ``mesh``: ``mask`` keeps the params' layout (the
    masked params stay sharded as the params), ``apply`` takes batches ``[B, ...]`` split on
    ``"data"`` (any sequence length: one compilation per length) and replicates its outputs
    (readable on every process)."""
    params_sh = shd.tree_shardings(params, mesh)
    mask = jax.jit(eval_step.mask, in_shardings=(params_sh, shd.tree_shardings(scores, mesh)),
                   out_shardings=params_sh, compiler_options=compiler_options)
    apply = jax.jit(eval_step.apply,
                    in_shardings=(params_sh, shd.batch_sharding(mesh, batch_size, micro=False)),
                    out_shardings=shd.replicated(mesh), compiler_options=compiler_options)
    return EvalStep(mask, apply)


# ----------------------------------------------------------------------------------------------
# Evaluation over a whole split
# ----------------------------------------------------------------------------------------------


def predict(eval_step, params, scores, features: dict[str, np.ndarray], batch_size: int,
            put: Callable | None = None, bucket_lengths: Sequence[int] | None = None,
            masked=None):
    """Model outputs for every row of ``features``, in their order (batch padding dropped).

    ``eval_step``: an ``EvalStep`` (its masks applied once, here, unless ``masked`` -- the
    output of ``eval_step.mask`` -- is given) or any ``f(params, scores, batch)``.
    ``put`` places each host batch on the devices (default: passed as is).
    ``bucket_lengths``: rows sorted by length, each batch cut to its bucket
    (``mvp_jax.data.batching``); sequence-level outputs only (classification, regression).
    """
    from mvp_jax.data import batching

    inputs = {k: features[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    n = len(inputs["input_ids"])
    lengths = buckets = None
    if bucket_lengths is not None:
        buckets = batching.resolve_buckets(bucket_lengths, inputs["attention_mask"].shape[1])
        lengths = batching.sequence_lengths(inputs["attention_mask"])
    plan = batching.batch_plan(n, batch_size, shuffle=False, lengths=lengths)
    if isinstance(eval_step, EvalStep):
        if masked is None:
            masked = eval_step.mask(params, scores)
        run = eval_step.apply
    else:
        def run(_, batch):
            return eval_step(params, scores, batch)
    chunks, rows = [], []
    for idx in plan:
        batch = batching.take_batch(inputs, idx, batch_size, fill=int(idx[0]), lengths=lengths,
                                    buckets=buckets)
        batch.pop("example_weight")
        if put is not None:
            batch = put(batch)
        out = jax.device_get(run(masked, batch))
        if buckets is not None and isinstance(out, tuple):
            raise ValueError("length buckets apply to sequence-level outputs (classification, "
                             "regression), not to per-token outputs such as a QA head's")
        chunks.append(out)
        rows.append(idx)
    if not chunks:
        raise ValueError("predict: no rows")
    real = np.concatenate(rows)
    order = np.empty(n, np.int64)
    order[real] = np.arange(n)  # output position of each row
    first = [0]
    for idx in rows:
        first.append(first[-1] + batch_size)

    def gather(parts):
        stacked = np.concatenate(parts)
        keep = np.concatenate([np.arange(s, s + len(idx)) for s, idx in zip(first, rows)])
        return stacked[keep][order]

    if isinstance(chunks[0], tuple):
        return tuple(gather([c[i] for c in chunks]) for i in range(len(chunks[0])))
    return gather(chunks)


def evaluate_splits(eval_step, params, scores, task_data, batch_size: int,
                    put: Callable | None = None,
                    bucket_lengths: Sequence[int] | None = None,
                    masked=None) -> dict[str, dict]:
    """``{split: metrics}`` for every evaluation split of the task (masks computed once, or
    ``masked``: ``eval_step.mask(params, scores)`` computed by the caller)."""
    from mvp_jax.data import evaluate

    if isinstance(eval_step, EvalStep) and masked is None:
        # the masks' program ends before the first batch's starts: two sharded programs with
        # collectives in flight at once can starve XLA's CPU rendezvous (one wait per evaluation)
        masked = jax.block_until_ready(eval_step.mask(params, scores))
    return {
        name: evaluate(task_data.spec, eval_set,
                       predict(eval_step, params, scores, eval_set.features, batch_size, put,
                               bucket_lengths, masked=masked))
        for name, eval_set in task_data.evals.items()
    }
