"""Temporal Attention Regularization (VSTAR, SPEC section 3).

TAR is a data-dependent transform of temporal self-attention logits:
``S'[i, j] = S[i, j] + scale * max_j S[i, :] * G[i, j]`` with the dense Gaussian
band ``G[i, j] = exp(-(i - j)^2 / (2 sigma^2))`` (diagonal 1). It runs on attn1
and attn2 of every temporal transformer except ``init_attn``, at chosen UNet
levels, while the DDIM loop index ``i <= until_time`` (i = 0 is the noisiest
step), in both classifier-free-guidance rows.

Levels are explicit: level 0 is the full latent resolution, level 1 half of it,
and so on (the reference guesses the level from tensor sizes assuming batch 1).
VSTAR's preset names use VideoCrafter2's 320x512 latent widths: "64" is level 0,
"32" is level 1.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from vstar_jax.errors import VstarError
from vstar_jax.validate import number

# The sensible ranges of a TAR spec's numbers (checked before compute; a sigma beyond the frame count is
# already a flat band, and an infinite one would be exactly no TAR).
SIGMA_RANGE = (1e-3, 1e4)
SCALE_RANGE = (-100.0, 100.0)
MAX_LEVEL = 16
MAX_UNTIL = 100_000  # a DDIM step index (steps <= num_timesteps)

# VideoCrafter2 latent width (320x512 video) -> UNet level.
WIDTH_TO_LEVEL = {64: 0, 32: 1, 16: 2, 8: 3}


@dataclasses.dataclass(frozen=True)
class TARConfig:
    """Hashable TAR settings (static under jit).

    levels: ((level, sigma, scale), ...), one entry per regularized UNet level.
    until_time: TAR is active for DDIM loop index <= until_time.
    """

    levels: Tuple[Tuple[int, float, float], ...]
    until_time: int = 13

    def __post_init__(self):

        if not self.levels:
            raise VstarError("TAR has no levels, so it would never be applied")
        if isinstance(self.until_time, bool) or not isinstance(self.until_time, (int, float, np.integer)) or not (
                isinstance(self.until_time, (int, np.integer)) or float(self.until_time).is_integer()) or \
                self.until_time < 0:
            raise VstarError(f"TAR until_time must be an integer >= 0 (the last DDIM step index it applies to, "
                             f"0 = the first step), got {self.until_time!r}: TAR would never be applied")
        number("TAR until_time", self.until_time, integer=True, minimum=0, maximum=MAX_UNTIL)
        seen = set()
        for entry in self.levels:
            if len(entry) != 3:
                raise ValueError(f"TAR level entry must be (level, sigma, scale), got {entry!r}")
            level, sigma, scale = entry
            number("TAR level", level, integer=True, minimum=0, maximum=MAX_LEVEL)
            if level in seen:
                raise ValueError(f"TAR level {level} is negative or repeated")
            try:
                positive_sigma = float(sigma) > 0
            except (TypeError, ValueError):
                positive_sigma = False
            if not positive_sigma:
                raise ValueError(f"TAR sigma must be > 0, got {sigma} at level {level}")
            number(f"TAR sigma (level {level})", sigma, minimum=SIGMA_RANGE[0], maximum=SIGMA_RANGE[1])
            number(f"TAR scale (level {level})", scale, minimum=SCALE_RANGE[0], maximum=SCALE_RANGE[1])
            seen.add(level)
        if all(float(scale) == 0.0 for _, _, scale in self.levels):
            raise VstarError("TAR scale is 0 at every level, so it would never change anything")

    def for_level(self, level: int) -> Optional[Tuple[float, float]]:
        for lv, sigma, scale in self.levels:
            if lv == level:
                return float(sigma), float(scale)
        return None

    def to_dict(self) -> dict:
        return {"levels": [list(x) for x in self.levels], "until_time": self.until_time}

    def logit_transform(self, level: int, step_index):
        """The UNet's temporal-attention hook: TAR's transform at ``level`` (or None)."""
        return make_transform(self, level, step_index)


def _from_widths(spec: dict, until_time: int = 13) -> TARConfig:
    return TARConfig(
        levels=tuple((WIDTH_TO_LEVEL[w], float(s), 1.0) for w, s in sorted(spec.items(), reverse=True)),
        until_time=until_time,
    )


# VSTAR utils/test_list.py: all scale 1, until_time 13. Sigma by latent width.
PRESETS = {
    "64D1": {64: 1},
    "64D4": {64: 4},
    "64D8": {64: 8},
    "64D1_32D8": {64: 1, 32: 8},
    "64D1_32D12": {64: 1, 32: 12},
    "64D4_32D8": {64: 4, 32: 8},
    "64D4_32D12": {64: 4, 32: 12},
    "64D1_32D1": {64: 1, 32: 1},
}


def preset(name: str) -> TARConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown TAR preset {name!r}; known: {', '.join(PRESETS)}")
    return _from_widths(PRESETS[name])


_SPEC_RE = re.compile(r"^\s*L?(\d+):([0-9.eE+-]+)(?::([0-9.eE+-]+))?\s*$")


def parse_tar(spec) -> Optional[TARConfig]:
    """A preset name, a dict (``{"levels": [[level, sigma, scale], ...], "until_time": 13}``),
    or a string ``"L0:1:1,L1:8:1@13"`` (level:sigma[:scale], comma separated, optional
    ``@until_time``). ``None``/"none"/"" mean no TAR."""
    if spec is None or isinstance(spec, TARConfig):
        return spec
    if isinstance(spec, dict):

        levels = spec.get("levels")
        if not isinstance(levels, (list, tuple)) or not all(isinstance(x, (list, tuple)) and len(x) == 3
                                                             for x in levels):
            raise VstarError(f"TAR levels must be a list of [level, sigma, scale], got {levels!r}")
        return TARConfig(
            levels=tuple((number("TAR level", a, integer=True, minimum=0, maximum=MAX_LEVEL),
                          number("TAR sigma", b, minimum=SIGMA_RANGE[0], maximum=SIGMA_RANGE[1]),
                          number("TAR scale", c, minimum=SCALE_RANGE[0], maximum=SCALE_RANGE[1]))
                         for a, b, c in levels),
            until_time=number("TAR until_time", spec.get("until_time", 13), integer=True, minimum=0,
                              maximum=MAX_UNTIL),
        )
    spec = str(spec).strip()
    if spec.lower() in ("", "none", "off"):
        return None
    if spec in PRESETS:
        return preset(spec)
    body, _, until = spec.partition("@")
    levels = []
    for part in body.split(","):
        m = _SPEC_RE.match(part)
        if not m:
            raise ValueError(
                f"bad TAR spec {spec!r}: use a preset ({', '.join(PRESETS)}) or 'L0:sigma[:scale],...[@until]'"
            )
        levels.append((int(m.group(1)), float(m.group(2)), float(m.group(3) or 1.0)))
    until = until.strip()
    if until and not until.lstrip("+-").isdigit():
        raise VstarError(f"bad TAR spec {spec!r}: @until must be a step index (an integer >= 0), got {until!r}")
    until_time = 13
    if until:

        until_time = number("TAR until_time (@until)", until, integer=True, minimum=0, maximum=MAX_UNTIL)
    return TARConfig(levels=tuple(levels), until_time=until_time)


def gaussian_band(frames: int, sigma: float) -> np.ndarray:
    """G[i, j] = exp(-(i - j)^2 / (2 sigma^2)): the normal pdf scaled so the diagonal is 1."""
    idx = np.arange(frames, dtype=np.float64)
    d = idx[:, None] - idx[None, :]
    return np.exp(-(d**2) / (2.0 * float(sigma) ** 2)).astype(np.float32)


def tar_logits(logits: jax.Array, sigma: float, scale: float) -> jax.Array:
    """Add ``scale * rowmax * G`` to (..., F, F) logits (the reference's process_sim)."""
    frames = logits.shape[-1]
    g = jnp.asarray(gaussian_band(frames, sigma), logits.dtype)
    row_max = jnp.max(logits, axis=-1, keepdims=True)
    return logits + scale * row_max * g


def make_transform(tar: Optional[TARConfig], level: int, step_index):
    """The logit transform for one temporal attention at ``level``, or None.

    ``step_index`` may be a traced scalar (inside the sampler's scan): the gate
    is then a ``jnp.where``, so one compiled loop serves every step; or one per UNet row (rows,).
    """
    if tar is None or step_index is None:
        return None
    params = tar.for_level(level)
    if params is None:
        return None
    sigma, scale = params

    def transform(logits):
        active = jnp.asarray(step_index) <= tar.until_time
        if active.ndim == 1:  # one step per UNet row (a batched call of long-video windows at different
            # steps, FIFO): the logits' leading axis is rows x pixels, row-major
            active = jnp.repeat(active, logits.shape[0] // active.shape[0]).reshape((-1,) + (1,) * (logits.ndim - 1))
        return jnp.where(active, tar_logits(logits, sigma, scale), logits)

    return transform
