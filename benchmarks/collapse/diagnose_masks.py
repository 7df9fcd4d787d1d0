"""Why does movement collapse? Dev accuracy and loss of masks of several criteria, applied to a
checkpoint taken before pruning starts (results/RESULTS.md, "Why movement collapses").

usage: python benchmarks/collapse/diagnose_masks.py RUN_DIR STEP MASK_SCALE
(the run: configs/lab/sst2/movement.yaml-like, prune.mask_init=magnitude, train.save_every=STEP)

Criteria, each a Top-v per matrix at keep fractions 0.95 ... 0.15: movement (the paper's
scores, S - S0), magnitude |W|, random, hybrid (the run's own scores S = S0 + movement) and
taylor (movement * |W|). Also: kept energy, overlap with the top-15% |W|, and the share of the
pruned weights that moved away from zero.
The run was movement pruning with mask_init=magnitude (scale MASK_SCALE): before pruning starts,
weights do not depend on the scores, and S - S0 are exactly the scores of mask_init=constant 0.
"""
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from mvp_jax import tree
from mvp_jax.config import load_config
from mvp_jax.pruning import masking
from mvp_jax.training.runner import load_setup

run, step, scale = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
cfg = load_config(os.path.join(run, "config.yaml"))
setup = load_setup(cfg)
raw = ocp.StandardCheckpointer().restore(os.path.abspath(os.path.join(run, "checkpoints", str(step), "default")))
params, scores = raw["params"], raw["scores"]
pre = setup.params
paths = masking.prunable_paths(pre)
fw0 = tree.flatten(pre)
fw = tree.flatten(params)
fs = tree.flatten(scores)
S0 = tree.flatten(masking.init_scores(pre, "magnitude", scale))
move = {p: jnp.asarray(fs[p]) - S0[p] for p in paths}
hyb = {p: jnp.asarray(fs[p]) for p in paths}
mag = {p: jnp.abs(jnp.asarray(fw[p])) for p in paths}
rng = np.random.default_rng(0)
rand = {p: jnp.asarray(rng.standard_normal(fw[p].shape), jnp.float32) for p in paths}
delta = {p: jnp.asarray(fw[p]) - jnp.asarray(fw0[p]) for p in paths}
# |W| * movement: first-order Taylor-like magnitude-aware variant of the signal
taylor = {p: move[p] * jnp.abs(jnp.asarray(fw[p])) for p in paths}

ev = setup.task.evals["validation"].features
ids, am, tt = (jnp.asarray(ev[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
labels = jnp.asarray(ev["labels"])


@jax.jit
def evaluate(p):
    logits = setup.module.apply({"params": p}, ids, am, tt, deterministic=True)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return jnp.mean(jnp.argmax(logits, -1) == labels), loss


def masked_eval(sel, keep):
    masks = {p: masking.topk_mask(sel[p], keep) for p in paths}
    acc, loss = evaluate(masking.multiply_masks(params, masks))
    energy = sum(float(jnp.sum((fw[p] * masks[p]) ** 2)) for p in paths) / sum(float(jnp.sum(fw[p] ** 2)) for p in paths)
    big = {p: masking.topk_mask(mag[p], 0.15) for p in paths}
    overlap = sum(float(jnp.sum(masks[p] * big[p])) for p in paths) / sum(float(jnp.sum(big[p])) for p in paths)
    moved_out = sum(float(jnp.sum((1 - masks[p]) * (delta[p] * fw[p] > 0))) for p in paths) / max(
        sum(float(jnp.sum(1 - masks[p])) for p in paths), 1)
    return dict(acc=float(acc), loss=float(loss), energy=energy, top15_overlap=overlap,
                pruned_moved_out=moved_out)


acc, loss = evaluate(params)
out = {"dense": dict(acc=float(acc), loss=float(loss))}
print("dense", out["dense"], flush=True)
for keep in (0.95, 0.9, 0.8, 0.5, 0.15):
    for name, sel in (("movement", move), ("magnitude", mag), ("random", rand), ("hybrid", hyb),
                      ("taylor", taylor)):
        r = masked_eval(sel, keep)
        out[f"{name}@{keep}"] = r
        print(f"{name:10s} keep={keep:.2f}", {k: round(v, 4) for k, v in r.items()}, flush=True)
# score statistics of the constant-init scores
allm = np.concatenate([np.asarray(move[p]).ravel() for p in paths])
allw = np.concatenate([np.asarray(fw[p]).ravel() for p in paths])
print("movement scores: mean %.4f std %.4f min %.4f max %.4f frac<0 %.3f" % (
    allm.mean(), allm.std(), allm.min(), allm.max(), (allm < 0).mean()))
q = np.quantile(np.abs(allw), [0.5, 0.9, 0.99])
for lo, hi in ((0, q[0]), (q[0], q[1]), (q[1], q[2]), (q[2], np.inf)):
    sel = (np.abs(allw) >= lo) & (np.abs(allw) < hi)
    print(f"|W| in [{lo:.4f},{hi:.4f}): mean score {allm[sel].mean():.4f}, frac in bottom 10% of scores "
          f"{(allm[sel] < np.quantile(allm, 0.1)).mean():.3f}")
json.dump(out, open(os.path.join(os.path.dirname(os.path.abspath(__file__)), f"diagnose_{os.path.basename(run)}_{step}.json"), "w"), indent=1)
