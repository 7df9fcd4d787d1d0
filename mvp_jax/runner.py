"""``fine_prune(cfg, output_dir)``: the main job, from a pretrained model to an exported pruned one.

A run directory holds::

    config.yaml         the resolved configuration
    metrics.jsonl       one JSON line per logged step and per evaluation
    tb/                 TensorBoard event files of the same scalars
    checkpoints/        orbax checkpoints of the TrainState (the last K)
    export/             the pruned model as a Hugging Face directory (W * M, scores dropped)
    counts.json         remaining weights per prunable matrix and in total
    eval_results.json   final metrics and remaining weights -- written last: its presence
                        means the run is complete
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mvp_jax import masking
from mvp_jax.checkpoint import CheckpointManager
from mvp_jax.optim import make_optimizer
from mvp_jax.train import (LEARNED, Distill, Pruning, evaluate_splits, init_state, make_eval_step,
                           make_train_step)

RUN_MARKERS = ("config.yaml", "checkpoints", "metrics.jsonl", "eval_results.json")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class RunError(ValueError):
    """A run that cannot start or continue; the message says why."""


class Interrupted(Exception):
    """SIGTERM or Ctrl-C: a checkpoint was saved at ``step``."""

    def __init__(self, step: int, directory: str):
        super().__init__(f"interrupted at step {step}; checkpoint saved in {directory}; "
                         "continue with --resume")
        self.step = step


def write_json(path: str, obj: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=float)
        f.write("\n")
    os.replace(tmp, path)


def prepare_output_dir(output_dir: str, *, resume: bool, overwrite: bool) -> bool:
    """Check ``output_dir`` before anything is written; returns True when resuming.

    A directory holding another run is refused unless ``resume`` or ``overwrite``."""
    if resume and overwrite:
        raise RunError("--resume and --overwrite exclude each other")
    has_run = os.path.isdir(output_dir) and any(
        os.path.exists(os.path.join(output_dir, m)) for m in RUN_MARKERS)
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise RunError(f"output directory {output_dir!r} is a file")
    if resume:
        if not has_run:
            raise RunError(f"--resume: {output_dir!r} holds no run to resume")
        return True
    if has_run and not overwrite:
        raise RunError(f"output directory {output_dir!r} already holds a run; "
                       "pass --resume to continue it or --overwrite to replace it")
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not has_run and not overwrite:
        raise RunError(f"output directory {output_dir!r} is not empty; "
                       "choose another or pass --overwrite")
    return False


@dataclass
class Setup:
    """Everything loaded and validated before a single file is written."""

    cfg: Any
    task: Any  # TaskData
    module: Any
    params: Any
    model_config: Any
    model_path: str
    head: str
    teacher: Any  # Pretrained | None
    steps_per_epoch: int
    total_steps: int
    pruning: Pruning


def pruning_of(cfg, total_steps: int) -> Pruning:
    p = cfg.prune
    return Pruning(
        method=p.method, global_topk=bool(p.global_topk),
        initial_threshold=float(p.initial_threshold), final_threshold=float(p.final_threshold),
        initial_warmup=p.initial_warmup, final_warmup=p.final_warmup,
        warmup_steps=int(cfg.train.warmup_steps), total_steps=int(total_steps),
        regularization=p.regularization, final_lambda=float(p.final_lambda),
        patterns=tuple(p.patterns) if p.patterns else masking.DEFAULT_PRUNABLE)


def load_setup(cfg) -> Setup:
    """Load model, teacher and data; check that they fit together."""
    from mvp_jax import data
    from mvp_jax.models import load_config as load_model_config
    from mvp_jax.models import load_pretrained, load_tokenizer, resolve_model_path

    spec = data.get_task(cfg.task.name)
    head = "qa" if spec.kind == "qa" else "classification"
    dtype = DTYPES[cfg.model.dtype]
    pre = load_pretrained(cfg.model.name, head=head, num_labels=spec.num_labels, dtype=dtype,
                          seed=cfg.train.seed)
    module = pre.module
    if cfg.model.dropout is not None:
        rate = float(cfg.model.dropout)
        module = module.clone(spec=dataclasses.replace(
            module.spec, hidden_dropout_prob=rate, attention_probs_dropout_prob=rate))
    max_len = cfg.task.max_seq_length or spec.max_seq_length
    if max_len > pre.config.max_position_embeddings:
        raise RunError(f"task.max_seq_length={max_len} exceeds the model's "
                       f"{pre.config.max_position_embeddings} position embeddings")
    teacher = None
    if cfg.distill.teacher:
        teacher_path = resolve_model_path(cfg.distill.teacher)
        n_teacher = load_model_config(teacher_path).num_labels
        if head == "classification" and n_teacher != spec.num_labels:
            raise RunError(f"teacher {cfg.distill.teacher!r} has {n_teacher} labels; "
                           f"task {spec.name} has {spec.num_labels}")
        teacher = load_pretrained(teacher_path, head=head, num_labels=spec.num_labels,
                                  dtype=dtype, seed=cfg.train.seed)
    tokenizer = load_tokenizer(pre.path)
    task = data.load_task(spec.name, tokenizer, data_dir=cfg.task.data_dir, max_seq_length=max_len,
                          doc_stride=cfg.task.doc_stride,
                          max_train_samples=cfg.data.max_train_samples,
                          max_eval_samples=cfg.data.max_eval_samples, seed=cfg.train.seed)
    per_step = cfg.train.batch_size * cfg.train.gradient_accumulation_steps
    steps_per_epoch = data.num_batches(len(task.train["input_ids"]), per_step)
    total = cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * steps_per_epoch))
    return Setup(cfg, task, module, pre.params, pre.config, pre.path, head, teacher,
                 steps_per_epoch, int(total), pruning_of(cfg, total))


class _Signals:
    """Turns SIGTERM / SIGINT into a flag the loop checks after each step."""

    def __init__(self):
        self.received = None

    def __enter__(self):
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def _log(fh, writer, record: dict) -> None:
    fh.write(json.dumps(record, default=float) + "\n")
    fh.flush()
    if writer is not None:
        for k, v in record.items():
            if isinstance(v, (int, float)) and k != "step":
                writer.add_scalar(k, v, record["step"])


def _flatten_metrics(prefix: str, metrics: dict) -> dict:
    return {f"{prefix}/{split}/{k}": v for split, m in metrics.items() for k, v in m.items()}


def final_masked_params(params, scores, pruning: Pruning):
    """Params with the final deterministic masks applied (the model that gets exported)."""
    return masking.multiply_masks(params, pruning.final_masks(params, scores))


def fine_prune(cfg, output_dir: str, *, resume: bool = False, overwrite: bool = False,
               progress: bool = True, stop_at_step: int | None = None) -> dict:
    """Fine-prune ``cfg.model.name`` on ``cfg.task.name``; returns the final eval results.

    ``stop_at_step`` ends the loop early with a checkpoint, as an interruption would (tests).
    """
    from mvp_jax.config import save_config

    resuming = prepare_output_dir(output_dir, resume=resume, overwrite=overwrite)
    setup = load_setup(cfg)
    if overwrite and os.path.isdir(output_dir):
        shutil.rmtree(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    if resuming:
        _check_same_config(cfg, output_dir)
    save_config(cfg, os.path.join(output_dir, "config.yaml"))

    t = cfg.train
    pruning = setup.pruning
    scores = {}
    if pruning.method in LEARNED:
        scores = masking.init_scores(setup.params, cfg.prune.mask_init, cfg.prune.mask_scale,
                                     rng=jax.random.PRNGKey(t.seed + 1), patterns=pruning.patterns)
    optimizer = make_optimizer(
        learning_rate=t.learning_rate, scores_learning_rate=t.scores_learning_rate,
        total_steps=setup.total_steps, warmup_steps=t.warmup_steps, weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm, adam_epsilon=t.adam_epsilon,
        freeze_embeddings=t.freeze_embeddings)
    state = init_state(setup.params, scores, optimizer, t.seed)
    ckpt = CheckpointManager(os.path.join(output_dir, "checkpoints"), keep=t.keep_checkpoints)
    if resuming and ckpt.latest_step() is not None:
        state = ckpt.restore(state)

    distill = Distill(cfg.distill.alpha_ce, cfg.distill.alpha_distil, cfg.distill.temperature)
    teacher_module = setup.teacher.module if setup.teacher else None
    teacher_params = setup.teacher.params if setup.teacher else None
    train_step = jax.jit(make_train_step(setup.module, setup.task.spec.kind, pruning, optimizer,
                                         teacher=teacher_module, distill=distill),
                         donate_argnums=0)
    eval_step = jax.jit(make_eval_step(setup.module, pruning))
    eval_bs = t.eval_batch_size or t.batch_size

    results = _loop(setup, state, train_step, eval_step, teacher_params, ckpt, output_dir,
                    progress=progress, stop_at_step=stop_at_step, eval_batch_size=eval_bs)
    ckpt.close()
    return results


def _check_same_config(cfg, output_dir: str) -> None:
    from mvp_jax.config import config_to_dict, load_config

    saved_path = os.path.join(output_dir, "config.yaml")
    if not os.path.exists(saved_path):
        return
    saved, now = config_to_dict(load_config(saved_path)), config_to_dict(cfg)
    diff = [f"{s}.{k}" for s in now for k in now[s] if saved.get(s, {}).get(k) != now[s][k]]
    if diff:
        raise RunError(f"--resume with a different configuration ({', '.join(diff)}); "
                       "resume with the run's own config.yaml")


def _batch_iterator(setup: Setup, start_step: int):
    """Training batches ``[accum, B, ...]`` from global step ``start_step`` on, epoch after epoch;
    the order depends only on (seed, epoch), so a resumed run sees the same batches."""
    from mvp_jax.data import batches

    t = setup.cfg.train
    accum, per_step = t.gradient_accumulation_steps, t.batch_size * t.gradient_accumulation_steps
    epoch, pos = divmod(start_step, setup.steps_per_epoch)
    while True:
        for batch in batches(setup.task.train, per_step, seed=t.seed, epoch=epoch, start=pos):
            yield {k: v.reshape(accum, t.batch_size, *v.shape[1:]) for k, v in batch.items()}
        epoch, pos = epoch + 1, 0


def _loop(setup, state, train_step, eval_step, teacher_params, ckpt, output_dir, *, progress,
          stop_at_step, eval_batch_size) -> dict:
    from tqdm.auto import tqdm

    try:
        from tensorboardX import SummaryWriter
        writer = SummaryWriter(os.path.join(output_dir, "tb"))
    except ImportError:  # pragma: no cover - tensorboardX is a dependency
        writer = None
    t = setup.cfg.train
    start = int(jax.device_get(state.step))
    end = setup.total_steps if stop_at_step is None else min(stop_at_step, setup.total_steps)
    bar = tqdm(total=setup.total_steps, initial=start, disable=not progress, unit="step",
               dynamic_ncols=True)
    batches = _batch_iterator(setup, start)
    examples, tic = 0.0, time.perf_counter()
    with open(os.path.join(output_dir, "metrics.jsonl"), "a") as fh, _Signals() as sig:
        for step in range(start, end):
            batch = next(batches)
            state, metrics = train_step(state, batch, teacher_params)
            examples += float(batch["example_weight"].sum())
            done = step + 1
            if done % max(t.log_every, 1) == 0 or done == end:
                m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                elapsed = time.perf_counter() - tic
                m.update(step=done, epoch=round(done / setup.steps_per_epoch, 4),
                         examples_per_s=examples / max(elapsed, 1e-9))
                examples, tic = 0.0, time.perf_counter()
                _log(fh, writer, m)
                bar.set_postfix(loss=f"{m['loss']:.4f}", remaining=f"{m['remaining_weights']:.3f}",
                                ex_s=f"{m['examples_per_s']:.0f}")
            bar.update(1)
            if t.eval_every and done % t.eval_every == 0 and done != setup.total_steps:
                evals = evaluate_splits(eval_step, state.params, state.scores, setup.task,
                                        eval_batch_size)
                _log(fh, writer, {"step": done, **_flatten_metrics("eval", evals)})
            if t.save_every and done % t.save_every == 0:
                ckpt.save(state)
            if sig.received is not None:
                ckpt.save(state)
                bar.close()
                raise Interrupted(done, ckpt.directory)
        bar.close()
        ckpt.save(state)
        if int(jax.device_get(state.step)) < setup.total_steps:
            return {"step": int(jax.device_get(state.step)), "complete": False}
        return _finish(setup, state, eval_step, output_dir, fh, writer, eval_batch_size)


def _finish(setup, state, eval_step, output_dir, fh, writer, eval_batch_size) -> dict:
    """Final evaluation, export, counts; ``eval_results.json`` last."""
    from mvp_jax.export import count_remaining, export_hf

    evals = evaluate_splits(eval_step, state.params, state.scores, setup.task, eval_batch_size)
    masked = jax.device_get(final_masked_params(state.params, state.scores, setup.pruning))
    counts = count_remaining(masked, setup.pruning.patterns)
    export_dir = os.path.join(output_dir, "export")
    if os.path.isdir(export_dir):
        shutil.rmtree(export_dir)
    export_hf(export_dir, masked, setup.model_config, setup.head, tokenizer_path=setup.model_path,
              num_labels=setup.task.spec.num_labels)
    write_json(os.path.join(output_dir, "counts.json"), counts)
    step = int(jax.device_get(state.step))
    _log(fh, writer, {"step": step, **_flatten_metrics("eval", evals),
                      "eval/remaining_weights": counts["fraction"]})
    spec = setup.task.spec
    results = {
        "task": spec.name, "method": setup.pruning.method, "step": step,
        "remaining_weights": counts["fraction"],
        "remaining": counts["remaining"], "prunable": counts["total"],
        "main_metric": spec.main_metric, "metrics": evals,
    }
    write_json(os.path.join(output_dir, "eval_results.json"), results)
    return results
