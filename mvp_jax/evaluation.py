"""Evaluate a model directory on a task, and export a run's latest checkpoint."""

from __future__ import annotations

import os

import jax

from mvp_jax import masking
from mvp_jax.errors import MissingFileError


def head_for(spec) -> str:
    return "qa" if spec.kind == "qa" else "classification"


def model_labels(model_dir: str) -> tuple[str, ...] | None:
    """The class names of a classification model directory (its ``id2label`` in index order;
    transformers' generic ``LABEL_i`` read as ``"i"``), None for one output (regression)."""
    from mvp_jax.models import load_config, resolve_model_path

    config = load_config(resolve_model_path(model_dir))
    if config.num_labels < 2:
        return None
    names = [str(config.id2label.get(i, config.id2label.get(str(i), f"LABEL_{i}")))
             for i in range(config.num_labels)]
    if names == [f"LABEL_{i}" for i in range(len(names))]:
        return tuple(str(i) for i in range(len(names)))
    return tuple(names)


def model_kind(model_dir: str) -> str:
    """``qa``, ``regression`` (one output) or ``classification``, from a model's config.json."""
    from mvp_jax.models import load_config, resolve_model_path

    config = load_config(resolve_model_path(model_dir))
    if any("QuestionAnswering" in a for a in (config.architectures or ())):
        return "qa"
    return "regression" if config.num_labels == 1 else "classification"


def _own_task_for_model(task, model_dir: str):
    """``task`` (your own data) with the model's kind when null, and the model's class names:
    its outputs mean them (``task.labels`` must agree, unless the model's are generic)."""
    from mvp_jax.data import DataError

    kind = model_kind(model_dir)
    if task.kind is None:
        task = task.replace(kind=kind)
    if task.kind != "classification":
        return task
    names = model_labels(model_dir)
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


def evaluate_model_dir(model_dir: str, task, *, data_dir=None, max_eval_samples=None,
                       batch_size: int = 64, max_seq_length=None) -> dict:
    """``{split: metrics}`` of the (already pruned, dense-stored) model in ``model_dir``.

    ``task``: a registry task name, a ``TaskSpec``, or a ``TaskConfig`` -- your own data (files
    or a dataset, e.g. one the model never saw) scored with the class names of ``task.labels``,
    else of the model's ``id2label``; its kind, when null, is the model's."""
    from mvp_jax import data
    from mvp_jax.config import TaskConfig
    from mvp_jax.models import load_pretrained, load_tokenizer
    from mvp_jax.train import Pruning, evaluate_splits, make_eval_step

    if isinstance(task, TaskConfig):
        if task.own_data:
            task = _own_task_for_model(task, model_dir)
        spec = data.task_from_config(task)
        data_dir = data_dir if data_dir is not None else task.data_dir
        max_seq_length = max_seq_length or task.max_seq_length
    else:
        spec = data.get_task(task)
    pre = load_pretrained(model_dir, head=head_for(spec), num_labels=spec.num_labels)
    task_data = data.load_task(spec, load_tokenizer(pre.path), data_dir=data_dir,
                               max_seq_length=max_seq_length, max_eval_samples=max_eval_samples,
                               with_train=False)
    eval_step = make_eval_step(pre.module, Pruning(method="none")).jit()
    return evaluate_splits(eval_step, pre.params, {}, task_data, batch_size)


def restore_run(run_dir: str):
    """``(cfg, pretrained, pruning, state)`` of a run's latest checkpoint, without loading its
    data or building its optimizer: ``state`` is a ``TrainState`` with the saved step, params,
    scores, rng and Top-v value, and no ``opt_state``."""
    from mvp_jax import data
    from mvp_jax.checkpoint import CheckpointManager
    from mvp_jax.config import load_config
    from mvp_jax.models import load_pretrained
    from mvp_jax.runner import pruning_of
    from mvp_jax.train import TrainState

    cfg_path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(cfg_path):
        raise MissingFileError(f"{run_dir!r} is not a run directory (no config.yaml)")
    cfg = load_config(cfg_path)
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    spec = data.task_from_config(cfg.task)
    pre = load_pretrained(cfg.model.name, head=head_for(spec), num_labels=spec.num_labels)
    if not os.path.isdir(ckpt_dir):
        raise MissingFileError(f"{run_dir!r} has no checkpoint in {ckpt_dir}")
    mngr = CheckpointManager(ckpt_dir, keep=cfg.train.keep_checkpoints)
    try:
        if mngr.latest_step() is None:
            raise MissingFileError(f"{run_dir!r} has no checkpoint in {ckpt_dir}")
        saved = mngr.restore_saved()
    finally:
        mngr.close()
    state = TrainState(step=saved["step"], params=saved["params"], scores=saved.get("scores") or {},
                       opt_state=None, rng=saved.get("rng"), topk_value=saved.get("topk_value", 0.0),
                       rng_impl=cfg.train.rng_impl)
    return cfg, pre, pruning_of(cfg, total_steps=1), state


def export_run(run_dir: str, output_dir: str, *, compressed: str | None = None,
               overwrite: bool = False) -> dict:
    """Final masks of the latest checkpoint applied, written as a Hugging Face directory."""
    from mvp_jax import data
    from mvp_jax.export import (
        _check_replaceable_file,
        compression_report,
        count_remaining,
        export_hf,
        save_compressed,
    )

    if compressed:  # before the work: refused now rather than after the export
        _check_replaceable_file(os.path.abspath(compressed), overwrite)
    cfg, pre, pruning, state = restore_run(run_dir)
    spec = data.task_from_config(cfg.task)
    masked = jax.device_get(masking.multiply_masks(state.params, pruning.final_masks(state.params, state.scores)))
    export_hf(output_dir, masked, pre.config, head_for(spec), tokenizer_path=pre.path,
              num_labels=spec.num_labels, overwrite=overwrite,
              label_names=spec.label_names or None)
    counts = count_remaining(masked, pruning.patterns)
    report = {"export": output_dir, "step": int(state.step), "remaining_weights": counts["fraction"]}
    if compressed:
        save_compressed(compressed, masked, pre.config, head_for(spec), overwrite=overwrite)
        report["compressed"] = compression_report(compressed)
    return report
