"""Where a MiniLM train step's time goes on this CPU (batch 32 x seq L, one device)."""
import statistics
import sys
import time

sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__file__), ".."))
import jax
import jax.numpy as jnp
import optax
from step_time import Variant, model_config, synthetic_batch

from mvp_jax.pruning import masking
from mvp_jax.training import sharding as shd
from mvp_jax.config import PruneConfig
from mvp_jax.models import build_module, init_params
from mvp_jax.training.optim import make_optimizer

B, L = 32, int(sys.argv[1]) if len(sys.argv) > 1 else 24
config = model_config("minilm-l6")
module = build_module(config, head="classification", num_labels=2)
params = init_params(module, 0)
mesh = shd.make_mesh(1, 1)

def timeit(f, *a, n=6):
    jax.block_until_ready(f(*a)); ts = []
    for _ in range(n):
        t = time.perf_counter(); jax.block_until_ready(f(*a)); ts.append(time.perf_counter() - t)
    return statistics.median(ts)

b = {k: v[0] for k, v in synthetic_batch(config, B, L).items()}
def loss(p, rng):
    logits = module.apply({"params": p}, b["input_ids"], b["attention_mask"], b["token_type_ids"], deterministic=False, rngs={"dropout": rng})
    return optax.softmax_cross_entropy_with_integer_labels(logits, b["labels"]).mean()
fwd = jax.jit(lambda p: module.apply({"params": p}, b["input_ids"], b["attention_mask"], b["token_type_ids"], deterministic=True))
g = jax.jit(lambda p: jax.grad(lambda q: loss(q, jax.random.PRNGKey(1)))(p))
g_nodrop = jax.jit(lambda p: jax.grad(lambda q: optax.softmax_cross_entropy_with_integer_labels(module.apply({"params": q}, b["input_ids"], b["attention_mask"], b["token_type_ids"], deterministic=True), b["labels"]).mean())(p))
out = {"seq": L}
out["forward_eval_s"] = timeit(fwd, params); print("forward_eval_s", out["forward_eval_s"], flush=True)
out["grad_all_params_dropout_s"] = timeit(g, params); print("grad_all_params_dropout_s", out["grad_all_params_dropout_s"], flush=True)
out["grad_all_params_nodropout_s"] = timeit(g_nodrop, params); print("grad_all_params_nodropout_s", out["grad_all_params_nodropout_s"], flush=True)
pr = PruneConfig(method="topk", initial_threshold=1.0, final_threshold=0.15)
scores = masking.init_scores(params, "uniform", 0.01, rng=jax.random.PRNGKey(1))
masks_f = jax.jit(lambda p, s: masking.final_masks(pr, p, s))
out["topk_local_masks_s"] = timeit(masks_f, params, scores); print("topk_local_masks_s", out["topk_local_masks_s"], flush=True)
prg = PruneConfig(method="topk", global_topk=True, initial_threshold=1.0, final_threshold=0.15)
out["topk_global_masks_s"] = timeit(jax.jit(lambda p, s: masking.final_masks(prg, p, s)), params, scores); print("topk_global_masks_s", out["topk_global_masks_s"], flush=True)
opt = make_optimizer(learning_rate=3e-5, total_steps=100)
tree = {"params": params, "scores": scores}
st = opt.tx.init(tree)
upd = jax.jit(lambda gr, st, t: opt.tx.update(gr, st, t))
out["optimizer_update_params_and_scores_s"] = timeit(upd, tree, st, tree); print("optimizer_update_params_and_scores_s", out["optimizer_update_params_and_scores_s"], flush=True)
for name in ("dense", "topk"):
    v = Variant(module, jax.tree.map(jnp.copy, params), config, name, batch=B, seq=L, mesh=mesh)
    for _ in range(2): v.step(timed=False)
    for _ in range(6): v.step()
    out[f"train_step_{name}_s"] = statistics.median(v.times); print(name, out[f"train_step_{name}_s"], flush=True)
    del v
print(out)
