"""Sharded train/eval steps on 8 host devices (tests/conftest.py) against one device.

A tiny BERT (hidden 32, 4 heads, 1 layer, FFN 64, vocab 100) and a synthetic batch, the step
functions called directly (one layer: compilation dominates the time of these tests). Meshes 8x1, 4x2 and 2x4 must give the loss, masks, updated params and
scores of one device (float tolerance: sharded matmuls sum in another order), and the global
Top-v must never gather a score matrix (checked on the compiled HLO).
"""

import re

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from transformers import BertConfig

from mvp_jax import tree
from mvp_jax.config import PruneConfig
from mvp_jax.models import build_module, init_params
from mvp_jax.pruning import binarizers, masking
from mvp_jax.pruning.pruner import Pruner
from mvp_jax.training import sharding
from mvp_jax.training.evaluation import jit_eval_step, make_eval_step
from mvp_jax.training.optim import make_optimizer
from mvp_jax.training.train import init_state, jit_train_step, make_train_step

ACCUM, BATCH, SEQ = 2, 8, 16
# XLA's CPU backend at optimization level 0 compiles ~3x faster; every variant compared here is
# compiled with the same options.
FAST = {"xla_backend_optimization_level": 0}
MESHES = [(8, 1), (4, 2), (2, 4)]
METHODS = {
    "topk": dict(method="topk"),
    "topk_global": dict(method="topk", global_topk=True),
    "sigmoied_threshold": dict(method="sigmoied_threshold", regularization="l1", final_lambda=1.0,
                               initial_threshold=0.5, final_threshold=0.1),
    "magnitude": dict(method="magnitude"),
}


def tiny_module(head="classification"):
    # 40 positions: no embedding table has a score matrix's shape (the HLO test tells them apart)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=40)
    return build_module(config, head=head, num_labels=2)


def make_batch(seed=0, seq=SEQ, qa=False):
    rng = np.random.default_rng(seed)
    mask = np.ones((ACCUM, BATCH, seq), np.int32)
    mask[:, :, seq - 4:] = rng.integers(0, 2, (ACCUM, BATCH, 4))
    batch = {
        "input_ids": rng.integers(0, 100, (ACCUM, BATCH, seq)).astype(np.int32),
        "attention_mask": mask,
        "token_type_ids": np.zeros((ACCUM, BATCH, seq), np.int32),
        "example_weight": np.ones((ACCUM, BATCH), np.float32),
    }
    if qa:
        batch["start_positions"] = rng.integers(0, seq, (ACCUM, BATCH)).astype(np.int32)
        batch["end_positions"] = rng.integers(0, seq, (ACCUM, BATCH)).astype(np.int32)
    else:
        batch["labels"] = rng.integers(0, 2, (ACCUM, BATCH)).astype(np.int32)
    return batch


TOTAL_STEPS = 10


def pruning_of(name, **extra):
    kw = dict(initial_threshold=0.5, final_threshold=0.3)
    kw.update(METHODS[name])
    kw.update(extra)
    return PruneConfig(**kw)


def threshold_at(pruner, step):
    return pruner.threshold(step)


def masks_at(pruner, params, scores, threshold):
    return pruner.masks(params, scores, threshold, train=True)


def selected(pruner, params, scores):
    return pruner.method.selection(masking.prunable_weights(params), tree.flatten(scores))


def setup(name, head="classification", **extra):
    module = tiny_module(head)
    params = init_params(module, seed=0)
    pruning = Pruner.from_config(pruning_of(name, **extra), module, total_steps=TOTAL_STEPS)
    scores = {}
    if pruning.method.name in ("topk", "sigmoied_threshold"):
        scores = masking.init_scores(params, "uniform", 1.0, rng=jax.random.PRNGKey(1))
    optimizer = make_optimizer(learning_rate=1e-3, total_steps=10, scores_learning_rate=1e-2,
                               freeze_embeddings=False)
    state = init_state(params, scores, optimizer, seed=0)
    step = make_train_step(module, "qa" if head == "qa" else "classification", pruning, optimizer)
    return module, pruning, state, step


