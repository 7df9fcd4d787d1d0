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
