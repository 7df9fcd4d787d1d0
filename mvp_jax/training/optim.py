"""One optax transformation over ``{"params": ..., "scores": ...}`` with four groups.

* ``decay``: weights, AdamW with ``lr_w(t)`` and decoupled weight decay ``wd``;
* ``no_decay``: biases and LayerNorm, AdamW with ``lr_w(t)`` and no decay;
* ``scores``: the importance scores, Adam with their own ``lr_s(t)`` (default 1e-2), no decay;
* ``frozen``: embeddings (by default), and fixed scores (``freeze_scores``: the random
  control's), zero update and no optimizer state.

``optimizer="reference_adamw"`` (the default) is the AdamW of transformers of 2020 that the
paper's code uses (:func:`reference_adamw`); ``"adamw"`` is ``optax.adamw`` / ``optax.adam``.

Gradients are first clipped to a global norm over the trainable tree (weights and scores), as
the reference clips every parameter that has a gradient. The train step never computes a
gradient for a frozen leaf (:meth:`Optimizer.split`): it differentiates the trainable part of
the tree only and passes ``optax.MaskedNode`` in place of the frozen leaves, so they are outside
the clipping and the logged gradient norm. (Full gradients are accepted too: frozen leaves then
get a zero update, but take part in the clipping norm.) Both learning rates share the linear
warm-up then linear decay schedule
``lr(t) = peak * min(t / warmup, (total - t) / (total - warmup))``, clipped at 0.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mvp_jax.choices import OPTIMIZERS
from mvp_jax.errors import UserError
from mvp_jax.tree import path_str

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


# ----------------------------------------------------------------------------------------------
# The reference's AdamW
# ----------------------------------------------------------------------------------------------


class ReferenceAdamWState(NamedTuple):
    count: jax.Array  # int32, updates done so far
    mu: optax.Updates  # first moment m
    nu: optax.Updates  # second moment v


def bias_correction(decay: float, t) -> jax.Array:
    """``1 - decay**t`` to float64 accuracy, in float32 (JAX runs without x64).

    Computed as ``-expm1(t * log(decay))`` with ``log(decay)`` taken in float64 on the host:
    float32 ``1 - decay**t`` loses the digits that cancel (relative error 2e-5 for
    ``decay=0.999``, 2e-4 for 0.9999), this form does not. Measured against numpy float64 for
    ``t = 1 .. 200000`` and ``decay`` in {0.9, 0.98, 0.999, 0.9999}: relative error at most
    3.3e-7 (about 3 float32 ulps); on the step-size factor ``sqrt(1 - b2^t) / (1 - b1^t)``
    (b1=0.9, b2=0.999) at most 2.2e-7.
    """
    return -jnp.expm1(jnp.asarray(t, jnp.float32) * jnp.float32(math.log(decay)))


def reference_adamw(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
                    eps: float = 1e-8, weight_decay: float = 0.0) -> optax.GradientTransformation:
    """The AdamW of ``transformers`` (2020, ``correct_bias=True``), used by the paper's code.

    Per parameter ``p`` with gradient ``g``, at update ``t = 1, 2, ...`` with learning rate
    ``lr = learning_rate(t - 1)`` (a schedule sees the number of updates done before)::

        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        step_size = lr * sqrt(1 - b2**t) / (1 - b1**t)      # bias corrections, float64-accurate
        p = p - step_size * m / (sqrt(v) + eps)
        p = p - lr * weight_decay * p                        # on the already updated p

    It differs from ``optax.adamw`` in where ``eps`` sits (added to ``sqrt(v)``, not to the
    bias-corrected ``sqrt(v_hat)``: ``eps`` weighs ``1/sqrt(1 - b2**t)`` times more in the first
    steps) and in the decay, applied to the updated ``p`` rather than the old one. The
    corrections ``1 - b**t`` come from :func:`bias_correction` (relative error <= 3.3e-7 against
    float64). Returns the change ``p_new - p`` as updates, for ``optax.apply_updates``; needs
    ``params`` when ``weight_decay > 0``. The state is ``(count, m, v)``, float32 moments.
    """
    schedule = learning_rate if callable(learning_rate) else (lambda _: learning_rate)

    def init_fn(params):
        zeros = lambda: jax.tree_util.tree_map(jnp.zeros_like, params)  # noqa: E731
        return ReferenceAdamWState(count=jnp.zeros([], jnp.int32), mu=zeros(), nu=zeros())

    def update_fn(updates, state, params=None):
        if weight_decay and params is None:
            raise ValueError("reference_adamw with weight_decay > 0 needs the params")
        mu = jax.tree_util.tree_map(lambda m, g: b1 * m + (1.0 - b1) * g, state.mu, updates)
        nu = jax.tree_util.tree_map(lambda v, g: b2 * v + (1.0 - b2) * g * g, state.nu, updates)
        t = optax.safe_increment(state.count)
        lr = jnp.asarray(schedule(state.count), jnp.float32)
        step_size = lr * jnp.sqrt(bias_correction(b2, t)) / bias_correction(b1, t)

        def delta(m, v, p=None):
            u = -step_size * (m / (jnp.sqrt(v) + eps))
            if weight_decay:
                u = u - (lr * weight_decay) * (p + u)  # decay of the updated p + u
            return u.astype(m.dtype)

        if weight_decay:
            new = jax.tree_util.tree_map(delta, mu, nu, params)
        else:
            new = jax.tree_util.tree_map(delta, mu, nu)
        return new, ReferenceAdamWState(count=t, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


# ----------------------------------------------------------------------------------------------
# Groups, frozen leaves
# ----------------------------------------------------------------------------------------------


def param_labels(tree: Any, no_decay: Iterable[str] = NO_DECAY, frozen: Iterable[str] = FROZEN,
                 freeze_scores: bool = False):
    """Group label of every leaf of ``{"params", "scores"}``: decay | no_decay | scores | frozen
    (the scores too with ``freeze_scores``).

    ``optax.MaskedNode`` subtrees (frozen leaves left out of a gradient) stay as they are."""
    no_decay = [re.compile(p) for p in no_decay]
    frozen = [re.compile(p) for p in frozen]

    def label(keys, _):
        path = path_str(keys)
        if path.startswith("scores/"):
            return "frozen" if freeze_scores else "scores"
        if any(r.search(path) for r in frozen):
            return "frozen"
        if any(r.search(path) for r in no_decay):
            return "no_decay"
        return "decay"

    return jax.tree_util.tree_map_with_path(label, tree)


@dataclass(frozen=True)
class Optimizer:
    """The optax transformation, the learning-rate schedules of its groups (for logging) and the
    patterns of the frozen parameters.

    ``tx.init`` takes the whole ``{"params", "scores"}`` tree (no state for frozen leaves);
    ``tx.update`` takes gradients of the trainable part (``split``), with ``optax.MaskedNode``
    at the frozen leaves, and returns updates of the same structure."""

    tx: optax.GradientTransformation
    weights_lr: optax.Schedule
    scores_lr: optax.Schedule
    frozen: tuple[str, ...] = FROZEN
    freeze_scores: bool = False

    def learning_rates(self, step) -> dict[str, jax.Array]:
        return {"lr_weights": self.weights_lr(step), "lr_scores": self.scores_lr(step)}

    def trainable(self, tree: Any) -> Any:
        """A tree of Python bools, False at the frozen leaves of ``tree``."""
        labels = param_labels(tree, frozen=self.frozen, freeze_scores=self.freeze_scores)
        return jax.tree_util.tree_map(lambda label: label != "frozen", labels)

    def split(self, tree: Any) -> tuple[Any, Any]:
        """``(trainable, frozen)``: two trees of ``tree``'s structure, each with
        ``optax.MaskedNode()`` in place of the other's leaves (no array is copied)."""
        mask = self.trainable(tree)
        keep = lambda flag: lambda m, x: x if m == flag else optax.MaskedNode()  # noqa: E731
        return (jax.tree_util.tree_map(keep(True), mask, tree),
                jax.tree_util.tree_map(keep(False), mask, tree))

    def merge(self, trainable: Any, frozen: Any) -> Any:
        """The inverse of ``split``: ``merge(*split(tree)) == tree``."""
        is_masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
        return jax.tree_util.tree_map(lambda a, b: b if is_masked(a) else a, trainable, frozen,
                                      is_leaf=is_masked)


