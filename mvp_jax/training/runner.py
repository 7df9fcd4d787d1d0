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
    run.lock            while a process runs in it (``mvp_jax.training.rundir``)

``--overwrite`` deletes these entries by name and nothing else. A run killed at any moment
resumes (``--resume``) from its last complete checkpoint to the params of an uninterrupted run.
A step whose loss or gradient norm is not finite stops the run (``NonFiniteLoss``) with its
earlier checkpoints kept.

The run uses every device on a ``("data", "model")`` mesh (``cfg.mesh``, see ``mvp_jax.training.sharding``):
the state is placed in the layout of the partition rules, every batch is split on ``"data"``.
Started as several processes (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
``JAX_PROCESS_ID``, or ``MVP_JAX_DISTRIBUTED=1`` under a launcher), each process feeds only its
rows of every batch, all of them take part in checkpoints (orbax), and only process 0 writes
config.yaml, metrics.jsonl, tb/, export/, counts.json and eval_results.json.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from mvp_jax import choices
from mvp_jax.errors import UserError
from mvp_jax.pruning.pruner import Pruner
from mvp_jax.training import sharding as shd
from mvp_jax.training.checkpoint import CheckpointManager
from mvp_jax.training.distill import (
    check_layer_distillation,
    permute_classifier,
    teacher_label_permutation,
)
from mvp_jax.training.evaluation import evaluate_splits, jit_eval_step, make_eval_step
from mvp_jax.training.hooks import pause_for_test
from mvp_jax.training.optim import make_optimizer
from mvp_jax.training.rundir import (
    RunError,
    RunLock,
    prepare_output_dir,
    remove_run_files,
    write_json,
    write_text,
)
from mvp_jax.training.train import init_state, jit_train_step, make_train_step

DTYPES = {name: getattr(jnp, name) for name in choices.DTYPES}  # model.dtype -> jnp dtype


class Interrupted(Exception):
    """SIGTERM or Ctrl-C: a checkpoint was saved at ``step``."""

    def __init__(self, step: int, directory: str):
        super().__init__(f"interrupted at step {step}; checkpoint saved in {directory}; "
                         "continue with --resume")
        self.step = step


class NonFiniteLoss(RuntimeError):
    """The loss or the gradient norm of a step is NaN or infinite; the run stops there. The
    checkpoints written before (all of finite steps) are kept; no eval_results.json."""

    def __init__(self, step: int, metrics: dict, last_good: int | None, directory: str):
        values = ", ".join(f"{k} {metrics[k]}" for k in ("loss", "grad_norm") if k in metrics)
        kept = (f"the last good checkpoint is step {last_good} in {directory}" if last_good
                is not None else "no checkpoint was written before it")
        super().__init__(f"step {step}: non-finite {values}; the run stopped ({kept}). "
                         "Lower train.learning_rate or train.scores_learning_rate, or check "
                         "train.max_grad_norm")
        self.step = step


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
    buckets: tuple[int, ...] | None = None  # length buckets, max_seq_length last; None: fixed


