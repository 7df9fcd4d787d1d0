"""The test session's own setup (tests/conftest.py): one persistent XLA compilation cache that
this process and the processes it starts (CLI runs, notebook kernels, xdist workers) share."""

import os
import subprocess
import sys


def test_compilation_cache_is_shared_with_subprocesses(tmp_path):
    import jax

    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if os.environ.get("MVP_JAX_TEST_CACHE", "").lower() in ("off", "0", "no"):
        assert cache is None or jax.config.jax_compilation_cache_dir == cache
        return
    assert cache and os.path.isdir(cache)
    assert jax.config.jax_compilation_cache_dir == cache
    # a program compiled in a child process lands in the session's cache, once
    code = ("import jax, jax.numpy as jnp; "
            "print(jax.config.jax_compilation_cache_dir); "
            "jax.jit(lambda x: jnp.sin(x) * 3.25 + 0.5)(jnp.arange(7.0)).block_until_ready()")
    before = set(os.listdir(cache))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == cache
    added = set(os.listdir(cache)) - before
    assert added, "the child compiled nothing into the session's cache"
    subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert set(os.listdir(cache)) - before == added  # the second child read it: nothing new
