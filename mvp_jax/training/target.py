"""A sparsity target for every pruning method: ``mvp-jax fine-prune --target-remaining v``.

The Top-v methods (topk, magnitude, random) keep a fraction by construction: the target is their
``prune.final_threshold`` and one ordinary run is made. Soft movement and L0 reach their
sparsity through the penalty's weight lambda (``prune.final_lambda``), so
``fine_prune_to_target`` searches lambda with complete runs (the secant of
``mvp_jax.pruning.calibration.calibrate_lambda``, from the config's ``final_lambda``) and makes the
closest run the run of the output directory. A method that does not prune has no target.

The directory of a lambda search::

    DIR/lambda_trials.json    the search: target, tolerance, status (on_target | missed), the
                              chosen trial and every trial (lambda, remaining fraction, main
                              metric); rewritten atomically after each trial
    DIR/trials/lambda-<L>/    one complete fine-prune run per trial (prune.final_lambda=L)
    DIR/config.yaml, metrics.jsonl, tb/, checkpoints/, export/, counts.json, eval_results.json
                              the chosen trial's run, so that ``mvp-jax evaluate / export /
                              predict DIR`` work as on any run: files copied, directories
                              hard-linked file by file (copied where links are impossible;
                              mvp-jax replaces files whole, never in place, so writing in DIR
                              never changes a trial)
    DIR/run.lock              while a search runs

Nothing is lost or run twice: a trial with its ``eval_results.json`` is read, not run again; an
interrupted trial continues from its last checkpoint; the trials are never modified after they
finish. The chosen run is placed by removing ``DIR/eval_results.json`` first and copying the
trial's last, so DIR holds a complete run or, after a crash while placing, none (the next
call places it again). The same command again therefore reruns no trial: it reads them,
places the chosen one if needed, and reports.

A new search needs a new or empty DIR. ``resume`` (``--resume``) only insists that DIR holds a
search (running the command again already continues one); ``overwrite`` (``--overwrite``)
deletes DIR's search (trials, table, run) or run and starts again. ``stop_at_step`` does not
apply to a search.

Trials of the same configuration (the config with ``prune.final_lambda`` and ``mesh`` left
out) for another target are history too (each is a measurement of remaining(lambda));
``max_trials`` counts the trials run for the current target. A directory holding a search of
another configuration is refused (``overwrite`` replaces it).

Exit status of the command when no trial lands within the tolerance: ``EXIT_TARGET_MISSED``
(4); the closest trial is then the run in DIR.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from mvp_jax.errors import UserError
from mvp_jax.pruning import methods

EXIT_TARGET_MISSED = 4
SEARCH_FILE = "lambda_trials.json"
TRIALS_DIR = "trials"
DEFAULT_TRIALS = 5
DEFAULT_TOLERANCE = 0.01
ROUND_TO = 4  # significant digits of a trial's lambda (calibrate_lambda's rounding)


class TargetError(UserError):
    """A target request that cannot be served; the message says why."""


def _stderr(msg: str) -> None:
    print(f"mvp-jax: {msg}", file=sys.stderr, flush=True)


def check_request(target: Any, max_trials: Any = DEFAULT_TRIALS,
                  tolerance: Any = DEFAULT_TOLERANCE) -> tuple[float, int, float]:
    """``(target, max_trials, tolerance)`` checked: a target in (0, 1], at least one trial, a
    tolerance in (0, 1) (an absolute fraction: 0.01 is one point of remaining weights)."""
    try:
        t = float(target)
    except (TypeError, ValueError):
        t = math.nan
    if not (0.0 < t <= 1.0):
        raise TargetError(f"--target-remaining {target} is outside (0, 1] (the fraction of the "
                          "prunable weights to keep, e.g. 0.1 for 10%)")
    if isinstance(max_trials, bool) or not isinstance(max_trials, int) or max_trials < 1:
        raise TargetError(f"--lambda-trials {max_trials}: a lambda search needs at least one "
                          "trial")
    try:
        tol = float(tolerance)
    except (TypeError, ValueError):
        tol = math.nan
    if not (0.0 < tol < 1.0):
        raise TargetError(f"--tolerance {tolerance} is outside (0, 1) (an absolute fraction of "
                          "the prunable weights: 0.01 is one point)")
    return t, max_trials, tol


def kind_of(method: str) -> str:
    """How a method meets a target: ``"fraction"`` (Top-v: its final threshold is the kept
    fraction), ``"lambda"`` (the penalty sets it: a search) or ``"none"`` (it does not prune)."""
    spec = methods.get(method)
    if spec.threshold == "fraction":
        return "fraction"
    if spec.regularization is not None:
        return "lambda"
    return "none"


@dataclass
class TrialRow:
    """One finished trial: its lambda, the fraction of the prunable weights it kept (its
    ``eval_results.json``: remaining / prunable, counted on the exported weights), its main
    metric on the validation split, and the target it was run for."""

    lam: float
    remaining: float
    kept: int
    prunable: int
    metric_name: str
    metric: float | None
    trial: str  # relative to the output directory
    for_target: float | None = None


@dataclass
class TargetResult:
    """What ``fine_prune_to_target`` did. ``results``: the eval results of the run in the output
    directory; ``trials``: every trial of a lambda search (empty for a Top-v method);
    ``chosen``: the trial that is the run in the directory; ``ran``: trials run by this call."""

    target: float
    tolerance: float
    output_dir: str
    results: dict
    searched: bool
    trials: list[TrialRow] = field(default_factory=list)
    chosen: TrialRow | None = None
    ran: int = 0

    @property
    def off_by(self) -> float:
        return 0.0 if self.chosen is None else self.chosen.remaining - self.target

    @property
    def on_target(self) -> bool:
        return not self.searched or abs(self.off_by) <= self.tolerance + 1e-12

    @property
    def exit_code(self) -> int:
        return 0 if self.on_target else EXIT_TARGET_MISSED

    def missed_line(self) -> str:
        c = self.chosen
        mine = sum(1 for t in self.trials if _same(t.for_target, self.target))
        return (f"target missed: {_pct(self.target)} remaining wanted, the closest of "
                f"{len(self.trials)} trials ({mine} run for this target; prune.final_lambda="
                f"{c.lam:g}) kept {_pct(c.remaining)}, {100 * abs(self.off_by):.2f} points "
                f"{'over' if self.off_by > 0 else 'under'} (tolerance {100 * self.tolerance:g} points); "
                f"it is the run in {self.output_dir}; more trials: --lambda-trials")

    def table(self) -> list[str]:
        """The trials as text: a title line, then one line per trial (``format_table``)."""
        if not self.searched:
            return []
        return [f"lambda search for {_pct(self.target)} remaining (tolerance "
                f"{100 * self.tolerance:g} points): {len(self.trials)} trials, {self.ran} run "
                f"now; * is the run in {self.output_dir} (also in "
                f"{os.path.join(self.output_dir, SEARCH_FILE)})",
                *format_table(self.trials, self.target, self.chosen)]

    def report(self) -> dict:
        """The run's eval results, with what the target request did under ``"target"``."""
        info: dict[str, Any] = {"remaining": self.target}
        if self.searched:
            info.update(tolerance=self.tolerance, on_target=self.on_target,
                        final_lambda=self.chosen.lam, trial=self.chosen.trial,
                        trials=len(self.trials), ran=self.ran,
                        table=os.path.join(self.output_dir, SEARCH_FILE))
        else:
            info["final_threshold"] = self.target
        return {**self.results, "target": info}


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _same(a: float | None, b: float) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def trial_name(lam: float) -> str:
    return f"lambda-{lam:g}"


