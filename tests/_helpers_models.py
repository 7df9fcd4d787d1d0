"""Shared helpers for the model / export tests: tiny random HF checkpoints and padded batches."""

from __future__ import annotations

import numpy as np

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=64, type_vocab_size=2)


def tiny_config(**overrides):
    from transformers import BertConfig

    return BertConfig(**{**TINY, **overrides})


def make_hf_checkpoint(out_dir, head="classification", num_labels=3, seed=0, std=0.2):
    """Save a randomly initialised PyTorch BERT (every parameter ~ N(0, std^2), so LayerNorm and
    biases are not trivial) with ``save_pretrained``; returns the torch model (eval mode)."""
    import torch
    from transformers import BertForQuestionAnswering, BertForSequenceClassification, BertModel

    torch.manual_seed(seed)
    cls = {"classification": BertForSequenceClassification, "qa": BertForQuestionAnswering,
           None: BertModel}[head]
    config = tiny_config(num_labels=num_labels if head == "classification" else 2)
    model = cls(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    model.save_pretrained(out_dir)
    return model


def padded_batch(vocab_size, batch=3, length=12, seed=0):
    """ids, attention_mask (rows with 0, 4 and 9 padded positions), token_type_ids."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab_size, (batch, length)).astype(np.int32)
    mask = np.ones_like(ids)
    for row, keep in enumerate([length, length - 4, 3][:batch]):
        mask[row, keep:] = 0
        ids[row, keep:] = 0
    types = np.zeros_like(ids)
    types[:, length // 2:] = 1
    return ids, mask, types


def torch_outputs(model, ids, mask, types):
    import torch

    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                     token_type_ids=torch.tensor(types, dtype=torch.long),
                     output_hidden_states=True)


def save_tiny_vocab_bert(out_dir, head=None, num_labels=2):
    """A random 2-layer BERT (hidden 32) with the real 30522-token vocabulary, saved with the
    embedded MiniLM's tokenizer files, so runs on real text take seconds. ``head``: None (a
    bare encoder; each task adds its own head) or ``"classification"``. Returns the directory."""
    import shutil
    from pathlib import Path

    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    from mvp_jax.models import resolve_model_path

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=num_labels)
    (BertModel if head is None else BertForSequenceClassification)(cfg).save_pretrained(out_dir)
    src = Path(resolve_model_path("minilm-l6"))
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / f).exists():
            shutil.copy2(src / f, Path(out_dir) / f)
    return Path(out_dir)
