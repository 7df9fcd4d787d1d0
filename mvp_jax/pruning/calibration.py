"""Lambda calibration for the threshold methods (soft movement, L0).

Soft movement (``sigmoid(S) > tau`` plus ``lambda * mean sigmoid(S)``) and L0 regularization
(hard-concrete gates plus ``lambda * E[L0]``) have no sparsity target: the penalty's strength
lambda sets how many weights a run keeps, as in the paper, which reports their points at the
sparsity they reached. To compare them with the Top-v methods at a target remaining fraction
``v``, lambda is searched for with a few complete runs:

    remaining(lambda) is decreasing, and on the runs measured close to a logistic in log lambda
    (all kept below some lambda, a steep fall, a tail): logit r = a - k log lambda. With trials
    on both sides of v, interpolate log lambda in logit r within the tightest bracket
    (safeguarded: the bracket shrinks every step); with trials on one side only, step from the
    outermost trial along the slope of the two nearest (k = 1 until two differ), by at most a
    factor 30 in lambda. See ``next_lambda``.

A search stops at the first trial within ``tolerance`` of the target (absolute: 0.01 is one
point of remaining weights), after ``max_trials`` runs, or when the next lambda repeats one of
its own trials.
Trials for other targets of the same method count as history: they cost nothing and place the
first step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import NamedTuple


class Trial(NamedTuple):
    """One complete run of a lambda search: its lambda and the fraction of the prunable weights
    it kept (counted on the exported model)."""

    lam: float
    remaining: float


def check_target(target: float) -> float:
    """``target`` as a float in (0, 1] (a remaining fraction), or ValueError naming it."""
    t = float(target)
    if not (0.0 < t <= 1.0) or math.isnan(t):
        raise ValueError(f"target remaining fraction {target!r} is outside (0, 1]")
    return t


def _logit(r: float) -> float:
    r = min(max(r, 1e-4), 1.0 - 1e-4)
    return math.log(r / (1.0 - r))


def next_lambda(trials: Iterable[tuple[float, float]], target: float, default: float,
                inner: float = 0.15, max_factor: float = 30.0) -> float:
    """Next lambda to try for ``target`` from earlier (lambda, remaining) trials; ``default``
    without trials. A secant step on y = logit(remaining) against x = log(lambda):

    - trials on both sides of the target: interpolate in the tightest bracket; when one end
      is saturated (under 0.1% or over 99.9% kept, where logit says little) the step is kept
      inside the bracket's middle (1 - 2 ``inner``), so the bracket shrinks by ``inner`` at
      least (else by 2%: an end close to the target is trusted);
    - on one side only: step from the trial with the largest lambda (all kept too much) or the
      smallest (all too little) along the slope of the two trials nearest the target (-1
      until two differ; its size clipped to [0.3, 10]), by at most ``max_factor`` in lambda.
    """
    trials = [(float(lam), float(r)) for lam, r in trials]
    pts = sorted((math.log(lam), _logit(r)) for lam, r in trials)
    if not pts:
        return default
    y = _logit(target)
    lo = [p for p in pts if p[1] >= y]  # kept at least the target: lambda too small
    hi = [p for p in pts if p[1] < y]
    if lo and hi:
        (x0, y0), (x1, y1) = max(lo, key=lambda p: p[0]), min(hi, key=lambda p: p[0])
        if x1 > x0:
            f = (y0 - y) / (y0 - y1) if y0 != y1 else 0.5
            saturated = max(y0, -y1) >= _logit(0.999)
            g = inner if saturated else 0.02
            return math.exp(x0 + min(max(f, g), 1.0 - g) * (x1 - x0))
        return math.exp(0.5 * (x0 + x1))  # not monotone here: bisect
    near = sorted(pts, key=lambda p: abs(p[1] - y))
    slope = -1.0  # d logit(remaining) / d log(lambda), a guess until two trials differ
    if len(near) >= 2 and near[0][0] != near[1][0] and near[0][1] != near[1][1]:
        slope = (near[0][1] - near[1][1]) / (near[0][0] - near[1][0])
        slope = -min(max(-slope, 0.3), 10.0)
    x0, y0 = max(pts) if lo else min(pts)
    step = max(min((y - y0) / slope, math.log(max_factor)), -math.log(max_factor))
    return math.exp(x0 + step)


def on_target(remaining: float, target: float, tolerance: float | None = None) -> bool:
    """Whether a trial that kept ``remaining`` ends a search for ``target``: within
    ``tolerance`` of it (absolute fraction), or, without one, within a factor of 1.25 of it
    (``0.8 < remaining / target < 1.25``)."""
    if tolerance:
        return abs(remaining - target) <= tolerance + 1e-12
    return abs(math.log(max(remaining, 1e-6) / target)) < math.log(1.25)


def closest(trials: Iterable[Trial], target: float) -> Trial:
    """The trial nearest ``target`` in |log(remaining / target)|."""
    return min(trials, key=lambda t: abs(math.log(max(t.remaining, 1e-6) / target)))


def calibrate_lambda(run: Callable[[float], float], target: float, start: float, *,
                     tolerance: float | None = 0.01, max_trials: int = 5,
                     history: Iterable[tuple[float, float]] = (),
                     hints: Iterable[tuple[float, float]] = (),
                     round_to: int = 4) -> list[Trial]:
    """Search the lambda whose run keeps ``target`` of the prunable weights.

    ``run(lam)`` trains with that lambda and returns the remaining fraction. ``history``:
    earlier (lambda, remaining) trials for this target (an interrupted search resumes from
    them; one on target ends it). ``hints``: trials of the same method and setting for other
    targets; they place the steps but end nothing. Lambdas are rounded to ``round_to`` significant
    digits (run names carry them). Returns the trials run here, in order; the search ends at
    the first within ``tolerance`` (see ``on_target``), after ``max_trials``, or when the next
    lambda repeats one of its own trials.
    """
    target = check_target(target)
    if max_trials < 1:
        raise ValueError(f"a lambda search needs at least one trial, got max_trials={max_trials}")
    if start <= 0:
        raise ValueError(f"the first lambda must be positive, got {start!r}")
    mine = [Trial(float(lam), float(r)) for lam, r in history]
    others = [Trial(float(lam), float(r)) for lam, r in hints]
    done: list[Trial] = []
    for _ in range(max_trials):
        if mine and on_target(closest(mine, target).remaining, target, tolerance):
            break
        known = mine + others
        lam = float(f"{next_lambda(known, target, start):.{round_to}g}")
        if any(math.isclose(lam, t.lam, rel_tol=1e-9) for t in mine):
            break  # (a hint's lambda is run again: this target gets a trial of its own)
        trial = Trial(lam, float(run(lam)))
        done.append(trial)
        mine.append(trial)
    return done
