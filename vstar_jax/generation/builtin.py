"""Built-in checkpoints: models shipped inside the package, loaded by name instead of from a folder.

``checkpoint=None`` is the default built-in, the embedded demo model (recorded in sidecars as
``builtin:demo``). The generation stage knows only this registry: the package that ships a model
registers its loader here when it is imported (:mod:`vstar_jax.demo.model` registers ``demo``, and
:mod:`vstar_jax.pipeline` imports it), so ``vstar_jax.generation`` never imports ``vstar_jax.demo``.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

PREFIX = "builtin:"
DEFAULT = "demo"  # what checkpoint=None loads
DEMO_SOURCE = PREFIX + DEFAULT  # the source (sidecar "checkpoint") of the embedded demo model

_LOADERS: dict[str, Callable[[], Any]] = {}


def register(name: str, loader: Callable[[], Any]) -> None:
    """Make ``loader()`` (returning a :class:`vstar_jax.generation.model.Pipeline`) the built-in ``name``."""
    _LOADERS[name] = loader


def loader(name: str = DEFAULT) -> Optional[Callable[[], Any]]:
    """The registered loader of built-in ``name``, or None when no package registered one."""
    return _LOADERS.get(name)
