"""``python -m benchmarks.reproduce [OPTIONS]``: the sweep, then its report (``cli.main``)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
