"""Structured pruning from the command line: a short run with ``prune.granularity=hybrid``
writes a compact model (pruned heads and neurons removed) that ``mvp-jax evaluate`` and
``mvp-jax predict`` read, with the masked dense export's outputs; bad granularities exit 2."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from test_own_data import fine_prune_args, one_error_line, reviews, run_cli, write


@pytest.fixture(scope="module")
def tiny_model(tiny_bert):
    return tiny_bert


@pytest.mark.parametrize("method,extra", [
    ("topk", ["prune.mask_init=uniform", "prune.mask_scale=0.1"]),
    ("magnitude", ["prune.global_topk=true"]),
], ids=["movement-local", "magnitude-global"])
def test_hybrid_run_writes_a_compact_model_that_evaluate_and_predict_read(
        method, extra, tmp_path, tiny_model, capsys):
    rows = reviews(64)
    train, dev = write(tmp_path / "train.csv", rows), write(tmp_path / "dev.csv", rows[:24])
    run = tmp_path / "run"
    args = fine_prune_args(tiny_model, run, "task.name=mine", f"task.train_file={train}",
                           f"task.validation_file={dev}", "prune.granularity=hybrid", *extra,
                           method=method)
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    results = json.loads((run / "eval_results.json").read_text())

    # the compact model: whole heads and neurons gone, per-layer sizes in its config
    config = json.loads((run / "compact" / "config.json").read_text())
    heads = config.get("layer_num_heads", [2, 2])
    sizes = config.get("layer_intermediate_sizes", [config["intermediate_size"]] * 2)
    assert sum(heads) < 4 and sum(sizes) < 128
    # remaining weights counted on the weights: each kept head is 4 * 32 * 16 weights of the
    # 4 * 32 * 32 attention weights of a layer, each kept neuron 2 * 32 of the FFN's 2 * 32 * 64
    kept = sum(heads) * 4 * 32 * 16 + sum(sizes) * 2 * 32
    assert results["remaining"] == kept and results["prunable"] == 2 * (4 * 32 * 32 + 2 * 32 * 64)
    size = lambda d: sum(f.stat().st_size for f in d.iterdir())  # noqa: E731
    assert size(run / "compact") < size(run / "export")

    # evaluate: the compact model scores what the run scored
    code, out, err = run_cli(capsys, "evaluate", run / "compact", "--validation-file", dev)
    assert code == 0, err
    assert json.loads(out)["validation"] == pytest.approx(results["metrics"]["validation"],
                                                          abs=1e-6)
    # predict: the compact model's probabilities are the masked dense model's
    from mvp_jax.serving.predict import load_predictor, predict_texts

    texts = [r["text"] for r in rows[:6]]
    dense = list(predict_texts(load_predictor(str(run / "export")), texts, None, batch_size=4))
    compact = list(predict_texts(load_predictor(str(run / "compact")), texts, None,
                                 batch_size=4))
    for a, b in zip(dense, compact):
        assert a["label"] == b["label"]
        np.testing.assert_allclose(list(a["probabilities"].values()),
                                   list(b["probabilities"].values()),
                                   atol=1e-5)
    code, out, err = run_cli(capsys, "predict", run / "compact", "--text", texts[0])
    assert code == 0, err

    # the speed benchmark reads the run (its compact model, accuracy and sizes) and plots
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import structured_speed

    out_json, out_png = tmp_path / "speed.json", tmp_path / "curve.png"
    assert structured_speed.main([str(run), str(run), "--n", "8", "--rounds", "1",
                                  "--batch-sizes", "4", "--json", str(out_json),
                                  "--plot", str(out_png)]) == 0
    bench = json.loads(out_json.read_text())
    row = bench["models"][1]
    assert row["model"] == str(run / "compact") and row["granularity"] == "hybrid"
    assert row["accuracy"] == results["metrics"]["validation"]["accuracy"]
    assert row["heads_per_layer"] == heads and row["ffn_sizes"] == sizes
    assert len(row["examples_per_s_b4"]) == 1 and row["examples_per_s_b4"][0] > 0
    assert out_png.stat().st_size > 0


@pytest.mark.parametrize("overrides,message", [
    (["prune.granularity=block"], r"unknown prune\.granularity 'block'.*choices: weight, head, "
                                  r"neuron, hybrid"),
    (["prune.granularity=head", "prune.mask_init=kaiming"], r"prune\.mask_init kaiming applies "
                                                            r"to weight scores"),
    (["prune.method=none", "prune.granularity=neuron"], r"prune\.granularity neuron does not "
                                                        r"apply to method none"),
], ids=["unknown", "kaiming-units", "dense-has-no-units"])
def test_bad_granularity_is_one_line_exit_2(overrides, message, tmp_path, tiny_model, capsys):
    rows = reviews(16)
    train = write(tmp_path / "train.csv", rows)
    run = tmp_path / "run"
    args = fine_prune_args(tiny_model, run, "task.name=mine", f"task.train_file={train}",
                           *overrides)
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    assert re.search(message, one_error_line(err))
    assert not run.exists()
