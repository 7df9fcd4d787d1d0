"""One optax transformation over ``{"params": ..., "scores": ...}`` with four groups.

* ``decay``: weights, AdamW with ``lr_w(t)`` and decoupled weight decay ``wd``;
* ``no_decay``: biases and LayerNorm, AdamW with ``lr_w(t)`` and no decay;
* ``scores``: the importance scores, Adam with their own ``lr_s(t)`` (default 1e-2);
* ``frozen``: embeddings (by default), zero update.

Gradients are first clipped to a global norm over both trees, as the reference clips every
parameter (scores included). Both learning rates share the linear warm-up then linear decay
schedule ``lr(t) = peak * min(t / warmup, (total - t) / (total - warmup))``, clipped at 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

import jax
import optax

NO_DECAY = (r"(^|/)bias$", r"LayerNorm/")
FROZEN = (r"(^|/)embeddings/",)


def linear_warmup_decay(peak: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """0 -> ``peak`` linearly over ``warmup_steps``, then linearly to 0 at ``total_steps``."""
    warmup = max(int(warmup_steps), 0)
    decay = max(int(total_steps) - warmup, 1)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup) if warmup else optax.constant_schedule(peak),
         optax.linear_schedule(peak, 0.0, decay)],
        boundaries=[warmup],
    )


def _path(keys) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in keys)


def param_labels(tree: Any, no_decay: Iterable[str] = NO_DECAY, frozen: Iterable[str] = FROZEN):
    """Group label of every leaf of ``{"params", "scores"}``: decay | no_decay | scores | frozen."""
    no_decay = [re.compile(p) for p in no_decay]
    frozen = [re.compile(p) for p in frozen]

    def label(keys, _):
        path = _path(keys)
        if path.startswith("scores/"):
            return "scores"
        if any(r.search(path) for r in frozen):
            return "frozen"
        if any(r.search(path) for r in no_decay):
            return "no_decay"
        return "decay"

    return jax.tree_util.tree_map_with_path(label, tree)


@dataclass(frozen=True)
class Optimizer:
    """The optax transformation and the learning-rate schedules of its groups (for logging)."""

    tx: optax.GradientTransformation
    weights_lr: optax.Schedule
    scores_lr: optax.Schedule

    def learning_rates(self, step) -> dict[str, jax.Array]:
        return {"lr_weights": self.weights_lr(step), "lr_scores": self.scores_lr(step)}


def make_optimizer(
    *,
    learning_rate: float,
    total_steps: int,
    warmup_steps: int = 0,
    scores_learning_rate: float = 1e-2,
    weight_decay: float = 0.0,
    max_grad_norm: float | None = 1.0,
    adam_epsilon: float = 1e-8,
    freeze_embeddings: bool = True,
    frozen: Iterable[str] | None = None,
) -> Optimizer:
    """AdamW for weights, Adam with its own LR for scores, zero for frozen; global-norm clipping."""
    for name, value in (("learning_rate", learning_rate), ("scores_learning_rate", scores_learning_rate)):
        if not value > 0:
            raise ValueError(f"{name}={value!r} must be > 0")
    weights_lr = linear_warmup_decay(learning_rate, warmup_steps, total_steps)
    scores_lr = linear_warmup_decay(scores_learning_rate, warmup_steps, total_steps)
    frozen = tuple(FROZEN if freeze_embeddings else ()) if frozen is None else tuple(frozen)
    groups = optax.multi_transform(
        {
            "decay": optax.adamw(weights_lr, eps=adam_epsilon, weight_decay=weight_decay),
            "no_decay": optax.adamw(weights_lr, eps=adam_epsilon, weight_decay=0.0),
            "scores": optax.adam(scores_lr, eps=adam_epsilon),
            "frozen": optax.set_to_zero(),
        },
        lambda tree: param_labels(tree, frozen=frozen),
    )
    chain = [optax.clip_by_global_norm(max_grad_norm)] if max_grad_norm else []
    return Optimizer(optax.chain(*chain, groups), weights_lr, scores_lr)
