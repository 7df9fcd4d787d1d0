"""f32 matmul rate of jax (XLA CPU) and torch at the MiniLM step's shapes (batch 32 x 24 tokens) and at 4096^3.

    python benchmarks/cpu_profile/matmul_rate.py
"""
import statistics
import time

import jax
import jax.numpy as jnp
import torch


def t(f, *a, n=20):
    f(*a); ts=[]
    for _ in range(n):
        s=time.perf_counter(); r=f(*a)
        if hasattr(r, "block_until_ready"): r.block_until_ready()
        ts.append(time.perf_counter()-s)
    return statistics.median(ts)
for (m,k,n) in [(768,384,384),(768,384,1536),(768,1536,384),(2048,384,384),(4096,4096,4096)]:
    a=jnp.ones((m,k)); b=jnp.ones((k,n)); f=jax.jit(jnp.dot)
    ta=torch.ones(m,k); tb=torch.ones(k,n)
    fl=2*m*k*n
    print((m,k,n), "jax GF/s %.0f" % (fl/t(f,a,b)/1e9), "torch GF/s %.0f" % (fl/t(torch.mm,ta,tb)/1e9), flush=True)
