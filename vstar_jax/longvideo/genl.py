"""``genl:F:S`` -- Gen-L-Video co-denoising (windows of F frames every S frames).

At every DDIM step each window takes its own guided DDIM step; x_{t-1} of a frame is the
uniform average over the windows covering it. The step noise is drawn once for the long latent
(step i: ``normal(split(key, n)[i], x.shape)``) so averaging keeps unit variance; the average is
taken before adding it. One ``lax.scan`` over steps, an inner ``lax.scan`` over groups of D windows
(``lax.dynamic_slice``), so the traced program holds one UNet call whatever N is. Every window of a
step reads x_t, so the windows are independent: a group is ONE batched UNet call of D windows (D =
``Denoiser.windows``, the size of the mesh axis the ``windows`` rule names: each device a window).
With D > 1 the windows lie in contiguous blocks per device (:func:`_genl_blocks`): a step sends only
the neighbouring blocks' overlapping windows (two collective-permutes). Otherwise (D = 1, blocks
shorter than the overlap reach, ``return_x0``, attention maps) each window slot keeps its own partial
sum of x_{t-1} over the video (:func:`~.windows.add_windows`; :func:`~.windows.window_groups` pads
the last group with masked windows) and the D slots are summed once a step (on a mesh one all-reduce
of the latent); D = 1 is the serial loop's sums, D > 1 adds the same terms in another order (<= 1e-6). With N == F it is ``single`` (same keys; XLA may fuse the division differently: <= 1e-6 relative).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from vstar_jax.diffusion.sampler import as_denoiser, ddim_step, guided_eps_windows
from vstar_jax.errors import VstarError
from vstar_jax.longvideo import windows as W
from vstar_jax.longvideo.base import Plan, SampleInputs, Strategy, positive, register


def _genl(model_fn, x_T, context, coeffs, cfg_scale, keys, starts, counts, *, window,
          guided, use_noise, return_x0, capture, group=1):
    index, real = W.window_groups(len(starts), group)
    g_starts, g_real = jnp.asarray(np.asarray(starts)[index]), jnp.asarray(real)

    def step(x, xs):
        co, i, k = xs

        def one_group(acc, sm):  # D windows, one batched UNet call; each slot adds into its own partial sum
            ss, m = sm
            xw, ctx = W.stack_windows(x, context, ss, window)
            eps, aux = guided_eps_windows(model_fn, xw, jnp.broadcast_to(co["timesteps"], (group,)), ctx, i,
                                          cfg_scale, guided=guided, capture=capture)
            x_prev, x0 = ddim_step(xw, eps, co, None)
            acc_x, acc_x0 = acc
            acc_x = W.add_windows(acc_x, x_prev, ss, m)
            if return_x0:
                acc_x0 = W.add_windows(acc_x0, x0, ss, m)
            return (acc_x, acc_x0), aux

        zeros = jnp.zeros((group,) + x.shape, x.dtype)  # one partial sum per window slot (a device's own)
        (sum_x, sum_x0), aux = jax.lax.scan(one_group, (zeros, zeros if return_x0 else None), (g_starts, g_real))
        sum_x = sum_x.sum(axis=0)  # on a mesh: one all-reduce of the latent a step
        sum_x0 = sum_x0.sum(axis=0) if return_x0 else None
        w = counts[None, None, :, None, None]
        x_prev = sum_x / w
        if use_noise:
            x_prev = x_prev + co["sigma"] * jax.random.normal(k, x.shape, jnp.float32)
        return x_prev, (sum_x0 / w if return_x0 else None, aux)

    n = coeffs["timesteps"].shape[0]
    xs = (coeffs, jnp.arange(n, dtype=jnp.int32), keys)
    x, (x0s, aux) = jax.lax.scan(step, x_T.astype(jnp.float32), xs)
    return x, x0s, aux




def _genl_blocks(model_fn, x_T, context, coeffs, cfg_scale, keys, starts, counts, *, window, guided, use_noise,
                 group):
    """:func:`_genl` on D window slots in contiguous blocks (:class:`~.windows.BlockGrid`, Video-Infinity's
    layout): the loop carries each window's F frames of x_t, device j holding windows [j K, (j + 1) K);
    after a step's calls each window averages, for its own frames, the x_{t-1} of the windows that cover
    them (:func:`~.windows.neighbour_windows`: its block's and the m nearest of the neighbouring blocks',
    two collective-permutes of m windows) instead of an all-reduce of the whole latent. The same terms in
    another order (<= 1e-6); the step noise is the long latent's, drawn on every device and sliced per
    window; the video is put together once at the end (:func:`~.windows.assemble_windows`)."""
    grid = W.block_grid(starts, window, group)
    w = jnp.asarray(counts)[jnp.asarray(grid.frames)][:, :, None, None, :, None, None]

    def step(x_w, xs):
        co, i, key = xs
        y = W.map_columns(lambda xw, ctx: ddim_step(xw, guided_eps_windows(
            model_fn, xw, jnp.broadcast_to(co["timesteps"], (grid.d,)), ctx, i, cfg_scale, guided=guided)[0],
            co, None)[0], x_w, context, grid)
        total = jnp.zeros_like(y)
        for view, ok in zip(W.neighbour_windows(y, grid), grid.ok):  # the covering windows, in rank order
            total = total + jnp.where(ok, view, 0.0)
        x_prev = total / w
        if use_noise:
            x_prev = x_prev + co["sigma"] * W.gather_windows(jax.random.normal(key, x_T.shape, jnp.float32), grid)
        return W.keep_masked(x_prev, x_w, grid), None

    n = coeffs["timesteps"].shape[0]
    xs = (coeffs, jnp.arange(n, dtype=jnp.int32), keys)
    x_w, _ = jax.lax.scan(step, W.gather_windows(x_T.astype(jnp.float32), grid), xs)
    return W.assemble_windows(x_w, grid, x_T.shape), None, None

@register
@dataclasses.dataclass(frozen=True)
class GenL(Strategy):
    """Gen-L-Video: windows of ``window`` frames every ``stride`` frames, averaged per step."""

    name = "genl"
    POSITIONAL = ("window", "stride")
    window: int = 16
    stride: int = 8

    def __post_init__(self):
        positive(self.name, window=self.window, stride=self.stride)
        if self.stride > self.window:
            raise VstarError(f"long_video stride {self.stride} > window {self.window} would leave frames uncovered")

    def check(self, frames: int, steps: int) -> Plan:
        try:
            starts = W.sliding_starts(int(frames), self.window, self.stride)
        except ValueError as e:
            raise VstarError(str(e)) from None
        return Plan(self.window, len(starts) * int(steps), f"{len(starts)} windows", len(starts), int(steps))

    def window_path(self, frames: int, group: int, *, solver: str = "ddim", rescale: bool = False,
                    capture: bool = False, return_x0: bool = False, clock: bool = False) -> W.WindowPath:
        return W.choose_path(W.sliding_starts(int(frames), self.window, self.stride), self.window, group,
                             capture=capture, return_x0=return_x0)

    def _loop(self, model_fn, inputs: SampleInputs, capture: bool, return_x0: bool):
        starts = W.sliding_starts(inputs.frames, self.window, self.stride)
        counts = W.coverage(inputs.frames, self.window, starts).astype(np.float32)
        group = 1 if capture else as_denoiser(model_fn).windows
        if self.window_path(inputs.frames, group, capture=capture, return_x0=return_x0).path == "blocks":
            return _genl_blocks(model_fn, inputs.x_T, inputs.context, inputs.coeffs, inputs.cfg_scale, inputs.keys,
                                starts, counts, window=self.window, guided=inputs.guided,
                                use_noise=inputs.use_noise, group=group)
        return _genl(model_fn, inputs.x_T, inputs.context, inputs.coeffs, inputs.cfg_scale, inputs.keys,
                     starts, jnp.asarray(counts), window=self.window, guided=inputs.guided,
                     use_noise=inputs.use_noise, return_x0=return_x0, capture=capture, group=group)
