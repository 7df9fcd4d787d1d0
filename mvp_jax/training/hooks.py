"""Test hooks: points where a test can stop a process at a reproducible moment."""

from __future__ import annotations

import os
import sys
import time

_ARRIVALS: dict[str, int] = {}  # arrivals at each point in this process


def pause_for_test(point: str) -> None:
    """Test hook: with ``MVP_JAX_TEST_PAUSE=point[:n]`` the n-th (default first) arrival at
    ``point`` (``step``, ``eval``, ``save``, ``export``) prints ``paused at point`` to stderr
    and sleeps, so a test can kill the process at a reproducible moment."""
    spec = os.environ.get("MVP_JAX_TEST_PAUSE")
    if not spec or spec.split(":")[0] != point:
        return
    _ARRIVALS[point] = _ARRIVALS.get(point, 0) + 1
    nth = int(spec.split(":")[1]) if ":" in spec else 1
    if _ARRIVALS[point] == nth:
        print(f"paused at {point}", file=sys.stderr, flush=True)
        time.sleep(float(os.environ.get("MVP_JAX_TEST_PAUSE_S", "600")))