def _group_transforms(optimizer: str, weights_lr, scores_lr, weight_decay: float, eps: float):
    if optimizer == "reference_adamw":
        return {"decay": reference_adamw(weights_lr, eps=eps, weight_decay=weight_decay),
                "no_decay": reference_adamw(weights_lr, eps=eps),
                "scores": reference_adamw(scores_lr, eps=eps)}
    return {"decay": optax.adamw(weights_lr, eps=eps, weight_decay=weight_decay),
            "no_decay": optax.adamw(weights_lr, eps=eps, weight_decay=0.0),
            "scores": optax.adam(scores_lr, eps=eps)}


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
    optimizer: str = "reference_adamw",
    freeze_scores: bool = False,
) -> Optimizer:
    """AdamW for weights, Adam with its own LR for scores, nothing for frozen leaves (and for the
    scores with ``freeze_scores``); global-norm clipping over the trainable leaves. ``optimizer``: ``reference_adamw`` (the paper's code,
    :func:`reference_adamw`) or ``adamw`` (``optax.adamw``, ``optax.adam`` for the scores)."""
    if optimizer not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    for name, value in (("learning_rate", learning_rate),
                        ("scores_learning_rate", scores_learning_rate)):
        if not value > 0:
            raise UserError(f"{name}={value!r} must be > 0")
    weights_lr = linear_warmup_decay(learning_rate, warmup_steps, total_steps)
    scores_lr = linear_warmup_decay(scores_learning_rate, warmup_steps, total_steps)
    frozen = tuple(FROZEN if freeze_embeddings else ()) if frozen is None else tuple(frozen)
    groups = optax.multi_transform(
        {**_group_transforms(optimizer, weights_lr, scores_lr, weight_decay, adam_epsilon),
         "frozen": optax.set_to_zero()},
        lambda tree: param_labels(tree, frozen=frozen, freeze_scores=freeze_scores),
    )
    chain = [optax.clip_by_global_norm(max_grad_norm)] if max_grad_norm else []
    return Optimizer(optax.chain(*chain, groups), weights_lr, scores_lr, frozen, freeze_scores)
