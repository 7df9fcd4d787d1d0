"""The train state and the train step (pure; jitted for a mesh by ``jit_train_step``). The eval
step is in ``evaluation``, the loop that drives both in ``runner``.

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

``jit_train_step`` compiles the step for a device mesh (``mvp_jax.training.sharding``): state in
the layout of the partition rules, batches split on ``"data"``, the state donated. Batches may
come in a few sequence lengths (length buckets, ``mvp_jax.data.batching``): each length compiles
once. The threshold, penalty weight and masks come from a ``mvp_jax.pruning.Pruner``.

``TrainState.rng`` is raw uint32 key data of ``TrainState.rng_impl`` (``train.rng_impl``:
threefry, rbg, unsafe_rbg), so checkpoints and shardings treat it as any array;
``state.key()`` is the typed key to split.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, cast

import flax
import jax
import jax.numpy as jnp
import optax

from mvp_jax import tree
from mvp_jax.choices import RNG_IMPLS
from mvp_jax.errors import UserError
from mvp_jax.models.bert import attention_scores_of
from mvp_jax.pruning import masking, methods, structured
from mvp_jax.pruning.binarizers import keep_count, kth_largest, straight_through
from mvp_jax.pruning.pruner import Pruner
from mvp_jax.training import sharding as shd
from mvp_jax.training.distill import check_layer_distillation, distillation_loss, layer_distillation
from mvp_jax.training.optim import Optimizer

PyTree = Any


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
# train.rng_impl (mvp_jax.choices.RNG_IMPLS) -> jax.random's implementation name
KEY_IMPLS = {name: {"threefry": "threefry2x32"}.get(name, name) for name in RNG_IMPLS}


def prng_key(raw: jax.Array, impl: str = "threefry") -> jax.Array:
    """A typed key of ``impl`` (a ``RNG_IMPLS`` name) from raw uint32 key data."""
    return jax.random.wrap_key_data(raw, impl=KEY_IMPLS[impl])


def raw_key(seed: int, impl: str = "threefry") -> jax.Array:
    """Raw uint32 key data of ``impl`` for ``seed`` (threefry: ``jax.random.PRNGKey(seed)``)."""
    if impl not in RNG_IMPLS:
        raise UserError(f"unknown rng_impl {impl!r}; choices: {', '.join(RNG_IMPLS)}")
    return jax.random.key_data(jax.random.key(seed, impl=KEY_IMPLS[impl]))


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
    return straight_through(_mask_value, scores, mask)


def cached_global_masks(method: methods.TopV, weights, scores, threshold, step, cached,
                        frequency: int):
    """``(masks, value)`` of a Top-v ``method`` with a cached global threshold: masks
    ``selection >= value``, the value recomputed exactly (k-th largest of the selection over
    every matrix) when ``step % frequency == 0``, else ``cached``. No gradient."""
    selected = jax.lax.stop_gradient(method.selection(weights, scores))
    size = sum(v.size for v in selected.values())

    def recompute():
        return kth_largest(selected, jnp.maximum(keep_count(threshold, size), 1))

    value = jax.lax.cond(step % frequency == 0, recompute,
                         lambda: jnp.asarray(cached, jnp.float32))
    return {p: (v >= value).astype(v.dtype) for p, v in selected.items()}, value


def apply_with_layers(module, params, inputs, attention: bool, **kwargs):
    """``(outputs, hidden states h^0..h^L, attention scores of layers 1..L or None)`` of
    ``module.apply`` (scores sown into ``intermediates`` only when ``attention``)."""
    variables = {"params": params}
    if not attention:
        out, hidden = module.apply(variables, *inputs, output_hidden_states=True, **kwargs)
        return out, hidden, None
    (out, hidden), sown = module.apply(variables, *inputs, output_hidden_states=True,
                                       mutable=["intermediates"], **kwargs)
    return out, hidden, attention_scores_of(sown["intermediates"])


def make_train_step(module, kind: str, pruner: Pruner, optimizer: Optimizer, *, teacher=None,
                    distill=None) -> Callable:
    """``train_step(state, batch, teacher_params) -> (state, metrics)``, pure and jit-able.

    ``pruner``: the run's ``prune`` section read for ``module``
    (``Pruner.from_config(prune, module, total_steps=..., warmup_steps=...)``): the threshold
    and penalty weight at ``state.step``, and the masks. ``distill``: the ``distill`` section (``alpha_ce``,
    ``alpha_distil``, ``temperature``; layer-wise: ``alpha_hidden``, ``alpha_attention``,
    ``layer_map``, ``mvp_jax.training.distill``), used with a ``teacher``. The loss is then
    ``alpha_ce task + alpha_distil distil [+ alpha_hidden hidden] [+ alpha_attention attention]``;
    a layer-wise term with weight 0 is not computed (nor logged): the step is the logits-only one.
    ``batch`` arrays have a leading micro-batch axis ``[accum, B, ...]``; the loss is the
    weighted mean over every real example of the step (``example_weight`` 0 marks padding).
    """
    method = pruner.method
    # layer-wise distillation terms in use: (metric name, weight), hidden before attention
    layer_terms = () if teacher is None else tuple(
        (name, float(getattr(distill, key, 0.0)))
        for name, key in (("hidden_loss", "alpha_hidden"), ("attention_loss", "alpha_attention"))
        if getattr(distill, key, 0.0) > 0)
    if layer_terms:
        check_layer_distillation(module.spec, teacher.spec, distill)
    attention = any(name == "attention_loss" for name, _ in layer_terms)

    def micro_loss(trainable, frozen, micro, threshold, rng, denom, teacher_params, step_masks):
        merged = optimizer.merge(trainable, frozen)  # frozen leaves: constants, no gradient
        params, scores = merged["params"], merged["scores"]
        mask_rng, dropout_rng = jax.random.split(rng)
        if method.per_micro_batch:
            masks = pruner.masks(params, scores, threshold, rng=mask_rng)
        else:
            if method.learns_scores:
                flat_scores = tree.flatten(scores)
                step_masks = {p: _straight_through_to(flat_scores[p], m)
                              for p, m in step_masks.items()}
            masks = structured.to_weight_masks(step_masks, params)
        masked = masking.multiply_masks(params, masks)
        if layer_terms:
            outputs, hidden, scores = apply_with_layers(
                module, masked, model_inputs(micro), attention, deterministic=False,
                rngs={"dropout": dropout_rng})
        else:
            outputs = module.apply({"params": masked}, *model_inputs(micro), deterministic=False,
                                   rngs={"dropout": dropout_rng})
        w = micro["example_weight"]
        task = jnp.sum(per_example_task_loss(kind, outputs, micro) * w) / denom
        loss, distil, parts = task, jnp.float32(0.0), ()
        if teacher is not None:
            if layer_terms:
                t_out, t_hidden, t_scores = jax.lax.stop_gradient(apply_with_layers(
                    teacher, teacher_params, model_inputs(micro), attention, deterministic=True))
            else:
                t_out = teacher.apply({"params": teacher_params}, *model_inputs(micro),
                                      deterministic=True)
                t_out = jax.lax.stop_gradient(t_out)
            distil = jnp.sum(distillation_loss(kind, outputs, t_out, distill.temperature) * w) / denom
            loss = distill.alpha_ce * task + distill.alpha_distil * distil
        if layer_terms:
            per_example = layer_distillation(distill.layer_map, hidden, t_hidden,
                                             micro["attention_mask"], w, scores, t_scores)
            named = dict(zip(("hidden_loss", "attention_loss"), per_example))
            parts = tuple(jnp.sum(named[name] * w) / denom for name, _ in layer_terms)
            loss = loss + sum(alpha * part for (_, alpha), part in zip(layer_terms, parts))
        remaining = masking.remaining_fraction(masks) if method.per_micro_batch else jnp.float32(0.0)
        return loss, (task, distil, remaining, parts)

    def step_masks_of(state: TrainState, threshold):
        """Masks of the selection paths (weights, or heads / neurons) shared by every
        micro-batch of the step (no gradient: the straight-through estimator is applied per
        micro-batch) and the new cached Top-v value."""
        if method.per_micro_batch or not method.prunes:
            return {}, state.topk_value
        params, scores = jax.lax.stop_gradient((state.params, state.scores))
        if pruner.cached_topk:
            return cached_global_masks(cast(methods.TopV, method), pruner.selection_inputs(params),
                                       tree.flatten(scores), threshold, state.step,
                                       state.topk_value, pruner.global_topk_frequency)
        masks = pruner.selection_masks(params, scores, threshold, train=True)
        return masks, state.topk_value

    def train_step(state: TrainState, batch, teacher_params=None):
        threshold = pruner.threshold(state.step)
        lam = pruner.penalty_weight(threshold)
        # differentiate the trainable leaves only: no gradient is computed for frozen ones
        # (embeddings), which are outside the clipping and grad_norm (optim.Optimizer.split)
        trainable, frozen = optimizer.split({"params": state.params, "scores": state.scores})
        denom = jnp.maximum(jnp.sum(batch["example_weight"]), 1.0)
        rng, step_rng = jax.random.split(state.key())
        accum = batch["input_ids"].shape[0]
        grad_fn = jax.grad(micro_loss, has_aux=True)
        step_masks, topk_value = step_masks_of(state, threshold)

        def body(carry, xs):
            grads, stats = carry
            micro, key = xs
            g, (task, distil, remaining, parts) = grad_fn(trainable, frozen, micro, threshold, key,
                                                          denom, teacher_params, step_masks)
            loss_parts = jnp.stack([task, distil, remaining / accum, *parts])
            return (jax.tree_util.tree_map(jnp.add, grads, g), stats + loss_parts), None

        zeros = jax.tree_util.tree_map(jnp.zeros_like, trainable)
        (grads, stats), _ = jax.lax.scan(
            body, (zeros, jnp.zeros(3 + len(layer_terms), jnp.float32)),
            (batch, jax.random.split(step_rng, accum)))
        task, distil = stats[0], stats[1]
        remaining = stats[2] if method.per_micro_batch else masking.remaining_fraction(
            structured.to_weight_masks(step_masks, state.params))
        loss = task if teacher is None else distill.alpha_ce * task + distill.alpha_distil * distil
        for i, (_, alpha) in enumerate(layer_terms):
            loss = loss + alpha * stats[3 + i]
        reg = jnp.float32(0.0)
        if pruner.penalized:
            reg, reg_grad = jax.value_and_grad(pruner.penalty)(state.scores)
            grads["scores"] = jax.tree_util.tree_map(lambda g, r: g + lam * r, grads["scores"],
                                                     reg_grad)
            loss = loss + lam * reg
        grad_norm = optax.global_norm(grads)
        updates, opt_state = optimizer.tx.update(grads, state.opt_state, trainable)
        new = optimizer.merge(optax.apply_updates(trainable, updates), frozen)
        metrics = {"loss": loss, "task_loss": task, "regularization": reg, "threshold": threshold,
                   "lambda": lam, "remaining_weights": remaining, "grad_norm": grad_norm,
                   **optimizer.learning_rates(state.step)}
        if teacher is not None:
            metrics["distil_loss"] = distil
        metrics.update({name: stats[3 + i] for i, (name, _) in enumerate(layer_terms)})
        state = dataclasses.replace(  # flax.struct's state.replace, visible to type checkers
            state, step=state.step + 1, params=new["params"], scores=new["scores"],
            opt_state=opt_state, rng=jax.random.key_data(rng), topk_value=topk_value)
        return state, metrics

    return train_step


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
    ``models.layout.PARTITION_RULES``, batches ``[accum, B, ...]`` split on ``"data"`` along B,
    metrics replicated. ``state``/``teacher_params`` only give the structure (arrays or
    ``jax.ShapeDtypeStruct``s); ``compiler_options`` go to ``jax.jit`` (XLA debug options)."""
    state_sh = shd.tree_shardings(state, mesh)
    teacher_sh = None if teacher_params is None else shd.tree_shardings(teacher_params, mesh)
    return jax.jit(train_step,
                   in_shardings=(state_sh, shd.batch_sharding(mesh, batch_size, micro=True),
                                 teacher_sh),
                   out_shardings=(state_sh, shd.replicated(mesh)), donate_argnums=0,
                   compiler_options=compiler_options)
