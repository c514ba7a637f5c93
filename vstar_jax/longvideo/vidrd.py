"""``vidrd:F:O`` -- VidRD, "Reuse and Diffuse" (Gu et al. 2023): clip-by-clip extension.

There is no official code; these are the project's choices, all settings of the strategy
(``vidrd:window=16,overlap=8,pns_alpha=0.5,hard_until=0.4,soft_until=0.7``):

* Clips of F frames; clip k >= 1 starts O frames before the end of clip k-1 and contributes its
  last F - O frames (valid lengths N = F + k (F - O), as StreamingT2V's chunks). Clip 0 is plain
  DDIM over its F frames (so N == F is ``single``, same keys).
* **Frame-level Noise Reversion (FNR)**: the initial noise of clip k's first O frames is clip
  k-1's initial noise in reversed frame order (frame j gets clip k-1's frame F - 1 - j).
* **Past-dependent Noise Sampling (PNS)**: the new frames' noise is a chain from the last reused
  one: eps_j = (alpha eps_{j-1} + d_j) / sqrt(1 + alpha^2), d_j ~ N(0, I) fresh, j = O..F-1, so each
  new frame's noise has correlation alpha / sqrt(1 + alpha^2) with the previous frame's (unit
  variance kept). ``pns_alpha`` = 0.5 (correlation 0.45); 0 gives independent noise.
* **Denoising with Staged Guidance (DSG)**: clip k-1's latents x_t of its last O frames are cached
  at every step; while clip k is denoised, before each step i its first O latents are
  - replaced by the cached ones (loop index i < H = round(``hard_until`` x steps): strong, early),
  - blended w cached + (1 - w) own with w falling linearly from 1 to 0, both excluded
    (H <= i < S = round(``soft_until`` x steps): w = 1 - (i - H + 1) / (S - H + 1)),
  - left free after that (relaxed, late steps).
  ``round`` is Python's (half to even): with 6 steps H = round(2.4) = 2, not the 3 steps i < 2.4.
  The video keeps clip k-1's frames for the overlap and appends clip k's new frames.

Noise keys: clip 0 uses the pipeline's step keys; clip k's step keys are
``split(fold_in(fold_in(k_steps, CLIP_FOLD), k), steps)`` and its PNS draws
``normal(fold_in(fold_in(k_steps, PNS_FOLD), k))``. One ``lax.scan`` over clips, an inner one
over steps; memory holds one clip, the cache (steps x O frames) and the output latents.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from vstar_jax.diffusion.sampler import ddim_step, guided_eps
from vstar_jax.errors import VstarError
from vstar_jax.longvideo import windows as W
from vstar_jax.longvideo.base import Plan, SampleInputs, Strategy, number, positive, register

CLIP_FOLD = 0x76726463  # "vrdc": clip k's DDIM step keys
PNS_FOLD = 0x76726470  # "vrdp": clip k's past-dependent noise
PNS_ALPHA_MAX = 100.0  # past-dependent noise weight: beyond this the fresh noise is nothing (alpha=inf: NaN)


def pns_noise(reused, fresh, alpha: float):
    """FNR + PNS for one clip: ``reused`` (b, c, O, h, w) reversed-order noise of the overlap, ``fresh``
    (b, c, F - O, h, w) ~ N(0, I); returns (b, c, F, h, w) with the new frames chained from the last
    reused frame: eps_j = (alpha eps_{j-1} + d_j) / sqrt(1 + alpha^2)."""
    norm = 1.0 / np.sqrt(1.0 + alpha * alpha)

    def chain(prev, d):
        e = (alpha * prev + d) * norm
        return e, e

    _, new = jax.lax.scan(chain, reused[:, :, -1], jnp.moveaxis(fresh, 2, 0))
    return jnp.concatenate([reused, jnp.moveaxis(new, 0, 2)], axis=2)


def dsg_weights(steps: int, hard_until: float, soft_until: float) -> np.ndarray:
    """Per loop index i: the weight of the cached latents on the overlap (1 = replace, 0 = free)."""
    hard, soft = int(round(hard_until * steps)), int(round(soft_until * steps))
    w = np.zeros(steps, np.float32)
    w[:hard] = 1.0
    if soft > hard:
        w[hard:soft] = 1.0 - (np.arange(soft - hard, dtype=np.float32) + 1.0) / (soft - hard + 1.0)
    return w


@register
@dataclasses.dataclass(frozen=True)
class VidRD(Strategy):
    """Reuse and Diffuse: clips of ``window`` frames reusing the previous clip's last ``overlap``."""

    name = "vidrd"
    SERIAL = "each clip starts from the previous clip's latents (autoregressive)"
    POSITIONAL = ("window", "overlap")
    window: int = 16
    overlap: int = 8
    pns_alpha: float = 0.5
    hard_until: float = 0.4
    soft_until: float = 0.7

    def __post_init__(self):
        positive(self.name, window=self.window, overlap=self.overlap)
        if self.overlap >= self.window:
            raise VstarError(f"vidrd overlap {self.overlap} must be smaller than the window {self.window}")
        for k in ("hard_until", "soft_until"):
            number(f"vidrd {k}", getattr(self, k), minimum=0.0, maximum=1.0)
        number("vidrd pns_alpha", self.pns_alpha, minimum=0.0, maximum=PNS_ALPHA_MAX)
        if not 0.0 <= self.hard_until <= self.soft_until <= 1.0:
            raise VstarError(f"vidrd needs 0 <= hard_until <= soft_until <= 1, got {self.hard_until}, "
                             f"{self.soft_until}")
        if self.pns_alpha < 0:
            raise VstarError(f"vidrd pns_alpha must be >= 0, got {self.pns_alpha}")

    def check(self, frames: int, steps: int) -> Plan:
        try:
            starts = W.chunk_starts(int(frames), self.window, self.overlap)
        except ValueError as e:
            raise VstarError(str(e).replace("split into chunks", "split into vidrd clips")) from None
        return Plan(self.window, len(starts) * int(steps), f"{len(starts)} clips")

    def noise_shape(self, shape: tuple) -> tuple:
        b, c, _, h, w = shape
        return (b, c, self.window, h, w)  # clip 0's noise; later clips derive theirs (FNR + PNS)

    def rng_rule(self) -> str:
        return (f"x_T (clip 0)=normal(k_x); clip k: step keys split(fold_in(fold_in(k_steps,{CLIP_FOLD:#x}),k),"
                f"steps), PNS noise normal(fold_in(fold_in(k_steps,{PNS_FOLD:#x}),k))")

    def run(self, model_fn, inputs: SampleInputs, *, capture: bool = False):
        if capture:
            raise VstarError("attention maps are not recorded with vidrd")
        f, o, N = self.window, self.overlap, inputs.frames
        starts = W.chunk_starts(N, f, o)
        co = inputs.coeffs
        n_steps = co["timesteps"].shape[0]
        dsg = jnp.asarray(dsg_weights(n_steps, self.hard_until, self.soft_until))
        per_frame_ctx = inputs.context.ndim == 4

        def denoise(x_T, ctx, keys, cache, use_cache):
            """One clip's DDIM loop; returns (x_0, x_t of its last O frames before every step)."""
            def step(x, xs):
                c, i, k, cached, wt = xs
                if use_cache:  # DSG on the overlap
                    x = x.at[:, :, :o].set(wt * cached + (1.0 - wt) * x[:, :, :o])
                eps, _ = guided_eps(model_fn, x, c["timesteps"], ctx, i, inputs.cfg_scale, guided=inputs.guided)
                noise = jax.random.normal(k, x.shape, jnp.float32) if inputs.use_noise else None
                x_prev, _ = ddim_step(x, eps, c, noise)
                return x_prev, x[:, :, f - o:]

            xs = (co, jnp.arange(n_steps, dtype=jnp.int32), keys, cache, dsg)
            return jax.lax.scan(step, x_T.astype(jnp.float32), xs)

        def clip_ctx(s):
            return W.slice_frames(inputs.context, s, f, 1) if per_frame_ctx else inputs.context

        b, c, _, h, w = inputs.x_T.shape
        dummy = jnp.zeros((n_steps, b, c, o, h, w), jnp.float32)
        x0, cache = denoise(inputs.x_T, clip_ctx(0), inputs.keys, dummy, False)
        if len(starts) == 1:
            return x0, None

        k_clip, k_pns = jax.random.fold_in(inputs.key, CLIP_FOLD), jax.random.fold_in(inputs.key, PNS_FOLD)

        def one_clip(carry, xs):
            prev_noise, cache = carry
            k, s = xs
            fresh = jax.random.normal(jax.random.fold_in(k_pns, k), (b, c, f - o, h, w), jnp.float32)
            noise = pns_noise(prev_noise[:, :, ::-1][:, :, :o], fresh, float(self.pns_alpha))
            if inputs.use_noise:
                keys = jax.random.split(jax.random.fold_in(k_clip, k), n_steps)
            else:
                keys = inputs.keys
            x_clip, new_cache = denoise(noise, clip_ctx(s), keys, cache, True)
            return (noise, new_cache), x_clip[:, :, o:]

        ks = jnp.arange(1, len(starts), dtype=jnp.int32)
        _, news = jax.lax.scan(one_clip, (inputs.x_T.astype(jnp.float32), cache), (ks, jnp.asarray(starts[1:])))
        news = jnp.moveaxis(news, 0, 2).reshape(b, c, (len(starts) - 1) * (f - o), h, w)
        return jnp.concatenate([x0, news], axis=2), None
