"""The ``prune`` config section read once, for one model: ``Pruner``.

Training, evaluation, export and the plots ask a ``Pruner`` for the scores a run starts from,
the threshold and penalty weight at a step, the step's masks and the final masks, instead of
reading ``prune.*`` (method, patterns, granularity, warm-ups ...) and the model's head count
themselves. It is built by ``Pruner.from_config(prune, module, total_steps=..., warmup_steps=...)``
(as jaxpruner's ``create_updater_from_config`` builds an updater) and is a frozen dataclass of
plain values, so a jitted function may close over it. Every method is pure: the masks are those
of :mod:`mvp_jax.pruning.masking` with the section's keywords filled in.

    pruner = Pruner.from_config(cfg.prune, pre.module, total_steps=1000, warmup_steps=100)
    scores = pruner.initial_scores(pre.params, jax.random.PRNGKey(1))
    t = pruner.threshold(step)                       # cubic schedule, traced step is fine
    masks = pruner.masks(params, scores, t)          # {kernel path: M}, straight-through
    loss = task_loss + pruner.penalty_weight(t) * pruner.penalty(scores)
    final = pruner.final_masks(params, scores)       # what evaluation and export apply
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from mvp_jax import tree
from mvp_jax.models.layout import PRUNABLE as DEFAULT_PRUNABLE
from mvp_jax.pruning import masking, methods, schedules, structured

PyTree = Any


def heads_of(module: Any) -> int | None:
    """The attention heads per layer of a ``mvp_jax.models`` module (None for other modules):
    what head granularity groups the Q, K, V columns by.

    Args:
        module: the model (its ``spec.num_attention_heads`` is read).

    Returns:
        The head count, or None.
    """
    return getattr(getattr(module, "spec", None), "num_attention_heads", None)


@dataclasses.dataclass(frozen=True)
class Pruner:
    """A pruning recipe bound to one model.

    Attributes:
        method: the ``mvp_jax.pruning.methods`` object of ``prune.method``.
        patterns: regexes of the prunable kernel paths (``prune.patterns`` or the default).
        granularity: what one score stands for: ``weight``, ``head``, ``neuron`` or ``hybrid``.
        num_heads: the model's attention heads per layer (head and hybrid granularity).
        global_topk: one Top-v over all matrices instead of one per matrix.
        global_topk_frequency: steps between recomputations of the global Top-v value.
        initial_threshold, final_threshold: the schedule's ends (what they mean:
            ``method.threshold``).
        initial_warmup, final_warmup: the schedule's flat ends, in units of ``warmup_steps``.
        total_steps, warmup_steps: the run's length and warm-up (0 total: no schedule).
        regularization: the penalty in use (``l1``, ``l0`` or None).
        final_lambda: the penalty weight at ``final_threshold``.
        mask_init, mask_scale: how learned scores start (``structured.init_scores``).
    """

    method: methods.Method
    patterns: tuple[str, ...] = DEFAULT_PRUNABLE
    granularity: str = "weight"
    num_heads: int | None = None
    global_topk: bool = False
    global_topk_frequency: int = 1
    initial_threshold: float = 1.0
    final_threshold: float = 1.0
    initial_warmup: float = 1.0
    final_warmup: float = 2.0
    total_steps: int = 0
    warmup_steps: int = 0
    regularization: str | None = None
    final_lambda: float = 0.0
    mask_init: str = "constant"
    mask_scale: float = 0.0

    @classmethod
    def from_config(cls, prune: Any, module: Any = None, *, num_heads: int | None = None,
                    total_steps: int = 0, warmup_steps: int = 0) -> Pruner:
        """The ``Pruner`` of a ``prune`` config section (``config.PruneConfig``).

        Args:
            prune: the section; read here and nowhere else.
            module: the model (its head count is read from ``module.spec``), or None.
            num_heads: the head count, when there is no module to read it from.
            total_steps: the run's optimizer steps (the threshold schedule's length).
            warmup_steps: the learning-rate warm-up, the unit of the schedule's warm-ups.

        Returns:
            A frozen ``Pruner``.
        """
        return cls(
            method=methods.get(prune.method),
            patterns=tuple(prune.patterns) if prune.patterns else DEFAULT_PRUNABLE,
            granularity=prune.granularity,
            num_heads=heads_of(module) if module is not None else num_heads,
            global_topk=bool(prune.global_topk),
            global_topk_frequency=int(prune.global_topk_frequency),
            initial_threshold=float(prune.initial_threshold),
            final_threshold=float(prune.final_threshold),
            initial_warmup=prune.initial_warmup, final_warmup=prune.final_warmup,
            total_steps=int(total_steps), warmup_steps=int(warmup_steps),
            regularization=prune.regularization, final_lambda=float(prune.final_lambda),
            mask_init=prune.mask_init, mask_scale=prune.mask_scale)

    # -- what the method is ----------------------------------------------------------------

    @property
    def prunes(self) -> bool:
        """Whether any mask is applied (False for dense fine-tuning)."""
        return self.method.prunes

    @property
    def penalized(self) -> bool:
        """Whether the loss carries the method's penalty (a regularization is set and the
        method has one)."""
        return bool(self.method.regularization and self.regularization)

    @property
    def structured(self) -> bool:
        """Whether scores stand for whole heads or neurons (a compact model can be cut out)."""
        return self.granularity != "weight"

    @property
    def cached_topk(self) -> bool:
        """Whether the global Top-v value is recomputed only every ``global_topk_frequency``
        steps (the step's state carries it between)."""
        return (self.global_topk and self.global_topk_frequency > 1
                and isinstance(self.method, methods.TopV))

    # -- scores and schedules --------------------------------------------------------------

    def initial_scores(self, params: PyTree, rng: jax.Array | None = None) -> PyTree:
        """The scores a run starts from: learned ones as ``mask_init`` / ``mask_scale`` say
        (``structured.init_scores``), a method's fixed ones (the random control's, drawn once
        here and never updated), or ``{}``.

        Args:
            params: the model's parameters (the prunable kernels give the scores' shapes).
            rng: the key of random initializations.

        Returns:
            A pytree of scores mirroring the selection paths (kernels, or heads and neurons).
        """
        if self.method.learns_scores:
            return structured.init_scores(params, self.mask_init, self.mask_scale, rng=rng,
                                          patterns=self.patterns, granularity=self.granularity,
                                          num_heads=self.num_heads)
        return tree.unflatten(self.method.draw_scores(self.selection_inputs(params)))

    def threshold(self, step) -> jax.Array:
        """The threshold at ``step`` (a traced step is fine): the cubic schedule
        ``schedules.threshold_schedule`` from ``initial_threshold`` to ``final_threshold`` over
        ``total_steps``, flat for ``initial_warmup * warmup_steps`` steps at the start and
        ``final_warmup * warmup_steps`` at the end.

        Args:
            step: the optimizer step, a Python number or a (traced) integer scalar.

        Returns:
            The threshold, a float32 scalar.
        """
        return schedules.threshold_schedule(
            step, total_steps=self.total_steps, warmup_steps=self.warmup_steps,
            initial_threshold=self.initial_threshold, final_threshold=self.final_threshold,
            initial_warmup=self.initial_warmup, final_warmup=self.final_warmup)

    def penalty_weight(self, threshold) -> jax.Array:
        """``lambda = final_lambda * t / final_threshold`` at threshold ``t`` (0 without a
        regularization).

        Args:
            threshold: ``t``, the threshold at the step (``threshold``), maybe traced.

        Returns:
            ``lambda``, a float32 scalar.
        """
        if not self.regularization:
            return jax.numpy.float32(0.0)
        return schedules.regularization_lambda(threshold, final_lambda=self.final_lambda,
                                               final_threshold=self.final_threshold)

    def penalty(self, scores: PyTree) -> jax.Array:
        """The method's penalty of ``scores`` (L1 of sigmoids, expected L0), before ``lambda``.

        Args:
            scores: the learned scores, a pytree (``initial_scores``, then trained).

        Returns:
            ``R(S)``, a scalar (0 for a method without a penalty).
        """
        return self.method.penalty(scores)

    # -- masks -----------------------------------------------------------------------------

    def selection_inputs(self, params: PyTree) -> dict[str, jax.Array]:
        """What one score stands for, ``{selection path: array}`` (kernels, or per-head and
        per-neuron sums): the inputs of the method's Top-v.

        Args:
            params: the model's parameters, a pytree.

        Returns:
            ``{selection path: array}`` (``structured.selection_inputs``).
        """
        return structured.selection_inputs(params, self.patterns, self.granularity,
                                           self.num_heads)

    def selection_masks(self, params: PyTree, scores: PyTree | None, threshold, *,
                        rng: jax.Array | None = None, train: bool = True) -> dict[str, jax.Array]:
        """The method's masks of the selection paths at ``threshold``, ``{path: M}``
        (``masking.selection_masks``); ``train`` False: deterministic (no hard-concrete noise).

        Args:
            params: the model's parameters, a pytree.
            scores: the scores, a pytree mirroring the selection paths, or None.
            threshold: the threshold (``threshold(step)``), a Python number or traced.
            rng: PRNG key of random masks (L0 in training).
            train: False for deterministic masks.

        Returns:
            ``{selection path: M}``.
        """
        return masking.selection_masks(
            params, scores, method=self.method, threshold=threshold, rng=rng, train=train,
            global_topk=self.global_topk, patterns=self.patterns, granularity=self.granularity,
            num_heads=self.num_heads)

    def masks(self, params: PyTree, scores: PyTree | None, threshold, *,
              rng: jax.Array | None = None, train: bool = True) -> dict[str, jax.Array]:
        """The masks of the prunable kernels at ``threshold``, ``{kernel path: M}``, with the
        method's straight-through gradient to the scores.

        Args:
            params, scores, threshold, rng, train: as for ``selection_masks``.

        Returns:
            ``{kernel path: M}``, each ``M`` shaped as its kernel.
        """
        return structured.to_weight_masks(
            self.selection_masks(params, scores, threshold, rng=rng, train=train), params)

    def final_masks(self, params: PyTree, scores: PyTree | None) -> dict[str, jax.Array]:
        """The deterministic masks at ``final_threshold`` (a Python float: exact Top-v counts),
        as evaluation and export apply them.

        Args:
            params: the model's parameters, a pytree.
            scores: the trained scores, or None.

        Returns:
            ``{kernel path: M}``.
        """
        return self.masks(params, scores, self.final_threshold, train=False)

    def pruned(self, params: PyTree, scores: PyTree | None) -> PyTree:
        """``params`` with every prunable kernel ``W`` replaced by ``W * M`` at the final
        masks; ``params`` themselves without pruning.

        Args:
            params: the model's parameters, a pytree.
            scores: the trained scores, or None.

        Returns:
            A pytree of the structure of ``params``.
        """
        if not self.prunes:
            return params
        return masking.multiply_masks(params, self.final_masks(params, scores))
