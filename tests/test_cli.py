"""The `mvp-jax` command: help, and bad input -> one clear line, exit code 2, nothing written."""

import os
import signal
import subprocess
import sys
import time

import pytest

from mvp_jax.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("cmd", [[], ["fine-prune"], ["evaluate"], ["export"], ["count"]])
def test_help(cmd, capsys):
    # argparse's --help exits with SystemExit(0): no message but the status ("0"), the help
    # text itself is checked on stdout below
    with pytest.raises(SystemExit, match="^0$") as e:
        main([*cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: mvp-jax" in out
    if cmd == ["fine-prune"]:
        assert "--set KEY=VALUE" in out and "--resume" in out and "--overwrite" in out


def base_args(tmp_path, shared_data):
    return ["fine-prune", "--output-dir", str(tmp_path / "run"),
            "--set", f"task.data_dir={shared_data / 'glue' / 'SST-2'}",
            "--set", "data.max_train_samples=16", "--set", "train.max_steps=1"]


def tiny_teacher(path, num_labels):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=37, num_labels=num_labels)
    BertForSequenceClassification(cfg).save_pretrained(path)
    return path


@pytest.mark.parametrize("overrides,message", [
    (["task.name=sst3"], "did you mean 'sst2'"),
    (["prune.method=movement"], "prune.method"),
    (["prune.final_treshold=0.1"], "did you mean 'prune.final_threshold'"),
    (["prune.final_threshold=1.5"], "prune.final_threshold"),
    (["prune.final_threshold=0"], "prune.final_threshold"),
    (["task.data_dir=/nonexistent/glue"], "not found"),
    (["task.max_seq_length=1024"], "512 position embeddings"),
    (["model.name=/nonexistent/model"], "does not exist"),
    (["train.batch_size=many"], "train.batch_size"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, shared_data, capsys, overrides, message):
    args = base_args(tmp_path, shared_data)
    for o in overrides:
        args += ["--set", o]
    code, out, err = run_cli(capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mvp-jax: error: "), err
    assert message.lower() in lines[0].lower()
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_teacher_with_other_label_count(tmp_path, shared_data, capsys):
    teacher = tiny_teacher(tmp_path / "teacher", num_labels=3)
    code, _, err = run_cli(capsys, *base_args(tmp_path, shared_data), "--set", f"distill.teacher={teacher}")
    assert code == 2 and "has 3 labels; task sst2 has 2" in err
    assert not (tmp_path / "run").exists()


def test_missing_config_file_and_existing_run(tmp_path, shared_data, capsys):
    code, _, err = run_cli(capsys, *base_args(tmp_path, shared_data), "--config", str(tmp_path / "nope.yaml"))
    assert code == 2 and "nope.yaml" in err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("model: {}\n")
    code, _, err = run_cli(capsys, *base_args(tmp_path, shared_data))
    assert code == 2 and "already holds a run" in err and "--resume" in err
    assert (tmp_path / "run" / "config.yaml").read_text() == "model: {}\n"  # untouched
    code, _, err = run_cli(capsys, "count", str(tmp_path / "missing"))
    assert code == 2 and "does not exist" in err


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_that_resumes(tmp_path, shared_data, tiny_bert):
    run = tmp_path / "run"
    common = ["--set", f"model.name={tiny_bert}", "--set", f"task.data_dir={shared_data / 'glue' / 'SST-2'}", "--set", "task.max_seq_length=32",
              "--set", "data.max_train_samples=64", "--set", "data.max_eval_samples=16",
              "--set", "train.batch_size=8", "--set", "train.log_every=1", "--set", "prune.method=topk",
              "--set", "prune.final_threshold=0.5", "--set", "train.warmup_steps=1"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "mvp_jax.cli", "fine-prune", "--output-dir", str(run),
                             "--no-progress", "--set", "train.max_steps=100000", *common],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err.decode()
    assert "checkpoint saved" in err.decode()
    ckpts = [d for d in os.listdir(run / "checkpoints") if d.isdigit()]
    assert ckpts and not (run / "eval_results.json").exists()
    stopped = max(int(d) for d in ckpts)
    assert stopped >= 2
    # the checkpoint resumes: continue two more steps with the run's own configuration
    from mvp_jax.config import load_config
    from mvp_jax.training.rundir import restore_run
    from mvp_jax.training.runner import fine_prune

    cfg = load_config(str(run / "config.yaml"))
    res = fine_prune(cfg, str(run), resume=True, progress=False, stop_at_step=stopped + 2)
    assert res == {"step": stopped + 2, "complete": False}
    state = restore_run(str(run))
    assert int(state.step) == stopped + 2


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mvp-jax: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_evaluate_bad_input(tmp_path, shared_data, capsys):
    sst2 = str(shared_data / "glue" / "SST-2")
    code, _, err = run_cli(capsys, "evaluate", str(tmp_path))  # no run, no --task
    assert code == 2 and "--task is required" in one_error_line(err)
    code, _, err = run_cli(capsys, "evaluate", "minilm-l6", "--task", "sst3", "--data-dir", sst2)
    assert code == 2 and "did you mean 'sst2'" in one_error_line(err).lower()
    code, _, err = run_cli(capsys, "evaluate", str(tmp_path / "missing"), "--task", "sst2",
                           "--data-dir", sst2)
    assert code == 2 and "does not exist" in one_error_line(err)
    code, _, err = run_cli(capsys, "evaluate", "minilm-l6", "--task", "sst2", "--data-dir", sst2,
                           "--max-eval-samples", "8", "--batch-size", "0")
    assert code == 2 and "batch_size must be positive" in one_error_line(err)


def test_fine_prune_directory_bad_input(tmp_path, shared_data, capsys):
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, *base_args(tmp_path, shared_data), "--resume")
    assert code == 2 and "holds no run to resume" in one_error_line(err)
    assert not run.exists()
    (tmp_path / "afile").write_text("x")
    args = base_args(tmp_path, shared_data)
    args[args.index("--output-dir") + 1] = str(tmp_path / "afile")
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "is a file" in one_error_line(err)
    assert (tmp_path / "afile").read_text() == "x"
    # --resume with another configuration than the run's own
    run.mkdir()
    from mvp_jax.config import load_config, save_config

    save_config(load_config(None, ["train.learning_rate=1e-3"]), run / "config.yaml")
    before = (run / "config.yaml").read_text()
    code, _, err = run_cli(capsys, *base_args(tmp_path, shared_data), "--resume")
    assert code == 2 and "--resume with a different configuration" in one_error_line(err)
    assert (run / "config.yaml").read_text() == before and sorted(os.listdir(run)) == ["config.yaml"]


def test_fine_prune_batch_not_divisible_by_the_mesh(tmp_path, shared_data, capsys):
    code, _, err = run_cli(capsys, *base_args(tmp_path, shared_data), "--set", "train.batch_size=12",
                           "--set", "mesh.data=8")
    assert code == 2 and "not a multiple of the mesh's data axis" in one_error_line(err)
    code, _, err = run_cli(capsys, *base_args(tmp_path, shared_data), "--set", "mesh.model=3")
    assert code == 2 and "mesh.model=3 does not divide" in one_error_line(err)
    assert not (tmp_path / "run").exists()


def test_export_and_count_bad_input(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    from mvp_jax.config import load_config, save_config

    save_config(load_config(None, []), run / "config.yaml")
    out = tmp_path / "exp"
    code, _, err = run_cli(capsys, "export", str(run), "--output-dir", str(out))
    assert code == 2 and "has no checkpoint" in one_error_line(err) and not out.exists()
    existing = tmp_path / "model.mvpz"
    existing.write_bytes(b"not a zip")
    code, _, err = run_cli(capsys, "export", str(run), "--output-dir", str(out),
                           "--compressed", str(existing))
    assert code == 2 and "exists" in one_error_line(err) and "--overwrite" in err
    code, _, err = run_cli(capsys, "export", str(run), "--output-dir", str(out),
                           "--compressed", str(existing), "--overwrite")
    assert code == 2 and "not a compressed model of mvp-jax" in one_error_line(err)
    assert existing.read_bytes() == b"not a zip"  # a file that is not ours is never replaced
    code, _, err = run_cli(capsys, "export", str(run), "--output-dir", str(out),
                           "--compressed", str(tmp_path), "--overwrite")
    assert code == 2 and "is a directory" in one_error_line(err)
    assert not out.exists()
    code, _, err = run_cli(capsys, "count", str(existing))
    assert code == 2 and "is a file" in one_error_line(err)
