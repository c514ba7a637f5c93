"""Window arithmetic for chunked long-video sampling (pure numpy, host side).

Two layouts of F-frame windows over N frames:

* sliding windows (Gen-L-Video): starts 0, S, 2S, ... while the window fits, plus a
  last window anchored at N - F when the stride does not land there;
* overlapping chunks (StreamingT2V): chunk k starts at k (F - O); the chunks tile N
  exactly only when (N - O) % (F - O) == 0.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


def _int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def sliding_starts(frames: int, window: int, stride: int) -> np.ndarray:
    """Gen-L-Video window starts (int32, ascending) covering every frame of ``frames``.

    ``stride`` must be in [1, window] (a larger stride would leave frames uncovered).
    """
    n = _int("frames", frames, 1)
    f = _int("window", window, 1)
    s = _int("stride", stride, 1)
    if f > n:
        raise ValueError(f"window {f} is longer than the video ({n} frames)")
    if s > f:
        raise ValueError(f"stride {s} > window {f} would leave frames uncovered")
    starts = list(range(0, n - f + 1, s))
    if starts[-1] != n - f:
        starts.append(n - f)
    return np.asarray(starts, np.int32)


def nearest_chunk_lengths(frames: int, window: int, overlap: int) -> tuple[int | None, int]:
    """The valid chunked lengths just below (None if none) and just above ``frames``."""
    f, o = _check_chunking(window, overlap)
    n = int(frames)
    if n < f:
        return None, f
    k = (n - o) // (f - o)
    lower = o + k * (f - o)
    upper = lower if lower == n else lower + (f - o)
    return lower, upper


def _check_chunking(window, overlap) -> tuple[int, int]:
    f = _int("window", window, 2)
    o = _int("overlap", overlap, 1)
    if o >= f:
        raise ValueError(f"overlap {o} must be smaller than the window {f}")
    return f, o


def chunk_starts(frames: int, window: int, overlap: int, *, trim: bool = False) -> np.ndarray:
    """StreamingT2V chunk starts k (F - O) (int32) for ``frames`` frames.

    Needs (frames - O) % (F - O) == 0; otherwise a ValueError names the nearest valid
    lengths, or with ``trim=True`` the chunks of the longest valid length <= frames are
    returned (the caller drops the trailing frames: ``starts[-1] + window``).
    """
    f, o = _check_chunking(window, overlap)
    n = _int("frames", frames, 1)
    lower, upper = nearest_chunk_lengths(n, f, o)
    if lower is None:
        raise ValueError(f"window {f} is longer than the video ({n} frames)")
    if lower != n and not trim:
        raise ValueError(f"{n} frames do not split into chunks of {f} overlapping {o} "
                         f"((frames - {o}) % {f - o} != 0): use {lower} or {upper} frames")
    return np.arange(0, lower - f + 1, f - o, dtype=np.int32)


def coverage(frames: int, window: int, starts) -> np.ndarray:
    """How many windows cover each frame: (frames,) int32."""
    counts = np.zeros(int(frames), np.int32)
    for s in np.asarray(starts).tolist():
        if s < 0 or s + window > frames:
            raise ValueError(f"window [{s}, {s + window}) lies outside {frames} frames")
        counts[s:s + window] += 1
    return counts


def window_groups(n_windows: int, group: int) -> tuple[np.ndarray, np.ndarray]:
    """The windows of one step in groups of ``group`` (D), one batched UNet call each:
    ``(index (K, D) int32, real (K, D) bool)`` with K = ceil(n / D). Slot j of group g is window
    g D + j, so the groups in order, each in slot order, visit the windows in their serial order (sums
    and order-dependent writes come out as the serial loop's); the slots past the last window repeat it
    and are masked (``real`` False: they contribute nothing). D = 1 is the serial loop."""
    n = _int("windows", n_windows, 1)
    d = _int("group", group, 1)
    k = -(-n // d)
    slots = np.arange(k * d, dtype=np.int32).reshape(k, d)
    return np.minimum(slots, n - 1).astype(np.int32), slots < n



def device_blocks(n_windows: int, group: int) -> tuple[np.ndarray, np.ndarray]:
    """The windows of one step as D contiguous blocks of K = ceil(n / D) (Video-Infinity's layout: device
    j of a mesh whose window axis splits D holds windows [j K, (j + 1) K), so neighbouring windows share
    a device but at the D - 1 boundaries): ``(index (D, K) int32, real (D, K) bool)``, slot (j, k) window
    j K + k; slots past the last window (``real`` False) index past it. Call k of a step takes column k,
    one window per device. D = 1: the serial order, one window a call."""
    n = _int("windows", n_windows, 1)
    d = _int("group", group, 1)
    k = -(-n // d)
    index = np.arange(d * k, dtype=np.int32).reshape(d, k)
    return index, index < n


def overlap_reach(starts, window: int) -> int:
    """m: how many ranks apart two overlapping windows can be (sliding windows of stride S: ceil(F / S) - 1,
    one more next to Gen-L's anchored last window)."""
    s = np.asarray(starts, np.int64)
    return int(np.max(np.where(np.abs(s[:, None] - s[None, :]) < window,
                               np.abs(np.arange(len(s))[:, None] - np.arange(len(s))[None, :]), 0)))


def neighbour_layout(starts, window: int, group: int) -> bool:
    """Whether the windows of a step run in contiguous blocks exchanging neighbours' frames (:func:`block_grid`):
    D > 1 window slots and every window's overlapping windows in its own block or the next ones (m <= K).
    Otherwise (D = 1, or blocks shorter than the overlap reach: many devices, few windows) the windows
    add into per-slot partial sums of the whole latent, summed by one all-reduce a step."""
    k = -(-len(starts) // int(group))
    return int(group) > 1 and overlap_reach(starts, window) <= k


class WindowPath(NamedTuple):
    """Which loop steps a long-video method's windows (recorded in the device plan and printed in its line):
    ``path`` one of :data:`PATHS`; ``why`` says why a method with windows does not take the blocks path ("" when
    it does, or has no windows)."""

    path: str
    why: str = ""


#: the loops a long-video step can run, and what each sends on a mesh (the device plan's line prints it)
PATHS = {
    "blocks": "each device holds a contiguous block of windows and exchanges only its neighbours' frames "
              "(collective-permutes)",
    "slot sums": "each window slot adds into its own partial sum of the latent, summed once a step (on a mesh "
                 "one all-reduce of the latent)",
    "serial": "one chunk per UNet call, in order",
    "one pass": "one UNet call over all frames a step",
}


def choose_path(starts, window: int, group: int, *, capture: bool = False, return_x0: bool = False,
                unsupported: str = "") -> WindowPath:
    """The one decision between the blocks loop (:func:`block_grid`) and the per-slot sums for the
    overlapping windows of Gen-L and blend: blocks unless attention maps are recorded (one window a call),
    every step's x0 is kept (``return_x0``), D = 1, the method's settings need the other loop
    (``unsupported``: why) or the blocks are shorter than the overlap reach (:func:`neighbour_layout`)."""
    if capture:
        return WindowPath("slot sums", "attention maps are recorded one window per call")
    if return_x0:
        return WindowPath("slot sums", "every step's x0 prediction of the whole video is kept")
    if int(group) <= 1:
        return WindowPath("slot sums", "one window per call (D = 1): the serial loop")
    if unsupported:
        return WindowPath("slot sums", unsupported)
    if not neighbour_layout(starts, window, group):
        return WindowPath("slot sums", f"blocks of {-(-len(starts) // int(group))} window(s) per device are "
                                       f"shorter than the overlap reach {overlap_reach(starts, window)}")
    return WindowPath("blocks")


class BlockGrid(NamedTuple):
    """The windows of a step on D slots in contiguous blocks (:func:`device_blocks`) with what each needs
    from the windows around it: window (j, k) frame p is neighbour delta's frame p + ``shift[delta]``, which
    exists where ``ok[delta]`` (delta = -m..m ranks away)."""

    rank: np.ndarray  # (D, K) window rank of each slot (past the last: masked)
    real: np.ndarray  # (D, K) bool
    starts: np.ndarray  # (D, K) int32 first frame of each slot's window
    frames: np.ndarray  # (D, K, F) int32 its frames
    reach: int  # m
    shift: np.ndarray  # (2m + 1, D, K) int32
    ok: tuple  # 2m + 1 masks (D, K, 1, 1, F, 1, 1) bool
    window: int

    @property
    def d(self) -> int:
        return self.rank.shape[0]


def block_grid(starts, window: int, group: int) -> BlockGrid:
    f, n = int(window), len(starts)
    rank, real = device_blocks(n, group)
    st = np.asarray(starts, np.int32)
    s = st[np.minimum(rank, n - 1)]
    m = overlap_reach(starts, f)
    shift, ok = [], []
    for delta in range(-m, m + 1):
        other = rank + delta
        sh = s - st[np.clip(other, 0, n - 1)]
        p = np.arange(f)
        good = (real & (other >= 0) & (other < n))[..., None] & (p + sh[..., None] >= 0) & (p + sh[..., None] < f)
        shift.append(sh.astype(np.int32))
        ok.append(good[:, :, None, None, :, None, None])
    frames = (s[..., None] + np.arange(f)).astype(np.int32)
    return BlockGrid(rank, real, s, frames, m, np.stack(shift), tuple(ok), f)

# ---------------------------------------------------------------- traced window views (jax)
def slice_frames(a, start, size: int, axis: int):
    """``a[..., start:start + size, ...]`` along ``axis`` with a traced start."""
    import jax  # noqa: PLC0415

    return jax.lax.dynamic_slice_in_dim(a, start, size, axis=axis)


def window_view(x, context, start, window: int):
    """The window's latent (b, c, F, h, w) and context (per-frame contexts sliced on axis 1)."""
    xw = slice_frames(x, start, window, 2)
    ctx = slice_frames(context, start, window, 1) if context.ndim == 4 else context
    return xw, ctx


def stack_windows(x, context, starts, window: int):
    """D windows of one step stacked for one batched UNet call: (D, b, c, F, h, w) latents and (D, ...)
    contexts at ``starts`` (D,) (a gather: on a mesh each device takes its own windows' frames from the
    replicated latent, where a stack of slices is laid out by all-to-all)."""
    import jax  # noqa: PLC0415

    xw = jax.vmap(lambda s: slice_frames(x, s, window, 2))(starts)
    if context.ndim == 4:
        return xw, jax.vmap(lambda s: slice_frames(context, s, window, 1))(starts)
    import jax.numpy as jnp  # noqa: PLC0415

    return xw, jnp.broadcast_to(context, (starts.shape[0],) + context.shape)


def stack_times(times, starts, window: int):
    """Each window's slice of the whole video's per-frame clock ``times`` (N,) (the UNet's ``frame_times``,
    sliced as :func:`stack_windows` slices a per-frame context): (D, F); None stays None."""
    if times is None:
        return None
    import jax  # noqa: PLC0415

    return jax.vmap(lambda s: slice_frames(times, s, window, 0))(starts)


def add_windows(acc, values, starts, real):
    """acc[j, :, :, s_j:s_j+F] += values[j] for each window slot j (a masked slot adds nothing): acc (D, b,
    c, N, h, w) holds one partial sum per slot, so on a mesh each device adds its own windows locally and
    the slots are summed once a step (D = 1: the serial loop's sums)."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    def one(a, v, s, m):
        return add_frames(a, jnp.where(m, v, 0.0), s)

    return jax.vmap(one)(acc, values, starts, real)


def add_frames(acc, value, start):
    """acc[:, :, start:start+F] += value (traced start)."""
    import jax  # noqa: PLC0415

    old = slice_frames(acc, start, value.shape[2], 2)
    return jax.lax.dynamic_update_slice_in_dim(acc, old + value, start, axis=2)



def gather_windows(x, grid: BlockGrid):
    """(b, c, N, h, w) -> each slot's window, (D, K, b, c, F, h, w)."""
    import jax.numpy as jnp  # noqa: PLC0415

    return jnp.moveaxis(jnp.take(x, jnp.asarray(grid.frames), axis=2), (2, 3), (0, 1))


def map_columns(fn, x_w, context, grid: BlockGrid):
    """``fn(windows (D, b, c, F, h, w), contexts (D, rows, ...))`` on each column k of the slots (one window per
    device, one batched UNet call), a ``lax.scan`` over the K columns carrying nothing; per-frame contexts
    sliced per window once, before the loop. Returns (D, K, ...) of fn's result."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    if context.ndim == 4:  # (rows, N, L, C) -> (K, D, rows, F, L, C)
        ctx = jnp.moveaxis(jnp.take(context, jnp.asarray(grid.frames.transpose(1, 0, 2)), axis=1), (1, 2), (0, 1))
        _, y = jax.lax.scan(lambda _, col: (None, fn(*col)), None, (jnp.moveaxis(x_w, 1, 0), ctx))
    else:  # one context for every window: broadcast inside the call, not stacked K x D times
        _, y = jax.lax.scan(lambda _, xw: (None, fn(xw, jnp.broadcast_to(context, (grid.d,) + context.shape))), None,
                            jnp.moveaxis(x_w, 1, 0))
    return jnp.moveaxis(y, 0, 1)


def neighbour_windows(y, grid: BlockGrid) -> list:
    """For delta = -m..m: the window delta ranks away from each slot, (D, K, b, c, F, h, w), its frames
    aligned to the slot's (valid where ``grid.ok[delta]``). The m windows at each end of a block come from
    the neighbouring devices' blocks: two collective-permutes on a mesh, the rest is local."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    f, m, k = grid.window, grid.reach, grid.rank.shape[1]
    ext = jnp.concatenate([jnp.roll(y[:, k - m:], 1, axis=0), y, jnp.roll(y[:, :m], -1, axis=0)], axis=1)
    pad = jnp.pad(ext, ((0, 0),) * 4 + ((f, f),) + ((0, 0),) * 2)
    slide = jax.vmap(jax.vmap(lambda a, o: slice_frames(a, f + o, f, 2)))
    return [slide(pad[:, m + dl:m + dl + k], jnp.asarray(grid.shift[i])) for i, dl in enumerate(range(-m, m + 1))]


def keep_masked(new, old, grid: BlockGrid):
    """``new`` on the real slots, ``old`` on the masked ones."""
    import jax.numpy as jnp  # noqa: PLC0415

    return jnp.where(grid.real[:, :, None, None, None, None, None], new, old)


def assemble_windows(x_w, grid: BlockGrid, shape):
    """The video (b, c, N, h, w) from the slots' windows, each frame from the first window covering it: every
    slot adds its own frames into its partial sum, summed once (one all-reduce at the end of the loop)."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    first = np.full(shape[2], -1)
    for r, s in sorted(zip(grid.rank[grid.real].tolist(), grid.starts[grid.real].tolist()), reverse=True):
        first[s:s + grid.window] = r
    own = (first[grid.frames] == grid.rank[..., None]) & grid.real[..., None]
    x_w = jnp.where(own[:, :, None, None, :, None, None], x_w, 0.0)
    starts, real = jnp.asarray(grid.starts), jnp.asarray(grid.real)
    acc = jax.lax.fori_loop(0, grid.rank.shape[1], lambda k, a: add_windows(a, x_w[:, k], starts[:, k], real[:, k]),
                            jnp.zeros((grid.d,) + tuple(shape), jnp.float32))
    return acc.sum(axis=0)
