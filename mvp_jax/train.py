"""Fine-pruning: the train state, one jit-compiled train step and eval step, and the loop.

One step, as data (DESIGN.md)::

    t, lam  = threshold_schedule(step), lambda(t)            # traced: no recompilation
    masks   = compute_masks(params, scores, method, t, rng)  # straight-through where learned
    logits  = model.apply(params * masks, batch)
    loss    = task_loss [+ distillation] + lam * R(scores)
    grads   = grad(loss) wrt the trainable leaves only           # frozen embeddings: none
    update  = optax(clip, weights AdamW, scores own LR)          # the reference's AdamW

Gradient accumulation runs ``accum`` micro-batches through a ``lax.scan`` inside the same step,
so ``state.step`` counts optimizer updates and the schedules see the same clock as the reference.
Masks that do not depend on the micro-batch (magnitude, topk, sigmoied_threshold) are computed
once per step, before the scan, and enter each micro-batch through the straight-through
estimator; only L0 draws a fresh hard-concrete mask per micro-batch.

Global Top-v with ``global_topk_frequency = N > 1`` (the reference recomputes every 25 steps):
on steps ``step % N == 0`` the exact k-th largest value ``c`` of all selected scores is computed
(bisection, counts only) and kept in ``TrainState.topk_value``; on every step the mask is
``S >= c`` (``|W| >= c`` for magnitude). So the kept count is ``int(v * size)`` at recompute steps
up to entries tied with ``c`` (all kept; no exact-count tie breaking), and drifts with the scores
in between while ``v`` follows its schedule only at recompute steps. With ``N = 1`` the masks are
the exact-count Top-v of ``masking`` on every step. Evaluation and export always use the exact
final Top-v.

``jit_train_step`` / ``jit_eval_step`` compile the steps for a device mesh (``mvp_jax.sharding``):
state in the layout of the partition rules, batches split on ``"data"``, the state donated.
Batches may come in a few sequence lengths (length buckets, ``mvp_jax.data.batching``): each
length compiles once. Evaluation is an ``EvalStep``: ``W * M`` once per evaluation, then the plain
model per batch.

``TrainState.rng`` is raw uint32 key data of ``TrainState.rng_impl`` (``train.rng_impl``:
threefry, rbg, unsafe_rbg), so checkpoints and shardings treat it as any array;
``state.key()`` is the typed key to split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from mvp_jax import masking, regularizers
from mvp_jax import sharding as shd
from mvp_jax.distill import distillation_loss
from mvp_jax.errors import UserError
from mvp_jax.optim import Optimizer
from mvp_jax.schedules import regularization_lambda, threshold_schedule

PyTree = Any
LEARNED = ("topk", "sigmoied_threshold", "l0")


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes; a pytree, so it is checkpointed and sharded whole."""

    step: jax.Array
    params: PyTree
    scores: PyTree  # {} for methods without learned scores
    opt_state: PyTree
    rng: jax.Array  # raw uint32 key data of ``rng_impl`` (checkpointed and placed as any array)
    topk_value: jax.Array  # cached global Top-v value (global_topk_frequency > 1), float32
    rng_impl: str = flax.struct.field(pytree_node=False, default="threefry")  # see RNG_IMPLS

    def key(self) -> jax.Array:
        """``rng`` as a typed PRNG key of ``rng_impl`` (split it, then store ``key_data``)."""
        return prng_key(self.rng, self.rng_impl)


# train.rng_impl -> jax's PRNG implementation. threefry: the same bits on every backend and any
# mesh (jax_threefry_partitionable); rbg / unsafe_rbg: XLA's RngBitGenerator, faster on TPU and
# GPU but slower than threefry on the CPU (measured), bits depend on the backend and XLA version.
RNG_IMPLS = {"threefry": "threefry2x32", "rbg": "rbg", "unsafe_rbg": "unsafe_rbg"}


def prng_key(raw: jax.Array, impl: str = "threefry") -> jax.Array:
    """A typed key of ``impl`` (a ``RNG_IMPLS`` name) from raw uint32 key data."""
    return jax.random.wrap_key_data(raw, impl=RNG_IMPLS[impl])


def raw_key(seed: int, impl: str = "threefry") -> jax.Array:
    """Raw uint32 key data of ``impl`` for ``seed`` (threefry: ``jax.random.PRNGKey(seed)``)."""
    if impl not in RNG_IMPLS:
        raise UserError(f"unknown rng_impl {impl!r}; choices: {', '.join(RNG_IMPLS)}")
    return jax.random.key_data(jax.random.key(seed, impl=RNG_IMPLS[impl]))


