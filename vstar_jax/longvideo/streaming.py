"""``streaming:F:C`` -- StreamingT2V's autoregressive extension with CAM and APM.

Chunks of F frames; consecutive chunks overlap by C frames, so N = F + k (F - C). Chunk 0 is the
plain UNet's (the reference starts from a text-to-video chunk). Every later chunk k (start
s_k = k (F - C)) is denoised by its own DDIM loop conditioned

* through CAM on the previous chunk's last C frames (clean latents: ``video[s_k : s_k + C]``), which
  are the same times as the chunk's first C frames (the reference regenerates them: chunk 16,
  condition 8, ``video[num_control_input_frames:]`` kept from every later chunk) -- decoded by the
  VAE once per chunk when the CAM reads pixels (the released model), and
* through APM on the first chunk's anchor frame (its frame 0, the reference's ``conditioning_type:
  fixed``): its image embedding (the released model: OpenCLIP's, of the decoded frame), a zero
  image's for the CFG unconditional row (the reference embeds ``zeros_like``).

What CAM and APM read comes from the model: the :class:`~vstar_jax.diffusion.sampler.Denoiser`'s
``cam_input`` and ``anchor_pair`` (bound from :class:`vstar_jax.models.streaming.StreamingMemory` by the
sampling stage).

The chunks are a ``lax.scan`` (one compiled body); each chunk's steps another. Overlaps compose with
StreamingT2V's randomized blending (``blend``, on by default): at step i of chunk k, with
r_{k,i} ~ U{0..C-1}, the overlap frames before r keep the previous chunk (their eps is the one whose
x0 is that chunk's clean frame: eps = (x - sqrt(a) scale x0_prev) / sqrt(1 - a)) and the rest take the
new chunk's prediction; the chunk then writes all F frames. ``blend=0`` is the reference's hard rule
(the new chunk's first C frames are dropped). TAR (attention hooks), VSP (per-frame contexts, sliced
per chunk) and the CFG rows pass through unchanged.

PRNG: x_T = normal(k_x, (b, c, N, h, w)) (overlapping chunks share their frames' noise); chunk 0's
DDIM noise at step i = normal(k_step_i) (the single pass's), chunk k >= 1's = normal(fold_in(k_step_i, k)); offsets = randint(fold_in(k_steps, OFFSET_FOLD),
(chunks, steps), 0, C). With N == F it is the single pass.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from vstar_jax.diffusion.sampler import as_denoiser, ddim_step, guided_eps
from vstar_jax.errors import VstarError
from vstar_jax.longvideo import windows as W
from vstar_jax.longvideo.base import Plan, SampleInputs, Strategy, positive, register

OFFSET_FOLD = 0x7374726D  # "strm"


def chunk_starts(frames: int, window: int, cond: int) -> list[int]:
    """The chunk starts k (F - C) (StreamingT2V's chunking, :func:`windows.chunk_starts`); a length it
    cannot make is a VstarError naming the lengths it makes."""
    try:
        return [int(s) for s in W.chunk_starts(frames, window, cond)]
    except ValueError:
        hop = window - cond
        raise VstarError(f"streaming:{window}:{cond} makes {window} + k*{hop} frames "
                         f"(e.g. {window}, {window + hop}, {window + 2 * hop}, {window + 4 * hop}); "
                         f"got {frames}") from None


def _stream(model_fn, x_T, context, coeffs, cfg_scale, keys, key, *, window, cond, blend, guided,
            use_noise):
    """The chunk loop; ``model_fn`` a :class:`~vstar_jax.diffusion.sampler.Denoiser` with ``cam_input`` and
    ``anchor_pair``."""
    b = x_T.shape[0]
    frames = x_T.shape[2]
    starts = chunk_starts(frames, window, cond)
    n_steps = coeffs["timesteps"].shape[0]
    steps_idx = jnp.arange(n_steps, dtype=jnp.int32)
    frame_idx = jnp.arange(window, dtype=jnp.int32)[None, None, :, None, None]

    def denoise(x, ctx, chunk, offsets, extra, x0_prev, fold=True):
        def body(xc, xs):
            co, i, k, r = xs
            eps, _ = guided_eps(model_fn, xc, co["timesteps"], ctx, i, cfg_scale, guided=guided, extra=extra)
            if x0_prev is not None:  # randomized blending of the overlap (frames before r keep chunk k-1)
                prev = jnp.pad(x0_prev, ((0, 0), (0, 0), (0, window - cond), (0, 0), (0, 0)))
                eps_prev = (xc - co["sqrt_alpha"] * co["scale"] * prev) / co["sqrt_one_minus_alpha"]
                eps = jnp.where(frame_idx < r, eps_prev, eps)
            noise = None
            if use_noise:  # (eta 0, ModelScope's default: no keys to fold)
                kk = jax.random.fold_in(k, chunk) if fold else k  # chunk 0: the single pass's noise
                noise = jax.random.normal(kk, xc.shape, jnp.float32)
            x_prev, _ = ddim_step(xc, eps, co, noise)
            return x_prev, None

        out, _ = jax.lax.scan(body, x, (coeffs, steps_idx, keys, offsets))
        return out

    rows = lambda a: jnp.concatenate([a, a], axis=0) if guided else a
    # chunk 0: the plain UNet
    x0w, ctx0 = W.window_view(x_T, context, 0, window)
    first = denoise(x0w, ctx0, 0, jnp.zeros((n_steps,), jnp.int32), {}, None, fold=False)
    video = jax.lax.dynamic_update_slice_in_dim(jnp.zeros_like(x_T), first, 0, axis=2)
    if len(starts) == 1:
        return video
    null, img = model_fn.anchor_pair(first[:, :, 0])  # APM: chunk 0's first frame (and a zero image)
    img = jnp.concatenate([null, img], axis=0) if guided else img
    if blend:
        offsets = jax.random.randint(jax.random.fold_in(key, OFFSET_FOLD), (len(starts), n_steps), 0, cond,
                                     dtype=jnp.int32)
    else:
        offsets = jnp.zeros((len(starts), n_steps), jnp.int32)

    def chunk_body(video, xs):
        s, k, off = xs
        xw, ctx = W.window_view(x_T, context, s, window)
        prev = W.slice_frames(video, s, cond, 2)  # the previous chunk's last C frames
        extra = {"cam_frames": rows(model_fn.cam_input(prev)), "image_embed": img}  # CAM: decoded once per chunk
        out = denoise(xw, ctx, k, off, extra, prev if blend else None)
        if not blend:  # the reference: keep the previous chunk's overlap frames
            out = jnp.concatenate([prev, out[:, :, cond:]], axis=2)
        return jax.lax.dynamic_update_slice_in_dim(video, out, s, axis=2), None

    xs = (jnp.asarray(starts[1:], jnp.int32), jnp.arange(1, len(starts), dtype=jnp.int32), offsets[1:])
    video, _ = jax.lax.scan(chunk_body, video, xs)
    return video


@register
@dataclasses.dataclass(frozen=True)
class Streaming(Strategy):
    """StreamingT2V: chunks of ``window`` frames, each conditioned on the previous chunk's last ``cond``
    frames (CAM) and on the first chunk's anchor frame (APM); needs a UNet with ``unet.cam`` and
    ``unet.apm`` (``cond`` == its CAM frames)."""

    name = "streaming"
    SERIAL = "each chunk is conditioned on the previous chunk's last frames (CAM) and the first chunk (APM)"
    POSITIONAL = ("window", "cond")
    window: int = 16
    cond: int = 8
    blend: bool = True

    def __post_init__(self):
        positive(self.name, window=self.window, cond=self.cond)
        if self.cond >= self.window:
            raise VstarError(f"long_video streaming: the conditioning frames ({self.cond}) must be fewer than "
                             f"the chunk's ({self.window})")

    def check(self, frames: int, steps: int) -> Plan:
        starts = chunk_starts(int(frames), self.window, self.cond)
        return Plan(self.window, len(starts) * int(steps), f"{len(starts)} chunks")

    def check_model(self, info) -> None:
        missing = list(getattr(info, "streaming_missing", ("CAM (unet.cam)", "APM (unet.apm)")))
        if missing:
            raise VstarError(f"{info.source}: long_video streaming needs StreamingT2V's trained modules; "
                             f"this checkpoint has no {' and no '.join(missing)}")
        have = int(getattr(info, "cam_frames", 0))
        if have != self.cond:
            raise VstarError(f"{info.source}: its CAM was built for {have} conditioning frames; use "
                             f"streaming:{self.window}:{have} (got {self.cond})")
        unmet = tuple(getattr(info, "streaming_unmet", ()))
        if unmet:
            raise VstarError(f"{info.source}: long_video streaming cannot run: {'; '.join(unmet)}")

    def rng_rule(self) -> str:
        rule = "chunk 0's DDIM noise as the single pass; chunk k>=1's at step i = normal(fold_in(step_key_i, k))"
        if self.blend:
            rule += f"; blending offsets = randint(fold_in(k_steps,{OFFSET_FOLD:#x}),(chunks,steps),0,cond)"
        return rule

    def run(self, model_fn, inputs: SampleInputs, *, capture: bool = False):
        if capture:
            raise VstarError("attention maps are not recorded with long_video streaming")
        denoiser = as_denoiser(model_fn)
        if denoiser.anchor_pair is None or denoiser.cam_input is None:
            raise VstarError("long_video streaming needs a model with StreamingT2V's CAM and APM "
                             "(the sampling plan has no streaming memory)")
        x = _stream(denoiser, inputs.x_T, inputs.context, inputs.coeffs, inputs.cfg_scale, inputs.keys,
                    inputs.key, window=self.window, cond=self.cond, blend=self.blend, guided=inputs.guided,
                    use_noise=inputs.use_noise)
        return x, None
