"""The ONNX directory of ``mvp-jax export --format onnx`` loads where users serve models, from its
files alone (``model.onnx``, ``config.json``, the tokenizer files), without mvp_jax:

* plain ONNX Runtime: ``onnxruntime.InferenceSession`` + ``transformers.AutoTokenizer``;
* Hugging Face Optimum: ``ORTModelForSequenceClassification`` in transformers'
  ``pipeline("text-classification")`` (with and without Optimum's IO binding, which sizes the
  output buffers from the graph's symbolic shapes).

Both give ``mvp-jax predict``'s labels and probabilities (within 1e-4) on the same texts, for the
compact model (``--compact``) of a BERT pruned by heads and neurons, whose layers differ in size
(0 and 2 heads of 4; 24 and 0 neurons of 37: ``config.json``'s ``layer_num_heads`` /
``layer_intermediate_sizes``), and for its int8 export.

The serving code runs in a fresh interpreter in which ``import mvp_jax`` fails. Optimum runs
in ``MVP_JAX_SERVING_PYTHON`` (an interpreter with ``optimum-onnx`` installed) when that is set,
else in this one when it has ``optimum``. Why it is not in the test extra: optimum-onnx 0.1.0 (the
newest) requires ``transformers<4.58`` and ``optimum~=2.1.0``, and optimum 2.1's
``optimum.onnxruntime`` fails to import under transformers 5 (``cannot import name
'is_offline_mode' from 'transformers.utils'``). ``pip install optimum-onnx`` here would downgrade
transformers 5.25 to 4.57.6, tokenizers to 0.22 and huggingface_hub 2.4 to 0.36 (transformers 4.57
needs <1.0), under which the installed datasets 5.2 (huggingface-hub>=1.31) fails to import, and
mvp_jax.data with it; ``pip install -e ".[test]" optimum-onnx`` resolves by also taking datasets
5.0.1. This file passes on that stack (optimum in the same interpreter), but the rest of the suite
is not checked there. Without either interpreter, the ``optimum_python`` fixture installs that
stack (``OPTIMUM_STACK``, about 15 s from PyPI) into a folder of its own, first on the serving
interpreter's path, and serves from there; the tests never skip.

Batching: int8 graphs quantize activations with one scale per call (ONNX Runtime's dynamic
quantization), so an int8 output depends slightly on what else is in the batch (padding, other
texts). Each reference is therefore ``mvp-jax predict`` with the serving code's batching: all texts
in one padded batch for the ONNX Runtime code (``--batch-size`` = number of texts), one text per
call for the pipeline (its default; ``--batch-size 1``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from test_own_data import run_cli

TOL = 1e-4
LABELS = ("neg", "mid", "pos")
HEADS, NEURONS = [0, 2], [24, 0]  # per layer, of 4 heads and 37 neurons
TEXTS = ["A moving, beautifully acted film.", "Dull and far too long.",
         "I laughed the whole way through!", "The plot makes no sense at all.",
         "An instant classic", "Terrible sound, worse acting.", "It was fine, I guess.",
         "Five stars: would watch again.", "Nothing happens for two hours.",
         "A warm story about an old fisherman and his dog.", "Why did anyone fund this?", "ok"]
SERVING_PYTHON = "MVP_JAX_SERVING_PYTHON"
OPTIMUM_BLOCKER = (
    "optimum-onnx 0.1.0 requires transformers<4.58 and huggingface_hub<1 (this project runs "
    "transformers 5), so it is not in the test extra")


def _pruned_bert(out: Path) -> Path:
    """A random BERT (vocabulary and tokenizer of the embedded MiniLM, hidden 32, 2 layers, 4 heads
    of 8, FFN 37, labels neg/mid/pos), its heads and neurons pruned as unit masks prune them (the
    output rows of the attention-output and FFN-out matrices zero) to the sizes HEADS/NEURONS,
    saved by transformers (``save_pretrained``) with the tokenizer files."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from mvp_jax.models import resolve_model_path

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=37, max_position_embeddings=64,
                        num_labels=3, id2label=dict(enumerate(LABELS)),
                        label2id={n: i for i, n in enumerate(LABELS)})
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():  # big head weights: the labels differ from text to text
        for name, p in model.named_parameters():
            if "LayerNorm" not in name:
                p.normal_(0.0, 3.0 if name.startswith(("bert.pooler", "classifier")) else 0.2)
        model.classifier.bias.zero_()
        dead_heads, dead_neurons = ([0, 1, 2, 3], [0, 2]), (list(range(0, 37, 3)), range(37))
        for layer, heads, neurons in zip(model.bert.encoder.layer, dead_heads, dead_neurons):
            for h in heads:
                layer.attention.output.dense.weight[:, 8 * h:8 * (h + 1)] = 0
            layer.output.dense.weight[:, list(neurons)] = 0
    model.save_pretrained(out)
    src = Path(resolve_model_path("minilm-l6"))
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / f).exists():
            shutil.copy2(src / f, out / f)
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """``mvp-jax export DIR --format onnx --compact [--quantize int8]`` of the pruned model."""
    from mvp_jax.cli import main

    root = tmp_path_factory.mktemp("serving")
    model = _pruned_bert(root / "pruned")
    dirs = {"compact": root / "onnx-compact", "int8": root / "onnx-compact-int8"}
    for name, extra in (("compact", []), ("int8", ["--quantize", "int8"])):
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["export", str(model), "--format", "onnx", "--compact", *extra,
                         "--output-dir", str(dirs[name])]) == 0
    return dirs


