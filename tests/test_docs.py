"""The README and the documents it links to: its size, its links, and its commands.

- README.md stays short (at most 15,000 characters) and keeps its quick start, results figure and
  links; every relative link of README.md, BENCHMARKS.md, results/RESULTS.md and
  configs/README.md names a file that exists and, after ``#``, one of that file's headings.
- Every ``mvp-jax`` line of the README's bash blocks parses with the CLI's own parser, and each
  ``fine-prune`` line's recipe loads and validates with its ``--set`` overrides.
- The blocks that run offline run as written, in a scratch directory that sees the repository's
  ``examples/`` and the shared data: the own-data block, and the quick start with the commands
  that follow it. Only their training is cut short (``fine-prune`` gets ``--set
  train.max_steps=... --set train.warmup_steps=1``), so that a block takes a minute.
"""

from __future__ import annotations

import csv
import json
import re
import shlex
from pathlib import Path

import pytest

from mvp_jax.cli import build_parser, main
from mvp_jax.config import load_config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LINKED_DOCS = ("README.md", "BENCHMARKS.md", "results/RESULTS.md", "configs/README.md")
MAX_README_CHARS = 15_000


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # no headings in code
    return {anchor(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


def relative_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text)
            if not re.match(r"[a-z]+:", t)]  # http:, https:, mailto:


def bash_blocks(text: str) -> list[list[str]]:
    """The command lines of each ```bash block (continuation lines joined, comments dropped)."""
    blocks = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = block.replace("\\\n", " ")
        lines = [re.sub(r"\s+#.*$", "", line).strip() for line in joined.splitlines()]
        blocks.append([line for line in lines if line and not line.startswith("#")])
    return blocks


def mvp_jax_commands(text: str) -> list[str]:
    """Every ``mvp-jax ...`` command of the README's bash blocks, also after ``&&``."""
    found = []
    for block in bash_blocks(text):
        for line in block:
            found += [c.strip() for c in line.split("&&") if c.strip().startswith("mvp-jax ")]
    return found


def section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}")
    end = text.find("\n## ", start + 4)
    return text[start:end if end > 0 else None]


def test_readme_is_short_and_keeps_its_parts():
    text = README.read_text()
    assert len(text) <= MAX_README_CHARS, f"README.md is {len(text)} characters"
    for heading in ("Quick start", "Install", "Your own data", "The library", "Configs",
                    "Results", "Run the tests"):
        assert f"\n## {heading}" in text, heading
    results = section(text, "Results")
    assert "](results/paper_grid/figure2.png)" in results and "| method |" in results
    assert "python -m benchmarks.reproduce --sweep paper-grid" in results


@pytest.mark.parametrize("doc", LINKED_DOCS)
def test_relative_links_resolve(doc):
    path = ROOT / doc
    links = relative_links(path)
    assert links, f"{doc} links to nothing"
    broken = []
    for link in links:
        target, _, fragment = link.partition("#")
        file = (path.parent / target).resolve() if target else path
        if not file.exists():
            broken.append(f"{link}: no file {file.relative_to(ROOT.parent)}")
        elif fragment and file.suffix == ".md" and fragment not in anchors(file):
            broken.append(f"{link}: no heading #{fragment} in {file.name}")
    assert not broken, "\n".join(broken)


