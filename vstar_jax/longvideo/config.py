"""The long-video setting: ``{"method": "genl"|"blend", "window": F, "stride"|"overlap": k}``.

:func:`parse_long_video` accepts None, a dict, a :class:`LongVideoConfig` or the CLI
string ``method:window:k`` (``genl:16:8`` = windows of 16, stride 8; ``blend:24:8`` =
chunks of 24 overlapping 8) and returns a frozen, hashable config (or None).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from vstar_jax.longvideo import windows as W

METHODS = {"genl": "stride", "blend": "overlap"}  # method -> name of its third number


@dataclasses.dataclass(frozen=True)
class LongVideoConfig:
    """Chunked sampling: ``method`` "genl" (``param`` = stride) or "blend" (``param`` = overlap)."""

    method: str
    window: int
    param: int

    @property
    def param_name(self) -> str:
        return METHODS[self.method]

    def to_dict(self) -> dict:
        return {"method": self.method, "window": self.window, self.param_name: self.param}

    def starts(self, frames: int) -> np.ndarray:
        """Window starts for ``frames`` frames (ValueError if they do not fit)."""
        if self.method == "genl":
            return W.sliding_starts(frames, self.window, self.param)
        return W.chunk_starts(frames, self.window, self.param)

    def check(self, frames: int) -> int:
        """Validate against a video length; returns the number of windows."""
        return int(len(self.starts(frames)))

    def sample(self, model_fn, x_T, cond, uncond, schedule, **kwargs):
        """Run the method's sampler (keyword arguments as ``ddim_sample``'s)."""
        from vstar_jax.longvideo import strategies as S  # noqa: PLC0415

        if self.method == "genl":
            return S.genl_sample(model_fn, x_T, cond, uncond, schedule, window=self.window,
                                 stride=self.param, **kwargs)
        return S.blend_sample(model_fn, x_T, cond, uncond, schedule, window=self.window,
                              overlap=self.param, **kwargs)


def _positive_int(name: str, value) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"long_video {name} must be a positive integer, got {value!r}")
    return int(value)


def parse_long_video(spec) -> LongVideoConfig | None:
    """None | "genl:16:8" | {"method", "window", "stride"/"overlap"} | LongVideoConfig -> config."""
    if spec is None or isinstance(spec, LongVideoConfig):
        return spec
    if isinstance(spec, str):
        parts = spec.strip().split(":")
        if len(parts) != 3:
            raise ValueError(f"bad long-video spec {spec!r}: use method:window:k, e.g. genl:16:8 or blend:24:8")
        method, window, param = (p.strip() for p in parts)
        if method not in METHODS:
            raise ValueError(f"unknown long-video method {method!r} (use {' or '.join(METHODS)})")
        spec = {"method": method, "window": window, METHODS[method]: param}
    if not isinstance(spec, Mapping):
        raise ValueError(f"long_video must be None, a 'method:window:k' string or a dict, "
                         f"got {type(spec).__name__}")
    method = spec.get("method")
    if method not in METHODS:
        raise ValueError(f"unknown long-video method {method!r} (use {' or '.join(METHODS)})")
    pname = METHODS[method]
    extra = set(spec) - {"method", "window", pname}
    if extra:
        raise ValueError(f"long_video {method!r} takes method, window and {pname}; unexpected {sorted(extra)}")
    if "window" not in spec or pname not in spec:
        raise ValueError(f"long_video {method!r} needs 'window' and '{pname}'")
    window = _positive_int("window", spec["window"])
    param = _positive_int(pname, spec[pname])
    if method == "genl" and param > window:
        raise ValueError(f"long_video stride {param} > window {window} would leave frames uncovered")
    if method == "blend" and param >= window:
        raise ValueError(f"long_video overlap {param} must be smaller than the window {window}")
    return LongVideoConfig(method, window, param)