@dataclass(frozen=True)
class Pruning:
    """The pruning recipe, static for compilation. ``threshold`` is the kept fraction for
    ``topk``/``magnitude``, the sigmoid threshold for ``sigmoied_threshold``; unused by ``l0``."""

    method: str = "none"
    global_topk: bool = False
    initial_threshold: float = 1.0
    final_threshold: float = 1.0
    initial_warmup: float = 1
    final_warmup: float = 2
    warmup_steps: int = 0
    total_steps: int = 1
    regularization: str | None = None
    final_lambda: float = 0.0
    patterns: tuple[str, ...] = masking.DEFAULT_PRUNABLE
    global_topk_frequency: int = 1

    @property
    def cached_topk(self) -> bool:
        """Global Top-v from a value kept in the state, recomputed every N steps."""
        return (self.global_topk and self.global_topk_frequency > 1
                and self.method in ("topk", "magnitude"))

    def threshold(self, step):
        return threshold_schedule(
            step, total_steps=self.total_steps, warmup_steps=self.warmup_steps,
            initial_threshold=self.initial_threshold, final_threshold=self.final_threshold,
            initial_warmup=self.initial_warmup, final_warmup=self.final_warmup)

    def lam(self, threshold):
        if not self.regularization:
            return jnp.float32(0.0)
        return regularization_lambda(threshold, final_lambda=self.final_lambda,
                                     final_threshold=self.final_threshold)

    def masks(self, params, scores, threshold, rng=None, train=True) -> dict[str, jax.Array]:
        return masking.compute_masks(
            params, scores if self.method in LEARNED else None, method=self.method,
            threshold=threshold, rng=rng, train=train, global_topk=self.global_topk,
            patterns=self.patterns)

    def selected(self, params, scores) -> dict[str, jax.Array]:
        """What Top-v ranks, per prunable path: the scores (topk) or ``|W|`` (magnitude)."""
        paths = masking.prunable_paths(params, self.patterns)
        if self.method == "magnitude":
            flat = traverse_util.flatten_dict(_unfreeze(params), sep="/")
            return {p: jnp.abs(jax.lax.stop_gradient(flat[p])) for p in paths}
        flat = traverse_util.flatten_dict(_unfreeze(scores), sep="/")
        return {p: flat[p] for p in paths}

    def cached_masks(self, params, scores, threshold, step, cached):
        """``(masks, value)``: masks ``selected >= value``, the value recomputed exactly (k-th
        largest) when ``step % global_topk_frequency == 0``, else ``cached``."""
        sel = self.selected(params, scores)
        size = sum(v.size for v in sel.values())

        def recompute():
            k = jnp.maximum(masking._keep_count(threshold, size), 1)
            return masking.kth_largest(jax.lax.stop_gradient(sel), k)

        value = jax.lax.cond(step % self.global_topk_frequency == 0, recompute,
                             lambda: jnp.asarray(cached, jnp.float32))
        masks = {p: jax.lax.stop_gradient((v >= value).astype(v.dtype)) for p, v in sel.items()}
        return masks, value

    def final_masks(self, params, scores) -> dict[str, jax.Array]:
        """Deterministic masks at the final threshold (Python float: exact Top-v counts)."""
        return self.masks(params, scores, float(self.final_threshold), train=False)


@dataclass(frozen=True)
class Distill:
    alpha_ce: float = 0.5
    alpha_distil: float = 0.5
    temperature: float = 2.0


# ----------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------


def per_example_task_loss(kind: str, outputs, batch) -> jax.Array:
    """Cross-entropy (classification), squared error (regression), or the mean of start- and
    end-position cross-entropies (qa), per example."""
    if kind == "classification":
        return optax.softmax_cross_entropy_with_integer_labels(
            outputs.astype(jnp.float32), batch["labels"])
    if kind == "regression":
        return (outputs.reshape(-1).astype(jnp.float32) - batch["labels"]) ** 2
    start, end = outputs
    ce = optax.softmax_cross_entropy_with_integer_labels
    return 0.5 * (ce(start.astype(jnp.float32), batch["start_positions"])
                  + ce(end.astype(jnp.float32), batch["end_positions"]))


def model_inputs(batch):
    return batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]


