"""Flax's parameter shape check, memoised: the same check, traced once per initializer call.

On every ``apply`` Flax checks each existing parameter against its initializer: ``Scope.param`` runs
``jax.eval_shape(lambda: init_fn(random.key(0), *init_args, **init_kwargs))``, which traces the
initializer (lecun_normal's truncated normal: threefry, erf_inv, ...) for every parameter, every trace.
The demo UNet has 656 parameters, and those traces were ~26% of tracing its sampling program (3.2 s ->
2.4 s at load 8, ``benchmarks/RESULTS.md``, issue 30) -- paid again by every process that loads the
program from the compile cache, since a cache hit still traces.

:func:`install` gives Flax's scope module an ``eval_shape`` that remembers, per (initializer, positional
arguments, keyword arguments), the shapes it returned: an initializer's output shape is a function of
those alone (it is called with a fixed key). Flax still compares every parameter with them, so a
mismatched checkpoint is refused as before. Calls whose arguments are not hashable (an array argument),
and every other ``eval_shape`` in that module, go to JAX unchanged.

It touches one Flax internal (the ``jax`` name in ``flax.core.scope``); when a Flax release moves it,
:func:`install` does nothing and Flax checks as it always did (slower tracing, same behaviour).
"""
from __future__ import annotations

import threading

import jax
from flax.core import scope as _flax_scope

_FREEVARS = ("init_args", "init_fn", "init_kwargs")  # the closure of Scope.param's check


class _JaxWithMemoisedParamShapes:
    """The ``jax`` module as ``flax.core.scope`` sees it: everything is JAX's, but ``eval_shape`` of
    ``Scope.param``'s check closure is remembered by its (init_fn, init_args, init_kwargs)."""

    def __init__(self, real):
        self._real = real
        self._memo: dict = {}
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self._real, name)

    def eval_shape(self, fun, *args, **kwargs):
        key = _check_key(fun) if not args and not kwargs else None
        if key is None:
            return self._real.eval_shape(fun, *args, **kwargs)
        with self._lock:
            hit = self._memo.get(key)
        if hit is None:
            hit = self._real.eval_shape(fun)
            with self._lock:
                self._memo[key] = hit
        return hit


def _check_key(fun):
    """(init_fn, init_args, sorted init_kwargs) of Scope.param's shape-check closure, or None for any other
    function or for unhashable arguments."""
    code = getattr(fun, "__code__", None)
    if code is None or code.co_freevars != _FREEVARS or code.co_filename != _flax_scope.__file__:
        return None
    cells = dict(zip(code.co_freevars, (c.cell_contents for c in fun.__closure__)))
    key = (cells["init_fn"], tuple(cells["init_args"]), tuple(sorted(cells["init_kwargs"].items())))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def install() -> bool:
    """Memoise Flax's parameter shape check in this process (idempotent). False when this Flax does not
    look as expected (nothing changed)."""
    current = getattr(_flax_scope, "jax", None)
    if isinstance(current, _JaxWithMemoisedParamShapes):
        return True
    if current is not jax:
        return False
    _flax_scope.jax = _JaxWithMemoisedParamShapes(jax)
    return True


def installed() -> bool:
    """Whether :func:`install` is in effect."""
    return isinstance(getattr(_flax_scope, "jax", None), _JaxWithMemoisedParamShapes)
