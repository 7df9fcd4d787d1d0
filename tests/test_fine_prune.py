"""End to end: `fine_prune` on the embedded MiniLM and a slice of SST-2, every method.

Independent references: the exported model is run by transformers' PyTorch BERT, and the
remaining weights are counted on the exported tensors.
"""

import json

import jax
import numpy as np
import pytest

from mvp_jax.config import load_config
from mvp_jax.runner import RunError, fine_prune

pytestmark = pytest.mark.slow

MINILM_PRUNABLE_PER_LAYER = 4 * 384 * 384 + 2 * 384 * 1536

METHODS = {
    "none": [],
    "magnitude": ["prune.final_threshold=0.3"],
    "topk": ["prune.final_threshold=0.3", "prune.mask_init=constant", "prune.mask_scale=0.0"],
    "sigmoied_threshold": ["prune.initial_threshold=0.0", "prune.final_threshold=0.1",
                           "prune.regularization=l1", "prune.final_lambda=10.0"],
    "l0": ["prune.initial_threshold=1.0", "prune.final_threshold=1.0", "prune.mask_init=constant",
           "prune.mask_scale=2.197", "prune.regularization=l0", "prune.final_lambda=1.0"],
}


def small_config(shared_data, method, *extra):
    return load_config(None, [
        f"task.data_dir={shared_data / 'glue' / 'SST-2'}", "task.name=sst2", "task.max_seq_length=32",
        "data.max_train_samples=48", "data.max_eval_samples=40", "train.batch_size=16",
        "train.max_steps=4", "train.warmup_steps=1", "train.learning_rate=1e-4", "train.log_every=1",
        "prune.initial_warmup=1", "prune.final_warmup=1", f"prune.method={method}",
        *METHODS[method], *extra])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data):
    out = {}
    for method in METHODS:
        d = tmp_path_factory.mktemp(method) / "run"
        results = fine_prune(small_config(shared_data, method), str(d), progress=False)
        out[method] = (d, results)
    return out


def torch_accuracy(export_dir, shared_data):
    import torch
    from transformers import BertForSequenceClassification

    from mvp_jax import data
    from mvp_jax.models import load_tokenizer

    model = BertForSequenceClassification.from_pretrained(str(export_dir)).eval()
    task = data.load_task("sst2", load_tokenizer(str(export_dir)), data_dir=shared_data / "glue" / "SST-2",
                          max_seq_length=32, max_eval_samples=40, with_train=False)
    ev = task.evals["validation"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(ev.features["input_ids"], dtype=torch.long),
                       attention_mask=torch.tensor(ev.features["attention_mask"], dtype=torch.long),
                       token_type_ids=torch.tensor(ev.features["token_type_ids"], dtype=torch.long)).logits
    return float((logits.argmax(-1).numpy() == ev.labels).mean()), model


@pytest.mark.parametrize("method", list(METHODS))
def test_run_directory_export_and_counts(runs, method, shared_data):
    d, results = runs[method]
    for name in ("config.yaml", "metrics.jsonl", "eval_results.json", "counts.json", "checkpoints", "export"):
        assert (d / name).exists(), name
    saved = json.loads((d / "eval_results.json").read_text())
    assert saved["step"] == 4 and saved["method"] == method
    lines = [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines if "loss" in l] == [1, 2, 3, 4]
    assert all(np.isfinite(l["loss"]) for l in lines if "loss" in l)
    # the first step's time (with compilation) is logged once, apart from the throughput
    train_lines = [l for l in lines if "loss" in l]
    assert train_lines[0]["first_step_s"] > 0
    assert not any("first_step_s" in l for l in train_lines[1:])
    assert all(l["examples_per_s"] > 0 for l in train_lines)

    # transformers' PyTorch BERT on the exported directory reproduces the accuracy
    acc, model = torch_accuracy(d / "export", shared_data)
    assert acc == pytest.approx(saved["metrics"]["validation"]["accuracy"], abs=1e-9)

    # remaining weights counted on the exported tensors equal the reported ones
    zeros = total = 0
    for name, p in model.bert.encoder.named_parameters():
        if name.endswith("weight") and "LayerNorm" not in name:
            zeros += int((p == 0).sum())
            total += p.numel()
    assert total == 6 * MINILM_PRUNABLE_PER_LAYER
    assert saved["remaining"] == total - zeros and saved["prunable"] == total
    if method in ("topk", "magnitude"):
        # exact target: int(0.3 * size) kept in every matrix (local selection)
        expected = 6 * (4 * int(0.3 * 384 * 384) + 2 * int(0.3 * 384 * 1536))
        assert saved["remaining"] == expected
    elif method == "none":
        assert saved["remaining"] == total


def test_global_topk_keeps_exact_total(tmp_path, shared_data):
    cfg = small_config(shared_data, "topk", "prune.global_topk=true", "train.max_steps=3")
    res = fine_prune(cfg, str(tmp_path / "run"), progress=False)
    assert res["remaining"] == int(0.3 * 6 * MINILM_PRUNABLE_PER_LAYER)
    counts = json.loads((tmp_path / "run" / "counts.json").read_text())
    per_matrix = [m["remaining"] / m["total"] for m in counts["matrices"].values()]
    assert max(per_matrix) - min(per_matrix) > 1e-3  # one global threshold, not per matrix


def final_params(run_dir):
    from mvp_jax.rundir import read_checkpoint

    return read_checkpoint(str(run_dir), ("params", "scores", "step"))


def test_resume_gives_identical_params(tmp_path, shared_data):
    cfg = small_config(shared_data, "topk", "train.max_steps=6", "train.gradient_accumulation_steps=2",
                       "train.batch_size=8")
    fine_prune(cfg, str(tmp_path / "full"), progress=False)
    partial = fine_prune(cfg, str(tmp_path / "split"), progress=False, stop_at_step=3)
    assert partial == {"step": 3, "complete": False}
    assert not (tmp_path / "split" / "eval_results.json").exists()
    with pytest.raises(RunError, match="already holds a run"):
        fine_prune(cfg, str(tmp_path / "split"), progress=False)
    fine_prune(cfg, str(tmp_path / "split"), progress=False, resume=True)
    a, b = final_params(tmp_path / "full"), final_params(tmp_path / "split")
    assert int(a["step"]) == int(b["step"]) == 6
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)
    ra = json.loads((tmp_path / "full" / "eval_results.json").read_text())
    rb = json.loads((tmp_path / "split" / "eval_results.json").read_text())
    assert ra["metrics"] == rb["metrics"]


def test_cli_evaluate_count_export_on_a_run(runs, tmp_path, capsys):
    from mvp_jax.cli import main
    from mvp_jax.compressed import load_compressed

    d, results = runs["topk"]
    assert main(["evaluate", str(d)]) == 0
    assert json.loads(capsys.readouterr().out) == results["metrics"]
    assert main(["count", str(d), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads((d / "counts.json").read_text())
    out, packed = tmp_path / "exported", tmp_path / "model.mvpz"
    assert main(["export", str(d), "--output-dir", str(out), "--compressed", str(packed)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["step"] == 4 and report["compressed"]["file_bytes"] == packed.stat().st_size
    assert (out / "model.safetensors").read_bytes() == (d / "export" / "model.safetensors").read_bytes()
    module, params, _ = load_compressed(str(packed))
    assert module.num_labels == 2 and "classifier" in params
    # a second export to the same place is refused, the first one untouched
    assert main(["export", str(d), "--output-dir", str(out)]) == 2
    assert "mvp-jax: error:" in capsys.readouterr().err
