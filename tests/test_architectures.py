"""RoBERTa, XLM-RoBERTa and DistilBERT against transformers' PyTorch models (the independent
reference): tiny random checkpoints made here with ``save_pretrained`` (no download) load with
the same logits (classification and QA heads, safetensors and ``.bin``); a masked export loads in
transformers with the same logits; a head/neuron compact model equals its masked dense model;
counts and partition rules name each architecture's matrices."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mvp_jax.export.compact import compact_params, layer_sizes, save_compact, save_transformers
from mvp_jax.export.compressed import load_compressed, save_compressed
from mvp_jax.export.huggingface import count_remaining, export_hf, format_counts
from mvp_jax.models import load_pretrained
from mvp_jax.pruning.masking import multiply_masks, prunable_paths
from mvp_jax.pruning.structured import expand, unit_counts
from mvp_jax.training.sharding import partition_spec
from mvp_jax.tree import flatten

ARCHS = ("roberta", "xlm-roberta", "distilbert")
SIZES = dict(vocab_size=99, max_position_embeddings=66)


def tiny_config(arch: str, **kw):
    """2 layers, hidden 32, 4 heads of 8, FFN 37."""
    import transformers as tf

    if arch == "distilbert":
        return tf.DistilBertConfig(**{**SIZES, "dim": 32, "n_layers": 2, "n_heads": 4,
                                      "hidden_dim": 37, **kw})
    cls = tf.RobertaConfig if arch == "roberta" else tf.XLMRobertaConfig
    return cls(**{**SIZES, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "intermediate_size": 37, "type_vocab_size": 1, "pad_token_id": 1, **kw})


def torch_class(arch: str, head: str):
    import transformers as tf

    name = {"roberta": "Roberta", "xlm-roberta": "XLMRoberta", "distilbert": "DistilBert"}[arch]
    suffix = {"classification": "ForSequenceClassification", "qa": "ForQuestionAnswering"}[head]
    return getattr(tf, name + suffix)


def make_checkpoint(arch: str, head: str, out_dir, num_labels=3, std=0.2):
    """A randomly initialised PyTorch model (every parameter ~ N(0, std^2)) saved with
    ``save_pretrained``; returns it (eval mode)."""
    torch.manual_seed(0)
    config = tiny_config(arch, num_labels=num_labels if head == "classification" else 2)
    model = torch_class(arch, head)(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    model.save_pretrained(out_dir)
    return model


def batch(arch: str):
    """ids (padding = the config's pad token, as a tokenizer writes it) and attention mask."""
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 99, (3, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 8:], mask[2, 3:] = 0, 0
    ids[mask == 0] = 0 if arch == "distilbert" else 1
    return ids, mask


def torch_logits(model, ids, mask) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask))
    if hasattr(out, "logits"):
        return out.logits.numpy()
    return np.stack([out.start_logits.numpy(), out.end_logits.numpy()], -1)


def flax_logits(module, params, ids, mask) -> np.ndarray:
    out = module.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask))
    return np.asarray(out) if module.head == "classification" else np.stack(out, -1)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """``{(arch, head): (directory, torch model)}``."""
    root = tmp_path_factory.mktemp("archs")
    return {(a, h): (str(root / f"{a}-{h}"), make_checkpoint(a, h, root / f"{a}-{h}"))
            for a in ARCHS for h in ("classification", "qa")}


@pytest.mark.parametrize("head", ["classification", "qa"])
@pytest.mark.parametrize("arch", ARCHS)
def test_logits_equal_pytorch(checkpoints, arch, head, tmp_path):
    path, model = checkpoints[(arch, head)]
    ids, mask = batch(arch)
    pre = load_pretrained(path, head=head, num_labels=3)
    prefix = "distilbert" if arch == "distilbert" else "roberta"
    assert type(pre.module).__name__ == {"distilbert": "DistilBert"}.get(arch, "Roberta")
    assert set(pre.params) >= {prefix} and pre.config.model_type == arch
    expected = torch_logits(model, ids, mask)
    np.testing.assert_allclose(flax_logits(pre.module, pre.params, ids, mask), expected,
                               atol=1e-5)
    # the same weights as a PyTorch pickle (weights only)
    os.makedirs(tmp_path / "bin")
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    model.config.save_pretrained(tmp_path / "bin")
    pre = load_pretrained(tmp_path / "bin", head=head, num_labels=3)
    np.testing.assert_allclose(flax_logits(pre.module, pre.params, ids, mask), expected,
                               atol=1e-5)


def random_weight_masks(params, keep=0.6, seed=0):
    rng = np.random.default_rng(seed)
    flat = flatten(params)
    return {p: jnp.asarray(rng.random(flat[p].shape) < keep, jnp.float32)
            for p in prunable_paths(params)}


