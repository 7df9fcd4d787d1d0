"""``mvp-jax fine-prune --target-remaining v`` (``mvp_jax.training.target``): a sparsity target for every
method. Top-v methods take it as their final threshold; soft movement and L0 search lambda with
complete runs kept under DIR/trials, and the closest becomes the run in DIR.

The driver is checked with a fake run (files as a run writes them, remaining a known function
of lambda): an interrupted search resumes without running a finished trial again, the same
call again runs nothing, a missed target exits 4 with the closest trial as the run. Then the
command end to end on the tiny random BERT: soft movement reaches its target, the run in DIR
evaluates, a rerun runs no trial. Bad input is one line, exit 2, nothing written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mvp_jax.cli import main
from mvp_jax.config import load_config, save_config
from mvp_jax.training.target import EXIT_TARGET_MISSED, TargetError, fine_prune_to_target

ROOT = Path(__file__).resolve().parents[1]
SOFT = ["prune.method=sigmoied_threshold", "prune.initial_threshold=0.0",
        "prune.final_threshold=0.1", "prune.regularization=l1", "prune.final_lambda=0.4"]


class Stop(KeyboardInterrupt):
    """The fake's interruption (as Ctrl-C in a trial)."""


def logistic(lam, scale=0.05, k=2.0):
    """remaining = 1 / (1 + (lambda / scale)^k): all kept for small lambda, then a fall."""
    return 1.0 / (1.0 + (lam / scale) ** k)


class FakeRun:
    """``mvp_jax.training.runner.fine_prune``'s signature and files; remaining = ``curve(lambda)``.
    ``stop_at``: the n-th call (from 1) writes config.yaml and a checkpoint, then stops."""

    def __init__(self, curve=logistic, stop_at=None):
        self.curve, self.stop_at, self.calls = curve, stop_at, []

    def __call__(self, cfg, output_dir, *, resume=False, overwrite=False, progress=True,
                 stop_at_step=None):
        d, lam = Path(output_dir), cfg.prune.final_lambda
        self.calls.append((lam, d.name, resume))
        assert resume == (d / "config.yaml").exists()  # as fine_prune demands
        d.mkdir(parents=True, exist_ok=True)
        save_config(cfg, d / "config.yaml")
        (d / "checkpoints" / "2").mkdir(parents=True, exist_ok=True)
        (d / "checkpoints" / "2" / "state").write_text(f"state of lambda {lam}")
        if len(self.calls) == self.stop_at:
            raise Stop(f"stopped in trial {self.stop_at} (lambda {lam})")
        kept, total = round(self.curve(lam) * 10000), 10000
        (d / "export").mkdir(exist_ok=True)
        (d / "export" / "model.safetensors").write_text(f"weights of lambda {lam}")
        (d / "metrics.jsonl").write_text('{"step": 4}\n')
        (d / "counts.json").write_text(json.dumps({"remaining": kept, "total": total}))
        results = {"task": "sst2", "method": cfg.prune.method, "step": 4,
                   "remaining_weights": kept / total, "remaining": kept, "prunable": total,
                   "main_metric": "accuracy",
                   "metrics": {"validation": {"accuracy": 0.5 + 0.3 * kept / total}}}
        (d / "eval_results.json").write_text(json.dumps(results))
        return results


def lambdas(calls):
    return [lam for lam, _, _ in calls]


