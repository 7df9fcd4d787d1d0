"""The names a config chooses from, each defined once, in a module without JAX.

``mvp_jax.config`` checks a config against them before any device work; the modules that
implement them (``structured``, ``train``, ``optim``, ``runner``) import them from here, so a
name cannot be accepted by one and unknown to the other. The method names and the penalties they
need (``methods.NAMES``, ``methods.REGULARIZATIONS``) come from the registry of
:mod:`mvp_jax.pruning.methods`, also free of JAX.
"""

from __future__ import annotations

SCORE_INITS = ("constant", "uniform", "kaiming", "magnitude")  # prune.mask_init
UNIT_SCORE_INITS = ("constant", "uniform", "magnitude")  # ... for heads and neurons
RNG_IMPLS = ("threefry", "rbg", "unsafe_rbg")  # train.rng_impl
OPTIMIZERS = ("reference_adamw", "adamw")  # train.optimizer
DTYPES = ("float32", "bfloat16")  # model.dtype

__all__ = ["DTYPES", "OPTIMIZERS", "RNG_IMPLS", "SCORE_INITS",
           "UNIT_SCORE_INITS"]
