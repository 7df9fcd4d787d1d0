"""Train-step time and memory: dense fine-tuning and every pruning method, same model code.

For each model shape and sequence length, one compiled train step per variant (the library's
``make_train_step`` + ``jit_train_step`` on a mesh over all devices, AdamW, dropout on):

    dense               method none (plain fine-tuning)
    magnitude           Top-v(|W|) per matrix
    topk                movement pruning, Top-v(S) per matrix
    topk-global         one Top-v over all prunable matrices (exact k-th value every step)
    topk-global-f25     the same, value recomputed every 25 steps (prune.global_topk_frequency)
    sigmoied_threshold  soft movement (sigmoid(S) > tau, L1 penalty)
    l0                  hard-concrete L0 masks (a fresh sample per micro-batch)

Reported: median and mean step time over ``--steps`` steps after compilation and warm-up
(the mean includes topk-global-f25's recompute steps), the ratio to the dense step (each
variant's steps alternate with dense steps, and the ratio is against those), examples/s,
the compiled step's memory (arguments + outputs - donated + temporaries, per device, from XLA's
memory analysis) and, with ``--mfu`` (default on GPU/TPU), the model FLOP utilisation against a
matmul peak measured here with a big ``jnp.dot`` in the compute dtype.

Model FLOPs per step: 3 x forward, forward = 2 x (matmul weights) per token + 4 x L x seq x H
for QK^T and AV per token (Kaplan et al. 2020 style; masks, softmax, LayerNorm not counted).

    python benchmarks/step_time.py --models minilm-l6 bert-base --seq-lens 128 384 \\
        --batch-size 32 --steps 20 [--variants dense topk ...] [--json out.json]

Models: ``minilm-l6`` (the embedded MiniLM's config) and ``bert-base`` (bert-base-uncased's
dimensions); weights are random (no download), scores uniform in +-0.01 (no ties).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import date

import jax
import jax.numpy as jnp
import numpy as np

from mvp_jax.config import PruneConfig
from mvp_jax.models import build_module, init_params
from mvp_jax.pruning import masking
from mvp_jax.pruning.pruner import Pruner
from mvp_jax.training import sharding as shd
from mvp_jax.training.optim import make_optimizer
from mvp_jax.training.train import init_state, jit_train_step, make_train_step

TOTAL_STEPS = 10_000  # the schedule's length; timing starts half-way (v about 0.26)

VARIANTS = {
    "dense": dict(method="none"),
    "magnitude": dict(method="magnitude"),
    "topk": dict(method="topk"),
    "topk-global": dict(method="topk", global_topk=True),
    "topk-global-f25": dict(method="topk", global_topk=True, global_topk_frequency=25),
    "sigmoied_threshold": dict(method="sigmoied_threshold", initial_threshold=0.0,
                               final_threshold=0.1, regularization="l1", final_lambda=400.0),
    "l0": dict(method="l0", initial_threshold=1.0, final_threshold=1.0, regularization="l0",
               final_lambda=1.0),
}
SCORE_INIT = {"topk": ("uniform", 0.01), "sigmoied_threshold": ("constant", 0.0),
              "l0": ("constant", 2.197)}


# The two shapes timed (random weights: only the dimensions matter, so no checkpoint is read and
# the script runs where neither the hub nor the embedded model is installed, e.g. a GPU box).
SHAPES = {
    "minilm-l6": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                      intermediate_size=1536),  # the embedded all-MiniLM-L6-v2
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072),  # bert-base-uncased
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64),  # not timed: the script's own smoke test
}


def model_config(name: str):
    from transformers import BertConfig

    if name not in SHAPES:
        raise SystemExit(f"unknown model {name!r}; choose one of {', '.join(SHAPES)}")
    return BertConfig(vocab_size=30522, max_position_embeddings=512, type_vocab_size=2,
                      **SHAPES[name])


def model_flops_per_step(config, batch: int, seq: int) -> float:
    h, i, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    matmul_weights = n * (4 * h * h + 2 * h * i) + h * h  # encoder + pooler
    forward_per_token = 2 * matmul_weights + 4 * n * seq * h
    return 3.0 * forward_per_token * batch * seq


def matmul_peak(dtype, n: int, repeats: int = 10) -> float:
    """FLOP/s of an ``n x n @ n x n`` matmul in ``dtype`` (median of ``repeats``)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    jax.block_until_ready(f(a, b))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a, b))
        times.append(time.perf_counter() - t0)
    return 2.0 * n ** 3 / statistics.median(times)