# ----------------------------------------------------------------------------------------------
# Steps
# ----------------------------------------------------------------------------------------------


def _mask_value(scores, mask):
    return mask


def _straight_through_to(scores, mask):
    """``mask`` forward; the cotangent of the mask goes to ``scores`` unchanged (Eq. 2)."""
    return masking.straight_through(_mask_value, scores, mask)


def _unfreeze(tree):
    return tree.unfreeze() if hasattr(tree, "unfreeze") else tree


def make_train_step(module, kind: str, pruning: Pruning, optimizer: Optimizer, *,
                    teacher=None, distill: Distill | None = None) -> Callable:
    """``train_step(state, batch, teacher_params) -> (state, metrics)``, pure and jit-able.

    ``batch`` arrays have a leading micro-batch axis ``[accum, B, ...]``; the loss is the
    weighted mean over every real example of the step (``example_weight`` 0 marks padding).
    """
    reg_fn = regularizers.regularizer(pruning.regularization) if pruning.regularization else None
    per_micro_masks = pruning.method == "l0"  # a fresh hard-concrete sample per micro-batch
    learned = pruning.method in LEARNED

    def micro_loss(trainable, frozen, micro, threshold, rng, denom, teacher_params, step_masks):
        tree = optimizer.merge(trainable, frozen)  # frozen leaves: constants, no gradient
        params, scores = tree["params"], tree["scores"]
        mask_rng, dropout_rng = jax.random.split(rng)
        if per_micro_masks:
            masks = pruning.masks(params, scores, threshold, mask_rng, train=True)
        elif learned:
            flat_scores = traverse_util.flatten_dict(_unfreeze(scores), sep="/")
            masks = {p: _straight_through_to(flat_scores[p], m) for p, m in step_masks.items()}
        else:
            masks = step_masks
        outputs = module.apply({"params": masking.multiply_masks(params, masks)}, *model_inputs(micro),
                               deterministic=False, rngs={"dropout": dropout_rng})
        w = micro["example_weight"]
        task = jnp.sum(per_example_task_loss(kind, outputs, micro) * w) / denom
        loss, distil = task, jnp.float32(0.0)
        if teacher is not None:
            t_out = teacher.apply({"params": teacher_params}, *model_inputs(micro), deterministic=True)
            t_out = jax.lax.stop_gradient(t_out)
            distil = jnp.sum(distillation_loss(kind, outputs, t_out, distill.temperature) * w) / denom
            loss = distill.alpha_ce * task + distill.alpha_distil * distil
        remaining = masking.remaining_fraction(masks) if per_micro_masks else jnp.float32(0.0)
        return loss, (task, distil, remaining)

    def step_masks_of(state: TrainState, threshold):
        """Masks shared by every micro-batch of the step (no gradient: the straight-through
        estimator is applied per micro-batch) and the new cached Top-v value."""
        if per_micro_masks or pruning.method == "none":
            return {}, state.topk_value
        if pruning.cached_topk:
            return pruning.cached_masks(state.params, state.scores, threshold, state.step,
                                        state.topk_value)
        masks = pruning.masks(jax.lax.stop_gradient(state.params),
                              jax.lax.stop_gradient(state.scores), threshold, train=True)
        return masks, state.topk_value

    def train_step(state: TrainState, batch, teacher_params=None):
        threshold = pruning.threshold(state.step)
        lam = pruning.lam(threshold)
        tree = {"params": state.params, "scores": state.scores}
        # differentiate the trainable leaves only: no gradient is computed for frozen ones
        # (embeddings), which are outside the clipping and grad_norm (optim.Optimizer.split)
        trainable, frozen = optimizer.split(tree)
        denom = jnp.maximum(jnp.sum(batch["example_weight"]), 1.0)
        rng, step_rng = jax.random.split(state.key())
        accum = batch["input_ids"].shape[0]
        grad_fn = jax.grad(micro_loss, has_aux=True)
        step_masks, topk_value = step_masks_of(state, threshold)

        def body(carry, xs):
            grads, stats = carry
            micro, key = xs
            g, (task, distil, remaining) = grad_fn(trainable, frozen, micro, threshold, key, denom,
                                                   teacher_params, step_masks)
            loss_parts = jnp.stack([task, distil, remaining / accum])
            return (jax.tree_util.tree_map(jnp.add, grads, g), stats + loss_parts), None

        zeros = jax.tree_util.tree_map(jnp.zeros_like, trainable)
        (grads, stats), _ = jax.lax.scan(
            body, (zeros, jnp.zeros(3, jnp.float32)), (batch, jax.random.split(step_rng, accum)))
        task, distil = stats[0], stats[1]
        remaining = stats[2] if per_micro_masks else masking.remaining_fraction(step_masks)
        loss = task if teacher is None else distill.alpha_ce * task + distill.alpha_distil * distil
        reg = jnp.float32(0.0)
        if reg_fn is not None:
            reg, reg_grad = jax.value_and_grad(reg_fn)(state.scores)
            grads["scores"] = jax.tree_util.tree_map(lambda g, r: g + lam * r, grads["scores"], reg_grad)
            loss = loss + lam * reg
        grad_norm = optax.global_norm(grads)
        updates, opt_state = optimizer.tx.update(grads, state.opt_state, trainable)
        new = optimizer.merge(optax.apply_updates(trainable, updates), frozen)
        metrics = {"loss": loss, "task_loss": task, "regularization": reg, "threshold": threshold,
                   "lambda": lam, "remaining_weights": remaining, "grad_norm": grad_norm,
                   **optimizer.learning_rates(state.step)}
        if teacher is not None:
            metrics["distil_loss"] = distil
        state = state.replace(step=state.step + 1, params=new["params"], scores=new["scores"],
                              opt_state=opt_state, rng=jax.random.key_data(rng),
                              topk_value=topk_value)
        return state, metrics

    return train_step


