"""The names a config chooses from, each defined once, in a module without JAX.

``mvp_jax.config`` checks a config against them before any device work; the modules that
implement them (``structured``, ``regularizers``, ``train``, ``optim``, ``runner``) import them
from here, so a name cannot be accepted by one and unknown to the other.
"""

from __future__ import annotations

from mvp_jax import methods

SCORE_INITS = ("constant", "uniform", "kaiming", "magnitude")  # prune.mask_init
UNIT_SCORE_INITS = ("constant", "uniform", "magnitude")  # ... for heads and neurons
# prune.regularization: the penalties the methods need, in registry order
REGULARIZATIONS = tuple(dict.fromkeys(
    m.regularization for m in methods.REGISTRY.values() if m.regularization))
RNG_IMPLS = ("threefry", "rbg", "unsafe_rbg")  # train.rng_impl
OPTIMIZERS = ("reference_adamw", "adamw")  # train.optimizer
DTYPES = ("float32", "bfloat16")  # model.dtype

__all__ = ["DTYPES", "OPTIMIZERS", "REGULARIZATIONS", "RNG_IMPLS", "SCORE_INITS",
           "UNIT_SCORE_INITS"]