def synthetic_batch(config, batch: int, seq: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return {
        "input_ids": rng.integers(0, config.vocab_size, (1, batch, seq)).astype(np.int32),
        "attention_mask": np.ones((1, batch, seq), np.int32),
        "token_type_ids": np.zeros((1, batch, seq), np.int32),
        "labels": rng.integers(0, 2, (1, batch)).astype(np.int32),
        "example_weight": np.ones((1, batch), np.float32),
    }


class Variant:
    """One compiled train step with its own state and two device batches."""

    def __init__(self, module, params, config, variant: str, *, batch: int, seq: int, mesh):
        kw = dict(initial_threshold=1.0, final_threshold=0.15)
        kw.update(VARIANTS[variant])
        pruning = PruneConfig(**kw)
        scores = {}
        if pruning.method in SCORE_INIT:
            init, scale = SCORE_INIT[pruning.method]
            scores = masking.init_scores(params, init, scale, rng=jax.random.PRNGKey(1))
        optimizer = make_optimizer(learning_rate=3e-5, total_steps=TOTAL_STEPS)
        state = init_state(params, scores, optimizer, seed=0)
        state = state.replace(step=jnp.int32(TOTAL_STEPS // 2))
        self.state = shd.place(state, shd.tree_shardings(state, mesh))
        step_fn = make_train_step(module, "classification",
                                  Pruner.from_config(pruning, module, total_steps=TOTAL_STEPS),
                                  optimizer)
        jitted = jit_train_step(step_fn, mesh, self.state, batch)
        put = shd.batch_sharding(mesh, batch, micro=True)
        self.batches = [shd.put_batch(synthetic_batch(config, batch, seq, s), put) for s in range(2)]
        t0 = time.perf_counter()
        self.compiled = jitted.lower(self.state, self.batches[0], None).compile()
        self.compile_s = time.perf_counter() - t0
        mem = self.compiled.memory_analysis()
        self.memory = None
        if mem is not None:
            self.memory = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                           - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
        self.name, self.times, self.i, self.metrics = variant, [], 0, None

    def step(self, timed: bool = True) -> None:
        t = time.perf_counter()
        self.state, self.metrics = self.compiled(self.state, self.batches[self.i % 2], None)
        jax.block_until_ready((self.state, self.metrics))
        if timed:
            self.times.append(time.perf_counter() - t)
        self.i += 1

    def result(self) -> dict:
        loss = float(self.metrics["loss"])
        assert np.isfinite(loss), f"{self.name}: loss {loss}"
        return {"variant": self.name, "median_s": statistics.median(self.times),
                "mean_s": statistics.fmean(self.times), "min_s": min(self.times),
                "compile_s": self.compile_s, "memory_bytes": self.memory,
                "remaining": float(self.metrics["remaining_weights"])}


def bench(module, params, config, variants, *, batch, seq, steps, warmup, mesh) -> list[dict]:
    """Each variant's steps alternate with dense steps (other load on the machine then weighs on
    both alike); a variant's ratio is against the dense steps taken alongside it."""
    dense = Variant(module, params, config, "dense", batch=batch, seq=seq, mesh=mesh)
    for _ in range(warmup):
        dense.step(timed=False)
    rows = []
    for name in [v for v in variants if v != "dense"]:
        v = Variant(module, params, config, name, batch=batch, seq=seq, mesh=mesh)
        for _ in range(warmup):
            v.step(timed=False)
        start = len(dense.times)
        for i in range(steps):
            first, second = (dense, v) if i % 2 == 0 else (v, dense)
            first.step()
            second.step()
        r = v.result()
        r["dense_median_s"] = statistics.median(dense.times[start:])
        r["ratio"] = r["median_s"] / r["dense_median_s"]
        rows.append(r)
        del v
    if not dense.times:  # dense alone
        for _ in range(steps):
            dense.step()
    r = dense.result()
    r["ratio"] = 1.0
    return [r, *rows] if "dense" in variants else rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["minilm-l6", "bert-base"])
    ap.add_argument("--seq-lens", nargs="+", type=int, default=[128, 384])
    ap.add_argument("--batch-size", nargs="+", type=int, default=[32],
                    help="one value, or one per model (global batch, split over the devices)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="compute dtype (auto: bfloat16 on GPU/TPU, float32 on CPU)")
    ap.add_argument("--mfu", action=argparse.BooleanOptionalAction, default=None,
                    help="measure the matmul peak and report MFU (default: on GPU/TPU only)")
    ap.add_argument("--peak-size", type=int, default=None,
                    help="matmul size for the peak (default 8192 on GPU/TPU, 2048 on CPU)")
    ap.add_argument("--mesh-model", type=int, default=1, help="model-parallel axis size")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args(argv)

    device = jax.devices()[0]
    on_cpu = device.platform == "cpu"
    dtype_name = args.dtype if args.dtype != "auto" else ("float32" if on_cpu else "bfloat16")
    dtype = jnp.float32 if dtype_name == "float32" else jnp.bfloat16
    mfu = (not on_cpu) if args.mfu is None else args.mfu
    mesh = shd.make_mesh(None, args.mesh_model)
    peak = None
    if mfu:
        peak = matmul_peak(dtype, args.peak_size or (2048 if on_cpu else 8192))
    batch_sizes = args.batch_size * len(args.models) if len(args.batch_size) == 1 else args.batch_size
    if len(batch_sizes) != len(args.models):
        raise SystemExit("--batch-size: one value, or one per model")

    header = {"date": date.today().isoformat(), "device": f"{device.platform}: {device.device_kind}",
              "devices": jax.device_count(), "host": platform.processor() or platform.machine(),
              "jax": jax.__version__, "dtype": dtype_name, "mesh": dict(mesh.shape),
              "matmul_peak_flops": peak, "command": " ".join(["python", *sys.argv])}
    print(json.dumps(header))
    print("| model | seq | batch | variant | median step (ms) | mean (ms) | x dense (paired) "
          "| examples/s | memory (GiB) | MFU |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for model_name, batch in zip(args.models, batch_sizes):
        config = model_config(model_name)
        module = build_module(config, head="classification", num_labels=2, dtype=dtype)
        params = jax.device_get(init_params(module, seed=0))  # host copy: the steps donate
        for seq in args.seq_lens:
            flops = model_flops_per_step(config, batch, seq)
            for r in bench(module, params, config, args.variants, batch=batch, seq=seq,
                           steps=args.steps, warmup=args.warmup, mesh=mesh):
                r.update(model=model_name, seq=seq, batch=batch,
                         examples_per_s=batch / r["median_s"], model_flops=flops,
                         mfu=(flops / r["median_s"] / peak) if peak else None)
                rows.append(r)
                mem = f"{r['memory_bytes'] / 2**30:.2f}" if r["memory_bytes"] is not None else "-"
                mfu_s = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
                print(f"| {model_name} | {seq} | {batch} | {r['variant']} | "
                      f"{1e3 * r['median_s']:.1f} | {1e3 * r['mean_s']:.1f} | {r['ratio']:.3f} | "
                      f"{r['examples_per_s']:.2f} | {mem} | {mfu_s} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**header, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