def _search_config(cfg) -> dict:
    """What a search's trials share: the config without ``prune.final_lambda`` (searched) and
    ``mesh`` (a trial may continue on another machine), as plain JSON data."""
    from mvp_jax.config import config_to_dict

    tree = config_to_dict(cfg)
    tree.pop("mesh", None)
    tree["prune"] = {k: v for k, v in tree["prune"].items() if k != "final_lambda"}
    return json.loads(json.dumps(tree, default=str))


def _config_diff(saved: dict, now: dict) -> list[str]:
    keys = {(s, k) for tree in (saved, now) for s in tree for k in tree[s]}
    return sorted(f"{s}.{k}" for s, k in keys
                  if saved.get(s, {}).get(k) != now.get(s, {}).get(k))


def read_trial(trial_dir: str, output_dir: str) -> TrialRow:
    """A finished trial's row, from its ``eval_results.json`` and ``config.yaml``."""
    import yaml

    with open(os.path.join(trial_dir, "eval_results.json")) as f:
        res = json.load(f)
    with open(os.path.join(trial_dir, "config.yaml")) as f:
        lam = float(yaml.safe_load(f)["prune"]["final_lambda"])
    metrics = res.get("metrics") or {}
    split = metrics.get("validation") or next(iter(metrics.values()), {})
    name = res.get("main_metric") or next(iter(split), "")
    value = split.get(name)
    return TrialRow(lam=lam, remaining=res["remaining"] / res["prunable"], kept=res["remaining"],
                    prunable=res["prunable"], metric_name=name,
                    metric=None if value is None else float(value),
                    trial=os.path.relpath(trial_dir, output_dir))


