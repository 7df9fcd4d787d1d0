"""Docstrings of the public API, in the optax style: every public function and method of the
pruning modules and the config's entry points has a docstring, an ``Args:`` section naming each
of its parameters (``name:`` at the start of a line, one entry per parameter) and, when it
returns something, a ``Returns:`` section.

Public: no leading underscore, defined in the module (re-exported imports are checked where
they are defined); for a class defined there, the public methods of its own ``__dict__``
(an override without a docstring is checked against the docstring it inherits) and its
properties (a docstring is enough). The checker is generic: a parameter added to any of these
without being documented fails here.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from types import ModuleType
from typing import Any, Callable, Iterator

import pytest

MODULES = (
    "mvp_jax.pruning.masking",
    "mvp_jax.pruning.methods",
    "mvp_jax.pruning.schedules",
    "mvp_jax.pruning.binarizers",
    "mvp_jax.pruning.regularizers",
    "mvp_jax.pruning.structured",
    "mvp_jax.pruning.pruner",
)
CONFIG = "mvp_jax.config"
CONFIG_FUNCTIONS = ("load_config", "config_from_dict", "config_to_dict", "apply_overrides",
                    "dump_config", "save_config")

SECTION = re.compile(r"^(Args|Arguments|Returns|Yields|Raises|Attributes|Example|Examples"
                     r"|Note|Notes|References?):\s*$")
ENTRY = re.compile(r"^(\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)*)\s*(?:\([^)]*\))?\s*:")


def _doc(owner: type | None, name: str, func: Any) -> str | None:
    """The function's docstring, or for a method without one, the nearest inherited one."""
    if func.__doc__:
        return inspect.cleandoc(func.__doc__)
    for klass in (owner.__mro__[1:] if owner is not None else ()):
        inherited = vars(klass).get(name)
        if isinstance(inherited, (classmethod, staticmethod)):
            inherited = inherited.__func__
        if inherited is not None and getattr(inherited, "__doc__", None):
            return inspect.cleandoc(inherited.__doc__)
    return None


def _sections(doc: str) -> dict[str, list[str]]:
    """``{section name: its lines}`` of a cleaned (dedented) docstring."""
    out: dict[str, list[str]] = {}
    current = None
    for line in doc.splitlines():
        match = SECTION.match(line)
        if match:
            current = match.group(1)
            out[current] = []
        elif current is not None:
            if line and not line[0].isspace():  # back at the summary's indentation
                current = None
            else:
                out[current].append(line)
    return out


def _documented(lines: list[str]) -> set[str]:
    """Parameter names of an ``Args:`` section: ``name:`` (or ``a, b:``, ``name (type):``) at
    the indentation of its first entry."""
    body = [line for line in lines if line.strip()]
    if not body:
        return set()
    indent = len(body[0]) - len(body[0].lstrip())
    names: set[str] = set()
    for line in body:
        if len(line) - len(line.lstrip()) != indent:
            continue
        match = ENTRY.match(line.strip())
        if match:
            names.update(n.strip().lstrip("*") for n in match.group(1).split(","))
    return names


def _returns_something(func: Callable) -> bool:
    annotation = inspect.signature(func).return_annotation
    return annotation not in (None, "None")  # no annotation (empty): assumed to return


def check(func: Callable, *, owner: type | None = None, name: str | None = None) -> list[str]:
    """Problems of ``func``'s docstring (empty: none)."""
    name = name or func.__name__
    doc = _doc(owner, name, func)
    if not doc:
        return ["no docstring"]
    sections = _sections(doc)
    problems = []
    params = [p.name for p in inspect.signature(func).parameters.values()
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
              and not (owner is not None and p.name in ("self", "cls"))]
    variadic = {p.name for p in inspect.signature(func).parameters.values()
                if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    if params or "Args" in sections:
        documented = _documented(sections.get("Args", []))
        if "Args" not in sections:
            problems.append("no Args: section")
        missing = [p for p in params if p not in documented]
        if missing:
            problems.append(f"Args: does not name {', '.join(missing)}")
        stale = sorted(documented - set(params) - variadic)
        if stale:
            problems.append(f"Args: names {', '.join(stale)}, not a parameter")
    if _returns_something(func) and not ({"Returns", "Yields"} & set(sections)):
        problems.append("no Returns: section")
    return problems


def _public(module: ModuleType) -> Iterator[tuple[str, Callable, type | None, bool]]:
    """``(qualified name, function, owning class, is a property getter)`` of the module's
    public API."""
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_"):
                    continue
                if isinstance(member, property):
                    yield f"{name}.{attr}", member.fget, obj, True
                elif isinstance(member, (classmethod, staticmethod)):
                    yield f"{name}.{attr}", member.__func__, obj, False
                elif inspect.isfunction(member):
                    yield f"{name}.{attr}", member, obj, False
        elif callable(obj):  # functions, and wrapped ones (jax.custom_vjp, jax.jit)
            yield name, obj, None, False


def _api() -> list[tuple[str, Callable, type | None, bool]]:
    found = []
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        found += [(f"{module_name}.{q}", f, o, p) for q, f, o, p in _public(module)]
    config = importlib.import_module(CONFIG)
    found += [(f"{CONFIG}.{n}", getattr(config, n), None, False) for n in CONFIG_FUNCTIONS]
    return found


API = _api()


def test_the_api_is_found():
    names = {q for q, *_ in API}
    for expected in ("mvp_jax.pruning.masking.compute_masks", "mvp_jax.pruning.methods.get",
                     "mvp_jax.pruning.methods.Method.masks",
                     "mvp_jax.pruning.methods.Method.prunes",
                     "mvp_jax.pruning.binarizers.straight_through",
                     "mvp_jax.pruning.schedules.threshold_schedule",
                     "mvp_jax.pruning.pruner.Pruner.from_config", "mvp_jax.config.load_config"):
        assert expected in names
    assert not any(".topk_mask" in q for q in names if ".masking." in q)  # re-exports skipped
    assert len(API) > 50


@pytest.mark.parametrize("qualname, func, owner, getter", API, ids=[q for q, *_ in API])
def test_public_api_is_documented(qualname, func, owner, getter):
    if getter:
        assert func.__doc__ and func.__doc__.strip(), f"{qualname}: no docstring"
        return
    problems = check(func, owner=owner, name=qualname.rsplit(".", 1)[1])
    assert not problems, f"{qualname}: {'; '.join(problems)}"


@pytest.mark.parametrize("name", ["Config", *[cls.__name__ for cls in
                                             importlib.import_module(CONFIG).SECTIONS.values()]])
def test_config_sections_list_their_keys(name):
    cls = getattr(importlib.import_module(CONFIG), name)
    documented = _documented(_sections(inspect.cleandoc(cls.__doc__ or "")).get("Attributes", []))
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in documented]
    assert not missing, f"{name}: Attributes: does not name {', '.join(missing)}"


def test_the_checker_catches_an_undocumented_parameter():
    def documented(weights, keep, *, rng=None, **kwargs):
        """Summary.

        Args:
            weights: the weights,
              over two lines.
            keep, rng: two at once.

        Returns:
            Something.
        """

    def undocumented(weights, keep, added):
        """Summary.

        Args:
            weights: the weights.
            keep (float): the fraction kept.
        """

    def stale(weights):
        """Summary.

        Args:
            weights: the weights.
            keep: gone.

        Returns:
            Something.
        """

    assert check(documented) == []
    assert check(undocumented) == ["Args: does not name added", "no Returns: section"]
    assert check(stale) == ["Args: names keep, not a parameter"]
    assert check(lambda: None) == ["no docstring"]
