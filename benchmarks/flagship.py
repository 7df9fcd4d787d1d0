"""Wall time of whole `mvp-jax fine-prune` runs: the same recipe on two code trees, side by side.

Each run is the real command (`python -m mvp_jax.cli fine-prune ...`) in a fresh process with
`PYTHONPATH` set to a code tree, so an older checkout (``git worktree add ../before <commit>``)
and this one are timed on the same machine, one after the other, from process start to
``eval_results.json``. Reported per run: wall seconds, the first step (with compilation), the
mean examples/s and real (non-pad) tokens/s of the logged steps, the final dev metric and the
remaining encoder weights.

    python benchmarks/flagship.py --run before=../before:configs/lab/sst2/movement.yaml \\
        --run after=.:configs/lab/sst2/movement.yaml --set train.max_steps=300 \\
        --json benchmarks/results/cpu-2026-11-28/flagship.json

``--run LABEL=TREE:CONFIG[:SET;SET...]`` (CONFIG relative to TREE); ``--set`` applies to every
run (e.g. the local data directory, which is added by default).

The README's quick start gives the flagship's result; that paragraph lies between the markers
``<!-- flagship:start -->`` and ``<!-- flagship:end -->`` and only this script writes it, from the
committed files of ``results/flagship/`` (``eval_results.json``, ``config.yaml`` and ``run.json``,
this script's report of the run):

    python benchmarks/flagship.py --readme           # write it
    python benchmarks/flagship.py --readme --check   # exit 1 if README.md differs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import date
from pathlib import Path

from markers import replace_between_markers  # a script: its folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / ".." / "shared" / "data" / "glue" / "SST-2").resolve()
RESULTS = ROOT / "results" / "flagship"
README = ROOT / "README.md"


def parse_run(text: str) -> dict:
    label, _, rest = text.partition("=")
    parts = rest.split(":", 2)
    if not label or len(parts) < 2:
        raise SystemExit(f"flagship.py: error: --run {text!r} is not LABEL=TREE:CONFIG[:SETS]")
    tree = Path(parts[0]).resolve()
    sets = [s for s in parts[2].split(";") if s] if len(parts) == 3 else []
    return {"label": label, "tree": tree, "config": tree / parts[1], "sets": sets}


def summarize(run_dir: Path) -> dict:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    steps = [x for x in lines if "examples_per_s" in x]
    first = next((x["first_step_s"] for x in steps if "first_step_s" in x), None)
    timed = [x for x in steps if "first_step_s" not in x]

    def mean(key):
        vals = [x[key] for x in timed if key in x]
        return sum(vals) / len(vals) if vals else None

    results = json.loads((run_dir / "eval_results.json").read_text())
    metric = results["main_metric"]
    return {"first_step_s": first, "examples_per_s": mean("examples_per_s"),
            "tokens_per_s": mean("tokens_per_s"), "steps": results["step"],
            metric: results["metrics"]["validation"][metric],
            "remaining_weights": results["remaining_weights"]}


def quickstart(results: Path = RESULTS) -> str:
    """The README's quick-start paragraph on the flagship, from its committed files."""
    evals = json.loads((results / "eval_results.json").read_text())
    run = json.loads((results / "run.json").read_text())
    config = (results / "config.yaml").read_text()
    batch = int(config.split("batch_size:", 1)[1].split()[0])
    accuracy = evals["metrics"]["validation"]["accuracy"]
    return textwrap.fill(
        f"It trains {evals['step']} updates of {batch} sentences and ends with "
            f"**{100 * accuracy:.1f}% SST-2 dev accuracy at {100 * evals['remaining_weights']:.1f}% "
            f"of the encoder's weights** (the majority class is 50.9%), in "
            f"{run['wall_s'] / 60:.0f} minutes on one core of a {run['cpus']}-core CPU "
            f"({run['date']}, code {run['commit']}; its files are in "
            f"[results/flagship/](results/flagship/)).", width=96)


def write_readme(check: bool) -> int:
    text = README.read_text()
    new = replace_between_markers(text, quickstart(), "flagship")
    if check:
        if new != text:
            print("flagship.py: README.md's flagship paragraph differs from results/flagship/; "
                  "run python benchmarks/flagship.py --readme", file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", type=parse_run)
    ap.add_argument("--set", action="append", default=[], dest="sets")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", type=Path, help="keep the run directories under this folder")
    ap.add_argument("--readme", action="store_true",
                    help="write README.md's flagship paragraph from results/flagship/")
    ap.add_argument("--check", action="store_true", help="with --readme: only compare")
    args = ap.parse_args(argv)
    if args.readme:
        return write_readme(args.check)
    if not args.run:
        ap.error("give --run LABEL=TREE:CONFIG (or --readme)")
    sets = [f"task.data_dir={DATA}", *args.sets]
    work = args.keep or Path(tempfile.mkdtemp(prefix="flagship-"))
    rows = []
    for run in args.run:
        out = work / run["label"]
        cmd = [sys.executable, "-m", "mvp_jax.cli", "fine-prune", "--config", str(run["config"]),
               "--output-dir", str(out), "--overwrite"]
        for s in [*sets, *run["sets"]]:
            cmd += ["--set", s]
        env = dict(os.environ, PYTHONPATH=str(run["tree"]))
        print(f"[{run['label']}] {' '.join(cmd)}", flush=True)
        tic = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=run["tree"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - tic
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"flagship.py: run {run['label']} failed ({proc.returncode})")
        row = {"label": run["label"], "tree": str(run["tree"]), "config": str(run["config"]),
               "sets": [*sets, *run["sets"]], "wall_s": round(wall, 1), **summarize(out)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = rows[0]["wall_s"]
    for row in rows:
        row["speedup_vs_first"] = round(base / row["wall_s"], 2)
    report = {"date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "command": " ".join(sys.argv), "runs": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    for row in rows:
        print(f"{row['label']:>12s}: {row['wall_s']:7.1f} s  ({row['speedup_vs_first']}x)  "
              f"{row.get('accuracy')}  remaining {row['remaining_weights']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
