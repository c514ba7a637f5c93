"""Nested dicts and configs: flatten to path tuples and back, and plain JSON-able copies.

The one home of these helpers (the converters, the demo model, checkpoints, sweeps and sidecars use
them); it imports nothing from the package.
"""
from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping

import numpy as np


def flatten(tree, prefix: tuple = ()) -> dict:
    """``{"a": {"b": x}}`` -> ``{("a", "b"): x}`` (any Mapping is a node; everything else a leaf)."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def unflatten(flat: Mapping) -> dict:
    """The inverse of :func:`flatten`: ``{("a", "b"): x}`` -> ``{"a": {"b": x}}``."""
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return tree


def plain(obj):
    """ConfigDicts, Mappings, tuples and numpy scalars -> plain dicts (str keys), lists and Python
    scalars, recursively (JSON-able when the leaves are)."""
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def json_default(o):
    """``json.dumps(..., default=json_default)``: numpy scalars and arrays, paths, sets and tuples."""
    if isinstance(o, np.generic):
        return o.item()
    if hasattr(o, "tolist"):  # numpy / jax arrays
        return np.asarray(o).tolist()
    if isinstance(o, (pathlib.Path, os.PathLike)):
        return os.fspath(o)
    if isinstance(o, (set, frozenset)):  # sorted: a set's order varies between processes (string hashing)
        try:
            return sorted(o)
        except TypeError:
            return sorted(o, key=repr)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"a value of type {type(o).__name__} is not JSON serialisable")
