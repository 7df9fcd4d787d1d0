"""mvp-jax's compiled train step against an independent PyTorch loop (tests/torch_reference.py).

The same tiny BERT (saved by transformers, loaded by ``mvp_jax.models.load_pretrained``), the
same initial scores and batches (rows of different lengths, padded), the same recipe, dropout
off, float32: 20 steps of ``make_train_step`` + ``make_optimizer(optimizer="reference_adamw")``
(jit-compiled for a one-device mesh, as ``fine_prune`` does) against the reference loop. The
schedule prunes within the 20 steps, clipping is active on some steps (not all), weights
decay. L0's uniform noise is the one mvp-jax draws (its key splitting replayed here), handed
to the reference.

Two references run beside the one mvp-jax run:

* free-running (20 steps from the same start, as the brief of issue 11 asks): the loss of
  every step within 1e-4 and identical final masks. The two float32 computations sum in
  different orders, so their scores drift apart by ~1e-7 (more once masks differ): a Top-v or
  threshold decision between two values closer than that can go either way. Final masks must
  therefore be identical except at such float near-ties, and every differing entry must be one
  (its value within the two runs' score difference of the cut), which is checked.
* lock-step: before every step the reference is given mvp-jax's state (weights, scores, Adam
  moments and count), so every step is compared from identical inputs: the masks it uses must
  be identical (exactly, ties and floors included), its loss and gradient norm (over the
  trainable parameters) equal to float rounding, and the updated weights and scores equal to
  float rounding (this checks the reference AdamW, the clipping scope and the frozen embeddings
  of each step).
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from mvp_jax.config import PruneConfig
from mvp_jax.models import load_pretrained
from mvp_jax.pruning import masking
from mvp_jax.pruning.pruner import Pruner
from mvp_jax.training import sharding
from mvp_jax.training.optim import make_optimizer
from mvp_jax.training.train import init_state, jit_train_step, make_train_step

torch = pytest.importorskip("torch")
import torch_reference as ref  # noqa: E402

# vocab 101 differs from every other dimension (the HLO test looks for [vocab, hidden] buffers)
CONFIG = dict(vocab_size=101, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
              intermediate_size=64, max_position_embeddings=40, type_vocab_size=2)
VOCAB, HIDDEN = CONFIG["vocab_size"], CONFIG["hidden_size"]
BATCH, SEQ, STEPS = 4, 16, 20
FAST = {"xla_backend_optimization_level": 0}  # compiles ~3x faster on XLA's CPU backend
COMMON = dict(learning_rate=1e-3, scores_learning_rate=1e-2, warmup_steps=2, total_steps=STEPS,
              weight_decay=0.1, max_grad_norm=2.0, adam_epsilon=1e-8)
RECIPES = {
    "topk": dict(method="topk", final_threshold=0.3),
    "topk_global": dict(method="topk", global_topk=True, final_threshold=0.3),
    "sigmoied_threshold": dict(method="sigmoied_threshold", initial_threshold=0.0,
                               final_threshold=0.5, regularization="l1", final_lambda=5.0),
    "l0": dict(method="l0", initial_threshold=1.0, final_threshold=0.5, regularization="l0",
               final_lambda=5.0, scores_learning_rate=0.1),
    "magnitude": dict(method="magnitude", final_threshold=0.3),
}
# initial scores per method ("constant 0" as the paper's movement recipes)
SCORE_INIT = {"topk": ("constant", 0.0), "topk_global": ("constant", 0.0),
              "sigmoied_threshold": ("uniform", 0.1), "l0": ("uniform", 3.0)}


@pytest.fixture(autouse=True)
def _exact_and_one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only contend
    with jax.default_matmul_precision("float32"):
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("tiny-bert"))


def save_checkpoint(path) -> str:
    """A random tiny BERT saved by transformers (non-trivial LayerNorm and biases)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(**CONFIG, num_labels=2, attn_implementation="eager"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.normal_(0.0, 0.05)
            else:
                p.normal_(0.0, 0.2)
    model.save_pretrained(path)
    return str(path)


def make_batches(seed=0):
    """``STEPS`` batches ``[1, B, SEQ]``: random ids, rows of 4..SEQ real tokens, padding 0."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(STEPS):
        lengths = rng.integers(4, SEQ + 1, BATCH)
        mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.int32)
        ids = rng.integers(1, VOCAB, (BATCH, SEQ)).astype(np.int32) * mask
        types = ((np.arange(SEQ)[None, :] >= lengths[:, None] // 2) * mask).astype(np.int32)
        out.append({"input_ids": ids[None], "attention_mask": mask[None],
                    "token_type_ids": types[None],
                    "labels": rng.integers(0, 2, (1, BATCH)).astype(np.int32),
                    "example_weight": np.ones((1, BATCH), np.float32)})
    return out


def torch_batch(batch):
    return {k: torch.tensor(np.asarray(batch[k][0]), dtype=torch.long)
            for k in ("input_ids", "attention_mask", "token_type_ids", "labels")}


# ----------------------------------------------------------------------------------------------
# Flax paths <-> torch names; mvp-jax's state -> the reference
# ----------------------------------------------------------------------------------------------


def torch_name(path: str) -> tuple[str, bool]:
    """``(torch parameter name, transpose)`` of a Flax parameter path (HF naming)."""
    *module, leaf = path.split("/")
    transpose = leaf == "kernel"
    leaf = {"kernel": "weight", "scale": "weight", "embedding": "weight"}.get(leaf, leaf)
    return ".".join(module + [leaf]), transpose


def layer_name(path: str) -> str:
    """``bert/encoder/layer/0/attention/self/query/kernel`` -> the torch module's name."""
    return path.removesuffix("/kernel").replace("/", ".")


def flat(tree) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


def adam_moments(opt_state) -> dict[tuple[str, str], np.ndarray]:
    """``{("mu" | "nu", "params/..." | "scores/..."): moment}`` from mvp-jax's optax state."""
    out = {}
    for keypath, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]:
        names = [str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k))))
                 for k in keypath]
        for i, n in enumerate(names):
            if n in ("mu", "nu"):
                out[(n, "/".join(names[i + 1:]))] = np.asarray(leaf)
    return out


