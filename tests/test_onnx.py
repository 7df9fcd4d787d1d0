"""ONNX export (``mvp_jax.export.onnx``, ``mvp-jax export --format onnx``) and ONNX Runtime
prediction: the graph computes the JAX model's outputs for dense, unstructured, head, neuron and
hybrid models (compact ones with layers that lost every head or every neuron), QA and the other
architectures; int8 costs at most a point of accuracy on real data; ``mvp-jax predict`` on an ONNX
directory gives the JAX path's labels; bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import onnx  # the test extra installs the onnx extra: these tests never skip
import onnxruntime as ort
import pytest
from _helpers_models import tiny_config
from test_own_data import fine_prune_args, one_error_line, reviews, run_cli, write

from mvp_jax.export.compact import compact_params, layer_sizes
from mvp_jax.export.onnx import BATCH, SEQUENCE, onnx_model
from mvp_jax.models import build_module
from mvp_jax.models.bert import init_params
from mvp_jax.pruning.masking import multiply_masks
from mvp_jax.pruning.structured import to_weight_masks

TOL = 1e-4


def session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def random_params(config, head, seed=0):
    """Random params with non-trivial LayerNorms and biases (so every term shows)."""
    module = build_module(config, head, 3)
    params = init_params(module, seed)
    keys = iter(jax.random.split(jax.random.PRNGKey(seed + 1), 200))
    return module, jax.tree.map(
        lambda x: x * 5.0 if x.ndim == 2 else x + 0.3 * jax.random.normal(next(keys), x.shape),
        params)


def batches(config, seed=0):
    """Two batches of other shapes (dynamic axes), with padding; RoBERTa pads with its pad id."""
    rng = np.random.default_rng(seed)
    for b, s in ((1, 5), (3, 12)):
        ids = rng.integers(3, config.vocab_size, (b, s))
        mask = np.ones_like(ids)
        mask[-1, s // 2:] = 0
        if config.model_type == "roberta":
            ids[-1, s // 2:] = config.pad_token_id
        types = (rng.integers(0, 2, (b, s)) if getattr(config, "type_vocab_size", 0) > 1
                 else np.zeros_like(ids))
        yield ids, mask, types


def run_onnx(sess, ids, mask, types):
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    wanted = [i.name for i in sess.get_inputs()]
    return sess.run(None, {k: feeds[k] for k in wanted})


def unit_masks(params, config, prefix, kinds, seed=0):
    """Random unit masks; layer 0 loses every head and layer 1 every neuron when pruned."""
    rng = np.random.default_rng(seed)
    out = {}
    n = config.num_attention_heads
    width = getattr(config, "intermediate_size", None) or config.hidden_dim
    for i in range(2):
        if "heads" in kinds:
            out[f"{prefix}/layer/{i}/attention/heads"] = jnp.asarray(
                np.zeros(n) if i == 0 else (rng.random(n) < 0.5) | (np.arange(n) == 1), jnp.float32)
        if "neurons" in kinds:
            out[f"{prefix}/layer/{i}/ffn/neurons"] = jnp.asarray(
                np.zeros(width) if i == 1 else rng.random(width) < 0.4, jnp.float32)
    return out


def weight_masks(params, seed=0):
    """Random 70%-sparse masks of every prunable kernel (unstructured pruning)."""
    from mvp_jax.pruning.masking import prunable_paths
    from mvp_jax.tree import flatten

    rng = np.random.default_rng(seed)
    flat = flatten(params)
    return {p: jnp.asarray(rng.random(flat[p].shape) < 0.3, jnp.float32)
            for p in prunable_paths(params)}


CASES = {  # name: (head, unit kinds pruned, or "weights")
    "dense": ("classification", ()),
    "unstructured": ("classification", "weights"),
    "heads": ("classification", ("heads",)),
    "neurons": ("classification", ("neurons",)),
    "hybrid": ("classification", ("heads", "neurons")),
    "hybrid-qa": ("qa", ("heads", "neurons")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_onnx_outputs_equal_the_jax_model(case):
    head, kinds = CASES[case]
    config = tiny_config(num_labels=3)
    module, params = random_params(config, head)
    if kinds == "weights":
        masks = weight_masks(params)
    else:
        masks = to_weight_masks(unit_masks(params, config, "bert/encoder", kinds), params)
    masked = multiply_masks(params, masks)
    exported = [("dense with zeros", masked, config)]
    if kinds and kinds != "weights":
        small, small_config = compact_params(params, masks, config)
        heads, sizes = layer_sizes(small_config)
        if "heads" in kinds:
            assert heads[0] == 0 and 0 < heads[1] < 4
        if "neurons" in kinds:
            assert sizes[1] == 0 and 0 < sizes[0] < 37
        exported.append(("compact", small, small_config))
    for name, p, c in exported:
        model = onnx_model(p, c, head)
        sess = session(model)
        # Hugging Face's names and dynamic axes
        assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask",
                                                       "token_type_ids"]
        assert [o.name for o in sess.get_outputs()] == (
            ["logits"] if head == "classification" else ["start_logits", "end_logits"])
        assert all(i.shape == [BATCH, SEQUENCE] for i in sess.get_inputs())
        for ids, mask, types in batches(config):
            want = module.apply({"params": masked}, ids, mask, types)
            want = want if isinstance(want, tuple) else (want,)
            got = run_onnx(sess, ids, mask, types)
            for g, w in zip(got, want, strict=True):
                assert g.shape == w.shape
                np.testing.assert_allclose(g, np.asarray(w), atol=TOL, rtol=0,
                                           err_msg=f"{case}: {name}")
    if len(exported) == 2:  # the compact graph holds only the kept units' weights
        size = [sum(np.prod(t.dims) for t in onnx_model(p, c, head).graph.initializer)
                for _, p, c in exported]
        assert size[1] < size[0]


@pytest.mark.parametrize("arch", ["roberta", "distilbert"])
@pytest.mark.parametrize("head", ["classification", "qa"])
def test_onnx_other_architectures_compact(arch, head):
    from test_architectures import tiny_config as arch_config

    config = arch_config(arch)
    module, params = random_params(config, head)
    layers = "roberta/encoder" if arch == "roberta" else "distilbert/transformer"
    masks = to_weight_masks(unit_masks(params, config, layers, ("heads", "neurons")), params)
    masked = multiply_masks(params, masks)
    small, small_config = compact_params(params, masks, config)
    sess = session(onnx_model(small, small_config, head))
    # RoBERTa (one token type) and DistilBERT (none) take no token_type_ids, as HF's exports
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask"]
    for ids, mask, types in batches(config):
        want = module.apply({"params": masked}, ids, mask, types)
        want = want if isinstance(want, tuple) else (want,)
        for g, w in zip(run_onnx(sess, ids, mask, types), want, strict=True):
            np.testing.assert_allclose(g, np.asarray(w), atol=TOL, rtol=0)


def test_onnx_bare_encoder_with_tanh_gelu():
    config = tiny_config(hidden_act="gelu_new")
    module, params = random_params(config, None)
    sess = session(onnx_model(params, config, None))
    assert [o.name for o in sess.get_outputs()] == ["last_hidden_state"]
    for ids, mask, types in batches(config):
        last, _ = module.apply({"params": params}, ids, mask, types)
        np.testing.assert_allclose(run_onnx(sess, ids, mask, types)[0], np.asarray(last),
                                   atol=TOL, rtol=0)


# ----------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------

STEPS = 40  # enough for the tiny model to label the reviews with a margin


@pytest.fixture(scope="module")
def hybrid_run(tmp_path_factory, tiny_bert):
    """A short hybrid run on texts whose label follows their words (its compact/ and export/)."""
    import contextlib
    import io

    from mvp_jax.cli import main

    root = tmp_path_factory.mktemp("onnx-run")
    rows = reviews(64)
    train, dev = write(root / "train.csv", rows), write(root / "dev.csv", rows[:24])
    run = root / "run"
    args = fine_prune_args(tiny_bert, run, "task.name=mine", f"task.train_file={train}",
                           f"task.validation_file={dev}", "prune.granularity=hybrid",
                           "prune.mask_init=uniform", "prune.mask_scale=0.1",
                           "data.max_train_samples=64", "train.learning_rate=1e-2",
                           steps=STEPS)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(args) == 0
    return run, [r["text"] for r in rows[:12]], rows


def test_cli_onnx_export_and_predict_give_the_jax_labels(hybrid_run, tmp_path, capsys):
    from mvp_jax.serving.predict import load_predictor, predict_texts

    run, texts, _ = hybrid_run
    out = tmp_path / "onnx"
    code, stdout, err = run_cli(capsys, "export", run, "--format", "onnx", "--compact",
                                "--output-dir", out)
    assert code == 0, err
    assert json.loads(stdout)["format"] == "onnx"
    files = sorted(p.name for p in out.iterdir())
    assert "model.onnx" in files and "config.json" in files and "vocab.txt" in files
    config = json.loads((out / "config.json").read_text())
    compact = json.loads((run / "compact" / "config.json").read_text())
    assert config["id2label"] == compact["id2label"] == {"0": "neg", "1": "pos"}
    assert config.get("layer_num_heads") == compact.get("layer_num_heads")

    jax_rows = list(predict_texts(load_predictor(str(run)), texts, batch_size=4))
    onnx_rows = list(predict_texts(load_predictor(str(out)), texts, batch_size=4))
    assert [r["label"] for r in onnx_rows] == [r["label"] for r in jax_rows]
    for a, b in zip(jax_rows, onnx_rows):
        np.testing.assert_allclose(list(a["probabilities"].values()),
                                   list(b["probabilities"].values()), atol=1e-5)
    code, stdout, err = run_cli(capsys, "predict", out, "--text", texts[0], "--text", texts[1])
    assert code == 0, err
    assert [json.loads(line)["label"] for line in stdout.splitlines()] == \
        [r["label"] for r in jax_rows[:2]]

    # evaluate and count read Hugging Face weights: they say so, and what to use
    for command in (["evaluate", out, "--validation-file", run.parent / "dev.csv"],
                    ["count", out]):
        code, _, err = run_cli(capsys, *command)
        assert code == 2 and "holds an ONNX model (model.onnx)" in one_error_line(err)

    # an exported model directory converts too: the masked dense one
    code, _, err = run_cli(capsys, "export", run / "export", "--format", "onnx", "--output-dir",
                           tmp_path / "from-dir")
    assert code == 0, err
    rows = list(predict_texts(load_predictor(str(tmp_path / "from-dir")), texts, batch_size=4))
    assert [r["label"] for r in rows] == [r["label"] for r in jax_rows]
    assert json.loads((tmp_path / "from-dir" / "config.json").read_text())["id2label"] == \
        {"0": "neg", "1": "pos"}


def test_int8_accuracy_within_one_point(hybrid_run, tmp_path, capsys):
    """The run's compact model, int8 (ONNX Runtime dynamic quantization): its accuracy on the 64
    labelled reviews is within 1 point of the float model's, in a file under half the size."""
    from mvp_jax.serving.predict import load_predictor, predict_texts

    run, _, rows = hybrid_run
    texts, gold = [r["text"] for r in rows], [r["label"] for r in rows]
    accuracy, graphs = {}, {}
    for name, extra in (("fp32", []), ("int8", ["--quantize", "int8"])):
        out = tmp_path / name
        code, _, err = run_cli(capsys, "export", run, "--format", "onnx", "--compact", *extra,
                               "--output-dir", out)
        assert code == 0, err
        labels = [r["label"] for r in predict_texts(load_predictor(str(out)), texts)]
        accuracy[name] = np.mean(np.asarray(labels) == np.asarray(gold))
        graphs[name] = onnx.load(str(out / "model.onnx")).graph
    assert accuracy["fp32"] >= 0.9, accuracy  # the model learned: the check has teeth
    assert abs(accuracy["int8"] - accuracy["fp32"]) <= 0.01, accuracy

    # every matrix with constant weights is int8 (the embedding tables stay float)
    def float_matrices(graph):
        return sorted(t.name for t in graph.initializer if len(t.dims) == 2
                      and t.data_type == onnx.TensorProto.FLOAT and "embedding" not in t.name)

    assert float_matrices(graphs["fp32"]) and not float_matrices(graphs["int8"])
    assert sum(n.op_type == "MatMulInteger" for n in graphs["int8"].node) == \
        sum(n.op_type == "MatMul" for n in graphs["fp32"].node
            if any(i.endswith("kernel") for i in n.input))


