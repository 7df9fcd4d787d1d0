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

    For the Top-v methods the threshold is the fraction of weights kept, so the sparsity rises
    fast at first and slowly near the end (Zhu & Gupta 2018).

    Args:
        step: the optimizer step, a Python number or a (traced) integer scalar.
        total_steps: the run's optimizer steps.
        warmup_steps: the learning-rate warm-up, the unit of the two warm-ups below.
        initial_threshold: the threshold held during the initial warm-up.
        final_threshold: the threshold reached at ``total - b`` and held to the end.
        initial_warmup: the initial warm-up ``a``, in units of ``warmup_steps``.
        final_warmup: the final warm-up ``b``, in units of ``warmup_steps``.

    Returns:
        The threshold at ``step``, a float32 scalar.
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
    """The penalty weight tied to the threshold: ``lambda = final_lambda * t / final_threshold``.

    So ``lambda`` follows the cubic threshold schedule and reaches ``final_lambda`` with it.

    Args:
        threshold: the threshold ``t`` at the step (``threshold_schedule``), maybe traced.
        final_lambda: the penalty weight at ``final_threshold``.
        final_threshold: the schedule's final threshold (non-zero).

    Returns:
        ``lambda``, a float32 scalar.
    """
    return final_lambda * jnp.asarray(threshold, jnp.float32) / final_threshold