@dataclass(frozen=True)
class EvalStep:
    """Evaluation in two parts, so the masks are computed once per evaluation, not per batch:

    ``mask(params, scores) -> masked``: ``W * M`` with the deterministic masks at the final
    threshold (a full Top-v selection); ``apply(masked, batch) -> outputs``: the model without
    dropout. Calling it, ``eval_step(params, scores, batch)``, does both (one batch)."""

    mask: Callable
    apply: Callable

    def __call__(self, params, scores, batch):
        return self.apply(self.mask(params, scores), batch)

    def jit(self, **kwargs) -> "EvalStep":
        """Both parts under ``jax.jit(..., **kwargs)`` (one device; a mesh: ``jit_eval_step``)."""
        return EvalStep(jax.jit(self.mask, **kwargs), jax.jit(self.apply, **kwargs))


def make_eval_step(module, pruning: Pruning) -> EvalStep:
    """The ``EvalStep`` of ``module`` pruned by ``pruning`` (final masks, no dropout)."""

    def mask(params, scores):
        return masking.multiply_masks(params, pruning.final_masks(params, scores))

    def apply(masked, batch):
        return module.apply({"params": masked}, *model_inputs(batch), deterministic=True)

    return EvalStep(mask, apply)


def init_state(params, scores, optimizer: Optimizer, seed: int,
               rng_impl: str = "threefry") -> TrainState:
    """Step 0; ``rng`` is the raw key data of ``rng_impl`` (``RNG_IMPLS``) for ``seed``."""
    tree = {"params": params, "scores": scores}
    return TrainState(step=jnp.int32(0), params=params, scores=scores,
                      opt_state=optimizer.tx.init(tree), rng=raw_key(seed, rng_impl),
                      topk_value=jnp.float32(0.0), rng_impl=rng_impl)


# ----------------------------------------------------------------------------------------------
# Compilation for a device mesh
# ----------------------------------------------------------------------------------------------


def jit_train_step(train_step: Callable, mesh, state: TrainState, batch_size: int,
                   teacher_params=None, compiler_options: dict | None = None) -> Callable:
    """``train_step`` compiled for ``mesh``: the state (donated) and the teacher in the layout of
    ``sharding.PARTITION_RULES``, batches ``[accum, B, ...]`` split on ``"data"`` along B,
    metrics replicated. ``state``/``teacher_params`` only give the structure (arrays or
    ``jax.ShapeDtypeStruct``s); ``compiler_options`` go to ``jax.jit`` (XLA debug options)."""
    state_sh = shd.tree_shardings(state, mesh)
    teacher_sh = None if teacher_params is None else shd.tree_shardings(teacher_params, mesh)
    return jax.jit(train_step,
                   in_shardings=(state_sh, shd.batch_sharding(mesh, batch_size, micro=True),
                                 teacher_sh),
                   out_shardings=(state_sh, shd.replicated(mesh)), donate_argnums=0,
                   compiler_options=compiler_options)