def test_cli_compact_export_of_a_run_matches_the_runs_compact_model(hybrid_run, tmp_path, capsys):
    """One export path: ``mvp-jax export --compact`` writes the run's own compact/ again."""
    from safetensors.numpy import load_file

    run, _, _ = hybrid_run
    out = tmp_path / "compact"
    code, _, err = run_cli(capsys, "export", run, "--compact", "--output-dir", out)
    assert code == 0, err
    assert json.loads((out / "config.json").read_text()) == \
        json.loads((run / "compact" / "config.json").read_text())
    a, b = load_file(out / "model.safetensors"), load_file(run / "compact" / "model.safetensors")
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def _no_output(path):
    return not path.exists()


@pytest.mark.parametrize("args,match", [
    (["--format", "tflite"], "unknown --format 'tflite'"),
    (["--quantize", "int8"], "--quantize int8 needs --format onnx"),
    (["--format", "onnx", "--quantize", "int4"], "unknown --quantize 'int4'"),
    (["--format", "onnx", "--compressed", "x.npz"], "--compressed packs the masked dense model"),
])
def test_cli_bad_export_options(hybrid_run, tmp_path, capsys, args, match):
    run, _, _ = hybrid_run
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "export", run, "--output-dir", out, *args)
    assert code == 2 and match in one_error_line(err)
    assert _no_output(out) and not (tmp_path / "x.npz").exists()


