"""Chunked DDIM sampling of a long latent (b, c, N, h, w) with a UNet that sees F-frame windows.

Same contract as :func:`vstar_jax.diffusion.sampler.ddim_sample`: ``model_fn(x (2b, c, F,
h, w), t (2b,), context, step_index) -> eps`` on CFG rows (context sliced to the window's
frames when it is per frame), a :class:`DDIMSchedule`, ``cfg_scale``, ``key``, ``eta``.
The step loop is one ``lax.scan`` over DDIM steps; inside a step the windows are an inner
``lax.scan`` over their start indices with ``lax.dynamic_slice``, so the traced program
holds one model call whatever N is (memory: the UNet sees one window at a time).

* :func:`genl_sample` (Gen-L-Video co-denoising): every window takes its own guided DDIM
  step; x_{t-1} of a frame = the uniform average over the windows covering it. The step
  noise is drawn once for the long latent (step i: ``normal(split(key, n)[i], x.shape)``)
  so averaging keeps unit variance; the average is taken before adding it.
* :func:`blend_sample` (StreamingT2V randomized blending): chunks of F frames overlapping
  O; chunk k predicts x0 for its frames, r_k ~ U{0..O-1} fresh per chunk and step, frames
  before s_k + r_k keep chunk k-1's prediction, the rest take chunk k's (chunks write in
  order, as the reference does); then one DDIM update of the long latent with the blended
  prediction. The blend is applied to eps, which per frame is the same as blending x0
  (x0 is an elementwise function of x and eps) and keeps the update's eps consistent with
  the blended x0. Offsets: ``randint(fold_in(key, OFFSET_FOLD), (n_steps, n_chunks), 0, O)``
  with chunk 0's offset 0; DDIM noise as in ``ddim_sample``.

With N == F both reduce to ``ddim_sample`` exactly (same keys, same arithmetic).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vstar_jax.diffusion.sampler import ModelFn, SampleOutput, ddim_step, guided_eps, prepare_sampling
from vstar_jax.diffusion.schedules import DDIMSchedule
from vstar_jax.longvideo import windows as W

OFFSET_FOLD = 0x626C6E64  # fold_in constant of the blending offsets' key ("blnd")


def _slice_frames(a, start, size: int, axis: int):
    return jax.lax.dynamic_slice_in_dim(a, start, size, axis=axis)


def _window_view(x, context, start, window: int):
    """The window's latent (b, c, F, h, w) and context (per-frame contexts sliced on axis 1)."""
    xw = _slice_frames(x, start, window, 2)
    ctx = _slice_frames(context, start, window, 1) if context.ndim == 4 else context
    return xw, ctx


def _add_frames(acc, value, start):
    """acc[:, :, start:start+F] += value (dynamic start)."""
    old = _slice_frames(acc, start, value.shape[2], 2)
    return jax.lax.dynamic_update_slice_in_dim(acc, old + value, start, axis=2)


def _genl(model_fn, x_T, context, coeffs, cfg_scale, keys, starts, counts, *, window,
          guided, use_noise, return_x0, capture):
    def step(x, xs):
        co, i, k = xs

        def one_window(acc, s):
            xw, ctx = _window_view(x, context, s, window)
            eps, aux = guided_eps(model_fn, xw, co["timesteps"], ctx, i, cfg_scale,
                                  guided=guided, capture=capture)
            x_prev, x0 = ddim_step(xw, eps, co, None)
            acc_x, acc_x0 = acc
            acc_x = _add_frames(acc_x, x_prev, s)
            if return_x0:
                acc_x0 = _add_frames(acc_x0, x0, s)
            return (acc_x, acc_x0), aux

        zeros = jnp.zeros_like(x)
        (sum_x, sum_x0), aux = jax.lax.scan(one_window, (zeros, zeros if return_x0 else None), starts)
        w = counts[None, None, :, None, None]
        x_prev = sum_x / w
        if use_noise:
            x_prev = x_prev + co["sigma"] * jax.random.normal(k, x.shape, jnp.float32)
        return x_prev, (sum_x0 / w if return_x0 else None, aux)

    n = coeffs["timesteps"].shape[0]
    xs = (coeffs, jnp.arange(n, dtype=jnp.int32), keys)
    x, (x0s, aux) = jax.lax.scan(step, x_T.astype(jnp.float32), xs)
    return x, x0s, aux


