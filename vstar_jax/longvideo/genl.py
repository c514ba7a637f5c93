"""``genl:F:S`` -- Gen-L-Video co-denoising (windows of F frames every S frames).

At every DDIM step each window takes its own guided DDIM step; x_{t-1} of a frame is the
uniform average over the windows covering it. The step noise is drawn once for the long latent
(step i: ``normal(split(key, n)[i], x.shape)``) so averaging keeps unit variance; the average is
taken before adding it. One ``lax.scan`` over steps, an inner ``lax.scan`` over window starts
(``lax.dynamic_slice``), so the traced program holds one UNet call whatever N is. With N == F it
is ``single`` (same keys; XLA may fuse the division differently: <= 1e-6 relative).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from vstar_jax.diffusion.sampler import ddim_step, guided_eps
from vstar_jax.errors import VstarError
from vstar_jax.longvideo import windows as W
from vstar_jax.longvideo.base import Plan, SampleInputs, Strategy, positive, register


def _genl(model_fn, x_T, context, coeffs, cfg_scale, keys, starts, counts, *, window,
          guided, use_noise, return_x0, capture):
    def step(x, xs):
        co, i, k = xs

        def one_window(acc, s):
            xw, ctx = W.window_view(x, context, s, window)
            eps, aux = guided_eps(model_fn, xw, co["timesteps"], ctx, i, cfg_scale,
                                  guided=guided, capture=capture)
            x_prev, x0 = ddim_step(xw, eps, co, None)
            acc_x, acc_x0 = acc
            acc_x = W.add_frames(acc_x, x_prev, s)
            if return_x0:
                acc_x0 = W.add_frames(acc_x0, x0, s)
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
        return Plan(self.window, len(starts) * int(steps), f"{len(starts)} windows")

    def _loop(self, model_fn, inputs: SampleInputs, capture: bool, return_x0: bool):
        starts = W.sliding_starts(inputs.frames, self.window, self.stride)
        counts = W.coverage(inputs.frames, self.window, starts).astype(np.float32)
        return _genl(model_fn, inputs.x_T, inputs.context, inputs.coeffs, inputs.cfg_scale, inputs.keys,
                     jnp.asarray(starts), jnp.asarray(counts), window=self.window, guided=inputs.guided,
                     use_noise=inputs.use_noise, return_x0=return_x0, capture=capture)
