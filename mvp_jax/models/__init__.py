"""Flax encoders + heads, named like Hugging Face's Flax models: BERT (and MiniLM), RoBERTa
(and XLM-RoBERTa), DistilBERT; checkpoint loading (the architecture is ``config.json``'s
``model_type``) and each architecture's layout (``layout``)."""

from .bert import (
    HEADS,
    Bert,
    BertModule,
    BertSpec,
    attention_bias,
    init_params,
    param_shapes,
)
from .build import build_module
from .distilbert import DistilBert
from .layout import MODEL_TYPES, layout_of
from .loading import (
    DEFAULT_MODEL,
    CheckpointError,
    Pretrained,
    flax_to_hf_state_dict,
    hf_state_dict_to_flax,
    load_model_config,
    load_pretrained,
    load_tokenizer,
    match_params,
    read_weights,
    resolve_model_path,
)
from .roberta import Roberta

__all__ = [
    "Bert",
    "BertModule",
    "BertSpec",
    "CheckpointError",
    "DEFAULT_MODEL",
    "DistilBert",
    "MODEL_TYPES",
    "HEADS",
    "Pretrained",
    "Roberta",
    "attention_bias",
    "build_module",
    "flax_to_hf_state_dict",
    "hf_state_dict_to_flax",
    "init_params",
    "layout_of",
    "load_model_config",
    "load_pretrained",
    "load_tokenizer",
    "match_params",
    "param_shapes",
    "read_weights",
    "resolve_model_path",
]