def _blend(model_fn, x_T, context, coeffs, cfg_scale, keys, starts, offsets, *, window,
           guided, use_noise, return_x0, capture):
    frame_idx = jnp.arange(window, dtype=jnp.int32)[None, None, :, None, None]

    def step(x, xs):
        co, i, k, r = xs

        def one_chunk(eps_full, sr):
            s, off = sr
            xw, ctx = _window_view(x, context, s, window)
            eps, aux = guided_eps(model_fn, xw, co["timesteps"], ctx, i, cfg_scale,
                                  guided=guided, capture=capture)
            old = _slice_frames(eps_full, s, window, 2)
            new = jnp.where(frame_idx >= off, eps, old)  # frames before s + r keep chunk k-1's
            return jax.lax.dynamic_update_slice_in_dim(eps_full, new, s, axis=2), aux

        eps_full, aux = jax.lax.scan(one_chunk, jnp.zeros_like(x), (starts, r))
        noise = jax.random.normal(k, x.shape, jnp.float32) if use_noise else None
        x_prev, x0 = ddim_step(x, eps_full, co, noise)
        return x_prev, (x0 if return_x0 else None, aux)

    n = coeffs["timesteps"].shape[0]
    xs = (coeffs, jnp.arange(n, dtype=jnp.int32), keys, offsets)
    x, (x0s, aux) = jax.lax.scan(step, x_T.astype(jnp.float32), xs)
    return x, x0s, aux


_STATIC = ("model_fn", "window", "guided", "use_noise", "return_x0", "capture")
_genl_jit = jax.jit(_genl, static_argnames=_STATIC)
_blend_jit = jax.jit(_blend, static_argnames=_STATIC)


def _output(x, x0s, aux, return_x0: bool, capture: bool):
    if not (return_x0 or capture):
        return x
    return SampleOutput(x, x0s, aux)


def genl_sample(model_fn: ModelFn, x_T, cond, uncond, schedule: DDIMSchedule, *, window: int,
                stride: int, cfg_scale: float = 12.0, key: jax.Array | None = None,
                eta: float | None = None, return_x0: bool = False, capture: bool = False,
                jit: bool = True):
    """Gen-L-Video co-denoising of x_T (b, c, N, h, w) with F = ``window`` frame windows.

    Windows: :func:`~vstar_jax.longvideo.windows.sliding_starts` (stride ``stride``, last
    window anchored at N - F). Other arguments and the return value as ``ddim_sample``;
    ``pred_x0`` is the window-averaged x0; ``aux`` is stacked (steps, windows, ...).
    """
    x_T, n_frames, context, coeffs, keys, use_noise, guided = prepare_sampling(
        x_T, cond, uncond, schedule, eta, key, "genl_sample")
    starts = W.sliding_starts(n_frames, window, stride)
    counts = W.coverage(n_frames, window, starts).astype(np.float32)
    fn = _genl_jit if jit else _genl
    x, x0s, aux = fn(model_fn, x_T, context, coeffs, jnp.float32(cfg_scale), keys, jnp.asarray(starts),
                     jnp.asarray(counts), window=int(window), guided=guided, use_noise=use_noise,
                     return_x0=return_x0, capture=capture)
    return _output(x, x0s, aux, return_x0, capture)


def blend_offsets(key, num_steps: int, num_chunks: int, overlap: int) -> jax.Array:
    """Randomized-blending offsets (num_steps, num_chunks) int32 in [0, overlap); chunk 0's are 0."""
    r = jax.random.randint(jax.random.fold_in(key, OFFSET_FOLD), (num_steps, num_chunks), 0, overlap,
                           dtype=jnp.int32)
    return r.at[:, 0].set(0)


def blend_sample(model_fn: ModelFn, x_T, cond, uncond, schedule: DDIMSchedule, *, window: int,
                 overlap: int, cfg_scale: float = 12.0, key: jax.Array | None = None,
                 eta: float | None = None, return_x0: bool = False, capture: bool = False,
                 jit: bool = True):
    """StreamingT2V randomized blending of x_T (b, c, N, h, w): chunks of ``window`` frames
    overlapping ``overlap`` ((N - O) % (F - O) == 0, else a ValueError naming valid lengths).

    Needs ``key`` whenever there are two or more chunks (the random offsets) or eta > 0.
    Other arguments and the return value as ``ddim_sample``; ``pred_x0`` is the blended x0;
    ``aux`` is stacked (steps, chunks, ...).
    """
    x_T_arr = jnp.asarray(x_T)
    if x_T_arr.ndim != 5:
        raise ValueError(f"x_T must be (b, c, f, h, w), got shape {tuple(x_T_arr.shape)}")
    starts = W.chunk_starts(x_T_arr.shape[2], window, overlap)
    if len(starts) > 1 and key is None:
        raise ValueError("blend_sample with more than one chunk needs a PRNG key (key=jax.random.key(seed))")
    x_T, _, context, coeffs, keys, use_noise, guided = prepare_sampling(
        x_T_arr, cond, uncond, schedule, eta, key, "blend_sample")
    n = schedule.num_steps
    if key is None:
        offsets = jnp.zeros((n, len(starts)), jnp.int32)
    else:
        offsets = blend_offsets(key, n, len(starts), int(overlap))
    fn = _blend_jit if jit else _blend
    x, x0s, aux = fn(model_fn, x_T, context, coeffs, jnp.float32(cfg_scale), keys, jnp.asarray(starts),
                     offsets, window=int(window), guided=guided, use_noise=use_noise,
                     return_x0=return_x0, capture=capture)
    return _output(x, x0s, aux, return_x0, capture)