@pytest.mark.parametrize("head", ["classification", "qa"])
@pytest.mark.parametrize("arch", ARCHS)
def test_export_loads_in_transformers_with_the_same_logits(checkpoints, arch, head, tmp_path):
    from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification

    path, _ = checkpoints[(arch, head)]
    pre = load_pretrained(path, head=head, num_labels=3)
    masked = multiply_masks(pre.params, random_weight_masks(pre.params))
    out = export_hf(tmp_path / "out", masked, pre.config, head)
    auto = AutoModelForSequenceClassification if head == "classification" else \
        AutoModelForQuestionAnswering
    model = auto.from_pretrained(out).eval()
    assert type(model) is torch_class(arch, head)
    ids, mask = batch(arch)
    np.testing.assert_allclose(torch_logits(model, ids, mask),
                               flax_logits(pre.module, masked, ids, mask), atol=1e-5)
    # the compressed file: the same architecture, logits within the int8 rounding
    save_compressed(tmp_path / "m.mvpz", masked, pre.config, head)
    module, params, _ = load_compressed(tmp_path / "m.mvpz")
    assert type(module) is type(pre.module)
    np.testing.assert_allclose(flax_logits(module, params, ids, mask),
                               flax_logits(pre.module, masked, ids, mask), atol=0.05)
    # 6 matrices per layer, each ~60% kept; one table column per matrix type
    counts = count_remaining(masked)
    assert len(counts["matrices"]) == 12 and 0.5 < counts["fraction"] < 0.7
    header = format_counts(counts).splitlines()[0].split()
    assert header == ["layer", "query", "key", "value", "attn_out", "ffn_in", "ffn_out", "all"]


@pytest.mark.parametrize("arch", ARCHS)
def test_compact_equals_masked_dense_and_loads_in_transformers(checkpoints, arch, tmp_path):
    from transformers import AutoModelForSequenceClassification

    path, _ = checkpoints[(arch, "classification")]
    pre = load_pretrained(path, head="classification", num_labels=3)
    counts = unit_counts(pre.params, "hybrid", 4)
    assert sorted(counts.values()) == [4, 4, 37, 37]
    rng = np.random.default_rng(1)
    units = {p: jnp.asarray(rng.permutation(n) < n // 2 + i, jnp.float32)
             for i, (p, n) in enumerate(counts.items())}  # unequal layers: a per-layer config
    ids, mask = batch(arch)
    dense = flax_logits(pre.module, multiply_masks(pre.params, expand(units, pre.params)),
                        ids, mask)
    small, cfg = compact_params(pre.params, units, pre.config)
    kept = [int(np.sum(m)) for m in units.values()]
    assert layer_sizes(cfg) == (kept[0::2], kept[1::2])
    compact_dir = save_compact(tmp_path / "compact", small, cfg, "classification")
    again = load_pretrained(compact_dir, head="classification", num_labels=3)
    np.testing.assert_allclose(flax_logits(again.module, again.params, ids, mask), dense,
                               atol=1e-5)
    out = save_transformers(tmp_path / "hf", small, cfg, "classification")
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    np.testing.assert_allclose(torch_logits(model, ids, mask), dense, atol=1e-5)


def test_partition_rules_cover_each_architecture():
    """Megatron style: Q, K, V, FFN-in split on columns, attention-out and FFN-out on rows."""
    from types import SimpleNamespace

    mesh = SimpleNamespace(shape={"data": 1, "model": 2})

    def spec(path):
        return tuple(partition_spec(path, (32, 32), mesh))

    for m in ("roberta/encoder/layer/0/attention/self/query", "roberta/encoder/layer/1/"
              "intermediate/dense", "distilbert/transformer/layer/0/attention/q_lin",
              "distilbert/transformer/layer/1/attention/v_lin",
              "distilbert/transformer/layer/1/ffn/lin1"):
        assert spec(m + "/kernel") == (None, "model"), m
    for m in ("roberta/encoder/layer/0/output/dense", "roberta/encoder/layer/0/attention/output/"
              "dense", "distilbert/transformer/layer/0/attention/out_lin",
              "distilbert/transformer/layer/0/ffn/lin2"):
        assert spec(m + "/kernel") == ("model",), m
    assert spec("distilbert/embeddings/word_embeddings/embedding") == (None, "model")
    assert spec("pre_classifier/kernel") == spec("classifier/out_proj/kernel") == ()


@pytest.mark.parametrize("arch", ["roberta", "distilbert"])
def test_teacher_label_permutation_reorders_the_logits(checkpoints, arch):
    from mvp_jax.models import layout_of
    from mvp_jax.training.distill import permute_classifier

    pre = load_pretrained(checkpoints[(arch, "classification")][0], head="classification",
                          num_labels=3)
    permuted = permute_classifier(pre.params, [2, 0, 1], layout_of(arch).logits)
    ids, mask = batch(arch)
    np.testing.assert_allclose(flax_logits(pre.module, permuted, ids, mask),
                               flax_logits(pre.module, pre.params, ids, mask)[:, [2, 0, 1]],
                               atol=1e-6)
