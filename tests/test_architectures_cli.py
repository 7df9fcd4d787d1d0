"""RoBERTa and DistilBERT from the command line: a few steps of movement pruning (weights) and of
hybrid (heads and neurons) on tiny local models with their own tokenizers, through evaluate,
export and predict (transformers' PyTorch pipeline on the export: the same probabilities); bad
model directories exit 2 with one line and write nothing."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from test_architectures import tiny_config
from test_own_data import (
    WORDS,
    fine_prune_args,
    one_error_line,
    pipeline_outputs,
    reviews,
    run_cli,
    write,
)

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "paper" / "mnli" / "hybrid.yaml"


def save_tiny(arch: str, out_dir: Path) -> Path:
    """A random 2-layer bare encoder (hidden 32, 2 heads, FFN 64) with a tokenizer: byte-level BPE
    trained here on the test words (RoBERTa), the embedded MiniLM's WordPiece (DistilBERT)."""
    import transformers as tf

    from mvp_jax.models import resolve_model_path

    torch.manual_seed(0)
    if arch == "roberta":
        from tokenizers import ByteLevelBPETokenizer

        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator([" ".join(WORDS)] * 4, vocab_size=300, min_frequency=1,
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        os.makedirs(out_dir)
        bpe.save_model(str(out_dir))
        tf.AutoTokenizer.from_pretrained(out_dir, tokenizer_type="roberta").save_pretrained(
            out_dir)
        config = tiny_config(arch, num_attention_heads=2, intermediate_size=64, vocab_size=300)
        tf.RobertaModel(config).save_pretrained(out_dir)
    else:
        config = tiny_config(arch, n_heads=2, hidden_dim=64, vocab_size=30522)
        tf.DistilBertModel(config).save_pretrained(out_dir)
        src = Path(resolve_model_path("minilm-l6"))
        for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
            shutil.copy2(src / f, out_dir / f)
    return out_dir


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("arch-models")
    return {a: save_tiny(a, root / a) for a in ("roberta", "distilbert")}


@pytest.mark.parametrize("arch,granularity", [
    ("roberta", "weight"), pytest.param("roberta", "hybrid", marks=pytest.mark.slow),
    pytest.param("distilbert", "weight", marks=pytest.mark.slow), ("distilbert", "hybrid")])
def test_fine_prune_evaluate_export_predict(arch, granularity, models, tmp_path, capsys):
    from mvp_jax.serving.predict import load_predictor, predict_texts

    rows = reviews(32)
    train, dev = write(tmp_path / "train.csv", rows), write(tmp_path / "dev.csv", rows[:16])
    run = tmp_path / "run"
    # hybrid through a paper recipe, its task replaced by a small file
    recipe = ["--config", str(RECIPE)] if granularity == "hybrid" else []
    code, _, err = run_cli(capsys, *fine_prune_args(
        models[arch], run, "task.name=mine", f"task.train_file={train}",
        f"task.validation_file={dev}", f"prune.granularity={granularity}", steps=3), *recipe)
    assert code == 0, err
    if recipe:
        from mvp_jax.config import load_config

        saved = load_config(run / "config.yaml")
        assert saved.train.optimizer == "reference_adamw" and saved.prune.mask_init == "magnitude"
    results = json.loads((run / "eval_results.json").read_text())
    assert 0 < results["remaining"] < results["prunable"]
    assert (run / "compact").is_dir() == (granularity == "hybrid")

    # evaluate the run and the export: the run's numbers
    code, out, err = run_cli(capsys, "evaluate", run)
    assert code == 0, err
    assert json.loads(out)["validation"] == results["metrics"]["validation"]
    model_dir = tmp_path / "exported"
    code, _, err = run_cli(capsys, "export", run, "--output-dir", model_dir)
    assert code == 0, err
    code, out, err = run_cli(capsys, "count", model_dir)  # per layer and matrix type
    assert code == 0, err
    assert out.split("\n")[0].split() == ["layer", "query", "key", "value", "attn_out", "ffn_in",
                                          "ffn_out", "all"]
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == arch
    assert config["architectures"] == [
        {"roberta": "Roberta", "distilbert": "DistilBert"}[arch] + "ForSequenceClassification"]

    # predict (JAX) against transformers' PyTorch pipeline on the export
    texts = [r["text"] for r in rows[:6]]
    ours = list(predict_texts(load_predictor(model_dir), texts, None, batch_size=4))
    theirs = pipeline_outputs(model_dir, texts)
    for o, t in zip(ours, theirs):
        assert set(o["probabilities"]) == set(t) == {"neg", "pos"}
        for name in t:
            assert abs(o["probabilities"][name] - t[name]) < 1e-4
    if granularity == "hybrid":  # the compact model predicts what the masked dense one does
        compact = list(predict_texts(load_predictor(run / "compact"), texts, None, batch_size=4))
        for o, c in zip(ours, compact):
            for name in o["probabilities"]:
                assert abs(o["probabilities"][name] - c["probabilities"][name]) < 1e-5
    code, out, err = run_cli(capsys, "predict", model_dir, "--text", texts[0])
    assert code == 0, err


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_bad_model_directories_exit_2_and_write_nothing(models, tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    rows = reviews(16)
    train = write(tmp_path / "train.csv", rows)

    def refused(model, match, *sets):
        run = tmp_path / "run"
        code, _, err = run_cli(capsys, *fine_prune_args(
            model, run, "task.name=mine", f"task.train_file={train}",
            f"task.validation_file={train}", *sets))
        assert code == 2 and match in one_error_line(err), err
        assert not run.exists()

    unsupported = _copy(models["roberta"], tmp_path / "gpt2")
    cfg = json.loads((unsupported / "config.json").read_text())
    (unsupported / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    refused(unsupported, "model_type is 'gpt2'; supported: bert, roberta, xlm-roberta, "
                         "distilbert")

    misshapen = _copy(models["distilbert"], tmp_path / "misshapen")
    state = load_file(misshapen / "model.safetensors")
    key = "transformer.layer.1.ffn.lin1.weight"
    state[key] = state[key][:60]
    save_file(state, misshapen / "model.safetensors")
    refused(misshapen, "shape mismatch: distilbert/transformer/layer/1/ffn/lin1/kernel")

    missing = _copy(models["roberta"], tmp_path / "missing")
    state = load_file(missing / "model.safetensors")
    del state["encoder.layer.0.attention.self.key.weight"]
    save_file(state, missing / "model.safetensors")
    refused(missing, "missing encoder weights roberta/encoder/layer/0/attention/self/key/kernel;")

    refused(models["roberta"], "has 30522 tokens, the model 300: the teacher must read the "
            "model's tokenizer", f"distill.teacher={models['distilbert']}")

    no_tokenizer = _copy(models["roberta"], tmp_path / "no-tokenizer")
    for f in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"):
        (no_tokenizer / f).unlink(missing_ok=True)
    refused(no_tokenizer, "no tokenizer in")


@pytest.mark.parametrize("arch", ["roberta", "distilbert"])
def test_squad_features_of_each_tokenizer_hold_the_gold_answers(arch, models, tmp_path):
    """SQuAD windows made with the model's own tokenizer (RoBERTa: byte-level BPE, no token
    types, ``</s></s>`` between question and context): gold start/end logits score 100 on the
    answers that start and end on token boundaries."""
    from test_squad import DEV, _aligned, _gold_logits, _write_squad
    from transformers import AutoTokenizer

    from mvp_jax import data as D

    tok = AutoTokenizer.from_pretrained(models[arch])
    article = json.loads(DEV.read_text(encoding="utf-8"))["data"][0]
    paragraphs = [{**p, "qas": [q for q in p["qas"] if _aligned(
        tok, p["context"], q["answers"][0]["answer_start"], q["answers"][0]["text"])]}
        for p in article["paragraphs"][:2]]
    for split in ("train", "dev"):
        _write_squad(tmp_path / f"{split}-v1.1.json", [{**article, "paragraphs": paragraphs}])
    td = D.load_task("squad", tok, data_dir=tmp_path, max_seq_length=192, doc_stride=64)
    ev = td.evals["validation"]
    assert ev.num_examples > 5 and len(ev) >= ev.num_examples
    assert D.evaluate("squad", ev, _gold_logits(ev)) == {"exact_match": 100.0, "f1": 100.0}
