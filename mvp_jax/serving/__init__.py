"""Serving: pruned models in use, and models built for a speed target.

The top layer. ``predict`` labels texts with a run, a model directory or an ONNX export;
``latency`` measures what each layer's heads and neurons cost on the serving machine and turns a
speed-up into a budget; ``compress`` trains, exports and times students until one meets the
target (``mvp-jax compress``).
"""

from mvp_jax.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "load_predictor": "predict", "predict_texts": "predict",
    "measure_tables": "latency", "plan_budget": "latency", "LatencyTable": "latency",
})