def load_state(oracle: ref.Reference, state) -> None:
    """Give the reference mvp-jax's (host) state: weights, scores, Adam moments, step."""
    step = int(state.step)
    named = dict(oracle.model.named_parameters())
    moments = adam_moments(state.opt_state)
    tensors = {f"params/{p}": (torch_name(p), v) for p, v in flat(state.params).items()}
    for p, v in flat(state.scores).items():
        name, transpose = torch_name(p)
        tensors[f"scores/{p}"] = ((name.removesuffix(".weight") + ".mask_scores", transpose), v)
    with torch.no_grad():
        for key, ((name, transpose), value) in tensors.items():
            t = lambda x: torch.tensor(np.ascontiguousarray(x.T if transpose else x))  # noqa: E731
            param = named[name]
            param.copy_(t(value))
            if param.requires_grad:
                oracle.optimizer.state[param] = {"step": step, "exp_avg": t(moments["mu", key]),
                                                 "exp_avg_sq": t(moments["nu", key])}
            else:
                assert ("mu", key) not in moments  # frozen: no optimizer state in mvp-jax
    oracle.step = step


# ----------------------------------------------------------------------------------------------
# The runs
# ----------------------------------------------------------------------------------------------


def mvp_setup(checkpoint, recipe: dict, scores_np: dict | None, freeze_embeddings=True):
    r = {**COMMON, **recipe}
    pre = load_pretrained(checkpoint, head="classification", num_labels=2)
    module = pre.module.clone(spec=dataclasses.replace(
        pre.module.spec, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    params = jax.tree_util.tree_map(jnp.asarray, pre.params)  # sorted dicts, as inside the jit
    pruning = PruneConfig(
        method=r["method"], global_topk=r.get("global_topk", False),
        initial_threshold=r.get("initial_threshold", 1.0), final_threshold=r["final_threshold"],
        initial_warmup=1, final_warmup=2, regularization=r.get("regularization"),
        final_lambda=r.get("final_lambda", 0.0))
    scores = {}
    if scores_np is not None:
        scores = jax.tree_util.tree_map(jnp.asarray, traverse_util.unflatten_dict(
            scores_np, sep="/"))
    optimizer = make_optimizer(
        learning_rate=r["learning_rate"], scores_learning_rate=r["scores_learning_rate"],
        total_steps=r["total_steps"], warmup_steps=r["warmup_steps"],
        weight_decay=r["weight_decay"], max_grad_norm=r["max_grad_norm"],
        adam_epsilon=r["adam_epsilon"], freeze_embeddings=freeze_embeddings,
        optimizer="reference_adamw")
    state = init_state(params, scores, optimizer, seed=0)
    pruner = Pruner.from_config(pruning, module, total_steps=r["total_steps"],
                                warmup_steps=r["warmup_steps"])
    step = make_train_step(module, "classification", pruner, optimizer)
    return pruner, state, step


def initial_scores(name, params) -> dict[str, np.ndarray] | None:
    if name not in SCORE_INIT:
        return None
    kind, scale = SCORE_INIT[name]
    rng = np.random.default_rng(1)
    shapes = {p: v.shape for p, v in flat(params).items()}
    return {p: (np.full(shapes[p], scale, np.float32) if kind == "constant"
                else rng.uniform(-scale, scale, shapes[p]).astype(np.float32))
            for p in masking.prunable_paths(params)}


def mask_key(rng):
    """The key mvp-jax's step draws L0 masks from (one micro-batch): ``rng -> (next, step key)
    -> micro-batch keys -> (mask key, dropout key)``."""
    _, step_rng = jax.random.split(rng)
    return jax.random.split(jax.random.split(step_rng, 1)[0])[0]


def l0_noise(rng, params) -> dict[str, np.ndarray]:
    """The uniform samples of mvp-jax's step: one key per prunable matrix from ``mask_key``, in
    ``masking.prunable_paths`` order (sorted dicts, as inside the jit), ``U(0.0001, 0.9999)``."""
    paths = masking.prunable_paths(params)
    keys = jax.random.split(mask_key(rng), len(paths))
    shapes = {p: v.shape for p, v in flat(params).items()}
    return {p: np.asarray(jax.random.uniform(k, shapes[p], jnp.float32, 0.0001, 0.9999))
            for p, k in zip(paths, keys)}


def run(checkpoint, name):
    """mvp-jax's run and both references on the same batches; host records of each step."""
    from transformers import BertForSequenceClassification

    recipe = RECIPES[name]
    is_l0 = recipe["method"] == "l0"
    init_params = load_pretrained(checkpoint, head="classification", num_labels=2).params
    scores_np = initial_scores(name, init_params)
    pruning, state, step = mvp_setup(checkpoint, recipe, scores_np)
    mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
    state = sharding.place(state, sharding.tree_shardings(state, mesh))
    train_step = jit_train_step(step, mesh, state, BATCH, compiler_options=FAST)
    put = sharding.batch_sharding(mesh, BATCH, micro=True)
    # the masks mvp-jax's step uses, from its state (the step does not return them)
    step_masks = jax.jit(lambda s: pruning.masks(
        s.params, s.scores, pruning.threshold(s.step), rng=mask_key(s.rng) if is_l0 else None,
        train=True), compiler_options=FAST)

    order = sorted(masking.prunable_paths(init_params))  # the global Top-v tie-break order
    t_scores = (None if scores_np is None
                else {layer_name(p): torch.tensor(s.T.copy()) for p, s in scores_np.items()})

    def reference():
        model = BertForSequenceClassification.from_pretrained(checkpoint,
                                                              attn_implementation="eager")
        return ref.build(model, ref.Recipe(**{**COMMON, **recipe}), t_scores,
                         order=[layer_name(p) for p in order])

    free, lock = reference(), reference()
    records = []
    for batch in make_batches():
        before = jax.device_get(state)
        noise = None
        if is_l0:
            noise = {layer_name(p): torch.tensor(u.T.copy())
                     for p, u in l0_noise(before.rng, before.params).items()}
        masks = jax.device_get(step_masks(state))
        state, metrics = train_step(state, sharding.put_batch(batch, put), None)
        load_state(lock, before)
        records.append({
            "jax": {k: float(v) for k, v in jax.device_get(metrics).items()},
            "jax_masks": {p: np.asarray(m) for p, m in masks.items()},
            "free": free.train_step(torch_batch(batch), noise),
            "lock": lock.train_step(torch_batch(batch), noise),
            "after": jax.device_get({"params": state.params, "scores": state.scores}),
            "lock_after": {n: p.detach().numpy().copy()
                           for n, p in lock.model.named_parameters()},
        })
    final = jax.device_get(jax.jit(pruning.final_masks, compiler_options=FAST)(
        state.params, state.scores))
    load_state(lock, jax.device_get(state))
    # the compiled step stays in jit's cache: lowering it again with these arguments is free
    compiled = lambda: train_step.lower(state, sharding.put_batch(batch, put), None)  # noqa: E731
    return {"records": records, "order": order, "final": final, "state": jax.device_get(state),
            "free": free, "lock": lock, "compiled": compiled, "traced": lambda: train_step.trace(
                state, sharding.put_batch(batch, put), None)}


_RUNS: dict = {}


def cached_run(checkpoint, name):
    """``run`` once per (checkpoint, recipe) in this process (the HLO test reuses topk's)."""
    if (checkpoint, name) not in _RUNS:
        _RUNS[checkpoint, name] = run(checkpoint, name)
    return _RUNS[checkpoint, name]


def to_flax(masks: dict[str, torch.Tensor], order) -> dict[str, np.ndarray]:
    return {p: masks[layer_name(p)].numpy().T for p in order}


def check_near_ties(name, jax_masks, torch_masks, jax_values, torch_values, cut):
    """Entries where the two final masks differ are float near-ties: the value deciding the
    entry (score, sigmoid(score) or |W|) lies within the two runs' largest difference of such
    values (``2 *`` for a Top-v cut, whose position moves too) of the cut."""
    differ = 0
    for p in jax_masks:
        bad = (jax_masks[p] > 0) != (torch_masks[p] > 0)
        if not bad.any():
            continue
        differ += int(bad.sum())
        drift = np.max(np.abs(jax_values[p] - torch_values[p]))
        gap = np.abs(jax_values[p][bad] - cut(p))
        assert np.all(gap <= 2 * drift), (name, p, gap, drift)
    total = sum(m.size for m in jax_masks.values())
    assert differ <= 1e-3 * total, f"{name}: {differ} of {total} mask entries differ"


@pytest.mark.parametrize("name", list(RECIPES))
def test_twenty_steps_match_the_pytorch_reference(checkpoint, name):
    out = cached_run(checkpoint, name)
    records, order = out["records"], out["order"]
    recipe = {**COMMON, **RECIPES[name]}

    # --- lock-step: every step from mvp-jax's state
    for i, r in enumerate(records):
        j, t = r["jax"], r["lock"]
        torch_masks = to_flax(t["masks"], order)
        for p in order:
            if recipe["method"] == "l0":  # continuous: float rounding of log / sigmoid
                np.testing.assert_allclose(r["jax_masks"][p], torch_masks[p], rtol=0, atol=1e-6)
            else:
                np.testing.assert_array_equal(r["jax_masks"][p], torch_masks[p],
                                              err_msg=f"{name}: step {i} mask of {p}")
        assert j["remaining_weights"] == pytest.approx(t["remaining_weights"], abs=1e-7)
        assert j["loss"] == pytest.approx(t["loss"], abs=2e-6), (name, i)
        assert j["grad_norm"] == pytest.approx(t["grad_norm"], rel=2e-5), (name, i)
        assert j["threshold"] == pytest.approx(t["threshold"], rel=1e-6, abs=1e-7)
        assert j["lambda"] == pytest.approx(t["lambda"], rel=1e-6)
        # the updated weights and scores (frozen embeddings unchanged on both sides)
        after = flat(r["after"]["params"])
        after.update({f"scores/{p}": v for p, v in flat(r["after"]["scores"]).items()})
        for p, value in after.items():
            if p.endswith("attention/self/key/bias"):
                # its exact gradient is 0 (softmax ignores the per-query constant q . b_k): both
                # sides apply Adam to float noise, which it scales to a step of ~lr
                continue
            tname, transpose = torch_name(p.removeprefix("scores/"))
            if p.startswith("scores/"):
                tname = tname.removesuffix(".weight") + ".mask_scores"
            expected = r["lock_after"][tname]
            np.testing.assert_allclose(value, expected.T if transpose else expected,
                                       rtol=1e-5, atol=1e-6, err_msg=f"{name}: step {i}, {p}")
    norms = np.array([r["lock"]["grad_norm"] for r in records])
    clip = recipe["max_grad_norm"]
    assert np.any(norms > clip) and np.any(norms < clip), "clipping on some steps, not all"
    # final masks from the same final state: identical
    lock_final = to_flax(out["lock"].final_masks(), order)
    for p in order:
        np.testing.assert_allclose(np.asarray(out["final"][p]), lock_final[p], rtol=0,
                                   atol=0 if recipe["method"] != "l0" else 1e-6)

    # --- free-running: 20 steps each on its own
    loss_j = np.array([r["jax"]["loss"] for r in records])
    loss_t = np.array([r["free"]["loss"] for r in records])
    np.testing.assert_allclose(loss_j, loss_t, rtol=0, atol=1e-4, err_msg=f"{name}: loss")
    free_final = to_flax(out["free"].final_masks(), order)
    jax_final = {p: np.asarray(m) for p, m in out["final"].items()}
    kept = sum(np.sum(m > 0) for m in jax_final.values()) / sum(m.size for m in jax_final.values())
    assert kept < 0.9, f"{name}: nothing was pruned ({kept:.3f} kept)"
    identical = all(np.array_equal(jax_final[p] > 0, free_final[p] > 0) for p in order)
    if recipe["method"] == "l0":
        for p in order:
            np.testing.assert_allclose(jax_final[p], free_final[p], rtol=0, atol=1e-4)
    if identical:
        return
    # not identical: every differing entry must be a float near-tie
    free_layers = out["free"].layers
    if recipe["method"] == "magnitude":
        jv = {p: np.abs(flat(out["state"].params)[p]) for p in order}
        tv = {p: np.abs(free_layers[layer_name(p)].weight.detach().numpy().T) for p in order}
    else:
        jv = flat(out["state"].scores)
        tv = {p: free_layers[layer_name(p)].mask_scores.detach().numpy().T for p in order}
    if recipe["method"] in ("sigmoied_threshold", "l0"):
        sig = lambda x: 1 / (1 + np.exp(-x.astype(np.float64)))  # noqa: E731
        jv, tv = {p: sig(v) for p, v in jv.items()}, {p: sig(v) for p, v in tv.items()}
        tau = recipe["final_threshold"] if recipe["method"] != "l0" else 0.1 / 1.2
        cut = lambda p: tau  # noqa: E731
    else:
        keep = recipe["final_threshold"]
        if recipe.get("global_topk"):
            allv = np.sort(np.concatenate([v.ravel() for v in jv.values()]))[::-1]
            cut = lambda p: allv[int(keep * allv.size) - 1]  # noqa: E731
        else:
            cut = lambda p: np.sort(jv[p].ravel())[::-1][int(keep * jv[p].size) - 1]  # noqa: E731
    check_near_ties(name, jax_final, free_final, jv, tv, cut)


def test_frozen_embeddings_have_no_gradient_in_the_compiled_step(checkpoint):
    """The embeddings are constants of the differentiated function: no [vocab, hidden] gradient
    (no scatter into the word-embedding table) in the traced step nor in the compiled one (topk's
    step of the test above), where the table is only read and passed through. With
    ``freeze_embeddings=False`` the jaxpr check sees the gradient (it can fail). That the logged
    ``grad_norm`` is over the trainable parameters only is checked against torch above."""
    def scatters(jaxpr) -> list[str]:
        return [line for line in str(jaxpr).splitlines()
                if "scatter" in line and f"f32[{VOCAB},{HIDDEN}]" in line]

    pre = load_pretrained(checkpoint, head="classification", num_labels=2)
    _, state, step = mvp_setup(checkpoint, RECIPES["topk"], initial_scores("topk", pre.params),
                               freeze_embeddings=False)
    assert scatters(jax.make_jaxpr(step)(state, make_batches()[0])), \
        "the check does not see a trainable embedding's gradient"

    out = cached_run(checkpoint, "topk")
    assert not scatters(out["traced"]().jaxpr)
    hlo = out["compiled"]().compile().as_text()
    # every instruction whose result is a [vocab, hidden] f32 array, by opcode
    shape = re.escape(f"f32[{VOCAB},{HIDDEN}]")
    ops = {m.group(1) for m in re.finditer(rf"%\S+ = {shape}\{{[^}}]*\}} ([\w-]+)\(", hlo)}
    assert ops and ops <= {"parameter", "copy", "bitcast", "get-tuple-element"}, ops
