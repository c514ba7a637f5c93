"""Window arithmetic for chunked long-video sampling (pure numpy, host side).

Two layouts of F-frame windows over N frames:

* sliding windows (Gen-L-Video): starts 0, S, 2S, ... while the window fits, plus a
  last window anchored at N - F when the stride does not land there;
* overlapping chunks (StreamingT2V): chunk k starts at k (F - O); the chunks tile N
  exactly only when (N - O) % (F - O) == 0.
"""
from __future__ import annotations

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
