"""Test hooks: points where a test can stop a process at a reproducible moment."""

from __future__ import annotations

import os
import sys
import time


def pause_for_test(point: str) -> None:
    """Test hook: with ``MVP_JAX_TEST_PAUSE=point[:n]`` the n-th (default first) arrival at
    ``point`` (``step``, ``eval``, ``save``, ``export``) prints ``paused at point`` to stderr
    and sleeps, so a test can kill the process at a reproducible moment."""
    spec = os.environ.get("MVP_JAX_TEST_PAUSE")
    if not spec or spec.split(":")[0] != point:
        return
    pause_for_test.count[point] = pause_for_test.count.get(point, 0) + 1
    nth = int(spec.split(":")[1]) if ":" in spec else 1
    if pause_for_test.count[point] == nth:
        print(f"paused at {point}", file=sys.stderr, flush=True)
        time.sleep(float(os.environ.get("MVP_JAX_TEST_PAUSE_S", "600")))


pause_for_test.count = {}
