"""Export: a pruned model out as a standard, smaller model.

Above pruning and models. ``huggingface`` writes a Hugging Face directory of masked weights and
counts what remains (``matrices`` names and tallies the matrices); ``compact`` removes pruned
heads and FFN neurons (per-layer sizes); ``compressed`` writes the sparse int8 file; ``onnx``
builds the ONNX graph (float32 or int8) and runs it; ``deploy`` chooses among them for a model
directory.
"""

from mvp_jax.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "export_hf": "huggingface", "count_remaining": "huggingface",
    "format_counts": "huggingface", "ExportError": "huggingface",
    "compact_params": "compact", "layer_sizes": "compact", "save_compact": "compact",
    "save_compressed": "compressed", "load_compressed": "compressed",
    "write_onnx": "onnx", "inference_session": "onnx",
    "export_model_dir": "deploy", "export_pruned": "deploy",
})