def host(tree):
    return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def mesh_of(shape):
    data, model = shape
    return sharding.make_mesh(data, model, devices=jax.devices()[: data * model])


def run_steps(name, mesh_shape, n_steps=1, **extra):
    """Masks at step 0, then ``n_steps`` train steps on ``mesh_shape``; host copies."""
    _, pruning, state, step = setup(name, **extra)
    mesh = mesh_of(mesh_shape)
    state = sharding.place(state, sharding.tree_shardings(state, mesh))
    masks_fn = jax.jit(lambda s: masks_at(pruning, s.params, s.scores, 0.5),
                       out_shardings=sharding.replicated(mesh), compiler_options=FAST)
    masks = host(masks_fn(state))
    train_step = jit_train_step(step, mesh, state, BATCH, compiler_options=FAST)
    put = sharding.batch_sharding(mesh, BATCH, micro=True)
    metrics, before = [], []
    for i in range(n_steps):
        before.append(host({"scores": state.scores, "params": state.params}))
        state, m = train_step(state, sharding.put_batch(make_batch(i), put), None)
        metrics.append({**host(m), "topk_value": float(state.topk_value)})
    return {"masks": masks, "metrics": metrics, "before": before, "pruning": pruning,
            "params": host(state.params),
            "scores": host(state.scores), "topk_value": float(state.topk_value),
            "sharding": state.params["bert"]["encoder"]["layer"]["0"]["attention"]["self"]["query"]
            ["kernel"].sharding}


_REFERENCE = {}


def reference(name):
    if name not in _REFERENCE:
        _REFERENCE[name] = run_steps(name, (1, 1))
    return _REFERENCE[name]


def assert_trees_close(a, b, rtol=2e-5, atol=2e-6):
    # same structure first: a dropped, extra or renamed leaf fails here, not by a zip cut short
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------------------------
# Partition rules
# ----------------------------------------------------------------------------------------------


def test_partition_rules_megatron_layout_and_fallback():
    mesh = mesh_of((2, 4))
    def spec(path, shape):
        return sharding.partition_spec(path, shape, mesh)

    layer = "bert/encoder/layer/3"
    for name in ("query", "key", "value"):
        assert spec(f"{layer}/attention/self/{name}/kernel", (32, 32)) == P(None, "model")
    assert spec(f"{layer}/intermediate/dense/kernel", (32, 64)) == P(None, "model")
    assert spec(f"{layer}/attention/output/dense/kernel", (32, 32)) == P("model")
    assert spec(f"{layer}/output/dense/kernel", (64, 32)) == P("model")
    assert spec("bert/embeddings/word_embeddings/embedding", (100, 32)) == P(None, "model")
    for path, shape in [(f"{layer}/attention/self/query/bias", (32,)),
                        (f"{layer}/output/LayerNorm/scale", (32,)),
                        ("bert/pooler/dense/kernel", (32, 32)), ("classifier/kernel", (32, 2))]:
        assert spec(path, shape) == P(), path
    # a dimension the axis does not divide falls back to replicated
    assert spec(f"{layer}/intermediate/dense/kernel", (32, 66)) == P()
    assert spec(f"{layer}/output/dense/kernel", (66, 32)) == P()


def test_scores_and_optimizer_moments_take_their_weights_layout():
    _, _, state, _ = setup("topk")
    mesh = mesh_of((2, 4))
    sh = sharding.tree_shardings(state, mesh)
    flat = {tree.path_str(p): s.spec for p, s in jax.tree_util.tree_leaves_with_path(sh)}
    suffix = "bert/encoder/layer/0/intermediate/dense/kernel"
    hits = {path: spec for path, spec in flat.items() if path.endswith(suffix)}
    # the weight, its score, and Adam's mu and nu of both
    assert any(p.startswith("params/") for p in hits) and any(p.startswith("scores/") for p in hits)
    assert sum("/mu/" in p for p in hits) == 2 and sum("/nu/" in p for p in hits) == 2
    assert set(hits.values()) == {P(None, "model")}
    assert flat["step"] == P() and flat["topk_value"] == P() and flat["rng"] == P()