def load_setup(cfg) -> Setup:
    """Load model, teacher and data; check that they fit together.

    The task is the registry's or your own data (``data.task_from_config``); for your own
    classification data the class names read from the training split are stored in
    ``setup.cfg.task.labels``, so the run's config.yaml keeps them."""
    from mvp_jax import data
    from mvp_jax.models import (
        layout_of,
        load_model_config,
        load_pretrained,
        load_tokenizer,
        resolve_model_path,
    )

    spec = data.task_from_config(cfg.task)
    if spec.source is not None and spec.label_names and cfg.task.labels is None:
        cfg = cfg.replace(task=cfg.task.replace(labels=spec.label_names))
    head = spec.head
    max_len = cfg.task.max_seq_length or spec.max_seq_length
    buckets = None
    if cfg.data.bucket_lengths is not None:  # checked here against the task's default length
        if spec.kind == "qa":
            raise RunError(f"data.bucket_lengths applies to classification and regression tasks, "
                           f"not {spec.name}")
        try:
            buckets = data.resolve_buckets(cfg.data.bucket_lengths, max_len)
        except ValueError as e:
            raise RunError(str(e)) from None
    dtype = DTYPES[cfg.model.dtype]
    pre = load_pretrained(cfg.model.name, head=head, num_labels=spec.num_labels, dtype=dtype,
                          seed=cfg.train.seed)
    module = pre.module
    if cfg.model.dropout is not None:
        rate = float(cfg.model.dropout)
        module = module.clone(spec=dataclasses.replace(
            module.spec, hidden_dropout_prob=rate, attention_probs_dropout_prob=rate))
    if max_len > pre.module.spec.max_length:
        raise RunError(f"task.max_seq_length={max_len} exceeds the model's "
                       f"{pre.module.spec.max_length} position embeddings")
    teacher = None
    if cfg.distill.teacher:
        teacher_path = resolve_model_path(cfg.distill.teacher)
        n_teacher = load_model_config(teacher_path).num_labels
        if head == "classification" and n_teacher != spec.num_labels:
            raise RunError(f"teacher {cfg.distill.teacher!r} has {n_teacher} labels; "
                           f"task {spec.name} has {spec.num_labels}")
        teacher = load_pretrained(teacher_path, head=head, num_labels=spec.num_labels,
                                  dtype=dtype, seed=cfg.train.seed)
        if teacher.module.spec.vocab_size != module.spec.vocab_size:  # another tokenizer
            raise RunError(f"teacher {cfg.distill.teacher!r} has {teacher.module.spec.vocab_size} "
                           f"tokens, the model {module.spec.vocab_size}: the teacher must read "
                           "the model's tokenizer")
        try:  # before anything is written: the teacher fits the layer-wise terms
            check_layer_distillation(module.spec, teacher.module.spec, cfg.distill)
        except UserError as e:
            raise RunError(f"teacher {cfg.distill.teacher!r}: {e}") from None
        perm = (teacher_label_permutation(teacher.config.id2label, spec.label_names)
                if head == "classification" else None)
        if perm is not None:  # the teacher's outputs in the task's label order
            logits = layout_of(teacher.config.model_type).logits
            teacher = teacher._replace(params=permute_classifier(teacher.params, perm, logits))
            if jax.process_index() == 0:
                print(f"note: the teacher's labels {list(teacher.config.id2label.values())} are "
                      f"reordered to the task's {list(spec.label_names)}", file=sys.stderr)
    tokenizer = load_tokenizer(pre.path)
    task = data.load_task(spec, tokenizer, data_dir=cfg.task.data_dir, max_seq_length=max_len,
                          doc_stride=cfg.task.doc_stride,
                          max_train_samples=cfg.data.max_train_samples,
                          max_eval_samples=cfg.data.max_eval_samples, seed=cfg.train.seed)
    # one step = batch_size * accumulation examples; bucketed or not, an epoch has the same
    # number of steps (only its last batch is partial; data.batching)
    per_step = cfg.train.batch_size * cfg.train.gradient_accumulation_steps
    steps_per_epoch = data.num_batches(len(task.train["input_ids"]), per_step)
    total = cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * steps_per_epoch))
    return Setup(cfg, task, module, pre.params, pre.config, pre.path, head, teacher,
                 steps_per_epoch, int(total), buckets)


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


def make_run_mesh(cfg):
    """The run's device mesh from ``cfg.mesh``; checks that ``"data"`` divides the batch."""
    try:
        mesh = shd.make_mesh(cfg.mesh.data, cfg.mesh.model)
    except ValueError as e:
        raise RunError(str(e)) from None
    data = mesh.shape["data"]
    if cfg.train.batch_size % data:
        raise RunError(f"train.batch_size={cfg.train.batch_size} is not a multiple of the mesh's "
                       f"data axis ({data}); each data-parallel device needs the same share")
    return mesh


def fine_prune(cfg, output_dir: str, *, resume: bool = False, overwrite: bool = False,
               progress: bool = True, stop_at_step: int | None = None) -> dict:
    """Fine-prune ``cfg.model.name`` on ``cfg.task.name``; returns the final eval results.

    ``stop_at_step`` ends the loop early with a checkpoint, as an interruption would (tests).
    """
    from mvp_jax.config import save_config

    shd.initialize_distributed()
    primary = shd.is_primary()
    resuming = prepare_output_dir(output_dir, resume=resume, overwrite=overwrite)
    setup = load_setup(cfg)
    mesh = make_run_mesh(cfg)
    if resuming:
        _check_same_config(setup.cfg, output_dir)
    shd.sync("mvp_jax:checked")  # every process has checked the directory before any write
    lock = RunLock(output_dir)
    if primary:
        os.makedirs(output_dir, exist_ok=True)
        lock.acquire()
        try:  # again under the lock: another process may have written a run since the check
            prepare_output_dir(output_dir, resume=resume, overwrite=overwrite)
            if overwrite:
                remove_run_files(output_dir)
            if not resuming:  # setup.cfg: with the class names read from your own data
                save_config(setup.cfg, os.path.join(output_dir, "config.yaml"))
        except BaseException:
            lock.release()
            raise
    try:
        shd.sync("mvp_jax:output_dir")
        return _fine_prune_locked(cfg, setup, mesh, output_dir, resuming, progress, stop_at_step)
    finally:
        lock.release()


