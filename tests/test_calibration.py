"""The lambda calibration of soft movement and L0 (``mvp_jax.pruning.calibration``): the secant search
reaches a target remaining fraction where the answer is known (a power law, and a tiny BERT
whose target is what a known lambda keeps), resumes from earlier trials, and rejects bad input.
"""

import math

import pytest

from mvp_jax.pruning.calibration import (
    Trial,
    calibrate_lambda,
    check_target,
    next_lambda,
    on_target,
)


def power_law(c=50.0, k=0.8):
    """remaining(lambda) = min(1, (lambda / c)^-k): the answer for target v is c v^(-1/k)."""
    calls = []

    def run(lam):
        calls.append(lam)
        return min(1.0, (lam / c) ** -k)

    return run, calls


@pytest.mark.parametrize("target", [0.5, 0.1, 0.03])
def test_power_law_converges_to_the_known_lambda(target):
    run, calls = power_law()
    trials = calibrate_lambda(run, target, start=400.0, tolerance=0.01, max_trials=5)
    assert trials and len(trials) == len(calls) <= 4
    assert abs(trials[-1].remaining - target) <= 0.01
    assert all(not on_target(t.remaining, target, 0.01) for t in trials[:-1])  # stops at once
    exact = 50.0 * target ** (-1 / 0.8)
    assert trials[-1].lam == pytest.approx(exact, rel=0.01 / 0.8 / target + 1e-3)


@pytest.mark.parametrize("steepness", [1.0, 4.0, 16.0])
@pytest.mark.parametrize("target", [0.5, 0.1, 0.03])
def test_a_logistic_fall_is_reached_by_secant_steps_not_luck(target, steepness):
    """remaining = 1 / (1 + (lambda / 0.05)^k), the shape of the measured runs (everything kept
    below some lambda, a steep fall): the logit secant is exact on it, so even a tight
    tolerance (0.1 point) and a start 8x too large are reached within 6 trials."""
    run = lambda lam: 1.0 / (1.0 + (lam / 0.05) ** steepness)  # noqa: E731
    trials = calibrate_lambda(run, target, start=0.4, tolerance=0.001, max_trials=8)
    assert abs(trials[-1].remaining - target) <= 0.001 and len(trials) <= 6
    exact = 0.05 * ((1 - target) / target) ** (1 / steepness)
    assert trials[-1].lam == pytest.approx(exact, rel=0.01)


def test_history_resumes_and_hints_only_guide():
    run, calls = power_law()
    first = calibrate_lambda(run, 0.1, start=400.0, tolerance=0.01, max_trials=1)
    assert len(first) == 1 and not on_target(first[0].remaining, 0.1, 0.01)
    # resumed with the first trial as history: no trial repeated, the search goes on
    rest = calibrate_lambda(run, 0.1, start=400.0, tolerance=0.01, max_trials=5, history=first)
    assert rest and first[0].lam not in [t.lam for t in rest]
    assert abs(rest[-1].remaining - 0.1) <= 0.01
    # a finished search is not run again
    assert calibrate_lambda(run, 0.1, start=400.0, history=first + rest) == []
    # a trial for another target that lands here only guides: this target gets its own run,
    # at the hint's lambda (not at the start), and stops there
    near = Trial(rest[-1].lam, rest[-1].remaining)
    again = calibrate_lambda(run, 0.1, start=1.0, max_trials=3, hints=[near])
    assert len(again) == 1 and abs(again[0].remaining - 0.1) <= 0.01
    assert again[0].lam == pytest.approx(near.lam, rel=0.1)


def test_bad_input_is_rejected():
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="outside \\(0, 1\\]"):
            check_target(bad)
    assert check_target(1) == 1.0
    with pytest.raises(ValueError, match="at least one trial"):
        calibrate_lambda(lambda lam: 0.5, 0.5, start=1.0, max_trials=0)
    with pytest.raises(ValueError, match="positive"):
        calibrate_lambda(lambda lam: 0.5, 0.5, start=0.0)


def test_next_lambda_slope_is_clipped():
    # two trials with an absurd slope: the step is bounded to a factor 30
    lam = next_lambda([(1.0, 0.9), (1.0001, 0.1)], 0.001, 1.0)
    assert 1.0 < lam <= 30.0 * 1.0001 + 1e-9
    assert math.isfinite(next_lambda([(5.0, 1.0), (10.0, 1.0)], 0.5, 1.0))


def test_l0_on_a_tiny_bert_reaches_what_a_known_lambda_keeps(tmp_path, shared_data, tiny_bert):
    """L0 regularization on the tiny BERT: a run at lambda* = 0.06 keeps some fraction v*
    (about half: its random weights give small task gradients, so a small lambda prunes); a
    search for v* from a lambda 3x too small lands within 1 point of it (every trial a
    complete run, remaining weights counted as the export's). Measured on this model:
    lambda 0.03 keeps 99.5%, 0.05-0.07 about 49-53%, 0.1 keeps 4%."""
    from mvp_jax.config import load_config
    from mvp_jax.training.runner import fine_prune

    def run(lam, name=None):
        cfg = load_config(None, [
            f"model.name={tiny_bert}", f"task.data_dir={shared_data / 'glue' / 'SST-2'}",
            "task.name=sst2", "task.max_seq_length=32", "data.max_train_samples=64",
            "data.max_eval_samples=16", "train.batch_size=16", "train.max_steps=12",
            "train.warmup_steps=1", "train.learning_rate=1e-4", "train.scores_learning_rate=1.5",
            "train.log_every=12", "prune.method=l0", "prune.initial_threshold=1.0",
            "prune.final_threshold=1.0", "prune.initial_warmup=1", "prune.final_warmup=1",
            "prune.mask_init=constant", "prune.mask_scale=2.197", "prune.regularization=l0",
            f"prune.final_lambda={lam}"])
        out = fine_prune(cfg, str(tmp_path / (name or f"lam{lam:g}")), progress=False)
        return out["remaining"] / out["prunable"]

    target = run(0.06, "reference")
    assert 0.05 < target < 0.95  # a case where lambda matters
    trials = calibrate_lambda(run, target, start=0.02, tolerance=0.01, max_trials=5)
    assert trials[0].lam == 0.02 and trials[0].remaining > target + 0.01
    assert abs(trials[-1].remaining - target) <= 0.01
    assert len(trials) <= 5
