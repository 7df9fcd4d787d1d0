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