def _finished_trials(output_dir: str, recorded: dict[str, TrialRow]) -> list[TrialRow]:
    """Every finished trial under ``output_dir/trials``, by lambda; its target from the record
    (a trial that finished after the record's last write: None)."""
    root = os.path.join(output_dir, TRIALS_DIR)
    rows = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        d = os.path.join(root, name)
        if os.path.isfile(os.path.join(d, "eval_results.json")):
            row = read_trial(d, output_dir)
            old = recorded.get(row.trial)
            row.for_target = old.for_target if old is not None else None
            rows.append(row)
    return sorted(rows, key=lambda r: r.lam)


def _read_record(output_dir: str) -> dict | None:
    path = os.path.join(output_dir, SEARCH_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
        if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
            raise ValueError("no config")
    except ValueError as e:
        raise TargetError(f"{path} is not a lambda search record ({e}); move it away or pass "
                          "--overwrite to start a new search") from None
    return record


def _write_record(output_dir: str, *, target, tolerance, max_trials, status, chosen, trials,
                  config) -> None:
    from mvp_jax.training.rundir import write_json

    write_json(os.path.join(output_dir, SEARCH_FILE), {
        "target_remaining": target, "tolerance": tolerance, "max_trials": max_trials,
        "status": status, "chosen": None if chosen is None else asdict(chosen),
        "trials": [asdict(t) for t in trials], "config": config})


def _check_directory(output_dir: str, record: dict | None, config: dict, *, resume: bool,
                     overwrite: bool) -> None:
    """Refuse, before anything is written, a directory the search may not use."""
    from mvp_jax.training.rundir import foreign_entries, holds_run

    if resume and overwrite:
        raise TargetError("--resume and --overwrite exclude each other")
    if os.path.lexists(output_dir) and not os.path.isdir(output_dir):
        raise TargetError(f"output directory {output_dir!r} is a file")
    searched = os.path.exists(os.path.join(output_dir, SEARCH_FILE))
    if overwrite and not searched and os.path.isdir(output_dir):
        if os.path.lexists(os.path.join(output_dir, TRIALS_DIR)):
            raise TargetError(f"{output_dir!r} holds a {TRIALS_DIR}/ folder but no "
                              f"{SEARCH_FILE}; --overwrite replaces a lambda search or a run, "
                              "not a folder of yours: move it away or choose another directory")
        foreign = foreign_entries(output_dir)
        if foreign and not holds_run(output_dir):
            raise TargetError(f"output directory {output_dir!r} is not empty and holds no run "
                              f"(e.g. {foreign[0]!r}); choose an empty or new directory; "
                              "--overwrite replaces runs only")
    if overwrite:
        return
    if record is not None:
        diff = _config_diff(record["config"], config)
        if diff:
            raise TargetError(
                f"{output_dir!r} holds a lambda search of another configuration "
                f"({', '.join(diff)}); continue it with the same recipe and --set options, "
                "choose another --output-dir, or pass --overwrite to replace it")
        return
    if resume:
        raise TargetError(f"--resume: {output_dir!r} holds no lambda search to continue")
    if holds_run(output_dir):
        raise TargetError(f"output directory {output_dir!r} already holds a run that is not a "
                          "lambda search; choose another --output-dir or pass --overwrite to "
                          "replace it")
    if os.path.isdir(output_dir):
        foreign = foreign_entries(output_dir)
        if foreign:
            raise TargetError(f"output directory {output_dir!r} is not empty and holds no run "
                              f"(e.g. {foreign[0]!r}); choose an empty or new directory")


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _same_bytes(a: str, b: str) -> bool:
    try:
        with open(a, "rb") as fa, open(b, "rb") as fb:
            return fa.read() == fb.read()
    except OSError:
        return False


def place_run(trial_dir: str, output_dir: str) -> bool:
    """Make ``trial_dir``'s run the run of ``output_dir`` (its entries ``RUN_ENTRIES``, nothing
    else of ``output_dir`` is touched); False when it already is. ``eval_results.json`` is
    removed first and copied last: ``output_dir`` holds a complete run or none."""
    from mvp_jax.training.rundir import RUN_ENTRIES

    final = os.path.join(output_dir, "eval_results.json")
    src_final = os.path.join(trial_dir, "eval_results.json")
    if _same_bytes(src_final, final) and _same_bytes(os.path.join(trial_dir, "config.yaml"),
                                                     os.path.join(output_dir, "config.yaml")):
        return False
    _remove(final)
    for name in RUN_ENTRIES:
        if name == "eval_results.json":
            continue
        src, dst = os.path.join(trial_dir, name), os.path.join(output_dir, name)
        tmp = dst + ".tmp"
        _remove(tmp)
        if os.path.isdir(src):
            shutil.copytree(src, tmp, copy_function=_link_or_copy, symlinks=True)
        elif os.path.isfile(src):
            shutil.copy2(src, tmp)
        _remove(dst)
        if os.path.lexists(tmp):
            os.rename(tmp, dst)
    shutil.copy2(src_final, final + ".tmp")
    os.replace(final + ".tmp", final)
    return True


def format_table(trials: list[TrialRow], target: float, chosen: TrialRow | None) -> list[str]:
    """The trials as text lines, by lambda; ``*`` marks the chosen one."""
    metric = next((t.metric_name for t in trials if t.metric_name), "metric")
    lines = [f"  {'lambda':>10}  {'remaining':>9}  {'off (points)':>12}  {metric:>10}  trial"]
    for t in trials:
        mark = "*" if chosen is not None and t.trial == chosen.trial else " "
        value = "" if t.metric is None else f"{t.metric:.4f}"
        lines.append(f"{mark} {t.lam:>10g}  {_pct(t.remaining):>9}  "
                     f"{100 * (t.remaining - target):>+12.2f}  {value:>10}  {t.trial}")
    return lines


def fine_prune_to_target(cfg, output_dir: str, target: float, *,
                         max_trials: int = DEFAULT_TRIALS,
                         tolerance: float = DEFAULT_TOLERANCE, resume: bool = False,
                         overwrite: bool = False, progress: bool = True,
                         stop_at_step: int | None = None,
                         log: Callable[[str], None] = _stderr,
                         run: Callable[..., dict] | None = None) -> TargetResult:
    """Fine-prune ``cfg`` to keep ``target`` of the prunable weights, in ``output_dir``.

    Top-v methods: one run with ``prune.final_threshold = target`` (``resume``, ``overwrite``,
    ``stop_at_step`` as for any run; ``max_trials`` and ``tolerance`` do not apply). Soft
    movement and L0: a lambda search (see the module docstring) of at most ``max_trials`` runs
    for this target, stopped at the first within ``tolerance`` (absolute); the closest trial
    becomes the run in ``output_dir`` either way (``TargetResult.on_target`` tells which).
    ``run``: the function that makes one run, ``mvp_jax.training.runner.fine_prune``'s signature
    (tests pass a fake); ``log``: where progress lines and the table go.
    """
    target, max_trials, tolerance = check_request(target, max_trials, tolerance)
    prune = cfg.prune
    kind = kind_of(prune.method)
    if kind == "none":
        raise TargetError(f"--target-remaining: prune.method {prune.method} does not prune; "
                          "choose a pruning method (e.g. --set prune.method=topk)")
    if run is None:
        from mvp_jax.training.runner import fine_prune as run
    if kind == "fraction":
        cfg = cfg.replace(prune=prune.replace(final_threshold=target))
        log(f"prune.method {prune.method} keeps a set fraction: --target-remaining {target:g} "
            f"sets prune.final_threshold={target:g} (one run, no lambda search)")
        results = run(cfg, output_dir, resume=resume, overwrite=overwrite, progress=progress,
                      stop_at_step=stop_at_step)
        return TargetResult(target, tolerance, output_dir, results, searched=False, ran=1)

    spec = methods.get(prune.method)
    if prune.regularization is None:
        raise TargetError(f"--target-remaining: prune.method {prune.method} reaches a sparsity "
                          f"through its penalty, and the config has none; set "
                          f"prune.regularization={spec.regularization}")
    if not prune.final_lambda > 0:
        raise TargetError("--target-remaining: the lambda search starts from prune."
                          "final_lambda, which is 0; give a first guess, e.g. --set "
                          "prune.final_lambda=1")
    if stop_at_step is not None:
        raise TargetError("--stop-at-step does not apply to a lambda search (each trial is a "
                          "complete run; interrupt it and run the same command again)")
    config = _search_config(cfg)
    record = None if overwrite else _read_record(output_dir)
    _check_directory(output_dir, record, config, resume=resume, overwrite=overwrite)

    from mvp_jax.training.rundir import RunLock, holds_run, remove_run_files

    os.makedirs(output_dir, exist_ok=True)
    with RunLock(output_dir):
        if overwrite:
            remove_run_files(output_dir)
            _remove(os.path.join(output_dir, TRIALS_DIR))
            _remove(os.path.join(output_dir, SEARCH_FILE))
        recorded = {t["trial"]: TrialRow(**t) for t in (record or {}).get("trials", [])}
        trials = _finished_trials(output_dir, recorded)
        for t in trials:  # finished after the record's last write: by the call before this one
            if t.for_target is None:
                t.for_target = target
        save = dict(target=target, tolerance=tolerance, max_trials=max_trials, config=config)
        _write_record(output_dir, status="searching", chosen=None, trials=trials, **save)
        mine = sum(1 for t in trials if _same(t.for_target, target))
        if trials:
            log(f"{output_dir}: {len(trials)} finished trials read ({mine} for this target), "
                "none run again")
        ran = 0

        def run_trial(lam: float) -> float:
            nonlocal ran
            d = os.path.join(output_dir, TRIALS_DIR, trial_name(lam))
            if not os.path.isfile(os.path.join(d, "eval_results.json")):
                again = holds_run(d)
                log(f"lambda trial {mine + ran + 1} of at most {max_trials} for "
                    f"{_pct(target)} remaining: prune.final_lambda={lam:g} "
                    f"({'continuing the interrupted run' if again else 'running'} in {d})")
                ran += 1
                run(cfg.replace(prune=prune.replace(final_lambda=lam)), d, resume=again,
                    progress=progress)
            row = read_trial(d, output_dir)
            row.for_target = target
            trials[:] = sorted([t for t in trials if t.trial != row.trial] + [row],
                               key=lambda r: r.lam)
            _write_record(output_dir, status="searching", chosen=None, trials=trials, **save)
            log(f"  -> {_pct(row.remaining)} remaining"
                + ("" if row.metric is None else f", {row.metric_name} {row.metric:.4f}"))
            return row.remaining

        from mvp_jax.pruning.calibration import calibrate_lambda

        if max_trials - mine >= 1:
            calibrate_lambda(run_trial, target, float(prune.final_lambda), tolerance=tolerance,
                             max_trials=max_trials - mine, round_to=ROUND_TO,
                             history=[(t.lam, t.remaining) for t in trials])
        chosen = min(trials, key=lambda t: (abs(t.remaining - target), t.lam))
        place_run(os.path.join(output_dir, chosen.trial), output_dir)
        with open(os.path.join(output_dir, "eval_results.json")) as f:
            results = json.load(f)
        found = TargetResult(target, tolerance, output_dir, results, searched=True,
                             trials=list(trials), chosen=chosen, ran=ran)
        _write_record(output_dir, status="on_target" if found.on_target else "missed",
                      chosen=chosen, trials=trials, **save)
    return found
