"""The benchmark scripts' fixed model shapes are the real models' shapes, and the scripts run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
          "intermediate_size", "max_position_embeddings", "type_vocab_size", "hidden_act")


def test_minilm_shape_is_the_embedded_models():
    from step_time import model_config

    from mvp_jax.models import load_model_config, resolve_model_path

    embedded = load_model_config(resolve_model_path("minilm-l6"))
    ours = model_config("minilm-l6")
    assert {f: getattr(ours, f) for f in FIELDS} == {f: getattr(embedded, f) for f in FIELDS}


def test_bert_base_shape_has_its_prunable_count():
    from step_time import model_config

    c = model_config("bert-base")  # 84,934,656 prunable weights (the paper's BERT-base)
    h, i = c.hidden_size, c.intermediate_size
    assert c.num_hidden_layers * (4 * h * h + 2 * h * i) == 84_934_656


@pytest.mark.slow
def test_step_time_runs_and_reports_every_variant(tmp_path):
    """The script's plumbing (variants, ratios, remaining fractions), on the tiny shape."""
    out = tmp_path / "r.json"
    res = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "step_time.py"), "--models", "tiny",
         "--seq-lens", "16", "--batch-size", "2", "--steps", "1", "--warmup", "0",
         "--variants", "dense", "topk", "topk-global", "--json", str(out)],
        capture_output=True, text=True, timeout=900, cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = json.loads(out.read_text())["results"]
    assert [r["variant"] for r in rows] == ["dense", "topk", "topk-global"]
    assert rows[0]["ratio"] == 1.0 and all(r["median_s"] > 0 and r["ratio"] > 0 for r in rows)
    assert all(0.2 < r["remaining"] < 0.3 for r in rows[1:])  # half-way: v = 0.256
