"""Every notebook in notebooks/ runs top to bottom (nbclient, kernel python3) with its small
settings (MVP_NB_SMALL=1), writes its figures, and -- for what_pruning_keeps -- shows the
paper's Figure 1 property on its own runs: magnitude pruning keeps the largest |W| of every
matrix, movement pruning keeps the weights that moved away from zero.

The notebooks are committed without outputs; that is checked too (fast)."""

import json
import os
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
NAMES = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))

# PNG files each notebook must write to MVP_NB_FIGURES.
FIGURES = {
    "quickstart.ipynb": ["quickstart_training.png", "quickstart_remaining.png"],
    "what_pruning_keeps.ipynb": [
        f"what_pruning_keeps_{n}.png" for n in (
            "figure1", "figure1_zoom", "movement", "scores", "remaining",
            "mask_dynamics_magnitude", "mask_dynamics_movement", "training")],
    "functional_api.ipynb": ["functional_ste_gradients.png", "functional_figure1.png",
                             "functional_accuracy.png"],
}


def test_all_notebooks_known():
    assert set(NAMES) == set(FIGURES), "add the new notebook's figures to FIGURES"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_committed_clean(name):
    """No outputs or execution counts (small diffs); settings first, overridable."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:
        assert not cell.get("outputs") and cell.get("execution_count") is None, cell.source[:80]
    settings = code[0].source
    assert "MVP_NB_SMALL" in settings and "MVP_NB_FIGURES" in settings
    assert nb.metadata["kernelspec"]["name"] == "python3"


def run_notebook(name, tmp_path, shared_data, monkeypatch):
    from nbclient import NotebookClient

    figures = tmp_path / "figures"
    # The kernel inherits this environment: small settings, outputs in tmp_path, offline data,
    # one CPU device (not the 8 fake devices of the sharding tests).
    monkeypatch.setenv("MVP_NB_SMALL", "1")
    monkeypatch.setenv("MVP_NB_FIGURES", str(figures))
    monkeypatch.setenv("MVP_NB_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("MVP_NB_DATA", str(shared_data / "glue" / "SST-2"))
    monkeypatch.delenv("MVP_NB_RUN_DIRS", raising=False)
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(nb, kernel_name="python3", timeout=600,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError, with the traceback, when a cell fails
    for png in FIGURES[name]:
        assert (figures / png).stat().st_size > 5_000, png
    return figures


@pytest.mark.slow
@pytest.mark.parametrize("name", ["quickstart.ipynb", "functional_api.ipynb"])
def test_notebook_runs(name, tmp_path, shared_data, monkeypatch):
    run_notebook(name, tmp_path, shared_data, monkeypatch)


@pytest.mark.slow
def test_what_pruning_keeps_runs_and_shows_figure1(tmp_path, shared_data, monkeypatch):
    figures = run_notebook("what_pruning_keeps.ipynb", tmp_path, shared_data, monkeypatch)
    stats = json.loads((figures / "what_pruning_keeps_stats.json").read_text())
    mag, mov = stats["magnitude"], stats["movement"]
    assert (mag["method"], mov["method"]) == ("magnitude", "topk")
    for s in (mag, mov):
        assert s["kept_fraction"] == pytest.approx(0.10, abs=1e-4)
    # magnitude: every kept |W| is at least every pruned |W| (per matrix, and globally since the
    # notebook uses one global Top-v); the kept weights were large before fine-tuning too
    assert mag["separated"] and mag["separated_global"]
    assert mag["min_abs_kept"] >= mag["max_abs_pruned"]
    assert mag["kept_abs_pretrained"] > 2.5 * mag["pruned_abs_pretrained"]
    # movement: not the large weights, but those that moved away from zero
    assert not mov["separated"]
    assert mov["kept_abs_pretrained"] < 1.5 * mov["pruned_abs_pretrained"]
    assert mov["outward_kept"] > 0.9
    assert mov["outward_kept"] - mov["outward_pruned"] > 0.3
    assert mov["outward_kept"] - mov["outward_pruned"] > mag["outward_kept"] - mag["outward_pruned"]
    # the run directories the notebook made are complete, with every checkpoint kept
    for label in ("magnitude", "movement"):
        run = tmp_path / "runs" / f"what_pruning_keeps_{label}"
        assert (run / "eval_results.json").exists()
        assert len([p for p in os.listdir(run / "checkpoints") if p.isdigit()]) >= 3


def test_run_notebook_script_rejects_unknown_notebook(tmp_path):
    import subprocess
    import sys

    res = subprocess.run([sys.executable, str(NOTEBOOKS / "run_notebook.py"), "nope.ipynb",
                          "--figures", str(tmp_path / "f")], capture_output=True, text=True)
    assert res.returncode == 2
    assert "no notebook 'nope.ipynb'" in res.stderr and "quickstart.ipynb" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "f").exists()