def test_cli_export_refuses_a_directory_with_other_files(hybrid_run, tmp_path, capsys):
    run, _, _ = hybrid_run
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    for extra in ([], ["--overwrite"]):
        code, _, err = run_cli(capsys, "export", run, "--format", "onnx", "--output-dir", out,
                               *extra)
        assert code == 2, err
        line = one_error_line(err)
        assert "not empty" in line or "not a model file" in line
        assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_cli_missing_onnx_runtime_is_one_line(hybrid_run, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    run, _, _ = hybrid_run
    code, _, err = run_cli(capsys, "export", run, "--format", "onnx", "--quantize", "int8",
                           "--output-dir", tmp_path / "out")
    assert code == 2 and "pip install 'mvp-jax[onnx]'" in one_error_line(err)
    assert _no_output(tmp_path / "out")


def test_cli_compact_refused_when_no_unit_was_removed(tmp_path, capsys):
    """A model pruned weight by weight (no whole head or neuron): --compact says why not and
    what to use instead, and writes nothing (the same check as for a run, deploy.compacted)."""
    from mvp_jax.export.huggingface import export_hf

    config = tiny_config(num_labels=2)
    _, params = random_params(config, "classification")
    model = export_hf(tmp_path / "model", multiply_masks(params, weight_masks(params)), config,
                      "classification")
    code, _, err = run_cli(capsys, "export", model, "--compact", "--format", "onnx",
                           "--output-dir", tmp_path / "c")
    assert code == 2
    line = one_error_line(err)
    assert "no whole attention head or FFN neuron was pruned" in line
    assert "export without --compact" in line and "prune.granularity" in line
    assert _no_output(tmp_path / "c")


def test_deploy_benchmark_runs_every_runtime_and_plots(hybrid_run, tmp_path):
    """benchmarks/deploy_speed.py on the short run (as dense reference and as pruned run):
    every runtime labels the sentences, the ONNX model labels them as the JAX one does, and it
    writes its JSON, table and figure."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import deploy_speed

    run, _, _ = hybrid_run
    out_json, out_png = tmp_path / "deploy.json", tmp_path / "deploy.png"
    assert deploy_speed.main([str(run), str(run), "--work", str(tmp_path / "work"), "--n", "16",
                              "--rounds", "1", "--batch-sizes", "4", "--json", str(out_json),
                              "--plot", str(out_png)]) == 0
    rows = json.loads(out_json.read_text())["models"]
    assert [(r["runtime"], r["name"]) for r in rows] == [
        ("torch pipeline", "dense"), ("onnx", "dense"), ("onnx", "dense int8"), ("jax", "dense"),
        ("onnx", "run compact"), ("onnx", "run compact int8"), ("jax", "run compact")]
    by = {(r["runtime"], r["name"]): r for r in rows}
    # the same masked model in three runtimes: the same labels, so the same accuracy
    assert by[("torch pipeline", "dense")]["accuracy"] == by[("onnx", "dense")]["accuracy"] == \
        by[("jax", "dense")]["accuracy"]
    assert by[("onnx", "run compact")]["accuracy"] == by[("jax", "run compact")]["accuracy"]
    assert by[("onnx", "run compact")]["file_mb"] < by[("onnx", "dense")]["file_mb"]
    assert all(r["median_examples_per_s_b4"] > 0 and r["speedup_vs_dense_b4"] > 0 for r in rows)
    assert out_png.stat().st_size > 10_000
