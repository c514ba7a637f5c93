"""StreamingT2V's enhancer loop: chunked SDEdit with shared noise and randomized blending.

Reference (Picsart-AI-Research/StreamingT2V, branch ``StreamingModelscope``):

* ``t2v_enhanced/thirdparty/modelscope/models/multi_modal/video_to_video/video_to_video_model.py``
  (``VideoToVideo.forward``): the whole long latent is noised once, ``noise_all = randn_like(latents)``,
  to ``t = total_noise_levels - 1`` (600 - 1: strength 0.6) and denoised from there;
* ``.../video_to_video/utils/diffusion_sdedit.py`` (``GaussianDiffusion_SDEdit.sample``, its inner
  ``model_fn``): at every step the long latent is cut into chunks of 24 overlapping 8, each chunk predicts
  x0, and chunk k's prediction replaces chunk k-1's from a random frame ``r_k ~ U{0..O-1}`` of the
  overlap on (chunk 0: from its first frame);
* ``t2v_enhanced/model/video_noise_generator.py`` (``NoiseGenerator``, ``shared_noise_across_chunks``):
  the chunks draw their noise from one shared source, so two chunks hold the same noise on their overlap.

Here it runs on the project's machinery, not a copy of it: the one sampler's solvers -- the reference's
DPM++ 2M SDE from T' (:mod:`vstar_jax.diffusion.dpm_solver`: its sigma selection, steps and final x0), or
the DDIM coefficients of the refiner's schedule (:mod:`vstar_jax.diffusion.schedules`) from the first step
at or below T' (:func:`solver_schedule`) --, CFG (``guided_eps``) with the reference's guide rescale
(``sampler.rescaled_eps``, on the model's v) and a negative prompt as the unconditional text, the
randomized-blending loop and owner map of :mod:`vstar_jax.longvideo.blend` and the chunk arithmetic of
:mod:`vstar_jax.longvideo.windows`. With an MS-Vid2Vid-XL refiner the defaults are the reference's sampler
settings (``job.REFERENCE_SAMPLER``). Differences from the reference that remain:

* the step noise of DPM++ 2M SDE: the reference draws it from a torchsde Brownian tree seeded 0, here
  from the seed's keys (the rule below); the SDEdit noise and the blending offsets likewise come from
  JAX keys, not torch's / Python's generators;
* the encoder's posterior mean (the reference samples the posterior; ``job.encode_frames``);
* where a trailing timestep of the reference is exactly k + 0.5, the model's rounded timestep may differ
  by one (an ulp of float32 log, numpy's vs torch's);
* strength 1 with DPM++ on a zero-terminal-SNR schedule is refused (the reference's first step there is
  an Euler step on the v output; the samplers here take eps, from which x0 is lost at alpha_cumprod 0);
* the reference runs the UNet in float16 autocast; here it runs in the checkpoint's dtype.

Trajectories are therefore the reference's in law, not number for number.

Two switches reproduce the paper's ablation (Fig. 4):

* ``shared_noise`` (default): one long latent, noised with one long draw, so consecutive chunks hold
  identical noise on their overlap; off (``--no-shared-noise``): every chunk is its own SDEdit run from
  its own noise and step noise (``fold_in(key, k)``), the naive chunking;
* ``blend`` (default): randomized blending, offsets ``blend_offsets(k_steps, steps, chunks, O)`` (the
  ``blend`` strategy's own draw); off (``--no-blend``): offsets 0, chunk k takes its whole overlap (a hard
  cut at its first frame). Without shared noise the chunks are merged once, at the end, by the same owner
  map (one row of offsets).

The chunk clock (``frame_times``, the enhancer's ``--chunk-clock video``; not in the reference): where the
refiner conditions frames on their place in the clip (the demo models' options), every chunk's UNet calls
get their frames' slice of the whole video's clock (``UNetConfig.video_clock``), sliced from the chunk
starts as per-frame text is (``windows.stack_times``); None: each call its own clock (``chunk``).

PRNG: ``k_x, k_steps = split(key(seed))``; shared: noise = ``normal(k_x, (b, c, N, h, w))``, step i's noise
(DDIM with eta > 0, DPM++ 2M SDE) ``normal(split(k_steps, n)[i])``; not shared: chunk k's noise
``normal(fold_in(k_x, k), (b, c, F, h, w))``, its step keys ``split(fold_in(k_steps, k), n)``. One chunk with
blending off is plain SDEdit (DDIM from T' of the encoded video) bit for bit.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from vstar_jax.diffusion.dpm_solver import check_solver, dpmpp_2m_sde_schedule
from vstar_jax.diffusion.schedules import DDIMSchedule, logsnr_cosine_interp_sigmas, make_schedule
from vstar_jax.errors import VstarError
from vstar_jax.longvideo import windows as W
from vstar_jax.longvideo.base import SampleInputs
from vstar_jax.longvideo.blend import Blend, blend_offsets, owner_map
from vstar_jax.longvideo.single import Single

RNG_RULE = ("k_x,k_steps=split(key(seed)); shared noise: x_T'=sdedit(z0,normal(k_x,(b,c,N,h,w))), "
            "noise_i=normal(split(k_steps,n)[i]) (ddim eta>0 and dpmpp_2m_sde); "
            "not shared: chunk k: normal(fold_in(k_x,k),(b,c,F,h,w)), "
            "split(fold_in(k_steps,k),n); blend offsets=blend_offsets(k_steps,n,chunks,O) (not shared: one row)")


def start_timestep(strength: float, num_timesteps: int = 1000) -> int:
    """T' of a strength: the reference's ``total_noise_levels - 1`` with ``total_noise_levels = strength * T``
    (``model_func.py``: 600 of 1000 is strength 0.6, so t = 599)."""
    return max(int(round(float(strength) * num_timesteps)) - 1, 0)


def sdedit_schedule(schedule: DDIMSchedule, strength: float) -> DDIMSchedule:
    """The DDIM steps of ``schedule`` at or below T' (:func:`start_timestep`): SDEdit runs these, from the
    noisiest. 50 DDIM steps at strength 0.6 keep 30 (the reference's 30 steps from t = 599)."""
    if not 0.0 < float(strength) <= 1.0:
        raise VstarError(f"strength must be in (0, 1], got {strength}")
    t_start = start_timestep(strength, len(schedule.alphas_cumprod))
    keep = np.nonzero(schedule.timesteps <= t_start)[0]  # ascending arrays: a prefix
    if keep.size == 0:
        raise VstarError(f"strength {strength} starts at t = {t_start}, below the first of the "
                         f"{schedule.num_steps} DDIM steps (t = {int(schedule.timesteps[0])}): "
                         f"raise the strength or the steps")
    n = int(keep[-1]) + 1
    cut = {f.name: getattr(schedule, f.name)[:n] for f in dataclasses.fields(schedule)
           if f.name in ("timesteps", "alphas", "alphas_prev", "sigmas", "scale", "scale_prev")}
    return dataclasses.replace(schedule, **cut)


def solver_schedule(solver: str, flavor: str, steps: int, eta: float, sched_kw: tuple, strength: float):
    """The steps SDEdit runs from T' (:func:`start_timestep`) with ``solver``: ``ddim``, the refiner's DDIM
    schedule of ``steps`` steps over the whole schedule cut at T' (:func:`sdedit_schedule`); or
    ``dpmpp_2m_sde``, ``steps`` DPM++ 2M SDE steps from T' as the reference selects them
    (:func:`~vstar_jax.diffusion.dpm_solver.dpmpp_2m_sde_schedule`, SDE ``eta``; on MS-Vid2Vid-XL's
    schedule its own noise levels). One-line :class:`VstarError` for what it cannot run."""
    kw = dict(sched_kw)
    if check_solver(solver) == "ddim":
        return sdedit_schedule(make_schedule(flavor, steps, eta, **kw), strength)
    if not 0.0 < float(strength) <= 1.0:
        raise VstarError(f"strength must be in (0, 1], got {strength}")
    if kw.get("use_scale"):
        raise VstarError("the dpmpp_2m_sde solver has no VideoCrafter2 use_scale: use --solver ddim with this refiner")
    ac = make_schedule(flavor, 1, 0.0, **kw).alphas_cumprod
    vp = logsnr_cosine_interp_sigmas(len(ac)) if kw.get("beta_schedule") == "logsnr_cosine_interp" else None
    return dpmpp_2m_sde_schedule(ac, start_timestep(strength, len(ac)), steps, eta=eta, vp_sigmas=vp)


def sdedit_noised(z0, noise, coeffs: dict):
    """x at the first (noisiest) step of ``coeffs`` (loop order): sqrt(a) scale z0 + sqrt(1 - a) noise,
    the forward process whose inverse is ``ddim_step``'s x0 (``scale`` is VideoCrafter2's ``use_scale``,
    1 otherwise); for DPM++ 2M SDE times its ``start_scale`` (the reference hands the noised latent to
    the solver as its noise: :mod:`vstar_jax.diffusion.dpm_solver`)."""
    a = coeffs["sqrt_alpha"][0] * coeffs["scale"][0]
    x = a * jnp.asarray(z0, jnp.float32) + coeffs["sqrt_one_minus_alpha"][0] * noise
    return x * coeffs["start_scale"][0] if "start_scale" in coeffs else x


def chunk_noises(k_x, shape: tuple, starts, window: int, shared: bool) -> jax.Array:
    """The SDEdit noise each chunk starts from, (chunks, b, c, F, h, w): slices of one long draw
    (``shared``: consecutive chunks agree on their overlap) or one draw per chunk."""
    starts = [int(s) for s in np.asarray(starts)]
    b, c, _, h, w = shape
    if shared:
        long = jax.random.normal(k_x, tuple(shape), jnp.float32)
        return jnp.stack([long[:, :, s:s + window] for s in starts])
    return jnp.stack([jax.random.normal(jax.random.fold_in(k_x, k), (b, c, window, h, w), jnp.float32)
                      for k in range(len(starts))])


def sdedit_start(z0, key, coeffs: dict, *, window: int, overlap: int, shared_noise: bool = True):
    """Where SDEdit starts: ``(x_start, k_steps)``. ``x_start`` is the long latent noised to the first step
    of ``coeffs`` (b, c, N, h, w) with one long draw (``shared_noise``), or each chunk's window noised with
    its own draw (chunks, b, c, F, h, w); ``k_steps`` keys the steps and the blending offsets."""
    k_x, k_steps = jax.random.split(key)
    if shared_noise:
        return sdedit_noised(z0, jax.random.normal(k_x, z0.shape, jnp.float32), coeffs), k_steps
    starts = W.chunk_starts(z0.shape[2], window, overlap)
    noises = chunk_noises(k_x, z0.shape, starts, window, shared=False)
    windows = jnp.stack([W.slice_frames(z0, int(s), window, 2) for s in starts])
    return sdedit_noised(windows, noises, coeffs), k_steps


def denoise_chunks(model_fn, x_start, context, coeffs: dict, cfg_scale, k_steps, *, frames: int, window: int,
                   overlap: int, shared_noise: bool = True, blend: bool = True, guided: bool = True,
                   use_noise: bool = False, rescale=None, frame_times=None):
    """The chunked denoising from :func:`sdedit_start`'s ``x_start`` -> latents (b, c, frames, h, w).

    ``coeffs``/``context`` as :func:`~vstar_jax.diffusion.sampler.prepare_sampling` returns them for the SDEdit
    schedule (:func:`sdedit_schedule` or :func:`~vstar_jax.diffusion.dpm_solver.dpmpp_2m_sde_schedule`; the
    context not per frame); ``use_noise``: noise in the steps; ``rescale``: the guide rescale; ``frame_times``
    (frames,): the whole video's frame clock, of which every chunk's UNet calls get their frames' slice
    (``--chunk-clock video``), or None: each chunk its own clock (``chunk``). Traceable."""
    starts = W.chunk_starts(frames, window, overlap)
    n_steps = coeffs["timesteps"].shape[0]
    placeholder = jnp.zeros((n_steps,), jnp.uint32)  # step keys when eta == 0 (as prepare_sampling)
    if shared_noise:
        step_keys = jax.random.split(k_steps, n_steps) if use_noise else placeholder
        # blend off: no offsets key, so every offset is 0 (the blend strategy's rule without a key)
        inputs = SampleInputs(x_start, context, coeffs, step_keys, k_steps if blend else None, cfg_scale, frames,
                              guided, use_noise, rescale, frame_times)
        return Blend(window, overlap).run(model_fn, inputs)[0]

    def one(args):
        k, x = args
        ks = jax.random.split(jax.random.fold_in(k_steps, k), n_steps) if use_noise else placeholder
        times = None if frame_times is None else W.stack_times(frame_times, jnp.asarray(starts)[k][None], window)[0]
        inputs = SampleInputs(x, context, coeffs, ks, None, cfg_scale, window, guided, use_noise, rescale, times)
        return Single().run(model_fn, inputs)[0]

    chunks = jax.lax.map(one, (jnp.arange(len(starts), dtype=jnp.int32), x_start))  # (K, b, c, F, h, w)
    offsets = (blend_offsets(k_steps, 1, len(starts), overlap)[0] if blend
               else jnp.zeros((len(starts),), jnp.int32))

    owner = owner_map(starts, offsets, window, frames)  # (frames,): the chunk each frame is taken from
    local = jnp.arange(frames, dtype=jnp.int32) - jnp.asarray(starts, jnp.int32)[owner]
    return jnp.moveaxis(chunks[owner, :, :, local], 0, 2)  # (N, b, c, h, w) -> (b, c, N, h, w)


def enhance_loop(model_fn, z0, context, coeffs: dict, cfg_scale, key, *, window: int, overlap: int,
                 shared_noise: bool = True, blend: bool = True, guided: bool = True, use_noise: bool = False,
                 rescale=None, frame_times=None):
    """Chunked SDEdit of clean latents ``z0`` (b, c, N, h, w) -> refined latents (b, c, N, h, w):
    :func:`sdedit_start` then :func:`denoise_chunks`; ``key`` is the seed's key. Traceable (call it inside
    ``jax.jit``); N must tile into chunks ((N - O) % (F - O) == 0). ``frame_times``: the whole video's frame
    clock (N,) (:func:`denoise_chunks`)."""
    x_start, k_steps = sdedit_start(z0, key, coeffs, window=window, overlap=overlap, shared_noise=shared_noise)
    return denoise_chunks(model_fn, x_start, context, coeffs, cfg_scale, k_steps, frames=z0.shape[2], window=window,
                          overlap=overlap, shared_noise=shared_noise, blend=blend, guided=guided, use_noise=use_noise,
                          rescale=rescale, frame_times=frame_times)