def jit_eval_step(eval_step: EvalStep, mesh, params, scores, batch_size: int,
                  compiler_options: dict | None = None) -> EvalStep:
    """``eval_step``'s parts compiled for ``mesh``: ``mask`` keeps the params' layout (the
    masked params stay sharded as the params), ``apply`` takes batches ``[B, ...]`` split on
    ``"data"`` (any sequence length: one compilation per length) and replicates its outputs
    (readable on every process)."""
    params_sh = shd.tree_shardings(params, mesh)
    mask = jax.jit(eval_step.mask, in_shardings=(params_sh, shd.tree_shardings(scores, mesh)),
                   out_shardings=params_sh, compiler_options=compiler_options)
    apply = jax.jit(eval_step.apply,
                    in_shardings=(params_sh, shd.batch_sharding(mesh, batch_size, micro=False)),
                    out_shardings=shd.replicated(mesh), compiler_options=compiler_options)
    return EvalStep(mask, apply)


# ----------------------------------------------------------------------------------------------
# Evaluation over a whole split
# ----------------------------------------------------------------------------------------------


def predict(eval_step, params, scores, features: dict[str, np.ndarray], batch_size: int,
            put: Callable | None = None, bucket_lengths: Sequence[int] | None = None,
            masked=None):
    """Model outputs for every row of ``features``, in their order (batch padding dropped).

    ``eval_step``: an ``EvalStep`` (its masks applied once, here, unless ``masked`` -- the
    output of ``eval_step.mask`` -- is given) or any ``f(params, scores, batch)``.
    ``put`` places each host batch on the devices (default: passed as is).
    ``bucket_lengths``: rows sorted by length, each batch cut to its bucket
    (``mvp_jax.data.batching``); sequence-level outputs only (classification, regression).
    """
    from mvp_jax.data import batching

    inputs = {k: features[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    n = len(inputs["input_ids"])
    lengths = buckets = None
    if bucket_lengths is not None:
        buckets = batching.resolve_buckets(bucket_lengths, inputs["attention_mask"].shape[1])
        lengths = batching.sequence_lengths(inputs["attention_mask"])
    plan = batching.batch_plan(n, batch_size, shuffle=False, lengths=lengths)
    if isinstance(eval_step, EvalStep):
        if masked is None:
            masked = eval_step.mask(params, scores)
        run = eval_step.apply
    else:
        def run(_, batch):
            return eval_step(params, scores, batch)
    chunks, rows = [], []
    for idx in plan:
        batch = batching.take_batch(inputs, idx, batch_size, fill=int(idx[0]), lengths=lengths,
                                    buckets=buckets)
        batch.pop("example_weight")
        if put is not None:
            batch = put(batch)
        out = jax.device_get(run(masked, batch))
        if buckets is not None and isinstance(out, tuple):
            raise ValueError("length buckets apply to sequence-level outputs (classification, "
                             "regression), not to per-token outputs such as a QA head's")
        chunks.append(out)
        rows.append(idx)
    if not chunks:
        raise ValueError("predict: no rows")
    real = np.concatenate(rows)
    order = np.empty(n, np.int64)
    order[real] = np.arange(n)  # output position of each row
    first = [0]
    for idx in rows:
        first.append(first[-1] + batch_size)

    def gather(parts):
        stacked = np.concatenate(parts)
        keep = np.concatenate([np.arange(s, s + len(idx)) for s, idx in zip(first, rows)])
        return stacked[keep][order]

    if isinstance(chunks[0], tuple):
        return tuple(gather([c[i] for c in chunks]) for i in range(len(chunks[0])))
    return gather(chunks)


def evaluate_splits(eval_step, params, scores, task_data, batch_size: int,
                    put: Callable | None = None,
                    bucket_lengths: Sequence[int] | None = None) -> dict[str, dict]:
    """``{split: metrics}`` for every evaluation split of the task (masks computed once)."""
    from mvp_jax.data import evaluate

    masked = None
    if isinstance(eval_step, EvalStep):
        # the masks' program ends before the first batch's starts: two sharded programs with
        # collectives in flight at once can starve XLA's CPU rendezvous (one wait per evaluation)
        masked = jax.block_until_ready(eval_step.mask(params, scores))
    return {
        name: evaluate(task_data.spec, eval_set,
                       predict(eval_step, params, scores, eval_set.features, batch_size, put,
                               bucket_lengths, masked=masked))
        for name, eval_set in task_data.evals.items()
    }
