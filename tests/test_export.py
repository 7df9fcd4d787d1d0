"""Export: masked model -> HF directory -> transformers; counts; int8 + bitmask storage."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json
import re
import zipfile
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers_models import make_hf_checkpoint, padded_batch

from mvp_jax import tree
from mvp_jax.export import huggingface as export
from mvp_jax.export.compressed import (
    CompressedFormatError,
    compression_report,
    load_compressed,
    save_compressed,
)
from mvp_jax.export.huggingface import ExportError, count_remaining, export_hf, format_counts
from mvp_jax.models import load_pretrained
from mvp_jax.models.layout import PRUNABLE as DEFAULT_PRUNABLE
from mvp_jax.pruning.masking import apply_masks, init_scores, prunable_paths

torch = pytest.importorskip("torch")
TOL = 1e-5
KEEP = 0.3


@pytest.fixture(autouse=True)
def _exact_matmul():
    with jax.default_matmul_precision("float32"):
        yield


@pytest.fixture(scope="module")
def masked(tmp_path_factory):
    """{head: (Pretrained, masked params)}: topk masks keeping 30% of every prunable matrix."""
    out = {}
    for head, n in (("classification", 3), ("qa", 2), (None, 2)):
        d = tmp_path_factory.mktemp(f"ckpt-{head}")
        make_hf_checkpoint(d, head=head, num_labels=n, seed=1)
        p = load_pretrained(str(d), head=head, num_labels=n)
        scores = init_scores(p.params, "uniform", 1.0, jax.random.PRNGKey(0))
        out[head] = (p, _topk(p.params, scores, KEEP))
    return out


@partial(jax.jit, static_argnums=2)
def _topk(params, scores, keep):
    return apply_masks(params, scores, method="topk", threshold=keep)


def _diff(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


# ----------------------------------------------------------------------------------------------
# Hugging Face export round trip
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["classification", "qa", None])
def test_export_round_trip(masked, tmp_path, head):
    from transformers import BertForQuestionAnswering, BertForSequenceClassification, BertModel

    p, params = masked[head]
    out = export_hf(tmp_path / "out", params, p.config, head, tokenizer_path="minilm-l6")
    assert {"config.json", "model.safetensors", "vocab.txt"} <= set(os.listdir(out))
    cls = {"classification": BertForSequenceClassification, "qa": BertForQuestionAnswering,
           None: BertModel}[head]
    tmodel, info = cls.from_pretrained(out, output_loading_info=True)
    tmodel.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["architectures"] == [cls.__name__]

    ids, mask, types = padded_batch(99)
    ours = p.module.apply({"params": params}, ids, mask, types)
    with torch.no_grad():
        ref = tmodel(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                     token_type_ids=torch.tensor(types, dtype=torch.long))
    if head == "classification":
        assert _diff(ours, ref.logits.numpy()) <= TOL
    elif head == "qa":
        assert _diff(ours[0], ref.start_logits.numpy()) <= TOL
        assert _diff(ours[1], ref.end_logits.numpy()) <= TOL
    else:
        assert _diff(ours[0], ref.last_hidden_state.numpy()) <= TOL
        assert _diff(ours[1], ref.pooler_output.numpy()) <= TOL

    counts = count_remaining(params)
    state = tmodel.state_dict()
    prefix = "" if head is None else "bert."
    for path, c in counts["matrices"].items():
        name = prefix + path.removeprefix("bert/").replace("/", ".").replace(".kernel", ".weight")
        w = state[name].numpy()
        assert int((w == 0).sum()) == c["total"] - c["remaining"], name
        assert c["remaining"] == int(KEEP * c["total"])  # topk keeps exactly int(v * n)


def test_export_regression_config(tmp_path):
    d = tmp_path / "ckpt"
    make_hf_checkpoint(d, head="classification", num_labels=1)
    p = load_pretrained(str(d), head="classification", num_labels=1)
    out = export_hf(tmp_path / "out", p.params, p.config, "classification")
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert len(cfg["id2label"]) == 1
    assert cfg["problem_type"] == "regression"
    with pytest.raises(ExportError, match="num_labels=2 but the classifier has 1"):
        export_hf(tmp_path / "out2", p.params, p.config, "classification", num_labels=2)
    assert not (tmp_path / "out2").exists()


def test_export_is_atomic_and_refuses_overwrite(masked, tmp_path, monkeypatch):
    p, params = masked["classification"]
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("old")
    with pytest.raises(ExportError, match="not empty.*overwrite=True"):
        export_hf(dest, params, p.config, "classification")
    assert os.listdir(dest) == ["keep.txt"]
    # overwrite replaces a model directory, never a directory of other files (issue 16)
    with pytest.raises(ExportError, match="keep.txt.*not a model file"):
        export_hf(dest, params, p.config, "classification", overwrite=True)
    assert os.listdir(dest) == ["keep.txt"] and (dest / "keep.txt").read_text() == "old"
    (dest / "keep.txt").unlink()
    export_hf(dest, params, p.config, "classification")
    (dest / "config.json").write_text("{}")  # an earlier model: replaced whole
    export_hf(dest, params, p.config, "classification", overwrite=True)
    assert sorted(os.listdir(dest)) == ["config.json", "model.safetensors"]
    assert (dest / "config.json").read_text() != "{}"

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(export.shutil, "copy2", boom)
    with pytest.raises(OSError, match="disk full"):
        export_hf(tmp_path / "half", params, p.config, "classification", tokenizer_path="minilm-l6")
    assert sorted(os.listdir(tmp_path)) == ["dest"]  # no partial export, no temp dir left


def test_export_bad_params(masked, tmp_path):
    p, params = masked["classification"]
    flat = tree.flatten(params)
    del flat["bert/encoder/layer/1/output/dense/kernel"]
    with pytest.raises(ExportError, match="missing.*layer/1/output/dense/kernel"):
        export_hf(tmp_path / "x", tree.unflatten(flat), p.config,
                  "classification")
    with pytest.raises(ExportError, match="unknown head"):
        export_hf(tmp_path / "x", params, p.config, "tokens")
    with pytest.raises(ExportError, match="no classifier"):
        export_hf(tmp_path / "x", masked["qa"][1], p.config, "classification")
    with pytest.raises(ExportError, match="no tokenizer files"):
        export_hf(tmp_path / "x", params, p.config, "classification", tokenizer_path=tmp_path)
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------------------------
# Counts
# ----------------------------------------------------------------------------------------------


def test_counts_and_table(masked):
    _, params = masked["classification"]
    counts = count_remaining(params)
    assert json.loads(json.dumps(counts)) == counts
    assert len(counts["matrices"]) == 12 == len(prunable_paths(params, DEFAULT_PRUNABLE))
    assert counts["total"] == 2 * (4 * 32 * 32 + 2 * 32 * 37)
    assert counts["remaining"] == sum(int(KEEP * m["total"]) for m in counts["matrices"].values())
    assert counts["fraction"] == pytest.approx(counts["remaining"] / counts["total"])
    table = format_counts(counts)
    lines = table.splitlines()
    assert lines[0].split() == ["layer", "query", "key", "value", "attn_out", "ffn_in",
                                "ffn_out", "all"]
    assert lines[1].startswith("0 ") and lines[2].startswith("1 ") and "30.0%" in lines[1]
    assert f"{counts['remaining']:,}" in lines[-1]


# ----------------------------------------------------------------------------------------------
# Compressed storage
# ----------------------------------------------------------------------------------------------


def _error_bounds(params, float_dtype):
    """Per-entry bound on |W - W'| after save/load.

    int8 matrices: q = round(W / s), s = max|W| / 127, so |W - s q| <= s / 2 (0 where W == 0).
    Other tensors, float16 round-to-nearest: |x - fl16(x)| <= max(|x| 2^-11, 2^-25) (normal
    range relative error, subnormal spacing / 2); float32: exact.
    """
    quantised = set(prunable_paths(params))
    bounds = {}
    for path, w in tree.flatten(params).items():
        w = np.asarray(w)
        if path in quantised:
            s = np.abs(w).max() / 127
            bounds[path] = np.where(w == 0, 0.0, s / 2) * (1 + 1e-5)
        elif float_dtype == "float16":
            bounds[path] = np.maximum(np.abs(w) * 2.0**-11, 2.0**-25)
        else:
            bounds[path] = np.zeros_like(w)
    return bounds


@pytest.mark.parametrize("float_dtype", ["float16", "float32"])
def test_compressed_round_trip_within_quantisation_error(masked, tmp_path, float_dtype):
    p, params = masked["classification"]
    file = tmp_path / "model.mvpz"
    report = save_compressed(file, params, p.config, "classification", float_dtype=float_dtype)
    assert report["file_bytes"] == os.path.getsize(file) and report["ratio"] > 1
    assert report == compression_report(file)
    json.dumps(report)
    module, loaded, config = load_compressed(file)
    assert config.num_labels == 3 and module.head == "classification"

    # 1. every entry within its derived bound; pruned zeros stay exactly zero
    bounds, a, b = _error_bounds(params, float_dtype), tree.flatten(params), tree.flatten(loaded)
    assert a.keys() == b.keys()
    for path in a:
        err = np.abs(np.asarray(a[path]) - np.asarray(b[path]))
        assert np.all(err <= bounds[path]), path
    assert count_remaining(loaded)["remaining"] <= count_remaining(params)["remaining"]

    # 2. logits: first-order bound |dL_k| <= sum_i |dL_k/dtheta_i| * bound_i (linearisation of
    # the network around the stored weights; second-order terms are orders smaller here)
    ids, mask, types = padded_batch(99)

    def logits(theta):
        return module.apply({"params": theta}, ids, mask, types).ravel()

    jac = jax.jit(jax.jacrev(logits))(params)
    bound = sum(np.abs(np.asarray(j)).reshape(len(j), -1) @ bounds[k].ravel()
                for k, j in tree.flatten(jac).items())
    delta = np.abs(np.asarray(logits(loaded)) - np.asarray(logits(params)))
    assert np.all(delta <= bound + 1e-6), (delta.max(), bound.max())
    assert delta.max() > 0  # the quantisation did change something


def test_compressed_sizes_at_six_percent(tmp_path):
    """Smaller than dense float32 and than int8-dense; bitmask + values dominate at 6%."""
    d = tmp_path / "ckpt"
    make_hf_checkpoint(d, head="classification", num_labels=2)
    p = load_pretrained(str(d), head="classification", num_labels=2)
    scores = init_scores(p.params, "uniform", 1.0, jax.random.PRNGKey(3))
    params = _topk(p.params, scores, 0.06)
    report = save_compressed(tmp_path / "m.mvpz", params, p.config, "classification")
    assert report["density"] <= 0.06
    enc = report["encoder+head"]
    # int8 dense would be 1/4 of float32: the sparse encoding is well below that
    assert enc["bytes"] < enc["dense_float32_bytes"] / 8


def test_compressed_bad_files(masked, tmp_path):
    p, params = masked["classification"]
    good = tmp_path / "good.mvpz"
    save_compressed(good, params, p.config, "classification")
    with pytest.raises(ExportError, match="exists"):
        save_compressed(good, params, p.config, "classification")
    data = good.read_bytes()

    bad = tmp_path / "bad.mvpz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CompressedFormatError, match="truncated or corrupted"):
        load_compressed(bad)

    for pos in (len(data) // 3, len(data) // 2, 2 * len(data) // 3):
        flipped = bytearray(data)
        flipped[pos] ^= 0xFF
        bad.write_bytes(bytes(flipped))
        # wherever the flip lands: the file named, then one of the corruption messages
        with pytest.raises(CompressedFormatError, match=(
                rf"^{re.escape(str(bad))}: (not a readable mvp-jax-compressed file \(truncated "
                r"or corrupted\?\)|corrupted \(|checksum mismatch for )")):
            load_compressed(bad)

    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(CompressedFormatError, match=(
            rf"^{re.escape(str(bad))}: not a readable mvp-jax-compressed file \(truncated or "
            r"corrupted\?\): BadZipFile: ")):
        load_compressed(bad)

    # a well-formed zip whose values were altered: caught by the SHA-256 of the header
    with zipfile.ZipFile(good) as z, zipfile.ZipFile(bad, "w") as out:
        for info in z.infolist():
            blob = z.read(info)
            if info.filename.endswith("layer/0/intermediate/dense/kernel.values"):
                blob = bytes([blob[0] ^ 1]) + blob[1:]
            out.writestr(info.filename, blob)
    with pytest.raises(CompressedFormatError, match="checksum mismatch.*intermediate"):
        load_compressed(bad)
    assert isinstance(CompressedFormatError("x"), ValueError)


def test_save_compressed_failure_leaves_nothing(masked, tmp_path, monkeypatch):
    p, params = masked["classification"]
    calls = []

    def failing_writestr(self, name, data, *a, **k):
        calls.append(name)
        if len(calls) > 3:
            raise OSError("disk full")
        return original(self, name, data, *a, **k)

    original = zipfile.ZipFile.writestr
    monkeypatch.setattr(zipfile.ZipFile, "writestr", failing_writestr)
    with pytest.raises(OSError, match="disk full"):
        save_compressed(tmp_path / "m.mvpz", params, p.config, "classification")
    assert os.listdir(tmp_path) == []


def test_bfloat16_module_from_compressed(masked, tmp_path):
    p, params = masked["qa"]
    save_compressed(tmp_path / "qa.mvpz", params, p.config, "qa")
    module, loaded, _ = load_compressed(tmp_path / "qa.mvpz", dtype=jnp.bfloat16)
    start, end = module.apply({"params": loaded}, *padded_batch(99))
    assert start.shape == end.shape == (3, 12)
