"""Length-bucketed batches: every example once per epoch, exact resume, bucketed evaluation equal
to fixed-length evaluation, bad bucket lists refused by the command line before anything is
written; the train PRNG implementations (train.rng_impl)."""

import json

import jax
import numpy as np
import pytest

from mvp_jax.data import (
    batch_plan,
    batches,
    bucket_length,
    epoch_permutation,
    resolve_buckets,
    sequence_lengths,
)
from mvp_jax.pruning.pruner import Pruner

BUCKETS = (8, 16, 32)


def synthetic(n=203, L=48, seed=0, pad_id=0):
    """Right-padded rows, lengths in 1..L, mostly short (as SST-2's); ``labels`` = the row
    number (to track rows)."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.geometric(1 / 12, n), L)
    lengths[:3] = [L, 1, 9]
    mask = (np.arange(L)[None] < lengths[:, None]).astype(np.int32)
    ids = np.where(mask, rng.integers(5, 1000, (n, L)), pad_id).astype(np.int32)
    types = (mask * rng.integers(0, 2, (n, 1))).astype(np.int32)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types,
            "labels": np.arange(n, dtype=np.int32)}, lengths


@pytest.mark.parametrize("batch_size,mega,drop_last", [(16, 3, False), (7, 1, False),
                                                       (16, 50, False), (16, 3, True)])
def test_bucketed_epoch_visits_every_example_once_and_cuts_only_padding(batch_size, mega,
                                                                        drop_last):
    arrays, lengths = synthetic()
    n, L = len(lengths), arrays["input_ids"].shape[1]
    np.testing.assert_array_equal(sequence_lengths(arrays["attention_mask"]), lengths)
    buckets = resolve_buckets(BUCKETS, L)
    assert buckets == (8, 16, 32, 48)  # the full length is always a bucket
    got = list(batches(arrays, batch_size, seed=3, epoch=1, bucket_lengths=BUCKETS,
                       mega_batch=mega, drop_last=drop_last))
    seen = []
    for b in got:
        real = b["example_weight"] > 0
        rows = b["labels"][real]
        seen += rows.tolist()
        Lb = b["input_ids"].shape[1]
        assert b["input_ids"].shape == b["attention_mask"].shape == b["token_type_ids"].shape \
            == (batch_size, Lb)
        assert b["labels"].shape == b["example_weight"].shape == (batch_size,)
        # the smallest bucket that holds the longest real row
        assert Lb in buckets and Lb == bucket_length(int(lengths[rows].max()), buckets)
        assert Lb >= lengths[rows].max() and (Lb == buckets[0] or
                                              lengths[rows].max() > buckets[buckets.index(Lb) - 1])
        # the cut keeps every real token, drops only padding; padding rows have weight 0
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            np.testing.assert_array_equal(b[key], arrays[key][b["labels"], :Lb])
        assert not arrays["attention_mask"][rows, Lb:].any()
    full, partial = divmod(n, batch_size)
    assert len(got) == (full if drop_last else full + (partial > 0))
    assert sum(b["example_weight"].sum() < batch_size for b in got) == \
        (0 if drop_last else int(partial > 0))
    if drop_last:
        assert len(seen) == full * batch_size and len(set(seen)) == len(seen)
    else:
        assert sorted(seen) == list(range(n))  # each example exactly once
    # grouped by length: far fewer tokens than at one fixed length
    cut = sum(b["input_ids"].size for b in got)
    assert cut < (0.6 if mega > 1 else 0.9) * len(got) * batch_size * L


def test_bucketed_order_is_a_function_of_seed_and_epoch_and_resumes_exactly():
    arrays, _ = synthetic()
    kw = dict(seed=5, epoch=2, bucket_lengths=BUCKETS, mega_batch=2)
    whole = list(batches(arrays, 16, **kw))
    again = list(batches(arrays, 16, **kw))
    for k in (0, 3, len(whole) - 1, len(whole)):
        tail = list(batches(arrays, 16, start=k, **kw))
        assert len(tail) == len(whole) - k
        for a, b in zip(whole[k:], tail):
            assert a.keys() == b.keys()
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])
    assert all(np.array_equal(a["labels"], b["labels"]) for a, b in zip(whole, again))
    other = list(batches(arrays, 16, **{**kw, "epoch": 3}))
    assert any(not np.array_equal(a["labels"], b["labels"]) for a, b in zip(whole, other))
    # the batch order is shuffled: the longest batch is not always first
    firsts = [next(batches(arrays, 16, **{**kw, "epoch": e}))["input_ids"].shape[1]
              for e in range(8)]
    assert len(set(firsts)) > 1
    with pytest.raises(ValueError, match="start=99"):
        list(batches(arrays, 16, start=99, **kw))


def test_without_buckets_the_order_is_unchanged():
    """No buckets: the epoch's permutation cut in order, as before bucketing existed (resumed
    runs of older versions see the same batches)."""
    arrays, _ = synthetic(n=50)
    perm = epoch_permutation(50, 7, 1)
    got = list(batches(arrays, 16, seed=7, epoch=1))
    assert [b["input_ids"].shape[1] for b in got] == [48] * 4
    np.testing.assert_array_equal(np.concatenate([b["labels"] for b in got])[:50], perm)
    np.testing.assert_array_equal(got[-1]["labels"][2:], perm[0])  # filled with the first row
    plan = batch_plan(50, 16, seed=7, epoch=1)
    np.testing.assert_array_equal(np.concatenate(plan), perm)


def test_evaluation_plan_sorts_the_whole_split_longest_first():
    _, lengths = synthetic()
    plan = batch_plan(len(lengths), 16, shuffle=False, lengths=lengths)
    order = np.concatenate(plan)
    assert sorted(order.tolist()) == list(range(len(lengths)))
    assert np.all(np.diff(lengths[order]) <= 0)


def test_resolve_buckets_errors_name_the_key():
    assert resolve_buckets([16, 32], 32) == (16, 32)
    assert resolve_buckets([16], 128) == (16, 128)
    for bad, msg in [([], "must not be empty"), ([32, 16], "must be strictly increasing"),
                     ([8, 8], "must be strictly increasing"), ([0, 8], "must be >= 1"),
                     ([16, 256], r"must be <= the maximum sequence length \(128\)")]:
        with pytest.raises(ValueError, match=rf"^data\.bucket_lengths {msg}"):
            resolve_buckets(bad, 128)
    with pytest.raises(ValueError, match="attention_mask"):
        next(batches({"input_ids": np.zeros((4, 8), np.int32)}, 2, bucket_lengths=[4]))


# ----------------------------------------------------------------------------------------------
# Evaluation: masks once, bucketed batches, predictions in the original order
# ----------------------------------------------------------------------------------------------


def test_bucketed_predict_matches_fixed_length_on_minilm(shared_data, tok):
    from mvp_jax import data
    from mvp_jax.config import PruneConfig
    from mvp_jax.models import load_pretrained
    from mvp_jax.training.evaluation import EvalStep, make_eval_step, predict

    pre = load_pretrained("minilm-l6", head="classification", num_labels=2)
    task = data.load_task("sst2", tok, data_dir=shared_data / "glue" / "SST-2", max_seq_length=32,
                          max_eval_samples=40, with_train=False)
    feats = task.evals["validation"].features
    lengths = sequence_lengths(feats["attention_mask"])
    assert lengths.max() > 16 > lengths.min()  # both buckets in use
    pruning = PruneConfig(method="magnitude", final_threshold=0.4)
    step = make_eval_step(pre.module, Pruner.from_config(pruning, pre.module))
    assert isinstance(step, EvalStep)
    jitted = step.jit()
    fixed = predict(jitted, pre.params, {}, feats, 16)
    bucketed = predict(jitted, pre.params, {}, feats, 16, bucket_lengths=(16,))
    assert fixed.shape == bucketed.shape == (40, 2)
    np.testing.assert_allclose(bucketed, fixed, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(bucketed.argmax(-1), fixed.argmax(-1))
    # the masks once per evaluation = the masks recomputed in every batch (the old eval step)
    per_batch = jax.jit(lambda p, s, b: step(p, s, b))
    np.testing.assert_array_equal(predict(per_batch, pre.params, {}, feats, 16), fixed)
    # the rows are returned in their own order: a permuted split gives permuted outputs
    perm = np.random.default_rng(0).permutation(40)
    shuffled = predict(jitted, pre.params, {}, {k: v[perm] for k, v in feats.items()}, 16,
                       bucket_lengths=(16,))
    np.testing.assert_allclose(shuffled, bucketed[perm], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# fine_prune with buckets: exact resume; bad bucket lists from the command line
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, tok):
    """A 1-layer random BERT (hidden 32) with the MiniLM tokenizer: compiles fast."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    path = tmp_path_factory.mktemp("tiny") / "model"
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=48, max_position_embeddings=64,
                     num_labels=2)
    BertForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def tiny_config(shared_data, model, *extra):
    from mvp_jax.config import load_config

    return load_config(None, [
        f"model.name={model}", f"task.data_dir={shared_data / 'glue' / 'SST-2'}",
        "task.max_seq_length=32", "data.max_train_samples=24", "data.max_eval_samples=16",
        "data.bucket_lengths=[16]", "data.bucket_mega_batch=1", "train.batch_size=8",
        "train.gradient_accumulation_steps=2", "train.max_steps=5", "train.warmup_steps=1",
        "train.learning_rate=1e-3", "train.log_every=1", "prune.method=none", *extra])


