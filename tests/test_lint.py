"""Lint and types: ``ruff check .`` with the project's settings (pyproject.toml ``[tool.ruff]``:
pyflakes, pycodestyle's errors and warnings, import order) and ``mypy`` on the public API
(``[tool.mypy]``'s files) find nothing."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff") or [sys.executable, "-m", "ruff"]
    command = [ruff] if isinstance(ruff, str) else ruff
    done = subprocess.run([*command, "check", "--no-cache", "."], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_mypy_finds_nothing_in_the_public_api(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "no issues found" in done.stdout