def test_the_exported_directories_are_what_the_serving_tests_need(exported):
    """Per-layer sizes in config.json (a layer without heads, one without neurons), the labels,
    the tokenizer files beside model.onnx; int matrices in the int8 graph."""
    for name, d in exported.items():
        config = json.loads((d / "config.json").read_text())
        assert config["layer_num_heads"] == HEADS and config["layer_intermediate_sizes"] == NEURONS
        assert config["num_attention_heads"] == 4 and config["intermediate_size"] == 37
        assert config["id2label"] == {str(i): n for i, n in enumerate(LABELS)}
        assert config["architectures"] == ["BertForSequenceClassification"]
        assert {"model.onnx", "tokenizer.json", "vocab.txt"} <= {p.name for p in d.iterdir()}
        ops = {n.op_type for n in onnx.load(str(d / "model.onnx")).graph.node}
        assert ("MatMulInteger" in ops) == (name == "int8"), name


def mvp_jax_predict(capsys, model_dir: Path, batch_size: int) -> list[dict]:
    """``mvp-jax predict MODEL --text ... --batch-size N``: one result per text, in order."""
    args = [a for t in TEXTS for a in ("--text", t)]
    code, out, err = run_cli(capsys, "predict", model_dir, *args, "--batch-size", batch_size)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["text"] for r in rows] == TEXTS
    return rows


def assert_same_predictions(got: list[dict], want: list[dict], what: str) -> None:
    assert len(got) == len(want) == len(TEXTS)
    assert [g["label"] for g in got] == [w["label"] for w in want], what
    for g, w, text in zip(got, want, TEXTS):
        assert sorted(g["probabilities"]) == sorted(LABELS), what
        np.testing.assert_allclose([g["probabilities"][n] for n in LABELS],
                                   [w["probabilities"][n] for n in LABELS], atol=TOL, rtol=0,
                                   err_msg=f"{what}: {text!r}")


# ----------------------------------------------------------------------------------------------
# The serving code: run in a fresh interpreter where mvp_jax cannot be imported. The lines between
# the "user code" markers are SERVING_SNIPPET.md's (README, Deploy).
# ----------------------------------------------------------------------------------------------

_PRELUDE = """\
import json, sys
sys.modules["mvp_jax"] = None  # `import mvp_jax` raises ImportError in this interpreter
model_dirs, texts = json.loads(sys.stdin.read())
results = {}
for model_dir in model_dirs:
"""
_CHECK = """\
assert not [m for m in sys.modules if m.startswith("mvp_jax") and sys.modules[m] is not None]
print(json.dumps(results))
"""

ORT_CODE = """\
# user code
import json
import numpy as np
import onnxruntime as ort
from transformers import AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained(model_dir)
session = ort.InferenceSession(f"{model_dir}/model.onnx", providers=["CPUExecutionProvider"])
id2label = json.load(open(f"{model_dir}/config.json"))["id2label"]

batch = tokenizer(texts, padding=True, truncation=True, return_tensors="np")
feeds = {i.name: batch[i.name].astype(np.int64) for i in session.get_inputs()}
logits = session.run(["logits"], feeds)[0]
probs = np.exp(logits - logits.max(-1, keepdims=True))
probs /= probs.sum(-1, keepdims=True)
labels = [id2label[str(i)] for i in probs.argmax(-1)]
# end of user code
results[model_dir] = [{"label": label, "probabilities": {id2label[str(j)]: float(p)
                                                         for j, p in enumerate(row)}}
                      for label, row in zip(labels, probs)]
"""

