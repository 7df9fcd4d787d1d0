"""Pytree paths as strings, with JAX's key paths (``jax.tree_util``), for any pytree.

A leaf's path is its keys joined by ``/``: ``encoder/layer/0/attention/self/query/kernel``. Dict
keys, sequence indices and attribute names all count, except a last attribute named ``value``
(the array inside an ``nnx.Variable``), so a Flax NNX ``State`` and the Linen params dict of the
same model have the same paths.
"""

from __future__ import annotations

from typing import Any, Callable

import jax

PyTree = Any


def _key_name(key) -> str:
    for attr in ("key", "idx", "name"):  # DictKey, SequenceKey, GetAttrKey
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)  # FlattenedIndexKey and custom keys


def path_str(key_path) -> str:
    """``(DictKey('a'), SequenceKey(0), GetAttrKey('value'))`` -> ``"a/0"``."""
    names = [_key_name(k) for k in key_path]
    if names and names[-1] == "value" and isinstance(key_path[-1], jax.tree_util.GetAttrKey):
        names.pop()
    return "/".join(names)


def flatten(tree: PyTree) -> dict[str, Any]:
    """``{path: leaf}`` in the pytree's leaf order."""
    return {path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten(flat: dict[str, Any]) -> dict:
    """Nested plain dicts from ``{path: leaf}`` (inverse of ``flatten`` for nested dicts)."""
    out: dict = {}
    for path, leaf in flat.items():
        *parents, last = path.split("/")
        node = out
        for name in parents:
            node = node.setdefault(name, {})
        node[last] = leaf
    return out


def map_with_path(fn: Callable[[str, Any], Any], tree: PyTree, *rest: PyTree) -> PyTree:
    """``fn(path, leaf, *other_leaves)`` on every leaf; the result has ``tree``'s structure."""
    return jax.tree_util.tree_map_with_path(lambda p, x, *r: fn(path_str(p), x, *r), tree, *rest)