def _fine_prune_locked(cfg, setup: Setup, mesh, output_dir: str, resuming: bool, progress: bool,
                       stop_at_step: int | None) -> dict:
    """The run once its directory is checked and locked."""
    primary = shd.is_primary()
    t = cfg.train
    pruner = Pruner.from_config(cfg.prune, setup.module, total_steps=setup.total_steps,
                                warmup_steps=t.warmup_steps)
    scores = pruner.initial_scores(setup.params, jax.random.PRNGKey(t.seed + 1))
    optimizer = make_optimizer(
        learning_rate=t.learning_rate, scores_learning_rate=t.scores_learning_rate,
        total_steps=setup.total_steps, warmup_steps=t.warmup_steps, weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm, adam_epsilon=t.adam_epsilon,
        freeze_embeddings=t.freeze_embeddings, optimizer=t.optimizer,
        freeze_scores=not pruner.method.learns_scores)
    state = init_state(setup.params, scores, optimizer, t.seed, rng_impl=t.rng_impl)
    state = shd.place(state, shd.tree_shardings(state, mesh))
    ckpt = CheckpointManager(os.path.join(output_dir, "checkpoints"), keep=t.keep_checkpoints)
    if resuming and ckpt.latest_step() is not None:
        state = ckpt.restore(state)
    if resuming and primary:  # lines logged after the checkpoint are logged again from it
        _truncate_metrics(os.path.join(output_dir, "metrics.jsonl"), int(jax.device_get(state.step)))

    teacher_module = setup.teacher.module if setup.teacher else None
    teacher_params = setup.teacher.params if setup.teacher else None
    if teacher_params is not None:
        teacher_params = shd.place(teacher_params, shd.tree_shardings(teacher_params, mesh))
    eval_bs = t.eval_batch_size or t.batch_size
    train_step = jit_train_step(
        make_train_step(setup.module, setup.task.spec.kind, pruner, optimizer,
                        teacher=teacher_module, distill=cfg.distill),
        mesh, state, t.batch_size, teacher_params)
    eval_step = jit_eval_step(make_eval_step(setup.module, pruner), mesh, state.params,
                              state.scores, eval_bs)
    run = _Run(setup, pruner, mesh, train_step, eval_step, teacher_params, ckpt, output_dir,
               eval_bs, primary, serialize=shd.needs_serial_dispatch(mesh))
    try:
        results = _loop(run, state, progress=progress, stop_at_step=stop_at_step)
    finally:
        ckpt.close()
    shd.sync("mvp_jax:done")  # eval_results.json exists when any process returns
    return results


@dataclass
class _Run:
    setup: Setup
    pruner: Pruner
    mesh: Any
    train_step: Any
    eval_step: Any
    teacher_params: Any
    ckpt: CheckpointManager
    output_dir: str
    eval_batch_size: int
    primary: bool
    serialize: bool = False  # wait for each step before the next program (CPU meshes)

    def put_train(self, batch):
        t = self.setup.cfg.train
        return shd.put_batch(batch, shd.batch_sharding(self.mesh, t.batch_size, micro=True))

    def put_eval(self, batch):
        return shd.put_batch(batch, shd.batch_sharding(self.mesh, self.eval_batch_size,
                                                       micro=False))

    def evaluate(self, state, masked=None):
        """Every eval split; the masks once (``W * M`` kept in the params' layout) unless
        ``masked`` (``eval_step.mask``'s output) is given, batches bucketed like the training
        ones."""
        pause_for_test("eval")
        return evaluate_splits(self.eval_step, state.params, state.scores, self.setup.task,
                               self.eval_batch_size, put=self.put_eval,
                               bucket_lengths=self.setup.buckets, masked=masked)


