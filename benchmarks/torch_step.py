"""The same train step in mvp-jax and in the PyTorch reference loop, same shape, same CPU.

mvp-jax: ``make_train_step`` + ``jit_train_step`` on one device (reference AdamW, embeddings
frozen, clipping, dropout off). PyTorch: ``tests/torch_reference.py`` (transformers'
``BertForSequenceClassification`` with masked linear layers, the paper's training step: the
oracle of tests/test_reference_loop.py), dropout off. Both start from the embedded MiniLM and
see the same random batches of full-length rows; their steps alternate in blocks, so both see
the same load on a shared machine. Reported: median seconds per step and mvp-jax / torch.

    python benchmarks/torch_step.py --seq-len 64 --batch-size 32 --rounds 5 --steps 5 \\
        --json benchmarks/results/cpu-2026-11-28/torch_step.json

Variants: ``dense`` (plain fine-tuning) and ``topk`` (movement pruning, local Top-v, mid-schedule).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def jax_step(variant: str, seq: int, batch: int, dtype: str):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from mvp_jax.config import PruneConfig
    from mvp_jax.models import load_pretrained
    from mvp_jax.pruning import masking
    from mvp_jax.pruning.pruner import Pruner
    from mvp_jax.training import sharding
    from mvp_jax.training.optim import make_optimizer
    from mvp_jax.training.train import init_state, jit_train_step, make_train_step

    pre = load_pretrained("minilm-l6", head="classification", num_labels=2,
                          dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32)
    module = pre.module.clone(spec=dataclasses.replace(
        pre.module.spec, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    method = "none" if variant == "dense" else "topk"
    pruning = PruneConfig(method=method, initial_threshold=1.0, final_threshold=0.15,
                          initial_warmup=0, final_warmup=0)
    scores = masking.init_scores(pre.params, "constant", 0.0) if method == "topk" else {}
    if scores:  # no ties: distinct scores, as after a few updates
        scores = jax.tree_util.tree_map(
            lambda s: s + jax.random.uniform(jax.random.PRNGKey(0), s.shape, minval=-1e-2,
                                             maxval=1e-2), scores)
    optimizer = make_optimizer(learning_rate=1e-5, scores_learning_rate=1e-2, total_steps=1000,
                               warmup_steps=0, optimizer="reference_adamw")
    state = init_state(pre.params, scores, optimizer, seed=0)
    mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
    state = sharding.place(state, sharding.tree_shardings(state, mesh))
    pruner = Pruner.from_config(pruning, module, total_steps=1000)
    step = jit_train_step(make_train_step(module, "classification", pruner, optimizer), mesh,
                          state, batch)
    rng = np.random.default_rng(0)
    host = {"input_ids": rng.integers(1000, 20000, (1, batch, seq)).astype(np.int32),
            "attention_mask": np.ones((1, batch, seq), np.int32),
            "token_type_ids": np.zeros((1, batch, seq), np.int32),
            "labels": rng.integers(0, 2, (1, batch)).astype(np.int32),
            "example_weight": np.ones((1, batch), np.float32)}
    dev = sharding.put_batch(host, sharding.batch_sharding(mesh, batch, micro=True))
    box = {"state": state}

    def run(n):
        for _ in range(n):
            box["state"], metrics = step(box["state"], dev, None)
        jax.block_until_ready(box["state"])

    run(2)  # compile and warm up
    return run


def torch_step(variant: str, seq: int, batch: int):
    import torch
    import torch_reference as ref
    from torch import nn
    from transformers import BertForSequenceClassification

    from mvp_jax.models import resolve_model_path

    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(resolve_model_path("minilm-l6"),
                                                          num_labels=2)
    g = torch.Generator().manual_seed(0)
    data = {"input_ids": torch.randint(1000, 20000, (batch, seq), generator=g),
            "attention_mask": torch.ones(batch, seq, dtype=torch.long),
            "token_type_ids": torch.zeros(batch, seq, dtype=torch.long),
            "labels": torch.randint(0, 2, (batch,), generator=g)}
    if variant == "topk":
        shapes = {n: m.weight.shape for n, m in model.named_modules()
                  if isinstance(m, nn.Linear) and ".encoder.layer." in n}
        scores = {n: torch.empty(s).uniform_(-1e-2, 1e-2, generator=g) for n, s in shapes.items()}
        oracle = ref.build(model, ref.Recipe(method="topk", final_threshold=0.15,
                                             initial_warmup=0, final_warmup=0, warmup_steps=0,
                                             total_steps=1000, learning_rate=1e-5), scores)
        one = lambda: oracle.train_step(data)  # noqa: E731
    else:  # the same loop without masks: frozen embeddings, clipping, the reference AdamW
        for p in model.bert.embeddings.parameters():
            p.requires_grad_(False)
        model.eval()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = ref.ReferenceAdamW([{"params": params, "lr": 1e-5, "weight_decay": 0.0}], lr=1e-5)

        def one():
            loss = nn.functional.cross_entropy(model(**{k: v for k, v in data.items()
                                                        if k != "labels"}).logits,
                                               data["labels"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

    def run(n):
        for _ in range(n):
            one()

    run(2)
    return run


def timed(run, steps: int) -> float:
    tic = time.perf_counter()
    run(steps)
    return (time.perf_counter() - tic) / steps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--variants", nargs="+", default=["dense", "topk"],
                    choices=["dense", "topk"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="mvp-jax compute dtype (torch stays float32)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5, help="steps per block")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    import torch

    rows = []
    for variant in args.variants:
        runs = {"mvp-jax": jax_step(variant, args.seq_len, args.batch_size, args.dtype),
                "torch": torch_step(variant, args.seq_len, args.batch_size)}
        times = {k: [] for k in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                times[name].append(timed(run, args.steps))
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"variant": variant, "seq_len": args.seq_len, "batch_size": args.batch_size,
               "mvp_jax_dtype": args.dtype, "mvp_jax_s": round(med["mvp-jax"], 4),
               "torch_s": round(med["torch"], 4),
               "ratio_jax_over_torch": round(med["mvp-jax"] / med["torch"], 3),
               "blocks": {k: [round(x, 4) for x in v] for k, v in times.items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {"date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
              "command": " ".join(["python", *sys.argv]), "rows": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
