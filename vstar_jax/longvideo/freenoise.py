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

**On a device mesh** (``--mesh``, the UNet's :class:`~vstar_jax.parallel.sharding.ActivationLayout`)
the frames stay split over the ``frames`` rule's mesh axis through the temporal transformers too
(:meth:`FreeNoise.frames_on_mesh`: no all-to-all to the pixels layout): device d of D owns frames
[dL, dL + L), L = N / D, and computes the windows that start there (local starts 0, S, ..., L - S;
windows past the video's end weigh 0). The last window needs the next device's first W - S frames,
so each temporal attention sends W - S frames of q, k, v one device back and their weighted
outputs one device forward (``lax.ppermute`` under ``jax.shard_map``: collective-permutes), never
the whole video. That needs L a multiple of S and L >= W - S; other lengths print one line and run
the temporal attention as before (every frame on each device, pixels split).
"""
from __future__ import annotations

import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jax.sharding import PartitionSpec

from vstar_jax.errors import VstarError
from vstar_jax.longvideo.base import Plan, SampleInputs, Strategy, positive, register
from vstar_jax.longvideo.single import Single
from vstar_jax.models.attention import rows_on_mesh
from vstar_jax.parallel.sharding import axis_size
from vstar_jax.runtime import runtime

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

    # the UNet's hooks: on a mesh, keep the frames split; wrap the attention function with the window fusion
    def frames_on_mesh(self, layout, batch: int, frames: int) -> bool:
        """Whether this call's temporal attention runs where its frames lie on ``layout``'s mesh (the halo
        exchange); False (and one printed line, once) when the frame split does not fit the windows."""
        split = _frame_split(layout, batch, frames)
        if split is None or frames <= self.window:
            return False
        devices = axis_size(layout.mesh, split[1])
        local = frames // devices
        if local % self.stride == 0 and local >= self.window - self.stride:
            return True
        said, seen = ("freenoise-split", self, frames, devices), runtime().said
        if said not in seen:
            seen.add(said)
            print(f"[vstar-jax] {self.spec()} on {frames} frames over {devices} frame devices runs its temporal "
                  f"attention with every frame on each device (all-to-all): the halo split needs each device's "
                  f"frames (N / {devices}) to be a multiple of {self.stride} and at least {self.window - self.stride}"
                  f"; {_fitting_lengths(self.window, self.stride, devices, frames)}", file=sys.stderr, flush=True)
        return False

    def attend(self, attention, layout=None):
        """The window fusion around ``attention``; with ``layout`` (when :meth:`frames_on_mesh` said so) each
        device computes the windows starting on its frames and exchanges W - S frames with its neighbours."""
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
            rel = {}
            if rel_k is not None:  # relative position depends on j - i only: the first window's block
                rel["rel_k"] = rel_k[:window, :window]
            if rel_v is not None:
                rel["rel_v"] = rel_v[:window, :window]
            count = _coverage(n, window, stride)
            split = _frame_split(layout, b, n) if layout is not None else None
            if split is None:
                value = _windows(attention, q, k, v, window_starts(n, window, stride), tri, window, n,
                                 np.ones(1, np.float32), logit_transform=logit_transform, backend=backend, **rel)
                return (value / count[None, :, None, None]).astype(q.dtype)
            return _halo_windows(attention, q, k, v, layout.mesh, split, window, stride, tri, count,
                                 logit_transform=logit_transform, backend=backend, **rel)

        return fused

    def run(self, model_fn, inputs: SampleInputs, *, capture: bool = False):
        return Single().run(model_fn, inputs, capture=capture)


def _frame_split(layout, batch: int, frames: int):
    """(batch mesh axes or None, frame mesh axes) of (batch, frames) on ``layout``, or None when the
    frames are not split there."""
    if layout is None:
        return None
    spec = layout.spec((batch, frames), ("batch", "frames"))
    return None if spec[1] is None else (spec[0], spec[1])


def _fitting_lengths(window: int, stride: int, devices: int, frames: int) -> str:
    """A few video lengths N = W + k S that the halo split takes on ``devices`` frame devices."""
    if window % stride:
        return f"no length does with a stride that does not divide the window ({window}:{stride})"
    unit = devices * stride  # N / devices a multiple of S
    least = max(devices * (window - stride), window + 1)
    first = -(-least // unit) * unit
    fits = [n for n in range(first, first + 40 * unit, unit)][:4]
    near = min(fits, key=lambda n: abs(n - frames))
    return f"lengths that split: {', '.join(map(str, fits))}, ... (every {unit}; nearest {near})"


def _coverage(frames: int, window: int, stride: int) -> np.ndarray:
    """Sum of the triangular weights each frame receives from the windows (float32 (N,))."""
    idx = window_starts(frames, window, stride)[:, None] + np.arange(window)[None]
    count = np.zeros(frames, np.float32)
    np.add.at(count, idx.reshape(-1), np.tile(triangular_weights(window), len(idx)))
    return count


def _windows(attention, q, k, v, starts, tri, window: int, length: int, weight, *, logit_transform, backend,
             **rel):
    """The windows [s, s + W) of (b, n, h, d) q, k, v attended separately, weighted by ``tri`` x
    ``weight`` (one per window, or one for all), summed per frame: float32 (b, length, h, d)."""
    b, _, h, d = q.shape
    idx = np.asarray(starts)[:, None] + np.arange(window)[None]  # (views, W)
    views = idx.shape[0]

    def gather(t):
        return t[:, idx].reshape(b * views, window, *t.shape[2:])

    out = attention(gather(q), gather(k), gather(v), logit_transform=logit_transform, backend=backend, **rel)
    w = jnp.asarray(weight, jnp.float32).reshape(-1, 1) * tri[None]  # (views or 1, W)
    out = out.reshape(b, views, window, h, d).astype(jnp.float32) * w[None, :, :, None, None]
    return jnp.zeros((b, length, h, d), jnp.float32).at[:, idx.reshape(-1)].add(out.reshape(b, views * window, h, d))


def _halo_windows(attention, q, k, v, mesh, split, window: int, stride: int, tri, count, *, logit_transform,
                  backend, **rel):
    """:func:`_windows` fused over the video with the frames split over ``split`` = (batch axes, frame axes)
    of ``mesh``: each device attends the windows starting on its L frames, on its frames plus the next
    device's first W - S (one collective-permute back per q / k / v), and sends the weighted sums past its
    frames to the next device (one collective-permute forward)."""
    batch_axes, axes = split
    devices = axis_size(mesh, axes)
    n = q.shape[1]
    local, halo = n // devices, window - stride
    starts = np.arange(local // stride) * stride  # the same local starts on every device (L % S == 0)
    back = [(i + 1, i) for i in range(devices - 1)]  # device i + 1's first frames to device i
    forward = [(i, i + 1) for i in range(devices - 1)]

    def per_device(q, k, v, count, rel):
        first = jax.lax.axis_index(axes) * local
        valid = (first + starts + window <= n).astype(jnp.float32)  # windows past the video's end weigh 0

        def with_halo(t):
            return jnp.concatenate([t, jax.lax.ppermute(t[:, :halo], axes, back)], axis=1) if halo else t

        with rows_on_mesh(None, None):  # already per device: no nested kernel shard_map
            value = _windows(attention, with_halo(q), with_halo(k), with_halo(v), starts, tri, window,
                             local + halo, valid, logit_transform=logit_transform, backend=backend, **rel)
        own = value[:, :local]
        if halo:
            own = own.at[:, :halo].add(jax.lax.ppermute(value[:, local:], axes, forward))
        return (own / count[None, :, None, None]).astype(q.dtype)

    rows = PartitionSpec(batch_axes, axes, None, None)
    return jax.shard_map(per_device, mesh=mesh, in_specs=(rows, rows, rows, PartitionSpec(axes), PartitionSpec()),
                         out_specs=rows, check_vma=False)(q, k, v, jnp.asarray(count), rel)
