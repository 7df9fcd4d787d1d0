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
    # a program compiled in a child process lands in the session's cache, once (other workers
    # write there too: only this program's entries are counted)
    code = ("import jax, jax.numpy as jnp\n"
            "def mvp_suite_cache_probe(x):\n    return jnp.sin(x) * 3.25 + 0.5\n"
            "print(jax.config.jax_compilation_cache_dir)\n"
            "jax.jit(mvp_suite_cache_probe)(jnp.arange(7.0)).block_until_ready()\n")

    def probes():
        return {f for f in os.listdir(cache) if f.startswith("jit_mvp_suite_cache_probe-")}

    before = probes()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == cache
    after_first = probes()
    assert len(after_first - before) == 1 or (before and after_first == before), \
        "the child compiled nothing into the session's cache"
    assert after_first
    subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert probes() == after_first  # the second child read it: nothing new
