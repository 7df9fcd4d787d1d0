"""Flax BERT vs transformers (PyTorch): parity, checkpoint formats, bad input."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json
import logging
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers_models import make_hf_checkpoint, padded_batch, tiny_config, torch_outputs
from flax import serialization, traverse_util

from mvp_jax.models import (
    CheckpointError,
    build_module,
    load_pretrained,
    load_tokenizer,
    param_shapes,
    resolve_model_path,
)

torch = pytest.importorskip("torch")
TOL = 1e-5


@pytest.fixture(autouse=True)
def _exact_matmul():
    with jax.default_matmul_precision("float32"):
        yield


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Tiny random checkpoints per head: {head: (dir, torch model)}."""
    out = {}
    for head in ("classification", "qa", None):
        d = tmp_path_factory.mktemp(f"tiny-{head}")
        out[head] = (str(d), make_hf_checkpoint(d, head=head, num_labels=3))
    return out


def _flat(tree):
    return traverse_util.flatten_dict(tree, sep="/")


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


# ----------------------------------------------------------------------------------------------
# Parameter tree
# ----------------------------------------------------------------------------------------------


def test_param_tree_is_hf_flax_naming():
    shapes = param_shapes(build_module(tiny_config(), "classification", 3))
    layer0 = "bert/encoder/layer/0/"
    expected = {
        "bert/embeddings/word_embeddings/embedding": (99, 32),
        "bert/embeddings/position_embeddings/embedding": (64, 32),
        "bert/embeddings/token_type_embeddings/embedding": (2, 32),
        "bert/embeddings/LayerNorm/scale": (32,),
        "bert/embeddings/LayerNorm/bias": (32,),
        "bert/pooler/dense/kernel": (32, 32),
        "bert/pooler/dense/bias": (32,),
        "classifier/kernel": (32, 3),
        "classifier/bias": (3,),
    }
    for name in ("query", "key", "value"):
        expected[layer0 + f"attention/self/{name}/kernel"] = (32, 32)
        expected[layer0 + f"attention/self/{name}/bias"] = (32,)
    expected.update({
        layer0 + "attention/output/dense/kernel": (32, 32),
        layer0 + "attention/output/dense/bias": (32,),
        layer0 + "attention/output/LayerNorm/scale": (32,),
        layer0 + "attention/output/LayerNorm/bias": (32,),
        layer0 + "intermediate/dense/kernel": (32, 37),
        layer0 + "intermediate/dense/bias": (37,),
        layer0 + "output/dense/kernel": (37, 32),
        layer0 + "output/dense/bias": (32,),
        layer0 + "output/LayerNorm/scale": (32,),
        layer0 + "output/LayerNorm/bias": (32,),
    })
    layer1 = {k.replace("layer/0/", "layer/1/"): v for k, v in expected.items() if layer0 in k}
    assert shapes == {**expected, **layer1}
    qa = param_shapes(build_module(tiny_config(), "qa"))
    assert not any("pooler" in k for k in qa) and qa["qa_outputs/kernel"] == (32, 2)
    assert "classifier/kernel" not in param_shapes(build_module(tiny_config(), None))


# ----------------------------------------------------------------------------------------------
# Parity with transformers (PyTorch)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["classification", "qa", None])
def test_parity_tiny(ckpts, head):
    path, tmodel = ckpts[head]
    p = load_pretrained(path, head=head, num_labels=3)
    ids, mask, types = padded_batch(99)
    out, hidden = p.module.apply({"params": p.params}, ids, mask, types, output_hidden_states=True)
    ref = torch_outputs(tmodel, ids, mask, types)
    assert len(hidden) == len(ref.hidden_states) == 3
    for a, b in zip(hidden, ref.hidden_states, strict=True):  # padded positions agree too
        assert _max_diff(a, b.numpy()) <= TOL
    if head == "classification":
        assert out.shape == (3, 3) and _max_diff(out, ref.logits.numpy()) <= TOL
    elif head == "qa":
        assert out[0].shape == (3, 12)
        assert _max_diff(out[0], ref.start_logits.numpy()) <= TOL
        assert _max_diff(out[1], ref.end_logits.numpy()) <= TOL
    else:
        assert _max_diff(out[0], ref.last_hidden_state.numpy()) <= TOL
        assert _max_diff(out[1], ref.pooler_output.numpy()) <= TOL


