"""Compressed size of a BERT-base-shaped model at a given density (default 6%).

Random weights (normal, std 0.02 as BERT's init), movement-like random masks (Top-v of uniform
scores, per matrix), then ``save_compressed``. The paper's reference: BERT-base encoder + head
at 6% density, 340 MB dense float32 -> 11 MB. Also compares the bitmask index with CSR using
16-bit column indices (both deflated) on the same masks.

    JAX_PLATFORMS=cpu python benchmarks/compressed_size.py [--density 0.06] [--head qa]

(Not named compression.py: that would shadow the ``compression`` package jax imports, since the
script's directory comes first on sys.path.)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import zlib
from functools import partial

import jax
import numpy as np
from transformers import BertConfig

from mvp_jax import tree
from mvp_jax.export.compressed import quantize_int8, save_compressed
from mvp_jax.export.huggingface import count_remaining
from mvp_jax.models import build_module, init_params
from mvp_jax.pruning.masking import apply_masks, init_scores, prunable_paths

MB = 1e6


def index_sizes(params) -> dict:
    """Deflated bytes of the two index encodings over all prunable matrices."""
    flat = tree.flatten(params)
    bitmask = csr = 0
    for path in prunable_paths(params):
        q, _ = quantize_int8(np.asarray(flat[path]))
        mask = q != 0
        bitmask += len(zlib.compress(np.packbits(mask.ravel()).tobytes(), 9))
        rows, cols = np.nonzero(mask)
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=mask.shape[0]))])
        csr += len(zlib.compress(cols.astype(np.uint16).tobytes(), 9))
        csr += len(zlib.compress(indptr.astype(np.int32).tobytes(), 9))
    return {"bitmask_bytes": bitmask, "csr16_bytes": csr}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--density", type=float, default=0.06)
    ap.add_argument("--head", default="qa", choices=["qa", "classification"])
    args = ap.parse_args()
    config = BertConfig()  # BERT-base: 12 layers, H=768, FFN 3072, vocab 30522
    module = build_module(config, args.head, 2)
    params = init_params(module, seed=0)
    scores = init_scores(params, "uniform", 1.0, jax.random.PRNGKey(1))
    mask_fn = jax.jit(partial(apply_masks, method="topk", threshold=args.density))
    params = jax.device_get(mask_fn(params, scores))
    del scores
    counts = count_remaining(params)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        report = save_compressed(os.path.join(d, "bert-base.mvpz"), params, config, args.head)
        report["save_seconds"] = round(time.perf_counter() - t0, 1)
    report["remaining_fraction"] = counts["fraction"]
    report["index"] = index_sizes(params)
    enc = report["encoder+head"]
    print(json.dumps(report, indent=1))
    print(f"\nBERT-base-shaped, head={args.head}, "
          f"{100 * counts['fraction']:.2f}% of prunable weights")
    print(f"encoder+head: {enc['dense_float32_bytes'] / MB:.1f} MB dense float32 -> "
          f"{enc['bytes'] / MB:.2f} MB ({enc['ratio']:.1f}x); paper reference 340 MB -> 11 MB")
    print(f"whole file (incl. float16 embeddings): {report['dense_float32_bytes'] / MB:.1f} MB -> "
          f"{report['file_bytes'] / MB:.2f} MB ({report['ratio']:.1f}x)")
    print(f"index, deflated: bitmask {report['index']['bitmask_bytes'] / MB:.2f} MB vs "
          f"CSR 16-bit columns {report['index']['csr16_bytes'] / MB:.2f} MB")


if __name__ == "__main__":
    main()