def test_an_interrupted_search_resumes_and_a_rerun_runs_nothing(tmp_path):
    cfg = load_config(None, SOFT)
    out = tmp_path / "search"
    first = FakeRun(stop_at=2)
    with pytest.raises(Stop, match=r"^stopped in trial 2 \(lambda "):
        fine_prune_to_target(cfg, str(out), 0.1, max_trials=6, run=first, log=lambda m: None)
    (lam1, name1, _), (lam2, name2, _) = first.calls
    assert lam1 == 0.4 and name1 == "lambda-0.4"  # the config's final_lambda first
    assert (out / "trials" / name1 / "eval_results.json").exists()
    assert not (out / "trials" / name2 / "eval_results.json").exists()
    record = json.loads((out / "lambda_trials.json").read_text())
    assert [t["lam"] for t in record["trials"]] == [lam1] and record["status"] == "searching"
    assert not (out / "eval_results.json").exists() and not (out / "run.lock").exists()
    done = (out / "trials" / name1 / "eval_results.json").stat().st_mtime_ns

    second = FakeRun()
    found = fine_prune_to_target(cfg, str(out), 0.1, max_trials=6, run=second,
                                 log=lambda m: None)
    # the finished trial is read, the interrupted one continues (resume), then the search goes on
    assert lam1 not in lambdas(second.calls)
    assert second.calls[0] == (lam2, name2, True)
    assert all(not resumed for _, _, resumed in second.calls[1:])
    assert (out / "trials" / name1 / "eval_results.json").stat().st_mtime_ns == done
    assert found.on_target and found.exit_code == 0
    assert abs(found.chosen.remaining - 0.1) <= 0.01 and len(found.trials) <= 6
    assert found.ran == len(second.calls)
    assert found.chosen.remaining == pytest.approx(logistic(found.chosen.lam), abs=1e-4)
    # the chosen trial is the run in DIR: its files, the directories' files hard links
    chosen = out / found.chosen.trial
    for f in ("config.yaml", "eval_results.json", "counts.json", "metrics.jsonl",
              "export/model.safetensors"):
        assert (out / f).read_bytes() == (chosen / f).read_bytes(), f
    assert os.path.samefile(out / "checkpoints" / "2" / "state", chosen / "checkpoints" / "2" / "state")
    assert load_config(str(out / "config.yaml")).prune.final_lambda == found.chosen.lam
    record = json.loads((out / "lambda_trials.json").read_text())
    assert record["status"] == "on_target" and record["chosen"]["lam"] == found.chosen.lam
    assert sorted(t["lam"] for t in record["trials"]) == sorted({lam1, *lambdas(second.calls)})
    table = found.table()
    assert len(table) == 2 + len(found.trials) and sum(row.startswith("*") for row in table) == 1

    # the same call again: nothing runs, nothing in DIR changes
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()
              and p.name != "lambda_trials.json"}
    third = FakeRun()
    again = fine_prune_to_target(cfg, str(out), 0.1, max_trials=6, run=third,
                                 log=lambda m: None)
    assert third.calls == [] and again.ran == 0 and again.chosen == found.chosen
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}

    # another target whose answer is already a trial: no run; that trial becomes the run in DIR
    other = min(found.trials, key=lambda t: -abs(t.remaining - 0.1))
    fourth = FakeRun()
    moved = fine_prune_to_target(cfg, str(out), other.remaining, max_trials=6, run=fourth,
                                 log=lambda m: None)
    assert fourth.calls == [] and moved.chosen.trial == other.trial and moved.on_target
    assert (out / "eval_results.json").read_bytes() == (out / other.trial / "eval_results.json").read_bytes()
    assert (out / "export" / "model.safetensors").read_text() == f"weights of lambda {other.lam}"
    assert (chosen / "export" / "model.safetensors").read_text() == f"weights of lambda {found.chosen.lam}"

    # another configuration in the same directory is refused, and nothing changes
    before = (out / "lambda_trials.json").read_bytes()
    with pytest.raises(TargetError, match="another configuration \\(train.learning_rate\\)"):
        fine_prune_to_target(load_config(None, [*SOFT, "train.learning_rate=1e-3"]), str(out),
                             0.1, run=FakeRun())
    assert (out / "lambda_trials.json").read_bytes() == before