OPTIMUM_CODE = """\
# user code
from optimum.onnxruntime import ORTModelForSequenceClassification
from transformers import AutoTokenizer, pipeline

tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = ORTModelForSequenceClassification.from_pretrained(model_dir)
classify = pipeline("text-classification", model=model, tokenizer=tokenizer, top_k=None)
scores = classify(texts)  # per text: every label with its probability, the highest first
# end of user code
bound = ORTModelForSequenceClassification.from_pretrained(model_dir, use_io_binding=True)
assert bound.use_io_binding and not model.use_io_binding
bound_scores = pipeline("text-classification", model=bound, tokenizer=tokenizer,
                        top_k=None)(texts)
results[model_dir] = {
    name: [{"label": s[0]["label"], "probabilities": {x["label"]: x["score"] for x in s}}
           for s in out] for name, out in (("pipeline", scores), ("io_binding", bound_scores))}
"""


def serve(python: str, code: str, dirs: dict[str, Path], path: str | None = None) -> dict:
    """Run ``code`` (per model directory) in ``python`` (``path`` first on its PYTHONPATH);
    its results by directory name."""
    script = _PRELUDE + textwrap.indent(code, "    ") + _CHECK
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if path:
        env["PYTHONPATH"] = path
    done = subprocess.run([python, "-c", script], input=json.dumps([[str(d) for d in
                                                                     dirs.values()], TEXTS]),
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    by_dir = json.loads(done.stdout.strip().splitlines()[-1])
    return {name: by_dir[str(d)] for name, d in dirs.items()}


# Optimum's serving stack, installed beside this one when no interpreter with it is given: the
# newest optimum-onnx and the versions it needs (transformers 4, huggingface_hub 0.x)
OPTIMUM_STACK = ("optimum-onnx==0.1.0", "optimum==2.1.0", "transformers==4.57.6",
                 "tokenizers==0.22.2", "huggingface_hub==0.36.2")


@pytest.fixture(scope="session")
def optimum_python(tmp_path_factory) -> tuple[str, str | None]:
    """``(interpreter, PYTHONPATH)`` that serves with Optimum: ``MVP_JAX_SERVING_PYTHON``, else
    this interpreter when it has optimum, else this interpreter with ``OPTIMUM_STACK`` installed
    (``pip install --target``, no dependencies: torch, onnxruntime and numpy are this
    environment's) in a folder of its own first on its path."""
    chosen = os.environ.get(SERVING_PYTHON)
    if chosen:
        return chosen, None
    if importlib.util.find_spec("optimum") is not None:
        return sys.executable, None
    target = tmp_path_factory.mktemp("optimum-stack")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                           "--disable-pip-version-check", "--target", str(target),
                           *OPTIMUM_STACK], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.fail(f"could not install Optimum's serving stack ({OPTIMUM_BLOCKER}): "
                    f"{done.stderr[-1500:]}")
    return sys.executable, str(target)


@pytest.fixture(scope="module")
def ort_results(exported):
    return serve(sys.executable, ORT_CODE, exported)


@pytest.fixture(scope="module")
def optimum_results(exported, optimum_python):
    return serve(*optimum_python[:1], OPTIMUM_CODE, exported, path=optimum_python[1])


@pytest.mark.parametrize("name", ["compact", "int8"])
def test_plain_onnx_runtime_gives_mvp_jax_predicts_labels(exported, ort_results, name, capsys):
    want = mvp_jax_predict(capsys, exported[name], batch_size=len(TEXTS))  # one padded batch
    assert len({r["label"] for r in want}) >= 2  # the labels differ: the comparison has teeth
    assert_same_predictions(ort_results[name], want, f"onnxruntime, {name}")


@pytest.mark.parametrize("name", ["compact", "int8"])
def test_optimum_pipeline_gives_mvp_jax_predicts_labels(exported, optimum_results, name,
                                                        capsys):
    want = mvp_jax_predict(capsys, exported[name], batch_size=1)  # the pipeline's batching
    assert len({r["label"] for r in want}) >= 2
    for variant in ("pipeline", "io_binding"):
        assert_same_predictions(optimum_results[name][variant], want, f"optimum {variant}, {name}")