def test_mesh_shape_errors():
    with pytest.raises(ValueError, match="must use them all"):
        sharding.make_mesh(3, 2)
    with pytest.raises(ValueError, match="does not divide"):
        sharding.make_mesh(None, 3)
    assert dict(sharding.make_mesh().shape) == {"data": 8, "model": 1}
    assert dict(sharding.make_mesh(None, 2).shape) == {"data": 4, "model": 2}


# ----------------------------------------------------------------------------------------------
# Sharded steps = one device
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mesh_shape", MESHES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", list(METHODS))
def test_sharded_step_matches_one_device(name, mesh_shape):
    ref, got = reference(name), run_steps(name, mesh_shape)
    assert got["sharding"].mesh.shape["model"] == mesh_shape[1]
    assert set(got["masks"]) == set(ref["masks"]) and len(ref["masks"]) == 6
    for path in ref["masks"]:
        np.testing.assert_array_equal(got["masks"][path], ref["masks"][path], err_msg=path)
    for key in ("loss", "task_loss", "regularization", "remaining_weights", "grad_norm"):
        assert got["metrics"][0][key] == pytest.approx(ref["metrics"][0][key], rel=2e-5, abs=1e-7)
    assert_trees_close(got["params"], ref["params"])
    assert_trees_close(got["scores"], ref["scores"])


def test_one_device_mesh_is_exactly_plain_jit():
    _, _, state, step = setup("topk_global")
    batch = make_batch()
    plain_state, plain_m = jax.jit(step, compiler_options=FAST)(state, batch, None)
    mesh = mesh_of((1, 1))
    sharded = jit_train_step(step, mesh, state, BATCH, compiler_options=FAST)
    s1 = sharding.place(state, sharding.tree_shardings(state, mesh))
    mesh_state, mesh_m = sharded(s1, sharding.put_batch(batch, sharding.batch_sharding(mesh, BATCH, True)), None)
    plain, meshed = host((plain_state, plain_m)), host((mesh_state, mesh_m))
    assert jax.tree_util.tree_structure(meshed) == jax.tree_util.tree_structure(plain)
    for x, y in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(meshed),
                    strict=True):
        np.testing.assert_array_equal(x, y)


def test_global_topk_ties_are_cut_by_position_when_sharded():
    """Constant scores: every entry ties; the kept ones are the first k in (leaf, flat index)
    order, on 2x4 exactly as on one device and as a stable sort says."""
    module = tiny_module()
    params = init_params(module, seed=0)
    scores = masking.init_scores(params, "constant", 0.0)
    flat = tree.flatten(scores)
    flat = {p: v.at[:3].set(1.0) for p, v in flat.items()}  # a few above, the rest tied
    scores = tree.unflatten(flat)
    mesh = mesh_of((2, 4))
    placed = sharding.place(scores, sharding.tree_shardings(scores, mesh))
    fn = jax.jit(lambda s: masking.compute_masks(params, s, method="topk", threshold=0.37,
                                                 global_topk=True),
                 out_shardings=sharding.replicated(mesh), compiler_options=FAST)
    got = host(fn(placed))
    paths = masking.prunable_paths(params)
    values = np.concatenate([np.asarray(flat[p]).ravel() for p in paths])
    k = int(0.37 * values.size)
    keep = np.zeros(values.size, bool)
    keep[np.argsort(-values, kind="stable")[:k]] = True
    np.testing.assert_array_equal(np.concatenate([got[p].ravel() for p in paths]), keep)


