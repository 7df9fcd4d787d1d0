"""The modules of mvp_jax form layers that only point down: no import cycle.

Every ``import`` of every ``mvp_jax`` module counts, function-level ones included (a cycle
through a function-level import is still a cycle: two modules that need each other).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "mvp_jax"


def _modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """``{dotted module name: file}`` of every module of the package under ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The package's modules that module ``name`` imports anywhere in its file.

    ``from a.b import c`` imports ``a.b.c`` when that is a module, else ``a.b``; relative imports
    are resolved against the module's package. The implicit import of parent packages is not
    counted (a package importing its own submodules is not a cycle)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                       for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def import_graph(root: pathlib.Path = PACKAGE) -> dict[str, set[str]]:
    """``{module: modules it imports}`` over the package under ``root``."""
    modules = _modules(root)
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle ``[a, b, ..., a]`` of ``graph``, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle among mvp_jax modules: " + " -> ".join(cycle)


def test_graph_sees_every_kind_of_import(tmp_path):
    """Top-level, function-level, ``from pkg import module``, relative: all are edges."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("def f():\n    from .sub import c\n")
    (pkg / "sub" / "__init__.py").write_text("from . import c\n")
    (pkg / "sub" / "c.py").write_text("import pkg.a\nfrom ..b import f\n")
    graph = import_graph(pkg)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.sub.c"},
                     "pkg.sub": {"pkg.sub.c"}, "pkg.sub.c": {"pkg.a", "pkg.b"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]
    (pkg / "b.py").write_text("")
    assert find_cycle(import_graph(pkg)) is None


@pytest.mark.parametrize("module", sorted(_modules(PACKAGE)))
def test_module_imports_are_resolved(module):
    """Every ``mvp_jax`` import names a module of the package or a name in one (a typo or a
    moved module would otherwise drop out of the graph unseen)."""
    modules = _modules(PACKAGE)
    tree = ast.parse(modules[module].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == "mvp_jax":
                assert node.module in modules, f"{module}: from {node.module} import ..."


def package_of(module: str) -> str:
    """The subpackage a module belongs to (``mvp_jax.pruning`` for ``mvp_jax.pruning.masking``);
    a top-level module (``mvp_jax.config``) is its own."""
    parts = module.split(".")
    return ".".join(parts[:2])


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The import graph with every subpackage collapsed to one node."""
    out: dict[str, set[str]] = {}
    for module, targets in graph.items():
        node = package_of(module)
        out.setdefault(node, set()).update(package_of(t) for t in targets if package_of(t) != node)
    return out


def private_reaches(root: pathlib.Path = PACKAGE) -> list[str]:
    """``module: name`` for every private name (``_x``, not dunder) that a module takes from a
    module of another package: by ``from m import _x``, or as ``alias._x`` where ``alias`` is a
    module of the package it imported."""
    modules = _modules(root)
    found = []
    for name, path in modules.items():
        aliases: dict[str, str] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
                for alias in node.names:
                    source = f"{node.module}.{alias.name}"
                    if source in modules:
                        aliases[alias.asname or alias.name] = source
                    elif _private(alias.name) and package_of(node.module) != package_of(name):
                        found.append(f"{name}: from {node.module} import {alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in modules and alias.asname:
                        aliases[alias.asname] = alias.name
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and _private(node.attr)
                    and package_of(aliases[node.value.id]) != package_of(name)):
                found.append(f"{name}: {aliases[node.value.id]}.{node.attr}")
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_packages_form_layers():
    """Collapsed to packages (pruning, training, export, serving, data, models) and top-level
    modules, the graph still has no cycle: a package never needs one that needs it."""
    cycle = find_cycle(package_graph(import_graph()))
    assert cycle is None, "cycle among mvp_jax's packages: " + " -> ".join(cycle)


def test_no_module_reaches_into_another_packages_private_names():
    assert private_reaches() == []


def test_private_reach_and_package_cycles_are_seen(tmp_path):
    pkg = tmp_path / "pkg"
    for sub in ("a", "b"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("def _hidden():\n    pass\nfrom pkg.a.y import _ok\n")
    (pkg / "a" / "y.py").write_text("_ok = 1\n")
    (pkg / "b" / "z.py").write_text("from pkg.a.x import _hidden\nfrom pkg.a import y as m\n"
                                    "v = m._ok\n")
    assert sorted(private_reaches(pkg)) == ["pkg.b.z: from pkg.a.x import _hidden",
                                            "pkg.b.z: pkg.a.y._ok"]
    assert find_cycle(package_graph(import_graph(pkg))) is None
    (pkg / "a" / "y.py").write_text("import pkg.b.z\n_ok = 1\n")
    assert find_cycle(package_graph(import_graph(pkg))) == ["pkg.a", "pkg.b", "pkg.a"]