def test_the_link_checks_can_fail(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("# A title, here\n\n[ok](#a-title-here) [bad](#nope) [gone](missing.md)\n"
                   "```bash\n# not a heading\n```\n")
    assert anchors(doc) == {"a-title-here"}
    assert relative_links(doc) == ["#a-title-here", "#nope", "missing.md"]


def test_every_readme_command_parses_and_its_recipe_loads():
    commands = mvp_jax_commands(README.read_text())
    subcommands = {shlex.split(c)[1] for c in commands}
    assert {"fine-prune", "evaluate", "count", "export", "predict"} <= subcommands
    parser = build_parser()
    for command in commands:
        argv = shlex.split(command)[1:]
        if "..." in argv:  # an elided command ("fine-prune ... --resume")
            continue
        args = parser.parse_args(argv)
        if args.command == "fine-prune":
            load_config([ROOT / c for c in args.config], args.overrides)


def run_block(lines, capsys, cut_training):
    """Run each ``mvp-jax`` line of a block through the CLI (in this process); returns the stdout
    of each. ``fine-prune`` lines get ``cut_training`` appended."""
    outputs = []
    for line in lines:
        for command in (c.strip() for c in line.split("&&")):
            if not command.startswith("mvp-jax ") or "..." in command:
                continue
            argv = shlex.split(command)[1:]
            if argv[0] == "fine-prune":
                argv += cut_training
            code = main(argv)
            out, err = capsys.readouterr()
            assert code == 0, f"{command}\n{err[-2000:]}"
            outputs.append(out)
    return outputs


@pytest.fixture
def scratch(tmp_path, monkeypatch, shared_data):
    """A working directory that sees the repository's examples/, configs/ and the shared data
    at the paths the README uses (examples/..., configs/..., ../shared/data/...)."""
    work = tmp_path / "work"
    work.mkdir()
    for name in ("examples", "configs"):
        (work / name).symlink_to(ROOT / name)
    (tmp_path / "shared").symlink_to(shared_data.parent)  # ../shared/data from work/
    monkeypatch.chdir(work)
    return work


@pytest.mark.slow
def test_the_own_data_block_runs_as_written(scratch, capsys):
    block = bash_blocks(section(README.read_text(), "Your own data"))[0]
    cut = ["--set", "train.max_steps=6", "--set", "train.warmup_steps=1", "--no-progress"]
    outputs = run_block(block, capsys, cut)
    assert len(outputs) == 6
    scores = json.loads(outputs[1])
    assert scores  # evaluate prints the metrics as JSON
    labels = [json.loads(line) for line in outputs[4].splitlines()]
    assert [x["text"] for x in labels] == ["Broke after two days.", "Sturdy, quiet, love it."]
    assert all(x["label"] in ("neg", "pos") and
               sum(x["probabilities"].values()) == pytest.approx(1, abs=1e-3) for x in labels)
    with open(scratch / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))  # texts quoted over several lines
    assert len(rows) == 12 and {r["label"] for r in rows} <= {"neg", "pos"}  # the dev reviews
    assert (scratch / "reviews-model" / "config.json").exists()


@pytest.mark.slow
def test_the_quick_start_and_what_follows_run_as_written(scratch, capsys):
    blocks = bash_blocks(section(README.read_text(), "Quick start"))
    install_and_run, then = blocks[0], blocks[1]
    cut = ["--set", "train.max_steps=8", "--set", "train.warmup_steps=1",
           "--set", "data.max_train_samples=256",
           "--set", "data.max_eval_samples=64", "--no-progress"]
    run_block(install_and_run, capsys, cut)
    run = scratch / "runs" / "sst2-movement"
    assert (run / "eval_results.json").exists()
    outputs = run_block(then, capsys, cut)
    assert len(outputs) == 4  # evaluate, count, predict, export ("fine-prune ... --resume" elided)
    assert json.loads(outputs[0])
    label = json.loads(outputs[2].splitlines()[0])
    assert label["text"] == "A gorgeous, witty film." and label["label"]
    assert (scratch / "pruned" / "model.safetensors").exists()
    assert (scratch / "pruned.mvpz").stat().st_size > 0


def test_the_readme_sweep_commands_parse():
    """The Results block's sweep commands (hours of runs, or a report that rewrites the committed
    results) are not run here; their options must still be the sweep's."""
    from benchmarks.reproduce import resolve_args

    lines = [line for block in bash_blocks(section(README.read_text(), "Results"))
             for line in block if line.startswith("python -m benchmarks.reproduce ")]
    assert len(lines) == 2
    for line in lines:
        args = resolve_args(shlex.split(line)[3:])
        assert args.max_steps == 300 and args.resume_existing != args.report_only


GENERATED = {  # README.md's sections between markers, and the command that writes each
    "flagship": ["benchmarks/flagship.py", "--readme"],
    "paper-grid": ["-m", "benchmarks.reproduce", "--sweep", "paper-grid", "--readme"],
    "compress-curve": ["benchmarks/compress_curve.py"],
}


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_readme_generated_sections_are_what_their_files_give(name):
    """Each numbers section of README.md lies between ``<!-- NAME:start/end -->`` markers and is
    written by its script from committed files: a hand edit or a stale section fails here."""
    import subprocess
    import sys

    assert f"<!-- {name}:start -->" in README.read_text()
    done = subprocess.run([sys.executable, *GENERATED[name], "--check"], cwd=README.parent,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_stale_readme_table_is_caught(tmp_path):
    from benchmarks.reproduce.report import readme_table, write_readme

    table = readme_table(README.parent / "results" / "paper_grid")
    stale = tmp_path / "README.md"
    stale.write_text("x\n<!-- paper-grid:start -->\n" + table.replace("85.7", "86.7")
                     + "\n<!-- paper-grid:end -->\ny\n")
    assert not write_readme(README.parent / "results" / "paper_grid", stale, check=True)
    assert write_readme(README.parent / "results" / "paper_grid", stale)
    assert write_readme(README.parent / "results" / "paper_grid", stale, check=True)
    assert stale.read_text() == f"x\n<!-- paper-grid:start -->\n{table}\n<!-- paper-grid:end -->\ny\n"