def final_state(run_dir):
    from mvp_jax.training.rundir import read_checkpoint

    return read_checkpoint(str(run_dir), ("params", "scores", "step", "rng"))


@pytest.mark.slow
def test_bucketed_fine_prune_resumes_bit_for_bit(tmp_path, shared_data, tiny_model):
    """24 examples, 16 per step (8 x 2 micro-batches, split over the 8 test devices): 2 steps an
    epoch, the second one partial, so the run crosses two epochs; stopped at step 3 (mid-epoch)
    and resumed, the params and key equal an uninterrupted run's (dropout on: the key matters;
    method none: the step compiles fastest, test_fine_prune resumes the pruning methods). Two
    lengths (16, 32), so two compilations per run."""
    from mvp_jax.training.runner import _batch_iterator, fine_prune, load_setup

    cfg = tiny_config(shared_data, tiny_model)
    setup = load_setup(cfg)
    assert setup.buckets == (16, 32) and setup.steps_per_epoch == 2
    it = _batch_iterator(setup, 0)
    shapes = [next(it)["input_ids"].shape for _ in range(5)]
    assert all(s[:2] == (2, 8) and s[2] in setup.buckets for s in shapes)
    assert len({s[2] for s in shapes}) > 1  # several compiled lengths in the run

    full = fine_prune(cfg, str(tmp_path / "full"), progress=False)
    assert fine_prune(cfg, str(tmp_path / "split"), progress=False, stop_at_step=3) == \
        {"step": 3, "complete": False}
    split = fine_prune(cfg, str(tmp_path / "split"), progress=False, resume=True)
    a, b = final_state(tmp_path / "full"), final_state(tmp_path / "split")
    assert int(a["step"]) == int(b["step"]) == 5
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)
    assert full["metrics"] == split["metrics"]
    lines = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text()
             .splitlines() if '"loss"' in line]
    assert [line["step"] for line in lines] == list(range(1, 6))
    # real tokens per second: fewer than padded ones, more than one per example
    assert all(line["tokens_per_s"] > line["examples_per_s"] > 0 for line in lines)


