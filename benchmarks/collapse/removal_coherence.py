"""Is the movement-selected removal a coherent (low-rank) step along the fine-tuning direction?

usage: python benchmarks/collapse/removal_coherence.py RUN_DIR/checkpoints/STEP/default MASK_SCALE

For the 5% of each matrix that movement (the paper's scores), random and magnitude would prune
first, R = W * (1 - M): its Frobenius and spectral norms, the share of the top singular value,
and its cosine with the fine-tuning displacement W - W0 (pruning moves W by -R).
"""
import sys

import numpy as np
import orbax.checkpoint as ocp

from mvp_jax import tree
from mvp_jax.models import load_pretrained
from mvp_jax.pruning import masking

raw = ocp.StandardCheckpointer().restore(sys.argv[1])
pre = load_pretrained("minilm-l6", head="classification", num_labels=2).params
fw0, fw, fs = tree.flatten(pre), tree.flatten(raw["params"]), tree.flatten(raw["scores"])
paths = masking.prunable_paths(pre)
rng = np.random.default_rng(0)
rows = []
for p in paths:
    w0, w = np.asarray(fw0[p], np.float64), np.asarray(fw[p], np.float64)
    s0 = np.abs(w0) / np.sqrt(np.mean(w0 ** 2)) * float(sys.argv[2])
    move = np.asarray(fs[p], np.float64) - s0
    k = int(0.05 * w.size)
    def removed(sel):
        thr = np.sort(sel.ravel())[k]
        return w * (sel < thr)
    dw = w - w0
    out = {}
    for name, sel in (("movement", move), ("random", rng.standard_normal(w.shape)), ("magnitude", np.abs(w))):
        r = removed(sel)
        sv = np.linalg.svd(r, compute_uv=False)
        cos = float(np.sum(r * dw) / (np.linalg.norm(r) * np.linalg.norm(dw) + 1e-30))
        out[name] = (np.linalg.norm(r), sv[0], sv[0] / np.linalg.norm(r), cos)
    rows.append(out)
for name in ("movement", "random", "magnitude"):
    a = np.array([r[name] for r in rows])
    print(f"{name:9s} remove 5%: mean ||R||_F {a[:,0].mean():.3f}  mean ||R||_2 {a[:,1].mean():.3f}  "
          f"top singular share {a[:,2].mean():.3f}  cos(R, W-W0) {a[:,3].mean():+.3f}")
sv = np.array([np.linalg.svd(np.asarray(fw[p], np.float64) - np.asarray(fw0[p], np.float64), compute_uv=False)[:1].sum() / np.linalg.norm(np.asarray(fw[p], np.float64) - np.asarray(fw0[p], np.float64)) for p in paths])
print(f"fine-tuning displacement W-W0: top singular value / Frobenius = {sv.mean():.3f} (rank-1 would be 1)")
d = np.array([np.linalg.norm(np.asarray(fw[p], np.float64) - np.asarray(fw0[p], np.float64)) for p in paths])
print(f"mean ||W-W0||_F after 200 steps: {d.mean():.3f}")