def test_parity_minilm_embedded(caplog):
    """The embedded MiniLM (6 layers, H=384) with a fresh classifier copied into torch."""
    from transformers import BertForSequenceClassification

    with caplog.at_level(logging.INFO, logger="mvp_jax.models.loading"):
        p = load_pretrained("minilm-l6", head="classification", num_labels=2, seed=1)
    assert "classifier/kernel" in caplog.text  # the fresh head is logged
    kernel = np.asarray(p.params["classifier"]["kernel"])
    assert np.all(np.asarray(p.params["classifier"]["bias"]) == 0)
    assert 0.01 < kernel.std() < 0.03  # normal(initializer_range=0.02)

    tmodel = BertForSequenceClassification.from_pretrained(p.path, num_labels=2).eval()
    with torch.no_grad():
        tmodel.classifier.weight.copy_(torch.tensor(kernel.T))
        tmodel.classifier.bias.zero_()
    ids, mask, types = padded_batch(30522, length=16)
    logits, hidden = p.module.apply({"params": p.params}, ids, mask, types,
                                    output_hidden_states=True)
    ref = torch_outputs(tmodel, ids, mask, types)
    real = mask.astype(bool)  # padded positions drift up to ~1e-4 through 6 layers: not compared
    assert len(hidden) == len(ref.hidden_states) == 7  # the embeddings and each of the 6 layers
    for a, b in zip(hidden, ref.hidden_states, strict=True):
        assert _max_diff(np.asarray(a)[real], b.numpy()[real]) <= TOL
    assert _max_diff(logits, ref.logits.numpy()) <= TOL


def test_bfloat16_compute_and_dropout(ckpts):
    path, _ = ckpts["classification"]
    p32 = load_pretrained(path, head="classification", num_labels=3)
    p16 = load_pretrained(path, head="classification", num_labels=3, dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(p16.params))
    ids, mask, types = padded_batch(99)
    ref = p32.module.apply({"params": p32.params}, ids, mask, types)
    low = p16.module.apply({"params": p16.params}, ids, mask, types)
    assert low.dtype == jnp.float32 and _max_diff(low, ref) < 0.1

    apply = lambda key: p32.module.apply(  # noqa: E731
        {"params": p32.params}, ids, mask, types, deterministic=False, rngs={"dropout": key})
    keys = jax.random.PRNGKey(0), jax.random.PRNGKey(1), jax.random.PRNGKey(0)
    a, b, a2 = (apply(k) for k in keys)
    assert _max_diff(a, b) > 1e-4 and _max_diff(a, a2) == 0.0 and _max_diff(a, ref) > 1e-4


# ----------------------------------------------------------------------------------------------
# Checkpoint formats
# ----------------------------------------------------------------------------------------------


def _copy_config(src, dst):
    os.makedirs(dst, exist_ok=True)
    shutil.copy(os.path.join(src, "config.json"), dst)
    return str(dst)


def test_formats_give_identical_params(ckpts, tmp_path):
    path, tmodel = ckpts["classification"]
    ref = load_pretrained(path, head="classification", num_labels=3)

    bin_dir = _copy_config(path, tmp_path / "bin")
    torch.save(tmodel.state_dict(), os.path.join(bin_dir, "pytorch_model.bin"))

    legacy_dir = _copy_config(path, tmp_path / "legacy")  # TF-era LayerNorm gamma/beta names
    legacy = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias",
              "LayerNorm.beta"): v for k, v in tmodel.state_dict().items()}
    torch.save(legacy, os.path.join(legacy_dir, "pytorch_model.bin"))

    msg_dir = _copy_config(path, tmp_path / "msgpack")
    with open(os.path.join(msg_dir, "flax_model.msgpack"), "wb") as f:
        f.write(serialization.msgpack_serialize(jax.tree_util.tree_map(np.asarray, ref.params)))

    for d in (bin_dir, legacy_dir, msg_dir):
        other = load_pretrained(d, head="classification", num_labels=3)
        a, b = _flat(ref.params), _flat(other.params)
        assert a.keys() == b.keys()
        assert all(np.array_equal(a[k], b[k]) for k in a), d


def test_flax_bert_model_msgpack_without_prefix(ckpts, tmp_path):
    """A legacy FlaxBertModel checkpoint (top level embeddings/encoder/pooler) loads too."""
    path, _ = ckpts[None]
    ref = load_pretrained(path)
    d = _copy_config(path, tmp_path / "m")
    with open(os.path.join(d, "flax_model.msgpack"), "wb") as f:
        bert = jax.tree_util.tree_map(np.asarray, ref.params["bert"])
        f.write(serialization.msgpack_serialize(bert))
    got = load_pretrained(d)
    assert jax.tree_util.tree_structure(got.params) == jax.tree_util.tree_structure(ref.params)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(ref.params),
                                                     jax.tree_util.tree_leaves(got.params),
                                                     strict=True))


def test_heads_across_checkpoints(ckpts, caplog):
    cls_path, _ = ckpts["classification"]
    with caplog.at_level(logging.INFO, logger="mvp_jax.models.loading"):
        qa = load_pretrained(cls_path, head="qa")  # pooler + classifier dropped, qa head fresh
    assert "qa_outputs/kernel" in caplog.text and "classifier/kernel" in caplog.text
    assert qa.config.num_labels == 2 and "pooler" not in qa.params["bert"]
    reg = load_pretrained(ckpts["qa"][0], head="classification", num_labels=1)  # fresh pooler
    assert reg.config.problem_type == "regression"
    assert reg.params["classifier"]["kernel"].shape == (32, 1)


def test_resolve_and_tokenizer():
    path = resolve_model_path(None)
    assert path == resolve_model_path("minilm-l6")
    assert os.path.isfile(os.path.join(path, "vocab.txt"))
    tok = load_tokenizer(path)
    assert tok("hello world")["input_ids"][0] == tok.cls_token_id