def _truncate_metrics(path: str, step: int) -> None:
    """Keep the lines of ``metrics.jsonl`` up to ``step`` (a killed run logged past its last
    checkpoint); a torn last line is dropped."""
    if not os.path.isfile(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if int(record.get("step", 0)) <= step:
                kept.append(json.dumps(record, default=float) + "\n")
    write_text(path, "".join(kept))


def _check_same_config(cfg, output_dir: str) -> None:
    from mvp_jax.config import config_to_dict, load_config

    saved_path = os.path.join(output_dir, "config.yaml")
    if not os.path.exists(saved_path):
        return
    saved, now = config_to_dict(load_config(saved_path)), config_to_dict(cfg)
    # the mesh may change on resume (another machine, more devices): checkpoints are resharded
    diff = [f"{s}.{k}" for s in now if s != "mesh" for k in now[s]
            if saved.get(s, {}).get(k) != now[s][k]]
    if diff:
        raise RunError(f"--resume with a different configuration ({', '.join(diff)}); "
                       "resume with the run's own config.yaml")


def _batch_iterator(setup: Setup, start_step: int):
    """Training batches ``[accum, B, ...]`` from global step ``start_step`` on, epoch after epoch;
    the order depends only on (seed, epoch), so a resumed run sees the same batches. With length
    buckets the whole step's ``accum * B`` examples are grouped and cut to one length L."""
    from mvp_jax.data import batches

    t = setup.cfg.train
    accum, per_step = t.gradient_accumulation_steps, t.batch_size * t.gradient_accumulation_steps
    epoch, pos = divmod(start_step, setup.steps_per_epoch)
    while True:
        for batch in batches(setup.task.train, per_step, seed=t.seed, epoch=epoch, start=pos,
                             bucket_lengths=setup.buckets,
                             mega_batch=setup.cfg.data.bucket_mega_batch):
            yield {k: v.reshape(accum, t.batch_size, *v.shape[1:]) for k, v in batch.items()}
        epoch, pos = epoch + 1, 0


def _real_tokens(attention_mask, example_weight) -> float:
    """Non-padding tokens of the real rows of a host batch (mask ``[..., B, L]``, weights
    ``[..., B]``)."""
    return float(((attention_mask != 0).sum(-1) * (example_weight > 0)).sum())


def _loop(run: _Run, state, *, progress, stop_at_step) -> dict:
    from tqdm.auto import tqdm

    setup, ckpt, output_dir = run.setup, run.ckpt, run.output_dir
    writer = None
    if run.primary:
        try:
            from tensorboardX import SummaryWriter
            writer = SummaryWriter(os.path.join(output_dir, "tb"))
        except ImportError:  # pragma: no cover - tensorboardX is a dependency
            writer = None
    t = setup.cfg.train
    start = int(jax.device_get(state.step))
    end = setup.total_steps if stop_at_step is None else min(stop_at_step, setup.total_steps)
    bar = tqdm(total=setup.total_steps, initial=start, disable=not (progress and run.primary),
               unit="step", dynamic_ncols=True)
    batches = _batch_iterator(setup, start)
    examples, tokens, tic, first_step_s = 0.0, 0.0, time.perf_counter(), None
    log_path = os.path.join(output_dir, "metrics.jsonl") if run.primary else os.devnull
    finite = _FiniteCheck(ckpt)
    with open(log_path, "a") as fh, _Signals() as sig:
        for step in range(start, end):
            batch = next(batches)
            weight = batch["example_weight"]
            examples += float(weight.sum())
            tokens += _real_tokens(batch["attention_mask"], weight)
            state, metrics = run.train_step(state, run.put_train(batch), run.teacher_params)
            done = step + 1
            if run.serialize:
                jax.block_until_ready(state)
            finite.after(done, metrics)
            pause_for_test("step")
            logging_now = done % max(t.log_every, 1) == 0 or done == end
            if step == start:  # compiles: throughput counts from the next step when it can
                jax.block_until_ready(state)
                first_step_s = time.perf_counter() - tic
                if not logging_now:
                    examples, tokens, tic = 0.0, 0.0, time.perf_counter()
            if logging_now:
                m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                elapsed = time.perf_counter() - tic
                m.update(step=done, epoch=round(done / setup.steps_per_epoch, 4),
                         examples_per_s=examples / max(elapsed, 1e-9),
                         tokens_per_s=tokens / max(elapsed, 1e-9))
                if first_step_s is not None:  # the first line of this process: with compilation
                    m["first_step_s"], first_step_s = first_step_s, None
                examples, tokens, tic = 0.0, 0.0, time.perf_counter()
                _log(fh, writer, m)
                bar.set_postfix(loss=f"{m['loss']:.4f}", remaining=f"{m['remaining_weights']:.3f}",
                                ex_s=f"{m['examples_per_s']:.0f}", tok_s=f"{m['tokens_per_s']:.0f}")
            bar.update(1)
            if t.eval_every and done % t.eval_every == 0 and done != setup.total_steps:
                finite.check()
                evals = run.evaluate(state)
                _log(fh, writer, {"step": done, **_flatten_metrics("eval", evals)})
            if t.save_every and done % t.save_every == 0:
                finite.save(state)
            if sig.received is not None:
                finite.save(state)
                bar.close()
                raise Interrupted(done, ckpt.directory)
        bar.close()
        finite.save(state)
        if int(jax.device_get(state.step)) < setup.total_steps:
            return {"step": int(jax.device_get(state.step)), "complete": False}
        return _finish(run, state, fh, writer)


class _FiniteCheck:
    """Stops the run at the first step whose loss or gradient norm is not finite
    (``NonFiniteLoss``), and saves only checked states. Step k's two scalars are read after
    step k+1 is dispatched, so the check costs no wait on the device; a state is checked before
    it is evaluated or saved."""

    def __init__(self, ckpt: CheckpointManager):
        self.ckpt = ckpt
        self.pending: tuple[int, dict] | None = None  # (step, metrics) not checked yet

    def after(self, step: int, metrics: dict) -> None:
        self.check()
        self.pending = (step, {k: metrics[k] for k in ("loss", "grad_norm") if k in metrics})

    def check(self) -> None:
        if self.pending is None:
            return
        step, metrics = self.pending
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not all(math.isfinite(v) for v in values.values()):
            raise NonFiniteLoss(step, values, self.ckpt.latest_step(), self.ckpt.directory)
        self.pending = None

    def save(self, state) -> None:
        self.check()
        self.ckpt.save(state)


def _finish(run: _Run, state, fh, writer) -> dict:
    """Final evaluation, export, counts; ``eval_results.json`` last (files: process 0 only).

    The final masks are computed once, in the eval step's compiled program (``W * M`` kept in
    the params' layout): the last evaluation scores that product and the export writes it, bit
    for bit the product that ``mvp-jax export`` computes from the checkpoint (``export_run``)."""
    from mvp_jax.export.deploy import export_pruned
    from mvp_jax.export.huggingface import count_remaining

    setup, output_dir = run.setup, run.output_dir
    masked = jax.block_until_ready(run.eval_step.mask(state.params, state.scores))
    evals = run.evaluate(state, masked)
    if jax.process_count() > 1:  # whole on every process
        masked = jax.jit(lambda t: t, out_shardings=shd.replicated(run.mesh))(masked)
    masked = jax.device_get(masked)
    counts = count_remaining(masked, run.pruner.patterns)
    step = int(jax.device_get(state.step))
    spec = setup.task.spec
    results = {
        "task": spec.name, "method": run.pruner.method.name, "step": step,
        "remaining_weights": counts["fraction"],
        "remaining": counts["remaining"], "prunable": counts["total"],
        "main_metric": spec.main_metric, "metrics": evals,
    }
    if not run.primary:
        return results
    pause_for_test("export")
    export_kwargs = dict(tokenizer_path=setup.model_path, num_labels=spec.num_labels,
                         label_names=spec.label_names or None, overwrite=True)
    export_pruned(os.path.join(output_dir, "export"), masked, setup.model_config, setup.head,
                  **export_kwargs)
    if run.pruner.structured:  # the pruned heads and neurons removed: a smaller model
        export_pruned(os.path.join(output_dir, "compact"), masked, setup.model_config,
                      setup.head, compact=True, refuse_unchanged=False, **export_kwargs)
    write_json(os.path.join(output_dir, "counts.json"), counts)
    _log(fh, writer, {"step": step, **_flatten_metrics("eval", evals),
                      "eval/remaining_weights": counts["fraction"]})
    write_json(os.path.join(output_dir, "eval_results.json"), results)
    return results