def test_cached_global_topk_value_sharded():
    """global_topk_frequency=2: the value is recomputed on steps 0 and 2, reused on step 1;
    masks between recomputes are ``scores >= value``; sharded 4x2 = one device."""
    one = run_steps("topk_global", (1, 1), n_steps=3, global_topk_frequency=2)
    got = run_steps("topk_global", (4, 2), n_steps=3, global_topk_frequency=2)
    assert len(one["metrics"]) == len(got["metrics"]) == len(one["before"]) == 3
    for a, b in zip(one["metrics"], got["metrics"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=2e-5)
        assert a["remaining_weights"] == pytest.approx(b["remaining_weights"], abs=1e-6)
        assert a["topk_value"] == pytest.approx(b["topk_value"], rel=1e-5)
    assert_trees_close(got["scores"], one["scores"])
    # step 0 recomputes: exact count (random scores, no ties) at v = 0.5
    assert one["metrics"][0]["remaining_weights"] == pytest.approx(0.5, abs=1e-6)

    pruning = one["pruning"]
    values = []
    for i, (before, m) in enumerate(zip(one["before"], one["metrics"], strict=True)):
        sel = selected(pruning, before["params"], before["scores"])
        flat = np.concatenate([np.ravel(v) for v in sel.values()])
        if i % 2 == 0:  # recomputed: the exact k-th largest score of this step
            k = int(np.floor(np.float32(threshold_at(pruning, i)) * flat.size))
            assert m["topk_value"] == float(np.sort(flat)[-k])
        else:  # kept from the last recompute
            assert m["topk_value"] == values[-1]
        values.append(m["topk_value"])
        assert m["remaining_weights"] == pytest.approx((flat >= m["topk_value"]).mean(), abs=1e-6)


def test_sharded_eval_step_matches_one_device():
    module, pruning, state, _ = setup("topk_global")
    eval_step = make_eval_step(module, pruning)
    batch = {k: v[0] for k, v in make_batch().items() if k in ("input_ids", "attention_mask",
                                                                 "token_type_ids")}
    want = np.asarray(jax.jit(eval_step, compiler_options=FAST)(state.params, state.scores, batch))
    mesh = mesh_of((4, 2))
    placed = sharding.place(state, sharding.tree_shardings(state, mesh))
    fn = jit_eval_step(eval_step, mesh, placed.params, placed.scores, BATCH, compiler_options=FAST)
    got = fn(placed.params, placed.scores,
             sharding.put_batch(batch, sharding.batch_sharding(mesh, BATCH, micro=False)))
    assert got.sharding.is_fully_replicated
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# No score tensor moves between devices
# ----------------------------------------------------------------------------------------------

_SHAPE = re.compile(r"^\s*(?:ROOT\s+)?%?\S+\s*=\s*(\(?[a-z0-9]+\[[^=]*?)\s+all-gather(?:-start)?\(")


def all_gather_shapes(hlo: str) -> list[tuple[int, ...]]:
    """Result shapes of every all-gather in an HLO module's text."""
    shapes = []
    for line in hlo.splitlines():
        if "all-gather" not in line or "=" not in line:
            continue
        m = _SHAPE.match(line)
        if not m:
            continue
        for dims in re.findall(r"[a-z0-9]+\[([0-9,]*)\]", m.group(1)):
            shapes.append(tuple(int(d) for d in dims.split(",") if d))
    return shapes


@pytest.mark.parametrize("mesh_shape,frequency", [((4, 2), 1), ((2, 4), 1), ((2, 4), 25)],
                         ids=["4x2", "2x4", "2x4-frequency25"])
def test_global_topk_step_gathers_no_score_matrix(mesh_shape, frequency):
    """The QA head (no pooler), 40 positions and 4 tokens: no other parameter has a score
    matrix's shape and activations are smaller than one, so all-gathers are listed and each
    must be smaller than any score matrix (a gathered embedding table would fail too)."""
    _, pruning, state, step = setup("topk_global", head="qa", global_topk_frequency=frequency)
    mesh = mesh_of(mesh_shape)
    placed = sharding.place(state, sharding.tree_shardings(state, mesh))
    batch = sharding.put_batch(make_batch(seq=4, qa=True),
                               sharding.batch_sharding(mesh, BATCH, micro=True))
    hlo = jit_train_step(step, mesh, placed, BATCH, compiler_options=FAST).lower(
        placed, batch, None).compile().as_text()
    assert "all-reduce" in hlo  # the counts (and the gradients) are summed across devices
    smallest_score = min(int(np.size(v)) for v in jax.tree_util.tree_leaves(state.scores))
    score_shapes = {np.shape(v) for v in jax.tree_util.tree_leaves(state.scores)}
    others = [np.shape(v) for p, v in tree.flatten(state.params).items()
              if p not in masking.prunable_paths(state.params)]
    assert smallest_score == 32 * 32 and not score_shapes & set(others)
    gathers = all_gather_shapes(hlo)
    assert gathers  # the model-parallel layers do gather (small) activations and biases
    assert all(int(np.prod(s)) < smallest_score for s in gathers), (gathers, smallest_score)

    # the selection alone: scalar all-reduces of counts; the only all-gathers are of small
    # vectors, in the tie split: ties per row (at most one number per row of all the score
    # matrices together, 224 here) and the one row it splits
    masks_fn = jax.jit(lambda s: masks_at(pruning, s.params, s.scores, 0.5),
                       compiler_options=FAST)
    hlo = masks_fn.lower(placed).compile().as_text()
    all_rows = sum(np.shape(v)[0] for v in jax.tree_util.tree_leaves(state.scores))
    assert all_rows < smallest_score
    gathers = all_gather_shapes(hlo)
    assert all(int(np.prod(s)) <= all_rows for s in gathers), (gathers, all_rows)
    assert "all-reduce" in hlo


# ----------------------------------------------------------------------------------------------
# k-th value: every radix gives the exact value, sharded or not
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_kth_key_every_radix_is_exact_and_sharded(bits):
    rng = np.random.default_rng(bits)
    leaves = [np.round(rng.normal(size=(32, 64)), 1).astype(np.float32),  # many ties
              rng.normal(size=(64, 32)).astype(np.float32) * 1e-30,  # tiny magnitudes
              np.concatenate([np.full(40, -0.0), np.full(40, 0.0), -np.inf * np.ones(8),
                              np.inf * np.ones(8), rng.normal(size=32)]).astype(np.float32)
              .reshape(16, 8)]
    bits_ = np.concatenate([x.ravel() for x in leaves]).view(np.uint32)
    order = np.where(bits_ & 0x80000000, ~bits_, bits_ | 0x80000000)  # -0 < +0, as documented
    flat = np.concatenate([x.ravel() for x in leaves])[np.argsort(order, kind="stable")]
    mesh = mesh_of((2, 4))
    placed = [jax.device_put(x, jax.sharding.NamedSharding(mesh, P("data", "model")))
              for x in leaves]
    hlo = jax.jit(lambda xs: binarizers._kth_key(xs, 5, bits=bits)).lower(placed).compile().as_text()
    assert all_gather_shapes(hlo) == [] and "all-reduce" in hlo  # counts only
    for k in (1, 2, 77, 1000, 2048, flat.size - 1, flat.size):
        key = binarizers._kth_key(placed, k, bits=bits)
        got = np.asarray(binarizers._from_order_key(key))
        assert got.view(np.uint32) == flat[-k].view(np.uint32), (k, got, flat[-k])
        # the count carried out of the search is the count at the k-th key
        _, count = jax.jit(binarizers._kth_key_and_count, static_argnums=2)(placed, k, bits)
        assert int(count) == int(np.sum(order >= np.asarray(key))), (k, int(count))


@pytest.mark.parametrize("mesh_shape", [(2, 4), (4, 2)])
def test_tie_split_on_sharded_scores_matches_a_stable_sort(mesh_shape):
    """Few distinct values, scores sharded on both axes: exactly the entries that a stable
    descending sort over (leaf, row-major index) keeps, for k inside every kind of row."""
    rng = np.random.default_rng(0)
    leaves = [rng.integers(0, 3, size=s).astype(np.float32) for s in [(32, 64), (64, 32), (16, 8)]]
    flat = np.concatenate([x.ravel() for x in leaves])
    order = np.argsort(-flat, kind="stable")
    placed = [jax.device_put(x, jax.sharding.NamedSharding(mesh_of(mesh_shape), P("data", "model")))
              for x in leaves]
    split = jax.jit(binarizers._topk_binarize_leaves)
    for k in (1, 7, 700, 1500, 2100, flat.size - 3):
        keep = np.zeros(flat.size, bool)
        keep[order[:k]] = True
        got = np.concatenate([np.asarray(m).ravel() for m in split(placed, k)])
        np.testing.assert_array_equal(got == 1, keep, err_msg=f"k={k}")
