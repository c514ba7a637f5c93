"""``freenoise:W:S`` -- FreeNoise (Qiu et al. 2023; AILab-CVC/FreeNoise), as the reference runs it on
VideoCrafter2: window 16, stride 4.

* **Noise rescheduling** (``scripts/evaluation/inference_freenoise.py``): x_T is drawn for all N
  frames, then for every block start ``f = W, W + S, ...`` (< N) the S frames ``[f, f + S)`` are
  replaced by a shuffled copy of frames ``[f - W, f - W + S)`` (blocks are rewritten in order, so a
  block can copy an already rescheduled one). The shuffles come from the seed:
  ``argsort(uniform(fold_in(k_x, SHUFFLE_FOLD), (blocks, S)), axis=1)``.
* **Window-based attention fusion** (``lvdm/modules/attention_freenoise.py``): every temporal
  self-attention (``init_attn`` included, as the reference passes its windows to every temporal
  transformer) is computed on the windows ``[jS, jS + W)``, j < (N - W) / S + 1, and the windows'
  outputs are averaged per frame with triangular weights (1, 2, ..., W/2, W/2, ..., 1). This is
  a wrapper of the project's one attention function (a hook the UNet takes), not a second
  attention: TAR's logit transform and lvdm's relative position apply inside each window.

The UNet sees all N frames in one pass (spatial layers and temporal convs are per frame or
local), so memory grows with N as in the reference. Lengths: N = W + k S (every frame covered;
the reference leaves other lengths' tail frames at zero). With N <= W there is one window and it
is plain DDIM (the triangular weights cancel).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from vstar_jax.errors import VstarError
from vstar_jax.longvideo.base import Plan, SampleInputs, Strategy, positive, register
from vstar_jax.longvideo.single import Single

SHUFFLE_FOLD = 0x66726E73  # fold_in constant of the rescheduling shuffles ("frns")


def triangular_weights(window: int) -> np.ndarray:
    """FreeNoise's ``generate_weight_sequence``: 1..W/2, W/2..1 (odd W: 1..(W+1)/2..1)."""
    half = (window + 1) // 2
    up = np.arange(1, half + 1)
    down = np.arange(half if window % 2 == 0 else half - 1, 0, -1)
    return np.concatenate([up, down]).astype(np.float32)


def window_starts(frames: int, window: int, stride: int) -> np.ndarray:
    """FreeNoise's views: starts j * S for j < (N - W) // S + 1."""
    return np.arange((frames - window) // stride + 1, dtype=np.int32) * stride


def reschedule_map(key, frames: int, window: int, stride: int) -> jax.Array:
    """Source frame of every frame after noise rescheduling: x_T = noise[:, :, map] (int32 (N,))."""
    src = jnp.arange(frames, dtype=jnp.int32)
    blocks = list(range(window, frames, stride))
    if not blocks:
        return src
    perms = jnp.argsort(jax.random.uniform(jax.random.fold_in(key, SHUFFLE_FOLD), (len(blocks), stride)),
                        axis=1).astype(jnp.int32)
    for j, f in enumerate(blocks):  # in order: a block may copy an already rescheduled block
        n = min(stride, frames - f)
        src = src.at[f:f + n].set(src[f - window + perms[j]][:n])
    return src


@register
@dataclasses.dataclass(frozen=True)
class FreeNoise(Strategy):
    """FreeNoise: rescheduled noise + temporal attention fused over windows of ``window`` every ``stride``."""

    name = "freenoise"
    POSITIONAL = ("window", "stride")
    window: int = 16
    stride: int = 4

    def __post_init__(self):
        positive(self.name, window=self.window, stride=self.stride)
        if self.stride > self.window:
            raise VstarError(f"freenoise stride {self.stride} > window {self.window} would leave frames uncovered")

    def check(self, frames: int, steps: int) -> Plan:
        n, w, s = int(frames), self.window, self.stride
        if n > w and (n - w) % s:
            lo = w + (n - w) // s * s
            raise VstarError(f"freenoise:{w}:{s} takes N = {w} + k*{s} frames (every frame in a window): "
                             f"use {lo} or {lo + s}, not {n}")
        return Plan(n, int(steps), note=f"{len(window_starts(n, w, s)) if n > w else 1} attention windows")

    def rng_rule(self) -> str:
        return (f"x_T=normal(k_x)[:,:,map]; map: blocks f=W,W+S,..<N copy frames [f-W,f-W+S) shuffled by "
                f"argsort(uniform(fold_in(k_x,{SHUFFLE_FOLD:#x}),(blocks,S)),axis=1)")

    def init_noise(self, key, shape: tuple) -> jax.Array:
        noise = jax.random.normal(key, tuple(shape), jnp.float32)
        src = reschedule_map(key, int(shape[2]), self.window, self.stride)
        return jnp.take(noise, src, axis=2)

    def attention_hooks(self, frames: int) -> tuple:
        return (self,) if frames > self.window else ()

    # the UNet's hook: wrap the attention function with the window fusion
    def attend(self, attention):
        window, stride = self.window, self.stride
        tri = jnp.asarray(triangular_weights(window))

        def fused(q, k, v, *, logit_transform=None, backend="xla", return_weights=False, rel_k=None, rel_v=None,
                  mask=None):
            b, n, h, d = q.shape
            if n <= window:
                return attention(q, k, v, logit_transform=logit_transform, backend=backend,
                                 return_weights=return_weights, rel_k=rel_k, rel_v=rel_v, mask=mask)
            if return_weights:
                raise VstarError("attention maps are not recorded with FreeNoise's windowed attention")
            if mask is not None:
                raise ValueError("FreeNoise's windowed attention takes no mask")
            idx = window_starts(n, window, stride)[:, None] + np.arange(window)[None]  # (views, W)
            views = idx.shape[0]

            def gather(t):
                return t[:, idx].reshape(b * views, window, *t.shape[2:])

            rel = {}
            if rel_k is not None:  # relative position depends on j - i only: the first window's block
                rel["rel_k"] = rel_k[:window, :window]
            if rel_v is not None:
                rel["rel_v"] = rel_v[:window, :window]
            out = attention(gather(q), gather(k), gather(v), logit_transform=logit_transform, backend=backend, **rel)
            out = out.reshape(b, views, window, h, d).astype(jnp.float32) * tri[None, None, :, None, None]
            flat = idx.reshape(-1)
            value = jnp.zeros((b, n, h, d), jnp.float32).at[:, flat].add(out.reshape(b, views * window, h, d))
            count = jnp.zeros((n,), jnp.float32).at[flat].add(jnp.tile(tri, views))
            return (value / count[None, :, None, None]).astype(q.dtype)

        return fused

    def run(self, model_fn, inputs: SampleInputs, *, capture: bool = False):
        return Single().run(model_fn, inputs, capture=capture)
