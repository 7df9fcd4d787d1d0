"""Two runs of one recipe and seed, compared: the same final masks, weights and dev metrics?

Used to show that a change of code (a refactor) changes no behaviour: run the recipe on the old
tree and on the new one, on the same machine, then

    python benchmarks/same_run.py RUN_OLD RUN_NEW --json results/flagship/same_run.json

It compares each run's exported model (``export/model.safetensors``: ``W * M``) tensor by
tensor, bit for bit, and the masks (the non-zero pattern of every prunable kernel), and the
final ``eval_results.json`` and ``counts.json``. Exit 0 when all are equal, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file


def compare(old: Path, new: Path) -> dict:
    a = load_file(str(old / "export" / "model.safetensors"))
    b = load_file(str(new / "export" / "model.safetensors"))
    differing = sorted(k for k in a.keys() & b.keys() if not np.array_equal(a[k], b[k]))
    masks = sorted(k for k in a.keys() & b.keys()
                   if a[k].ndim == 2 and not np.array_equal(a[k] != 0, b[k] != 0))
    evals = [json.loads((d / "eval_results.json").read_text()) for d in (old, new)]
    counts = [json.loads((d / "counts.json").read_text()) for d in (old, new)]
    kernels = [k for k in a if a[k].ndim == 2 and "encoder" in k]
    return {
        "old": str(old), "new": str(new),
        "tensors": len(a), "same_tensor_names": sorted(a) == sorted(b),
        "tensors_differing": differing, "masks_differing": masks,
        "encoder_kernels_compared": len(kernels),
        "kept_fraction": [float(sum((t[k] != 0).sum() for k in kernels)
                                / sum(t[k].size for k in kernels)) for t in (a, b)],
        "metrics": [e["metrics"] for e in evals],
        "same_metrics": evals[0]["metrics"] == evals[1]["metrics"],
        "same_counts": counts[0] == counts[1],
        "same": (sorted(a) == sorted(b) and not differing and evals[0] == evals[1]
                 and counts[0] == counts[1]),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    report = compare(args.old, args.new)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if report["same"] else 1


if __name__ == "__main__":
    sys.exit(main())
