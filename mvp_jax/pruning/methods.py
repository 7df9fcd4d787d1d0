"""Pruning methods: one frozen dataclass per method, and a registry by name.

A method says what it is (class attributes, read by config validation, the train step, plots
and the sweep) and how it masks (pure functions of flat ``{path: array}`` dicts of the prunable
weights and their scores). Importing this module imports no JAX; the mask functions import
the primitives of :mod:`mvp_jax.pruning.binarizers` when called (the layer below; the policy of
:mod:`mvp_jax.pruning.masking` is the layer above). Adding a method is one class plus one registry line::

    @dataclass(frozen=True)
    class Magnitude(TopV):
        name = "magnitude"
        def selection(self, weights, scores):            # what Top-v ranks
            return {p: jnp.abs(w) for p, w in weights.items()}

``prune.initial_threshold`` / ``final_threshold`` mean what ``Method.threshold`` says:
``fraction`` (the fraction ``v`` of weights kept, Top-v), ``sigmoid`` (``tau`` of
``1[sigmoid(S) > tau]``), ``lambda_scale`` (L0: only scales ``lambda``) or ``none``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, ClassVar

from mvp_jax.errors import UserError

Flat = dict  # {path: array}
# What one score (and one mask entry) stands for: a weight, an attention head (its Q, K, V
# columns and attention-output rows), an FFN neuron (its FFN-in column and FFN-out row), or heads
# in attention and neurons in the FFN (mvp_jax.pruning.structured).
GRANULARITIES = ("weight", "head", "neuron", "hybrid")


@dataclass(frozen=True)
class Method:
    """A pruning method, and the base of all: no pruning (dense fine-tuning), no scores, no
    masks, no penalty.

    A subclass sets the class attributes and overrides ``masks`` (and ``penalty``,
    ``draw_scores``) to mask as the method does. Methods hold no state: their functions are
    pure, of flat ``{path: array}`` dicts.

    Attributes:
        name: the registry name (``prune.method``), as in the paper's code.
        label: the name in plots and tables.
        learns_scores: whether the method trains importance scores ``S``, one per weight
            (or per head / neuron).
        per_micro_batch: whether a fresh (random) mask is drawn for every micro-batch.
        threshold: what ``prune.initial_threshold`` / ``final_threshold`` mean: ``fraction``,
            ``sigmoid``, ``lambda_scale`` or ``none`` (module docstring).
        regularization: the penalty it needs (``prune.regularization``), or None.
        global_selection: whether it can take one Top-v over all matrices (``global_topk``).
        granularities: the ``prune.granularity`` values it takes.
    """

    name: ClassVar[str] = "none"
    label: ClassVar[str] = "No pruning"
    learns_scores: ClassVar[bool] = False  # trainable importance scores S, one per weight
    per_micro_batch: ClassVar[bool] = False  # a fresh (random) mask for every micro-batch
    threshold: ClassVar[str] = "none"  # fraction | sigmoid | lambda_scale | none (see above)
    regularization: ClassVar[str | None] = None  # the penalty it needs (prune.regularization)
    global_selection: ClassVar[bool] = False  # one Top-v over all matrices (prune.global_topk)
    granularities: ClassVar[tuple[str, ...]] = ("weight",)  # prune.granularity values it takes

    @property
    def prunes(self) -> bool:
        """Whether the method masks anything (False only when ``threshold`` is ``none``)."""
        return self.threshold != "none"

    def draw_scores(self, weights: Flat) -> Flat:
        """Fixed scores of ``weights``, drawn once per run and never trained.

        Args:
            weights: ``{path: W}``, the selection inputs (kernels, or per-unit magnitudes).

        Returns:
            ``{path: U}`` shaped as ``weights`` (the random control), or ``{}`` for the methods
            that have none.
        """
        return {}

    def masks(self, weights: Flat, scores: Flat, threshold, *, rng=None, train: bool = True,
              global_topk: bool = False) -> Flat:
        """The masks of the prunable ``weights`` at ``threshold``, ``{path: M}``.

        The learned methods pass the gradient on to the scores: straight-through for Top-v and
        the sigmoid threshold (``dL/dS = dL/dM``, Eq. 2), through the relaxation for hard
        concrete. The fixed selections (magnitude, random) pass none. The base (no pruning)
        returns ``{}``.

        Args:
            weights: ``{path: W}``, the selection inputs (kernels, or per-unit magnitudes).
            scores: ``{path: S}`` shaped as ``weights``: learned scores, the fixed ones of
                ``draw_scores``, or ``{}`` for the methods that need none.
            threshold: what ``self.threshold`` says: the fraction ``v`` kept (``fraction``),
                ``tau`` of ``sigmoid(S) > tau`` (``sigmoid``); unused by ``lambda_scale`` and
                ``none``. A Python number or a traced scalar.
            rng: PRNG key of random masks (L0 in training); None otherwise.
            train: False for the deterministic masks of evaluation (L0: no noise).
            global_topk: one Top-v over all paths together instead of one per path (the
                methods with ``global_selection``).

        Returns:
            ``{path: M}`` for every path of ``weights``, ``M`` shaped as ``W``: 0/1 except L0's
            values in ``[0, 1]``; ``{}`` without pruning.

        Raises:
            UserError: a Python ``threshold`` outside ``(0, 1]`` for a Top-v method.
            ValueError: L0 in training without ``rng``.
        """
        return {}

    def penalty(self, scores: Flat):
        """The sparsity penalty ``R(S)``, added to the loss as ``lambda * R(S)``.

        Args:
            scores: the learned scores, a pytree of arrays.

        Returns:
            A scalar: the mean sigmoid of the scores (soft movement, L1) or their expected L0
            (L0); ``0.0`` for the methods without a penalty.
        """
        return 0.0


@dataclass(frozen=True)
class TopV(Method):
    """Top-v of a selection: ``M = Top_v(selection)`` per matrix, or over all matrices together
    (``global_topk``). The selection is learned (straight-through, Eq. 2) or fixed.

    ``Top_v(x)`` is 1 on the ``int(v * n)`` largest of the ``n`` entries of ``x`` and 0
    elsewhere (Eq. 1; ties broken by position), ``v`` the threshold."""

    threshold: ClassVar[str] = "fraction"
    global_selection: ClassVar[bool] = True
    granularities: ClassVar[tuple[str, ...]] = GRANULARITIES

    def selection(self, weights: Flat, scores: Flat) -> Flat:
        """What Top-v ranks, per path: the scores (learned or fixed) unless overridden.

        Args:
            weights: ``{path: W}``, the selection inputs; their paths are the ones ranked.
            scores: ``{path: S}`` with an entry for every path of ``weights``.

        Returns:
            ``{path: array}`` to rank, shaped as ``weights``.
        """
        return {p: scores[p] for p in weights}

    def masks(self, weights, scores, threshold, *, rng=None, train=True, global_topk=False):
        import jax

        from mvp_jax.pruning.binarizers import topk_mask

        selected = self.selection(weights, scores)
        if global_topk:
            masks = topk_mask(selected, threshold)
        else:
            masks = {p: topk_mask(s, threshold) for p, s in selected.items()}
        return masks if self.learns_scores else jax.lax.stop_gradient(masks)


@dataclass(frozen=True)
class Magnitude(TopV):
    """Magnitude pruning: ``M = Top_v(|W|)``, no gradient through the mask."""

    name: ClassVar[str] = "magnitude"
    label: ClassVar[str] = "Magnitude pruning"

    def selection(self, weights, scores):
        """``|W|`` without gradient: magnitude pruning ranks the weights themselves.

        Args:
            weights: ``{path: W}``, the selection inputs.
            scores: unused.

        Returns:
            ``{path: |W|}``.
        """
        import jax
        import jax.numpy as jnp

        return {p: jnp.abs(jax.lax.stop_gradient(w)) for p, w in weights.items()}


@dataclass(frozen=True)
class Movement(TopV):
    """Movement pruning: ``M = Top_v(S)`` of learned scores, straight-through ``dL/dS = dL/dM``."""

    name: ClassVar[str] = "topk"
    label: ClassVar[str] = "Movement pruning"
    learns_scores: ClassVar[bool] = True


@dataclass(frozen=True)
class Random(TopV):
    """The control: ``M = Top_v(U)`` of fixed pseudo-random scores ``U`` (``draw_scores``: drawn
    once, kept with the run's scores and never updated), a mask that knows nothing of the
    weights or the task."""

    name: ClassVar[str] = "random"
    label: ClassVar[str] = "Random pruning (control)"

    def draw_scores(self, weights):
        """``U ~ U(0, 1)`` per path, the same for every run (``binarizers.random_scores``).

        Args:
            weights: ``{path: W}``, the selection inputs (their paths and shapes fix ``U``).

        Returns:
            ``{path: U}``, float32, shaped as ``weights``.
        """
        from mvp_jax.pruning.binarizers import random_scores

        return {p: random_scores(w, p) for p, w in weights.items()}

    def selection(self, weights, scores):
        """The scores kept with the run; drawn here for a caller that keeps none.

        Args:
            weights: ``{path: W}``, the selection inputs.
            scores: ``{path: U}`` of ``draw_scores``, or empty.

        Returns:
            ``scores`` for the paths of ``weights``, or ``draw_scores(weights)`` when empty.
        """
        return super().selection(weights, scores) if scores else self.draw_scores(weights)


@dataclass(frozen=True)
class SoftMovement(Method):
    """Soft movement pruning: ``M = 1[sigmoid(S) > tau]`` (straight-through), penalty
    ``R(S) = mean sigmoid(S)`` (L1 of the sigmoid)."""

    name: ClassVar[str] = "sigmoied_threshold"
    label: ClassVar[str] = "Soft movement pruning"
    learns_scores: ClassVar[bool] = True
    threshold: ClassVar[str] = "sigmoid"
    regularization: ClassVar[str | None] = "l1"
    granularities: ClassVar[tuple[str, ...]] = GRANULARITIES

    def masks(self, weights, scores, threshold, *, rng=None, train=True, global_topk=False):
        from mvp_jax.pruning.binarizers import threshold_mask

        return {p: threshold_mask(scores[p], threshold, sigmoid=True) for p in weights}

    def penalty(self, scores):
        from mvp_jax.pruning.regularizers import l1_sigmoid

        return l1_sigmoid(scores)


@dataclass(frozen=True)
class L0(Method):
    """L0 regularization: hard-concrete masks (a fresh sample per micro-batch in training, the
    deterministic mask in evaluation), penalty the expected L0 (Louizos et al. 2017).

    ``M = min(1, max(0, s (r - l) + l))``, ``l = -0.1``, ``r = 1.1``, with
    ``s = sigmoid((log u - log(1 - u) + S) / beta)``, ``u ~ U(0.0001, 0.9999)``,
    ``beta = 2/3`` in
    training and ``s = sigmoid(S)`` in evaluation; ``R(S) = mean sigmoid(S - beta log(-l/r))``.
    The threshold only scales ``lambda``."""

    name: ClassVar[str] = "l0"
    label: ClassVar[str] = "L0 regularization"
    learns_scores: ClassVar[bool] = True
    per_micro_batch: ClassVar[bool] = True
    threshold: ClassVar[str] = "lambda_scale"
    regularization: ClassVar[str | None] = "l0"
    granularities: ClassVar[tuple[str, ...]] = GRANULARITIES

    def masks(self, weights, scores, threshold, *, rng=None, train=True, global_topk=False):
        import jax

        from mvp_jax.pruning.binarizers import hard_concrete_mask

        if train and rng is None:
            raise ValueError("l0 masks: a PRNG key is required when train=True")
        keys = jax.random.split(rng, len(weights)) if train else [None] * len(weights)
        return {p: hard_concrete_mask(scores[p], key, train) for p, key in zip(weights, keys)}

    def penalty(self, scores):
        from mvp_jax.pruning.regularizers import expected_l0

        return expected_l0(scores)


REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method(), Magnitude(), Movement(), SoftMovement(), L0(), Random(),
)}
NAMES = tuple(REGISTRY)
# prune.regularization: the penalties the methods need, in registry order
REGULARIZATIONS = tuple(dict.fromkeys(m.regularization for m in REGISTRY.values() if m.regularization))
# Methods are named as in the paper's code; these plain names only make "did you mean" hints.
PLAIN_NAMES = {"dense": "none", "movement": "topk", "soft_movement": "sigmoied_threshold"}


def suggest(name: str) -> str | None:
    """The registered name closest to ``name`` (or the one its plain name stands for).

    Args:
        name: a method name that may be misspelt or plain (``movement``, ``dense`` ...).

    Returns:
        The registered name, or None when none is close.
    """
    if name in PLAIN_NAMES:
        return PLAIN_NAMES[name]
    close = difflib.get_close_matches(str(name), list(REGISTRY), n=1, cutoff=0.5)
    return close[0] if close else None


def get(method: str | Method) -> Method:
    """The method registered as ``method``; a ``Method`` is returned as is.

    Args:
        method: a registry name (``prune.method``) or a ``Method``.

    Returns:
        The ``Method``.

    Raises:
        UserError: an unknown name (with the closest name as a hint).
    """
    if isinstance(method, Method):
        return method
    if method not in REGISTRY:
        guess = suggest(method)
        hint = f"; did you mean '{guess}'?" if guess else ""
        raise UserError(f"unknown pruning method {method!r}{hint} "
                        f"(choices: {', '.join(REGISTRY)})")
    return REGISTRY[method]


def learns_scores(method: str | Any) -> bool:
    """Whether ``method`` trains importance scores (``get(method).learns_scores``).

    Args:
        method: a registry name or a ``Method``.

    Returns:
        True for movement, soft movement and L0.

    Raises:
        UserError: an unknown name.
    """
    return get(method).learns_scores