BAD_BUCKETS = [
    (["data.bucket_lengths=[]"], "data.bucket_lengths must not be empty"),
    (["data.bucket_lengths=[32, 16]"], "data.bucket_lengths must be strictly increasing"),
    (["data.bucket_lengths=[0, 16]"], "data.bucket_lengths must be >= 1"),
    (["task.max_seq_length=64", "data.bucket_lengths=[16, 128]"],
     "data.bucket_lengths must be <= task.max_seq_length (64)"),
    # task.max_seq_length unset: checked against the task's default (128) when the run starts
    (["data.bucket_lengths=[16, 256]"],
     "data.bucket_lengths must be <= the maximum sequence length (128)"),
    (["task.name=squad", "data.bucket_lengths=[128]"],
     "data.bucket_lengths applies to classification and regression tasks"),
    (["train.rng_impl=philox"], "train.rng_impl"),
    (["train.optimizer=lamb"], "unknown train.optimizer 'lamb'"),
    (["prune.mask_init=xavier"], "unknown prune.mask_init 'xavier'"),
]


@pytest.mark.parametrize("overrides,message", BAD_BUCKETS, ids=[o[-1] for o, _ in BAD_BUCKETS])
def test_bad_buckets_are_one_line_exit_2_and_write_nothing(tmp_path, shared_data, capsys,
                                                          overrides, message):
    from mvp_jax.cli import main

    args = ["fine-prune", "--output-dir", str(tmp_path / "run"),
            "--set", f"task.data_dir={shared_data / 'glue' / 'SST-2'}",
            "--set", "data.max_train_samples=16", "--set", "train.max_steps=1"]
    for o in overrides:
        args += ["--set", o]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mvp-jax: error: "), err
    assert message in lines[0]
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------
# The train PRNG
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["threefry", "rbg", "unsafe_rbg"])
def test_state_rng_is_raw_key_data_of_its_impl(impl):
    from mvp_jax.training.optim import make_optimizer
    from mvp_jax.training.sharding import make_mesh, tree_shardings
    from mvp_jax.training.train import init_state, prng_key

    opt = make_optimizer(learning_rate=1e-3, total_steps=2)
    state = init_state({"w": np.zeros((2, 3), np.float32)}, {}, opt, seed=4, rng_impl=impl)
    assert state.rng.dtype == np.uint32 and state.rng_impl == impl
    assert state.rng.shape == ((2,) if impl == "threefry" else (4,))
    if impl == "threefry":  # the same stream as before train.rng_impl existed
        np.testing.assert_array_equal(state.rng, jax.random.PRNGKey(4))
    key = state.key()
    assert jax.random.key_impl(key) == jax.random.key_impl(prng_key(state.rng, impl))
    # a new key is stored back as raw data; the impl is static (not a leaf): placed as before
    nxt, _ = jax.random.split(key)
    assert state.replace(rng=jax.random.key_data(nxt)).rng_impl == impl
    assert len(jax.tree_util.tree_leaves(tree_shardings(state, make_mesh(8, 1)))) == \
        len(jax.tree_util.tree_leaves(state))
    with pytest.raises(ValueError, match="unknown rng_impl"):
        init_state({"w": np.zeros(2, np.float32)}, {}, opt, seed=0, rng_impl="philox")


