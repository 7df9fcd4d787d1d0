"""End to end: `fine_prune` on a slice of SST-2, every method: on the tiny random BERT with the
real vocabulary (conftest ``tiny_bert``; the runs check plumbing, not the model), and movement
pruning once on the embedded MiniLM (the default model, as a user runs it).

Independent references: the exported model is run by transformers' PyTorch BERT, and the
remaining weights are counted on the exported tensors.
"""

import json

import jax
import numpy as np
import pytest

from mvp_jax.config import load_config
from mvp_jax.training.runner import RunError, fine_prune

pytestmark = pytest.mark.slow

MINILM = dict(layers=6, hidden=384, ffn=1536)
TINY = dict(layers=2, hidden=32, ffn=64)  # _helpers_models.save_tiny_vocab_bert


def prunable(shape) -> int:
    """Encoder matrices: Q, K, V, attention output (hidden x hidden), FFN in and out."""
    return shape["layers"] * (4 * shape["hidden"] ** 2 + 2 * shape["hidden"] * shape["ffn"])


def kept_locally(shape, fraction) -> int:
    """int(fraction * size) kept in every matrix (local Top-v)."""
    h, f = shape["hidden"], shape["ffn"]
    return shape["layers"] * (4 * int(fraction * h * h) + 2 * int(fraction * h * f))

METHODS = {
    "none": [],
    "magnitude": ["prune.final_threshold=0.3"],
    "topk": ["prune.final_threshold=0.3", "prune.mask_init=constant", "prune.mask_scale=0.0"],
    "sigmoied_threshold": ["prune.initial_threshold=0.0", "prune.final_threshold=0.1",
                           "prune.regularization=l1", "prune.final_lambda=10.0"],
    "l0": ["prune.initial_threshold=1.0", "prune.final_threshold=1.0", "prune.mask_init=constant",
           "prune.mask_scale=2.197", "prune.regularization=l0", "prune.final_lambda=1.0"],
    "random": ["prune.final_threshold=0.3"],
}


def small_config(shared_data, method, *extra, model=None):
    """``model``: a model directory (None: the embedded MiniLM, the default)."""
    return load_config(None, [*([f"model.name={model}"] if model else []),
        f"task.data_dir={shared_data / 'glue' / 'SST-2'}", "task.name=sst2", "task.max_seq_length=32",
        "data.max_train_samples=48", "data.max_eval_samples=40", "train.batch_size=16",
        "train.max_steps=4", "train.warmup_steps=1", "train.learning_rate=1e-4", "train.log_every=1",
        "prune.initial_warmup=1", "prune.final_warmup=1", f"prune.method={method}",
        *METHODS[method], *extra])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data, tiny_bert):
    out = {}
    for method in METHODS:
        d = tmp_path_factory.mktemp(method) / "run"
        results = fine_prune(small_config(shared_data, method, model=tiny_bert), str(d),
                             progress=False)
        out[method] = (d, results)
    return out


def torch_accuracy(export_dir, shared_data):
    """Accuracy of transformers' PyTorch BERT on the export, and how many of the examples are
    near ties (top-two logits within 1e-4: another float rounding may flip their class)."""
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
    top2 = np.sort(logits.numpy(), axis=-1)[:, -2:]
    near_ties = int((top2[:, 1] - top2[:, 0] < 1e-4).sum())
    return float((logits.argmax(-1).numpy() == ev.labels).mean()), near_ties, model


@pytest.mark.parametrize("method", list(METHODS))
def test_run_directory_export_and_counts(runs, method, shared_data):
    check_run(*runs[method], method, shared_data, TINY)


def test_the_embedded_minilm_fine_prunes_end_to_end(tmp_path, shared_data):
    """The default model, as a user runs it: movement pruning of MiniLM, exported, counted."""
    d = tmp_path / "run"
    results = fine_prune(small_config(shared_data, "topk"), str(d), progress=False)
    check_run(d, results, "topk", shared_data, MINILM)


def check_run(d, results, method, shared_data, shape):
    for name in ("config.yaml", "metrics.jsonl", "eval_results.json", "counts.json", "checkpoints", "export"):
        assert (d / name).exists(), name
    saved = json.loads((d / "eval_results.json").read_text())
    assert saved["step"] == 4 and saved["method"] == method
    lines = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "loss" in line] == [1, 2, 3, 4]
    assert all(np.isfinite(line["loss"]) for line in lines if "loss" in line)
    # the first step's time (with compilation) is logged once, apart from the throughput
    train_lines = [line for line in lines if "loss" in line]
    assert train_lines[0]["first_step_s"] > 0
    assert not any("first_step_s" in line for line in train_lines[1:])
    assert all(line["examples_per_s"] > 0 for line in train_lines)

    # transformers' PyTorch BERT on the exported directory reproduces the accuracy
    acc, near_ties, model = torch_accuracy(d / "export", shared_data)
    assert abs(acc - saved["metrics"]["validation"]["accuracy"]) <= near_ties / 40 + 1e-9
    assert results["metrics"] == saved["metrics"]

    # remaining weights counted on the exported tensors equal the reported ones
    zeros = total = 0
    for name, p in model.bert.encoder.named_parameters():
        if name.endswith("weight") and "LayerNorm" not in name:
            zeros += int((p == 0).sum())
            total += p.numel()
    assert total == prunable(shape)
    assert saved["remaining"] == total - zeros and saved["prunable"] == total
    if method in ("topk", "magnitude", "random"):
        # exact target: int(0.3 * size) kept in every matrix (local selection)
        assert saved["remaining"] == kept_locally(shape, 0.3)
    elif method == "none":
        assert saved["remaining"] == total


def test_random_control_keeps_the_scores_drawn_at_the_start(runs):
    """The random control's fixed scores are in the checkpoint, as drawn at step 0 (never
    updated), and the export is Top-v of them."""
    from mvp_jax import tree
    from mvp_jax.pruning import masking
    from mvp_jax.training.rundir import read_checkpoint

    saved = read_checkpoint(str(runs["random"][0]))
    scores, params = tree.flatten(saved["scores"]), tree.flatten(saved["params"])
    assert set(scores) == set(masking.prunable_paths(saved["params"]))
    for p, s in scores.items():
        np.testing.assert_array_equal(s, masking.random_scores(params[p], p))


def test_global_topk_keeps_exact_total(tmp_path, shared_data, tiny_bert):
    cfg = small_config(shared_data, "topk", "prune.global_topk=true", "train.max_steps=3",
                       model=tiny_bert)
    res = fine_prune(cfg, str(tmp_path / "run"), progress=False)
    assert res["remaining"] == int(0.3 * prunable(TINY))
    counts = json.loads((tmp_path / "run" / "counts.json").read_text())
    per_matrix = [m["remaining"] / m["total"] for m in counts["matrices"].values()]
    assert max(per_matrix) - min(per_matrix) > 1e-3  # one global threshold, not per matrix


def final_params(run_dir):
    from mvp_jax.training.rundir import read_checkpoint

    return read_checkpoint(str(run_dir), ("params", "scores", "step"))


def test_resume_gives_identical_params(tmp_path, shared_data, tiny_bert):
    cfg = small_config(shared_data, "topk", "train.max_steps=6", "train.gradient_accumulation_steps=2",
                       "train.batch_size=8", model=tiny_bert)
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
    from mvp_jax.export.compressed import load_compressed

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
