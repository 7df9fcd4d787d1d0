"""Lazy re-exports for the packages of mvp_jax, in a module without JAX.

A package lists its public names as ``{name: submodule}``; the submodule is imported the first
time a name is read, so ``import mvp_jax.pruning.methods`` (used by config validation, which runs
before any device work) does not import JAX through the package's ``__init__``.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` re-exporting ``exports``.

    Args:
        package: the package's dotted name (its ``__name__``).
        exports: ``{public name: submodule name}``; the submodule defines the name.

    Returns:
        A module-level ``__getattr__`` that imports ``package.submodule`` and caches the name
        in the package's namespace, and a ``__dir__`` listing the names.
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