def test_a_missed_target_keeps_the_closest_trial_and_exits_4(tmp_path):
    """A curve that never keeps under 30%: a search for 10% ends after its trials, on the
    closest, with exit code 4; with more trials allowed it goes on from where it stopped."""
    floor = lambda lam: 0.3 + 0.7 * logistic(lam)  # noqa: E731
    out = tmp_path / "search"
    fake = FakeRun(curve=floor)
    found = fine_prune_to_target(load_config(None, SOFT), str(out), 0.1, max_trials=3, run=fake,
                                 log=lambda m: None)
    assert len(fake.calls) == 3 and not found.on_target and found.exit_code == EXIT_TARGET_MISSED == 4
    best = min(found.trials, key=lambda t: abs(t.remaining - 0.1))
    assert found.chosen == best and found.off_by == pytest.approx(best.remaining - 0.1)
    assert (out / "eval_results.json").read_bytes() == (out / best.trial / "eval_results.json").read_bytes()
    line = found.missed_line()
    assert "target missed" in line and f"{100 * found.off_by:.2f} points over" in line
    assert json.loads((out / "lambda_trials.json").read_text())["status"] == "missed"
    more = FakeRun(curve=floor)
    found = fine_prune_to_target(load_config(None, SOFT), str(out), 0.1, max_trials=4, run=more,
                                 log=lambda m: None)
    assert len(more.calls) == 1 and len(found.trials) == 4 and found.exit_code == 4


def test_top_v_methods_take_the_target_as_their_threshold(tmp_path):
    fake = FakeRun(curve=lambda lam: 0.2)
    cfg = load_config(None, ["prune.method=magnitude", "prune.final_threshold=0.5"])
    found = fine_prune_to_target(cfg, str(tmp_path / "run"), 0.2, run=fake, log=lambda m: None)
    assert len(fake.calls) == 1 and fake.calls[0][1] == "run"
    assert load_config(str(tmp_path / "run" / "config.yaml")).prune.final_threshold == 0.2
    assert found.exit_code == 0 and found.report()["target"] == {"remaining": 0.2,
                                                                 "final_threshold": 0.2}
    assert not (tmp_path / "run" / "trials").exists()


def test_library_bad_input_writes_nothing(tmp_path):
    out = tmp_path / "search"
    cases = [
        (SOFT, dict(stop_at_step=2), "--stop-at-step does not apply"),
        ([*SOFT[:3], "prune.regularization=null", "prune.final_lambda=0"], {},
         "set prune.regularization=l1"),
        ([*SOFT[:4], "prune.final_lambda=0"], {}, "starts from prune.final_lambda, which is 0"),
        (SOFT, dict(resume=True), "holds no lambda search to continue"),
    ]
    for overrides, kwargs, message in cases:
        with pytest.raises(TargetError, match=message.replace(".", "\\.").replace("(", "\\(")):
            fine_prune_to_target(load_config(None, overrides), str(out), 0.1, run=FakeRun(),
                                 **kwargs)
        assert not out.exists()
    out.mkdir()
    (out / "config.yaml").write_text("model: {}\n")  # a run that is not a search
    with pytest.raises(TargetError, match="already holds a run that is not a lambda search"):
        fine_prune_to_target(load_config(None, SOFT), str(out), 0.1, run=FakeRun())
    assert sorted(os.listdir(out)) == ["config.yaml"]
    mine = tmp_path / "mine"
    (mine / "trials").mkdir(parents=True)
    (mine / "trials" / "notes.txt").write_text("mine")
    with pytest.raises(TargetError, match="holds a trials/ folder but no lambda_trials.json"):
        fine_prune_to_target(load_config(None, SOFT), str(mine), 0.1, overwrite=True,
                             run=FakeRun())
    assert (mine / "trials" / "notes.txt").read_text() == "mine" and len(os.listdir(mine)) == 1


def one_line_exit_2(capsys, argv, out):
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("mvp-jax: error: "), err
    assert not out.exists()
    return lines[0]


@pytest.mark.parametrize("extra,message", [
    (["--target-remaining", "0"], "--target-remaining 0.0 is outside (0, 1]"),
    (["--target-remaining", "1.5"], "--target-remaining 1.5 is outside (0, 1]"),
    (["--target-remaining", "0.1", "--lambda-trials", "0"], "--lambda-trials 0: a lambda search needs at least one trial"),
    (["--target-remaining", "0.1", "--tolerance", "-0.01"], "--tolerance -0.01 is outside (0, 1)"),
    (["--lambda-trials", "3"], "--lambda-trials applies with --target-remaining"),
    (["--target-remaining", "0.1"], "prune.method none does not prune"),
])
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    recipe = "dense" if "none" in message else "soft_movement"
    line = one_line_exit_2(capsys, ["fine-prune", "--config",
                                    str(ROOT / f"configs/lab/sst2/{recipe}.yaml"),
                                    "--output-dir", str(out), *extra], out)
    assert message in line


