"""Generated sections of the project's Markdown files: the text between
``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` is written by the script that made its numbers,
from committed files, and nowhere else (the tests regenerate it and compare)."""

from __future__ import annotations


def markers(name: str) -> tuple[str, str]:
    """The start and end comments of section ``name``."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def between_markers(text: str, name: str) -> str:
    """The body of section ``name`` in ``text`` (without the marker lines)."""
    start, end = markers(name)
    if start not in text or end not in text:
        raise SystemExit(f"no {start} ... {end} markers")
    return text.split(start, 1)[1].split(end, 1)[0].strip("\n")


def replace_between_markers(text: str, body: str, name: str) -> str:
    """``text`` with the body of section ``name`` replaced by ``body``."""
    start, end = markers(name)
    if start not in text or end not in text:
        raise SystemExit(f"no {start} ... {end} markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"
