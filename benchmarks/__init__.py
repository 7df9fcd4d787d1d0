"""Lab scripts: benchmarks, and the reproduction of the paper's comparison (``python -m
benchmarks.reproduce``)."""