# The tiny random BERT (conftest ``tiny_bert``) in 6 updates: scores start just above the
# threshold (sigmoid(-2.1) = 0.109 > tau = 0.1), so lambda decides what falls under it. Measured:
# lambda 0.01 keeps 84%, 0.03 80%, 0.1 43%, 0.3 24%: the search for 30% starts 13 points off.
TINY_SOFT = ["task.name=sst2", "task.max_seq_length=32", "data.max_train_samples=32",
             "data.max_eval_samples=16", "train.batch_size=16", "train.max_steps=6",
             "train.warmup_steps=1", "train.learning_rate=1e-4", "train.scores_learning_rate=0.1",
             "train.log_every=6", "prune.initial_warmup=1", "prune.final_warmup=1",
             "prune.mask_init=constant", "prune.mask_scale=-2.1", *SOFT[:4],
             "prune.final_lambda=0.1"]


@pytest.mark.slow
def test_soft_movement_reaches_its_target_end_to_end(tmp_path, shared_data, tiny_bert, capsys):
    out = tmp_path / "search"
    sets = [a for o in [f"model.name={tiny_bert}", f"task.data_dir={shared_data / 'glue' / 'SST-2'}",
                        *TINY_SOFT] for a in ("--set", o)]

    def command(tolerance="0.03", trials="4"):
        return ["fine-prune", "--output-dir", str(out), "--no-progress", "--target-remaining",
                "0.3", "--tolerance", tolerance, "--lambda-trials", trials, *sets]

    assert main(command()) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)["target"]
    trials = json.loads((out / "lambda_trials.json").read_text())["trials"]
    assert report["on_target"] and report["ran"] == len(trials) >= 2 and len(trials) <= 4
    assert 0.1 in [t["lam"] for t in trials]  # the config's final_lambda, 13 points off
    assert [abs(t["remaining"] - 0.3) <= 0.03 for t in trials].count(True) == 1  # stops there
    saved = json.loads((out / "eval_results.json").read_text())
    assert abs(saved["remaining"] / saved["prunable"] - 0.3) <= 0.03
    assert json.loads((out / "counts.json").read_text())["remaining"] == saved["remaining"]
    assert load_config(str(out / "config.yaml")).prune.final_lambda == report["final_lambda"]
    table = [line for line in captured.err.splitlines()
             if "trials/lambda-" in line and not line.startswith("mvp-jax:")]
    assert len(table) == len(trials) and sum(line.startswith("* ") for line in table) == 1

    # the same command again: every trial read, none run
    def stamps():
        return {d.name: (d / "eval_results.json").stat().st_mtime_ns
                for d in (out / "trials").iterdir()}

    before = stamps()
    assert main(command()) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["target"]["ran"] == 0 and "lambda trial" not in captured.err
    assert stamps() == before

    # the run in DIR evaluates as any run, to its own results
    assert main(["evaluate", str(out)]) == 0
    assert json.loads(capsys.readouterr().out) == saved["metrics"]
    # and exports from its checkpoint (hard links of the chosen trial's) to the same weights
    assert main(["export", str(out), "--output-dir", str(tmp_path / "exported")]) == 0
    assert json.loads(capsys.readouterr().out)["remaining_weights"] == pytest.approx(
        saved["remaining"] / saved["prunable"], abs=1e-12)
    assert (tmp_path / "exported" / "model.safetensors").read_bytes() == (
        out / "export" / "model.safetensors").read_bytes()

    # a tolerance no trial meets, no trial left to run: exit 4, one line, the closest stays
    assert main(command(tolerance="0.0001", trials=str(len(trials)))) == EXIT_TARGET_MISSED
    err = capsys.readouterr().err
    missed = [line for line in err.splitlines() if "target missed" in line]
    assert len(missed) == 1 and missed[0].startswith("mvp-jax: target missed: 30.00% remaining")
    assert stamps() == before
    assert json.loads((out / "eval_results.json").read_text()) == saved
