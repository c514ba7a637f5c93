"""Built-in checkpoints: models shipped inside the package, loaded by name instead of from a folder.

``checkpoint=None`` is the default built-in, the embedded demo model (recorded in sidecars as
``builtin:demo``). The generation stage knows only this registry: the package that ships a model
registers its loader here when it is imported (:mod:`vstar_jax.demo.model` registers ``demo``, and
:mod:`vstar_jax.pipeline` imports it), so ``vstar_jax.generation`` never imports ``vstar_jax.demo``.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional

PREFIX = "builtin:"
DEFAULT = "demo"  # what checkpoint=None loads
DEMO_SOURCE = PREFIX + DEFAULT  # the source (sidecar "checkpoint") of the embedded demo model
# the names a checkpoint argument may give instead of a folder (``--checkpoint demo_vc``): the default demo
# model, and demo_vc, the demo model with a trained length (docs/demo-model.md). Spelled out here so that
# the jax-free CLI can tell a name from a folder before anything registers a loader.
NAMES = (DEFAULT, "demo_vc")

_LOADERS: dict[str, Callable[[], Any]] = {}


def named(checkpoint) -> Optional[str]:
    """The built-in a checkpoint argument means, or None for a folder: None is :data:`DEFAULT`;
    ``builtin:NAME`` is NAME; a bare name of :data:`NAMES` is that built-in unless a folder of that name
    exists (the folder wins: a user's ``./demo_vc`` checkpoint stays reachable)."""
    if checkpoint is None:
        return DEFAULT
    if not isinstance(checkpoint, (str, os.PathLike)):
        return None
    s = os.fspath(checkpoint)
    if s.startswith(PREFIX):
        return s[len(PREFIX):]
    if s in NAMES and not os.path.isdir(s):
        return s
    return None


def source(name: str) -> str:
    """The source string a built-in's sidecars record (``builtin:NAME``)."""
    return PREFIX + name


def register(name: str, loader: Callable[[], Any]) -> None:
    """Make ``loader()`` (returning a :class:`vstar_jax.generation.model.Pipeline`) the built-in ``name``."""
    _LOADERS[name] = loader


def loader(name: str = DEFAULT) -> Optional[Callable[[], Any]]:
    """The registered loader of built-in ``name``, or None when no package registered one."""
    return _LOADERS.get(name)