# ----------------------------------------------------------------------------------------------
# Bad input: each one a clear CheckpointError (a ValueError)
# ----------------------------------------------------------------------------------------------


def _clone(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def _edit_config(d, **changes):
    file = os.path.join(d, "config.json")
    with open(file) as f:
        cfg = json.load(f)
    cfg.update(changes)
    with open(file, "w") as f:
        json.dump(cfg, f)


def _raises(path, match, **kwargs):
    before = sorted(os.listdir(path)) if os.path.isdir(path) else None
    with pytest.raises(CheckpointError, match=match) as err:
        load_pretrained(path, **kwargs)
    assert isinstance(err.value, ValueError)
    if before is not None:
        assert sorted(os.listdir(path)) == before  # nothing written


def test_bad_paths(tmp_path):
    (tmp_path / "empty").mkdir()
    _raises(str(tmp_path / "empty"), "no config.json")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained(str(tmp_path / "nope"))
    with pytest.raises(CheckpointError, match="Hugging Face Hub"):
        resolve_model_path("no-such-org/no-such-model-mvp-jax")


def test_bad_config(ckpts, tmp_path):
    d = _clone(ckpts["classification"][0], tmp_path / "gpt2")
    _edit_config(d, model_type="gpt2")
    _raises(d, "model_type is 'gpt2'; supported: bert, roberta, xlm-roberta, distilbert")
    d = _clone(ckpts["classification"][0], tmp_path / "roberta")  # BERT weights, RoBERTa config
    _edit_config(d, model_type="roberta")
    _raises(d, r"unexpected weights bert\.embeddings\.LayerNorm\.bias \(\+\d+ more\)")
    d = _clone(ckpts["classification"][0], tmp_path / "broken")
    with open(os.path.join(d, "config.json"), "w") as f:
        f.write("{not json")
    _raises(d, "cannot read")
    d = _clone(ckpts["classification"][0], tmp_path / "noweights")
    os.remove(os.path.join(d, "model.safetensors"))
    _raises(d, "no weights file")


@pytest.mark.parametrize("fmt", ["model.safetensors", "pytorch_model.bin", "flax_model.msgpack"])
def test_truncated_or_corrupt_weights(ckpts, tmp_path, fmt):
    src, tmodel = ckpts["classification"]
    d = _clone(src, tmp_path / "t")
    if fmt != "model.safetensors":
        os.remove(os.path.join(d, "model.safetensors"))
        if fmt == "pytorch_model.bin":
            torch.save(tmodel.state_dict(), os.path.join(d, fmt))
        else:
            params = load_pretrained(src, head="classification", num_labels=3).params
            with open(os.path.join(d, fmt), "wb") as f:
                f.write(serialization.msgpack_serialize(jax.tree_util.tree_map(np.asarray, params)))
    file = os.path.join(d, fmt)
    data = open(file, "rb").read()
    with open(file, "wb") as f:
        f.write(data[: len(data) // 2])
    _raises(d, f"cannot read weights file .*{fmt}", head="classification", num_labels=3)
    with open(file, "wb") as f:  # garbage of the original length
        f.write(np.random.default_rng(0).bytes(len(data)))
    _raises(d, f"{fmt}", head="classification", num_labels=3)


def test_shape_and_name_mismatches(ckpts, tmp_path):
    from safetensors.numpy import load_file, save_file

    src = ckpts["classification"][0]
    d = _clone(src, tmp_path / "vocab")
    _edit_config(d, vocab_size=100)
    _raises(d, r"shape mismatch.*word_embeddings/embedding.*\(99, 32\) vs config \(100, 32\)",
            head="classification", num_labels=3)
    d = _clone(src, tmp_path / "layers")
    _edit_config(d, num_hidden_layers=3)
    _raises(d, "missing encoder weights.*layer/2", head="classification", num_labels=3)
    d = _clone(src, tmp_path / "fewer")
    _edit_config(d, num_hidden_layers=1)
    _raises(d, "unexpected weights.*layer/1", head="classification", num_labels=3)

    d = _clone(src, tmp_path / "missing")
    file = os.path.join(d, "model.safetensors")
    state = load_file(file)
    del state["bert.encoder.layer.0.attention.self.key.weight"]
    state["bert.encoder.layer.0.attention.self.extra.weight"] = np.zeros((32, 32), np.float32)
    save_file(state, file)
    _raises(d, "missing encoder weights.*self/key/kernel.*unexpected weights.*self/extra/kernel",
            head="classification", num_labels=3)

    d = _clone(src, tmp_path / "unknown")
    file = os.path.join(d, "model.safetensors")
    state = load_file(file)
    state["something.else.weight"] = np.zeros((2, 2), np.float32)
    save_file(state, file)
    _raises(d, "unexpected weights.*something.else.weight", head="classification", num_labels=3)


def test_head_num_labels_mismatch(ckpts):
    _raises(ckpts["classification"][0], "classifier has 3 labels, 2 requested",
            head="classification", num_labels=2)


def test_unknown_head():
    with pytest.raises(ValueError, match="unknown head"):
        build_module(tiny_config(), "tokens")
