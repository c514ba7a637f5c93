"""The one check every numeric setting goes through (flags, sidecar fields, spec strings, sweep
``--set`` values, converter flags), at the bottom of the package so that any layer can use it."""
from __future__ import annotations

import math

from vstar_jax.errors import VstarError


def _g(x) -> str:
    """A bound as people write it: 4294967295, 0.1, 1e+06 only when it is not a whole number."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def _range(minimum, maximum) -> str:
    if minimum is not None and maximum is not None:
        return f" (valid: {_g(minimum)} to {_g(maximum)})"
    if minimum is not None:
        return f" (valid: >= {_g(minimum)})"
    if maximum is not None:
        return f" (valid: <= {_g(maximum)})"
    return ""


def number(name: str, value, *, integer: bool = False, minimum=None, maximum=None):
    """A finite number (int when ``integer``) within bounds, else a one-line VstarError that
    states the valid range. Every numeric setting (flags, sidecar fields, spec strings, sweep
    ``--set`` values, converter flags) goes through here before any compute."""
    rng = _range(minimum, maximum)
    if isinstance(value, str):
        value = value.strip()
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        raise VstarError(f"{name} must be a number{rng}, got {value!r}") from None
    if not math.isfinite(v):
        raise VstarError(f"{name} must be a finite number{rng}, got {value!r}")
    if integer:
        if isinstance(value, bool) or v != int(v):
            raise VstarError(f"{name} must be an integer{rng}, got {value!r}")
        v = int(value) if isinstance(value, int) else int(v)
    if minimum is not None and v < minimum:
        raise VstarError(f"{name} must be >= {_g(minimum)}{rng}, got {value!r}")
    if maximum is not None and v > maximum:
        raise VstarError(f"{name} must be <= {_g(maximum)}{rng}, got {value!r}")
    return v
