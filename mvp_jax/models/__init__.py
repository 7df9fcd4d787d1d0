"""Flax BERT encoder + heads (named like Hugging Face's Flax BERT) and checkpoint loading."""

from .bert import (
    HEADS,
    Bert,
    BertModule,
    BertSpec,
    attention_bias,
    build_module,
    init_params,
    param_shapes,
)
from .loading import (
    DEFAULT_MODEL,
    CheckpointError,
    Pretrained,
    flax_to_hf_state_dict,
    hf_state_dict_to_flax,
    load_config,
    load_pretrained,
    load_tokenizer,
    match_params,
    read_weights,
    resolve_model_path,
)

__all__ = [
    "Bert",
    "BertModule",
    "BertSpec",
    "CheckpointError",
    "DEFAULT_MODEL",
    "HEADS",
    "Pretrained",
    "attention_bias",
    "build_module",
    "flax_to_hf_state_dict",
    "hf_state_dict_to_flax",
    "init_params",
    "load_config",
    "load_pretrained",
    "load_tokenizer",
    "match_params",
    "param_shapes",
    "read_weights",
    "resolve_model_path",
]
