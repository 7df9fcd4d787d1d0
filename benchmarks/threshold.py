"""Time ``kth_largest`` (sort-free bisection) against ``jnp.sort`` on BERT-base's prunable scores.

BERT-base has 12 layers x (4 x 768x768 + 2 x 768x3072) = 84,934,656 prunable weights. Global
selection finds one k-th value over all 72 matrices; local selection one per matrix.

    python benchmarks/threshold.py [--keep 0.1] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import date

import jax
import jax.numpy as jnp

from mvp_jax.pruning.masking import kth_largest


def bert_base_scores(key, layers=12, hidden=768, ffn=3072):
    shapes = [(hidden, hidden)] * 4 + [(hidden, ffn), (ffn, hidden)]
    keys = jax.random.split(key, layers * len(shapes))
    return {f"l{j}_m{i}": jax.random.normal(keys[j * len(shapes) + i], s, jnp.float32)
            for j in range(layers) for i, s in enumerate(shapes)}


def timed(fn, *args, repeats):
    jax.block_until_ready(fn(*args))  # compile + warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=float, default=0.1, help="kept fraction (k = keep * size)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()

    scores = bert_base_scores(jax.random.PRNGKey(0))
    total = sum(v.size for v in scores.values())
    k_global = int(args.keep * total)

    global_bisect = jax.jit(lambda s: kth_largest(s, k_global))
    global_sort = jax.jit(lambda s: jnp.sort(jnp.concatenate([v.ravel() for v in s.values()]))[-k_global])
    local_bisect = jax.jit(lambda s: [kth_largest(v, int(args.keep * v.size)) for v in s.values()])
    local_sort = jax.jit(lambda s: [jnp.sort(v.ravel())[-int(args.keep * v.size)] for v in s.values()])

    assert float(global_bisect(scores)) == float(global_sort(scores))
    assert all(float(a) == float(b) for a, b in zip(local_bisect(scores), local_sort(scores)))

    rows = []
    for name, bisect, sort in (("global", global_bisect, global_sort), ("per-matrix", local_bisect, local_sort)):
        tb = timed(bisect, scores, repeats=args.repeats)
        ts = timed(sort, scores, repeats=args.repeats)
        rows.append({"selection": name, "kth_largest_s": tb, "sort_s": ts, "speedup": ts / tb})
    device = jax.devices()[0]
    result = {"date": date.today().isoformat(), "device": f"{device.platform}: {device.device_kind}",
              "host": platform.processor() or platform.machine(), "n_scores": total,
              "keep": args.keep, "repeats": args.repeats, "results": rows}
    print(f"{total:,} scores, keep={args.keep}, device {result['device']}, median of {args.repeats}")
    print("| selection | kth_largest (s) | jnp.sort (s) | speed-up |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['selection']} | {r['kth_largest_s']:.3f} | {r['sort_s']:.3f} | {r['speedup']:.1f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
