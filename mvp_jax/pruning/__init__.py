"""Pruning: what is kept, as pure functions of weights, scores and the step.

The layer below training and export. ``binarizers`` turns scores into masks (Top-v, threshold,
hard concrete) with straight-through gradients (``jax.custom_vjp``); ``regularizers`` gives the
penalties (L1 of sigmoid scores, expected L0); ``methods`` is the registry of the paper's methods
(one frozen class each, importable without JAX); ``structured`` scores whole heads and FFN
neurons; ``schedules`` gives the cubic threshold and lambda at a step; ``masking`` applies a
method to a model's prunable matrices; ``calibration`` searches the penalty weight for a target
sparsity; ``pruner`` reads a pruning config once and answers all of these for one model.
"""

from mvp_jax.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "topk_mask": "binarizers", "threshold_mask": "binarizers",
    "hard_concrete_mask": "binarizers", "straight_through": "binarizers",
    "l1_sigmoid": "regularizers", "expected_l0": "regularizers",
    "Method": "methods", "REGISTRY": "methods",
    "threshold_schedule": "schedules", "regularization_lambda": "schedules",
    "compute_masks": "masking", "selection_masks": "masking",
    "Pruner": "pruner",
    "apply_masks": "masking", "multiply_masks": "masking", "remaining_fraction": "masking",
    "calibrate_lambda": "calibration",
})
