"""mvp-jax: movement pruning (Sanh, Wolf & Rush, NeurIPS 2020) and its baselines in JAX/Flax."""

__version__ = "0.1.0"