def _tiny_step(rng_impl, mesh_shape):
    """A 1-layer BERT (dropout 0.1), method none: a step compiled for ``mesh_shape``, a function
    giving a fresh placed state (rng of ``rng_impl``) and the batch placement."""
    from transformers import BertConfig

    from mvp_jax.config import PruneConfig
    from mvp_jax.models import build_module, init_params
    from mvp_jax.training import sharding
    from mvp_jax.training.optim import make_optimizer
    from mvp_jax.training.train import init_state, jit_train_step, make_train_step

    module = build_module(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=40), head="classification",
                          num_labels=2)
    optimizer = make_optimizer(learning_rate=1e-3, total_steps=10, freeze_embeddings=False)
    params = jax.device_get(init_params(module, seed=0))
    mesh = sharding.make_mesh(*mesh_shape, devices=jax.devices()[:mesh_shape[0] * mesh_shape[1]])

    def fresh():
        state = init_state(params, {}, optimizer, seed=0, rng_impl=rng_impl)
        return sharding.place(state, sharding.tree_shardings(state, mesh))

    state = fresh()
    dense = Pruner.from_config(PruneConfig(method="none"), module, total_steps=10)
    step = jit_train_step(make_train_step(module, "classification", dense, optimizer), mesh,
                          state, 8,
                          compiler_options={"xla_backend_optimization_level": 0})
    put = sharding.batch_sharding(mesh, 8, micro=True)
    return step, fresh, lambda b: sharding.put_batch(b, put)


def _micro_batch(seed, seq):
    rng = np.random.default_rng(seed)
    mask = (np.arange(seq)[None, None] < rng.integers(2, seq + 1, (1, 8, 1))).astype(np.int32)
    return {"input_ids": (rng.integers(1, 100, (1, 8, seq)) * mask).astype(np.int32),
            "attention_mask": mask, "token_type_ids": np.zeros((1, 8, seq), np.int32),
            "labels": rng.integers(0, 2, (1, 8)).astype(np.int32),
            "example_weight": np.ones((1, 8), np.float32)}


def test_rbg_steps_are_deterministic_resumable_and_mesh_independent_on_cpu():
    """rng_impl=rbg (needs make_train_step to split ``state.key()``): the same seed gives the
    same params bit for bit, a state taken to the host and placed again (a checkpoint) continues
    exactly, batches of two lengths run through one compiled function, and on the CPU a 4 x 2
    mesh draws the dropout masks of one device (XLA replicates RngBitGenerator when
    partitioning; on TPU with --xla_tpu_spmd_rng_bit_generator_unsafe it would not)."""
    from mvp_jax.training import sharding

    lengths = [16, 8, 16]

    def run(setup, resume_at=None, steps=3):
        step, fresh, put = setup
        state, losses = fresh(), []
        for i, seq in enumerate(lengths[:steps]):
            if i == resume_at:  # through the host, as a checkpoint restore
                host = jax.device_get(state)
                mesh = jax.tree_util.tree_leaves(state)[0].sharding.mesh
                state = sharding.place(host, sharding.tree_shardings(host, mesh))
            state, m = step(state, put(_micro_batch(i, seq)), None)
            losses.append(float(m["loss"]))
        assert state.rng.dtype == np.uint32
        return losses, jax.device_get((state.params, state.rng))

    rbg = _tiny_step("rbg", (1, 1))
    one = run(rbg)
    assert one[1][1].shape == (4,)
    for again in (run(rbg), run(rbg, resume_at=2)):
        for a, b in zip(jax.tree_util.tree_leaves(one[1]), jax.tree_util.tree_leaves(again[1])):
            np.testing.assert_array_equal(a, b)
    first, sharded = run(rbg, steps=1), run(_tiny_step("rbg", (4, 2)), steps=1)
    np.testing.assert_allclose(sharded[0], first[0], rtol=1e-5)
    np.testing.assert_array_equal(sharded[1][1], first[1][1])
    leaves = jax.tree_util.tree_leaves
    for a, b in zip(leaves(sharded[1][0]), leaves(first[1][0])):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    # threefry draws other dropout masks from the same seed: the implementation is in use
    assert run(_tiny_step("threefry", (1, 1)), steps=1)[0][0] != one[0][0]
