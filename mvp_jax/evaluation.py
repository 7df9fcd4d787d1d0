"""Evaluate a model directory on a task, and export a run's latest checkpoint."""

from __future__ import annotations

import os

import jax

from mvp_jax import masking


def head_for(spec) -> str:
    return "qa" if spec.kind == "qa" else "classification"


def evaluate_model_dir(model_dir: str, task: str, *, data_dir=None, max_eval_samples=None,
                       batch_size: int = 64, max_seq_length=None) -> dict:
    """``{split: metrics}`` of the (already pruned, dense-stored) model in ``model_dir``."""
    from mvp_jax import data
    from mvp_jax.models import load_pretrained, load_tokenizer
    from mvp_jax.train import Pruning, evaluate_splits, make_eval_step

    spec = data.get_task(task)
    pre = load_pretrained(model_dir, head=head_for(spec), num_labels=spec.num_labels)
    task_data = data.load_task(spec.name, load_tokenizer(pre.path), data_dir=data_dir,
                               max_seq_length=max_seq_length, max_eval_samples=max_eval_samples,
                               with_train=False)
    eval_step = make_eval_step(pre.module, Pruning(method="none")).jit()
    return evaluate_splits(eval_step, pre.params, {}, task_data, batch_size)


def restore_run(run_dir: str):
    """``(cfg, setup pieces, state)`` of a run's latest checkpoint, without loading its data."""
    from mvp_jax import data
    from mvp_jax.checkpoint import CheckpointManager
    from mvp_jax.config import load_config
    from mvp_jax.models import load_pretrained
    from mvp_jax.optim import make_optimizer
    from mvp_jax.runner import pruning_of
    from mvp_jax.train import LEARNED, init_state

    cfg_path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{run_dir!r} is not a run directory (no config.yaml)")
    cfg = load_config(cfg_path)
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    spec = data.get_task(cfg.task.name)
    pre = load_pretrained(cfg.model.name, head=head_for(spec), num_labels=spec.num_labels)
    pruning = pruning_of(cfg, total_steps=1)
    scores = {}
    if pruning.method in LEARNED:
        scores = masking.init_scores(pre.params, cfg.prune.mask_init, cfg.prune.mask_scale,
                                     rng=jax.random.PRNGKey(0), patterns=pruning.patterns)
    t = cfg.train
    optimizer = make_optimizer(learning_rate=t.learning_rate, total_steps=1,
                               scores_learning_rate=t.scores_learning_rate,
                               max_grad_norm=t.max_grad_norm, optimizer=t.optimizer,
                               freeze_embeddings=t.freeze_embeddings)
    template = init_state(pre.params, scores, optimizer, 0, rng_impl=t.rng_impl)
    mngr = CheckpointManager(ckpt_dir, keep=t.keep_checkpoints)
    try:
        if mngr.latest_step() is None:
            raise FileNotFoundError(f"{run_dir!r} has no checkpoint in {ckpt_dir}")
        state = mngr.restore(template)
    finally:
        mngr.close()
    return cfg, pre, pruning, state


def export_run(run_dir: str, output_dir: str, *, compressed: str | None = None,
               overwrite: bool = False) -> dict:
    """Final masks of the latest checkpoint applied, written as a Hugging Face directory."""
    from mvp_jax import data
    from mvp_jax.export import compression_report, count_remaining, export_hf, save_compressed

    if compressed and os.path.exists(compressed) and not overwrite:
        raise ValueError(f"{compressed!r} exists; pass --overwrite to replace it")
    cfg, pre, pruning, state = restore_run(run_dir)
    spec = data.get_task(cfg.task.name)
    masked = jax.device_get(masking.multiply_masks(state.params, pruning.final_masks(state.params, state.scores)))
    export_hf(output_dir, masked, pre.config, head_for(spec), tokenizer_path=pre.path,
              num_labels=spec.num_labels, overwrite=overwrite)
    counts = count_remaining(masked, pruning.patterns)
    report = {"export": output_dir, "step": int(state.step), "remaining_weights": counts["fraction"]}
    if compressed:
        save_compressed(compressed, masked, pre.config, head_for(spec))
        report["compressed"] = compression_report(compressed)
    return report
