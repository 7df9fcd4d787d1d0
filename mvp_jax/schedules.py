"""Schedules of the pruning threshold and of the regularization weight (paper Section 3).

Both are pure functions of a (possibly traced) step, so the changing sparsity never recompiles.
"""

from __future__ import annotations

import jax.numpy as jnp


def threshold_schedule(
    step,
    *,
    total_steps: int,
    warmup_steps: int,
    initial_threshold: float,
    final_threshold: float,
    initial_warmup: float = 1,
    final_warmup: float = 2,
):
    """Cubic schedule with an initial and a final warm-up, as the paper's reference code.

    With ``a = initial_warmup * warmup_steps`` and ``b = final_warmup * warmup_steps``::

        t(step) = initial_threshold                                    if step <= a
                = final_threshold                                      if step > total - b
                = final + (initial - final) * (1 - (step - a) / (total - a - b)) ** 3   else
    """
    step = jnp.asarray(step, jnp.float32)
    start = initial_warmup * warmup_steps
    span = total_steps - (initial_warmup + final_warmup) * warmup_steps
    progress = (step - start) / max(span, 1e-12)
    cubic = final_threshold + (initial_threshold - final_threshold) * (1.0 - progress) ** 3
    return jnp.where(
        step <= start,
        jnp.float32(initial_threshold),
        jnp.where(step > total_steps - final_warmup * warmup_steps, jnp.float32(final_threshold), cubic),
    ).astype(jnp.float32)


def regularization_lambda(threshold, *, final_lambda: float, final_threshold: float):
    """The penalty weight tied to the threshold: ``lambda = final_lambda * t / final_threshold``."""
    return final_lambda * jnp.asarray(threshold, jnp.float32) / final_threshold


def pruning_threshold(prune, step, *, total_steps: int, warmup_steps: int):
    """The threshold at ``step`` of the ``prune`` config section's cubic schedule; warm-ups are
    ``prune.initial_warmup`` / ``prune.final_warmup`` times ``warmup_steps``."""
    return threshold_schedule(
        step, total_steps=total_steps, warmup_steps=warmup_steps,
        initial_threshold=float(prune.initial_threshold),
        final_threshold=float(prune.final_threshold),
        initial_warmup=prune.initial_warmup, final_warmup=prune.final_warmup)


def penalty_weight(prune, threshold):
    """``lambda`` of the ``prune`` section at ``threshold`` (0 without a regularization)."""
    if not prune.regularization:
        return jnp.float32(0.0)
    return regularization_lambda(threshold, final_lambda=float(prune.final_lambda),
                                 final_threshold=float(prune.final_threshold))
