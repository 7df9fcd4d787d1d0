"""Nothing lost: --overwrite deletes only a run's own files, kill -9 at any moment resumes to the
params of an uninterrupted run, a non-finite loss stops the run (exit 3), one process per run
directory (a lock, stale locks taken over), corrupt checkpoints named, bugs told apart from bad
input (exit 1 with a traceback, not exit 2).

The runs use a tiny random BERT (hidden 32, 2 layers) with the embedded MiniLM's tokenizer, on
64 SST-2 sentences, so that a whole run in a subprocess takes seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from mvp_jax.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_model(tiny_bert_classifier):
    """A random 2-layer BERT with the real vocabulary and the MiniLM tokenizer (conftest)."""
    return tiny_bert_classifier


def run_args(model, shared_data, out, *extra):
    return ["fine-prune", "--output-dir", str(out), "--no-progress",
            "--set", f"model.name={model}", "--set", f"task.data_dir={shared_data / 'glue' / 'SST-2'}",
            "--set", "task.max_seq_length=32", "--set", "data.max_train_samples=64",
            "--set", "data.max_eval_samples=32", "--set", "train.batch_size=8",
            "--set", "train.max_steps=6", "--set", "train.warmup_steps=1",
            "--set", "train.learning_rate=1e-3", "--set", "train.log_every=1",
            "--set", "train.save_every=2", "--set", "train.eval_every=3",
            "--set", "train.keep_checkpoints=3",
            "--set", "prune.method=topk", "--set", "prune.final_threshold=0.5",
            "--set", "prune.initial_warmup=1", "--set", "prune.final_warmup=1", *extra]


def subprocess_env(**extra):
    # one host device: the runs here are about files and processes, not sharding
    env = dict(os.environ, PYTHONUNBUFFERED="1", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    env.update(extra)
    return env


def cli(*argv, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "mvp_jax.cli", *argv], capture_output=True,
                          text=True, env=env or subprocess_env(), timeout=timeout)


def saved_params(run_dir):
    from mvp_jax.training.rundir import read_checkpoint

    return read_checkpoint(str(run_dir), ("step", "params", "scores", "rng"))


def assert_trees_equal(a, b):
    import jax

    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ----------------------------------------------------------------------------------------------
# --overwrite removes a run's own files, never a user's
# ----------------------------------------------------------------------------------------------


def test_overwrite_refuses_a_directory_of_user_files(tmp_path, shared_data, tiny_model, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    code = main(run_args(tiny_model, shared_data, out, "--overwrite"))
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "holds no run" in lines[0] and "thesis.tex" in lines[0], err
    assert sorted(os.listdir(out)) == ["thesis.tex"]
    assert (out / "thesis.tex").read_text() == "precious"


def test_overwrite_replaces_a_run_and_keeps_the_users_files(tmp_path, shared_data, tiny_model, capsys):
    out = tmp_path / "run"
    assert main(run_args(tiny_model, shared_data, out, "--set", "train.max_steps=3")) == 0
    first = json.loads((out / "eval_results.json").read_text())
    assert first["step"] == 3
    (out / "notes.md").write_text("my notes")
    (out / "plots").mkdir()
    (out / "plots" / "fig.png").write_bytes(b"png")
    capsys.readouterr()
    assert main(run_args(tiny_model, shared_data, out, "--set", "train.max_steps=5",
                         "--overwrite")) == 0
    assert json.loads((out / "eval_results.json").read_text())["step"] == 5
    assert (out / "notes.md").read_text() == "my notes"
    assert (out / "plots" / "fig.png").read_bytes() == b"png"
    # the old run's files were replaced, not merged: the new run's checkpoints and log only
    steps = sorted(int(d) for d in os.listdir(out / "checkpoints") if d.isdigit())
    assert steps == [2, 4, 5]
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5]
    assert not (out / "run.lock").exists()


def test_export_overwrite_replaces_model_files_only(tmp_path, tiny_model, capsys):
    from mvp_jax.export.huggingface import ExportError, export_hf
    from mvp_jax.models import load_pretrained

    pre = load_pretrained(str(tiny_model), head="classification", num_labels=2)
    dest = tmp_path / "exported"
    export_hf(dest, pre.params, pre.config, "classification", tokenizer_path=str(tiny_model))
    export_hf(dest, pre.params, pre.config, "classification", tokenizer_path=str(tiny_model),
              overwrite=True)  # a model directory is replaced
    (dest / "results.csv").write_text("mine")
    with pytest.raises(ExportError, match="results.csv"):
        export_hf(dest, pre.params, pre.config, "classification", overwrite=True)
    assert (dest / "results.csv").read_text() == "mine" and (dest / "config.json").exists()


# ----------------------------------------------------------------------------------------------
# kill -9 at any moment, then --resume: the params of an uninterrupted run
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, shared_data, tiny_model):
    out = tmp_path_factory.mktemp("whole") / "run"
    proc = cli(*run_args(tiny_model, shared_data, out))
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("moment", ["step:4", "eval:1", "save:2"])
def test_kill_9_then_resume_equals_an_uninterrupted_run(moment, tmp_path, shared_data, tiny_model,
                                                        uninterrupted):
    out = tmp_path / "run"
    args = run_args(tiny_model, shared_data, out)
    proc = subprocess.Popen([sys.executable, "-m", "mvp_jax.cli", *args], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True,
                            env=subprocess_env(MVP_JAX_TEST_PAUSE=moment))
    point = moment.split(":")[0]
    deadline = time.time() + 600
    for line in proc.stderr:  # wait until the process sits at the moment, then kill it
        if line.strip() == f"paused at {point}":
            break
        assert time.time() < deadline
    else:
        pytest.fail(f"the run ended (code {proc.wait()}) without reaching {moment}")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "eval_results.json").exists()
    assert (out / "run.lock").exists()  # left by the killed process: stale
    if point == "save":  # the checkpoint of step 4 was half written; 2 is the latest complete
        assert any(e.startswith("4.orbax-checkpoint-tmp") for e in os.listdir(out / "checkpoints"))
        assert not (out / "checkpoints" / "4").exists()

    resumed = cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "stale lock" in resumed.stderr
    if point == "save":
        assert "checkpoint 4" in resumed.stderr and "not finished" in resumed.stderr
    assert_trees_equal(saved_params(out), saved_params(uninterrupted))
    for name in ("eval_results.json", "counts.json"):
        assert json.loads((out / name).read_text()) == json.loads((uninterrupted / name).read_text())
    assert ((out / "export" / "model.safetensors").read_bytes()
            == (uninterrupted / "export" / "model.safetensors").read_bytes())
    # every step logged once, in order (lines logged after the last checkpoint were dropped)
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(x)]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert not (out / "run.lock").exists()


def test_a_corrupt_checkpoint_is_named(tmp_path, uninterrupted, capsys):
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    ckpt = run / "checkpoints" / "6"
    data_files = [p for p in ckpt.rglob("*") if p.is_file() and p.stat().st_size > 1000]
    assert data_files
    for p in data_files:  # truncate every array file of the latest checkpoint
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
    code = main(["export", str(run), "--output-dir", str(tmp_path / "exp")])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(ckpt) in lines[0] and "cannot be read" in lines[0], err
    assert not (tmp_path / "exp").exists()


def test_a_run_is_read_back_without_its_optimizer(tmp_path, shared_data, tiny_model, capsys):
    """A run without clipping (train.max_grad_norm=0) and with optax's adamw: restored from its
    params and scores alone (orbax partial restore: no optimizer, no opt_state read), exported,
    and its masks plotted from every checkpoint."""
    from mvp_jax import plots
    from mvp_jax.training.rundir import read_checkpoint, restore_run

    out = tmp_path / "run"
    assert main(run_args(tiny_model, shared_data, out, "--set", "train.max_steps=3",
                         "--set", "train.max_grad_norm=0", "--set", "train.optimizer=adamw")) == 0
    assert sorted(read_checkpoint(str(out))) == ["params", "scores", "step"]
    run = restore_run(str(out))
    assert run.step == 3 and run.cfg.train.max_grad_norm == 0 and run.scores
    weights = plots.load_run_weights(out)
    assert weights.step == 3 and weights.method == "topk"
    assert weights.concat("masks").mean() == pytest.approx(0.5, abs=0.01)
    steps, history = plots.mask_history(out)
    assert steps == [2, 3]
    for p in weights.paths:
        np.testing.assert_array_equal(history[-1][p], weights.masks[p])
    fig = plots.figure1([weights], max_points=500)
    plots.save_figure(fig, str(tmp_path / "fig1.png"))
    plots._plt().close(fig)
    capsys.readouterr()
    assert main(["export", str(out), "--output-dir", str(tmp_path / "exp")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["step"] == 3 and report["remaining_weights"] == pytest.approx(0.5, abs=0.01)
    assert (tmp_path / "exp" / "model.safetensors").exists()


# ----------------------------------------------------------------------------------------------
# A non-finite loss stops the run
# ----------------------------------------------------------------------------------------------


def test_a_nan_loss_stops_the_run_with_exit_3(tmp_path, shared_data, tiny_model, capsys):
    out = tmp_path / "run"
    code = main(run_args(tiny_model, shared_data, out, "--set", "train.learning_rate=1e30",
                         "--set", "train.max_grad_norm=0", "--set", "train.save_every=1",
                         "--set", "train.eval_every=0"))
    err = capsys.readouterr().err
    assert code == 3, err
    line = [x for x in err.splitlines() if x.startswith("mvp-jax: error:")]
    assert len(line) == 1 and "non-finite" in line[0], err
    bad = int(line[0].split("step ")[1].split(":")[0])
    assert bad >= 2  # step 1 starts from the pretrained weights: finite
    assert f"last good checkpoint is step {bad - 1}" in line[0]
    assert not (out / "eval_results.json").exists() and not (out / "export").exists()
    steps = sorted(int(d) for d in os.listdir(out / "checkpoints") if d.isdigit())
    assert steps[-1] == bad - 1  # nothing of the bad step was saved
    state = saved_params(out)  # the last good checkpoint restores, finite
    assert int(state["step"]) == bad - 1
    import jax

    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(state["params"]))
    assert not (out / "run.lock").exists()


# ----------------------------------------------------------------------------------------------
# One process per run directory
# ----------------------------------------------------------------------------------------------


def test_a_running_runs_lock_refuses_a_second_run(tmp_path, shared_data, tiny_model, capsys):
    out = tmp_path / "run"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        lock = {"host": socket.gethostname(), "pid": sleeper.pid}
        (out / "run.lock").write_text(json.dumps(lock))
        code = main(run_args(tiny_model, shared_data, out))
        err = capsys.readouterr().err
        assert code == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "in use by another run" in lines[0] and str(sleeper.pid) in lines[0]
        assert os.listdir(out) == ["run.lock"]  # nothing written, the owner's lock kept
        assert json.loads((out / "run.lock").read_text()) == lock
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_stale_lock_is_taken_over(tmp_path, shared_data, tiny_model, capsys):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / "run.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))
    code = main(run_args(tiny_model, shared_data, out, "--set", "train.max_steps=3"))
    err = capsys.readouterr().err
    assert code == 0, err
    assert "taking over the stale lock" in err and f"pid {dead.pid}" in err
    assert (out / "eval_results.json").exists() and not (out / "run.lock").exists()


def test_run_lock_unit(tmp_path):
    from mvp_jax.training.rundir import RunError, RunLock

    with RunLock(str(tmp_path)) as lock:
        assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
        with pytest.raises(RunError, match="in use by another run"):  # our own, alive
            RunLock(str(tmp_path)).acquire()
        assert lock.held
    assert not (tmp_path / "run.lock").exists()
    (tmp_path / "run.lock").write_text("garbage")  # unreadable: stale
    with RunLock(str(tmp_path)):
        pass
    assert not (tmp_path / "run.lock").exists()


def test_two_processes_racing_for_a_stale_lock_leave_one_owner(tmp_path, monkeypatch):
    """The loser of the race read the stale lock before the winner took it over; it must not
    remove the winner's live lock (it renames the lock aside, sees it is not the stale one it
    read, puts it back) and refuses to run."""
    from mvp_jax.training import rundir

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "run.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))
    winner, loser = rundir.RunLock(str(tmp_path)), rundir.RunLock(str(tmp_path))
    read = rundir.RunLock._read

    def read_then_lose_the_race(path):
        seen = read(path)
        if not winner.held:  # the winner takes over right after the loser's first read
            winner.acquire()
        return seen

    monkeypatch.setattr(loser, "_read", read_then_lose_the_race)
    with pytest.raises(rundir.RunError, match="in use by another run"):
        loser.acquire()
    assert winner.held and not loser.held
    assert os.listdir(tmp_path) == ["run.lock"]  # the winner's, nothing left aside
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    winner.release()
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------------------------
# Bugs are not bad input
# ----------------------------------------------------------------------------------------------


def test_an_internal_error_prints_its_traceback_and_exits_1(tmp_path, monkeypatch, capsys):
    import mvp_jax.cli as cli_module

    def broken(args):
        raise ValueError("an internal inconsistency")  # a plain ValueError: a bug, not input

    monkeypatch.setitem(cli_module.COMMANDS, "count", broken)
    code = main(["count", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" in err and "an internal inconsistency" in err
    assert "this is a bug in mvp-jax" in err.strip().splitlines()[-1]


def test_user_errors_stay_one_line_exit_2(tmp_path, capsys):
    code = main(["export", str(tmp_path / "nothing"), "--output-dir", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "not a run directory" in err


# ----------------------------------------------------------------------------------------------
# Sharded runs never have two programs with collectives in flight (no CPU rendezvous timeout)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data,model,busy", [(1, 8, False), (2, 4, True), (4, 2, True),
                                             (8, 1, False)])
def test_sharded_cli_runs_complete_on_every_mesh(data, model, busy, tmp_path, shared_data,
                                                tiny_model):
    """The command of the 2x4 crash (global Top-v, 6 steps, an evaluation, checkpoints, the
    final masks and the export), as whole CLI runs on 8 host devices; the 2x4 one while two
    other processes keep both cores busy."""
    out = tmp_path / "run"
    args = run_args(tiny_model, shared_data, out, "--set", f"mesh.data={data}",
                    "--set", f"mesh.model={model}", "--set", "train.batch_size=16",
                    "--set", "prune.global_topk=true", "--set", "prune.final_threshold=0.2",
                    "--set", "prune.initial_warmup=0")
    env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=8")
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 if busy else 0)]
    try:
        proc = cli(*args, env=env, timeout=900)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "eval_results.json").read_text())
    assert results["step"] == 6 and results["remaining_weights"] == pytest.approx(0.2, abs=0.01)
