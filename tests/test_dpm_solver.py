"""DPM++ 2M SDE (the enhancer's solver in StreamingT2V) and the guide rescale against a torch transcription
of the reference (tests/dpm_reference.py), on a toy v-prediction denoiser, float32: < 1e-5 relative (both
sides run the same float32 arithmetic in a different order; the toy's outputs are O(1))."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vstar_jax.diffusion.dpm_solver import dpmpp_2m_sde_schedule, trailing_timesteps
from vstar_jax.diffusion.parameterization import to_eps
from vstar_jax.diffusion.sampler import Denoiser, cfg_context, guided_eps, prepare_sampling
from vstar_jax.diffusion.schedules import logsnr_cosine_interp_sigmas, make_schedule
from vstar_jax.enhance.sdedit import enhance_loop
from vstar_jax.errors import VstarError
from vstar_jax.longvideo.blend import blend_offsets
from vstar_jax.longvideo.single import Single
from vstar_jax.longvideo.genl import GenL

torch = pytest.importorskip("torch")
ref = pytest.importorskip("tests.dpm_reference")

S = logsnr_cosine_interp_sigmas()  # MS-Vid2Vid-XL's VP noise levels (the refiner's schedule)
AC = (np.float32(1) - S ** 2).astype(np.float32)
B, C, H, W = 1, 2, 3, 4
COND, UNCOND = np.full((1, 2, 3), 0.4, np.float32), np.full((1, 2, 3), -0.2, np.float32)


def toy_raw(x, t, m):
    """The toy's v output: linear in x, depends on the timestep and the text (m: its context's mean)."""
    return 0.3 * (1.0 + m) * x + 0.1 * m + 2e-4 * t


def toy_denoiser():
    def fn(x, t, ctx, i):
        m = ctx.mean(axis=(1, 2)).reshape((-1,) + (1,) * (x.ndim - 1))
        tt = t.astype(jnp.float32).reshape((-1,) + (1,) * (x.ndim - 1))
        return to_eps(toy_raw(x, tt, m), x, t, AC, "v")
    return Denoiser(fn, v_alphas=AC)


def torch_raw(x, t, which):
    return toy_raw(x, float(t), float((COND if which == "cond" else UNCOND).mean()))


def run_ours(z0, key, *, t_max, steps, frames, chunk, overlap, cfg, rescale):
    sched = dpmpp_2m_sde_schedule(AC, t_max, steps, vp_sigmas=S)
    _, _, ctx, co, _, use_noise, guided = prepare_sampling(z0, COND, UNCOND, sched, None, key, "test")
    out = jax.jit(lambda z, c, k, r: enhance_loop(toy_denoiser(), z, c, co, jnp.float32(cfg), k, window=chunk,
                                                  overlap=overlap, use_noise=use_noise, guided=guided, rescale=r))(
        z0, ctx, key, None if rescale is None else jnp.float32(rescale))
    return np.asarray(out), sched


def run_reference(z0, key, *, t_max, steps, frames, chunk, overlap, cfg, rescale):
    """The reference's chain, fed our draws (the RNG rule: noise, step noises and offsets from the key)."""
    k_x, k_steps = jax.random.split(key)
    noise = np.asarray(jax.random.normal(k_x, z0.shape, jnp.float32))
    n_chunks = (frames - overlap) // (chunk - overlap)
    sig = ref.select_sigmas(torch.from_numpy(S), t_max, steps)
    n = len(sig) - 1
    step_noises = [torch.from_numpy(np.array(jax.random.normal(k, z0.shape, jnp.float32)))
                   for k in jax.random.split(k_steps, n)]
    offs = np.asarray(blend_offsets(k_steps, n, n_chunks, overlap))
    s_t = torch.from_numpy(S)
    noised = ref.diffuse(torch.from_numpy(z0), t_max, torch.from_numpy(noise), s_t)

    def model(x_in, sigma, i):
        return ref.chunked_x0(torch_raw, x_in, sigma, s_t, offs[i], chunk, overlap, cfg, rescale)[0]
    return ref.sample_dpmpp_2m_sde(noised, model, sig, step_noises).numpy(), sig.numpy()


def rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("t_max,steps", [(599, 30), (299, 6), (998, 3)])  # no timestep at an exact .5: see below
def test_sigmas_and_timesteps_match_the_reference(t_max, steps):
    sched = dpmpp_2m_sde_schedule(AC, t_max, steps, vp_sigmas=S)
    sig = ref.select_sigmas(torch.from_numpy(S), t_max, steps)
    np.testing.assert_allclose(sched.k_sigmas, sig.numpy(), rtol=1e-6)
    # the model's timestep, round(sigma_to_t(sigma)): equal, but where a trailing timestep is exactly k + 0.5
    # (t_max 299, 7 steps: 186.5) an ulp of torch's float32 log vs numpy's decides the rounding
    t_ref = ref.sigma_to_t(sig[:-1], torch.from_numpy(S)).round().long().numpy()
    np.testing.assert_array_equal(sched.timesteps, t_ref)
    for n in (7, 23, 31, 51):  # torch's vectorised CPU arange may round an element an ulp the other way
        np.testing.assert_allclose(trailing_timesteps(t_max, 0, n),
                                   torch.arange(t_max, -1, -((t_max + 1) / n)).clamp_(0, t_max).numpy(), rtol=2e-7)
    assert sched.num_steps == len(sig) - 1 and sched.k_sigmas[-1] == 0  # steps, or one more (float arange)


@pytest.mark.parametrize("frames,chunk,overlap,rescale", [(10, 6, 2, 0.2),
                                                            pytest.param(6, 6, 2, None, marks=pytest.mark.slow)])
def test_dpmpp_2m_sde_matches_the_reference(frames, chunk, overlap, rescale):
    """The whole enhancer chain (SDEdit start, DPM++ 2M SDE, CFG with rescale, chunks with random blending
    offsets) against the transcription; 12 steps from t = 599."""
    z0 = np.asarray(jax.random.normal(jax.random.key(3), (B, C, frames, H, W)), np.float32)
    kw = dict(t_max=599, steps=12, frames=frames, chunk=chunk, overlap=overlap, cfg=7.5, rescale=rescale)
    ours, _ = run_ours(z0, jax.random.key(11), **kw)
    theirs, _ = run_reference(z0, jax.random.key(11), **kw)
    assert rel(ours, theirs) < 1e-5, rel(ours, theirs)


def test_guide_rescale_zero_is_plain_cfg_bit_for_bit_and_on_eps_is_the_formula():
    """0: plain CFG bit for bit (on v and on eps); an eps model's rescale is the reference's formula on eps
    itself (its ``out``), against a transcription of it."""
    x = jax.random.normal(jax.random.key(0), (2, C, 4, H, W))
    ctx = cfg_context(COND, UNCOND, 2, 4)
    for den in (toy_denoiser(), Denoiser(toy_denoiser().fn)):  # on v, and on eps
        @jax.jit
        def run(r):
            return guided_eps(den, x, 500, ctx, 0, 7.5)[0], guided_eps(den, x, 500, ctx, 0, 7.5, rescale=r)[0]
        plain, zero = run(jnp.float32(0.0))
        np.testing.assert_array_equal(np.asarray(plain), np.asarray(zero))
        rescaled = np.asarray(run(jnp.float32(0.3))[1])
        assert not np.allclose(np.asarray(plain), rescaled)
    raw = np.asarray(den.fn(jnp.concatenate([x, x]), jnp.full((4,), 500), ctx, 0))
    y, u = torch.from_numpy(raw[2:]), torch.from_numpy(raw[:2])
    out = u + 7.5 * (y - u)
    ratio = (y.flatten(1).std(dim=1) / (out.flatten(1).std(dim=1) + 1e-12)).view(-1, 1, 1, 1, 1)
    assert rel(rescaled, (out * (0.3 * ratio + 0.7)).numpy()) < 1e-6


def test_ddim_only_loops_refuse_the_solver_and_zero_snr_is_refused():
    sched = dpmpp_2m_sde_schedule(AC, 599, 4, vp_sigmas=S)
    x = jnp.zeros((1, C, 8, H, W))
    with pytest.raises(VstarError, match="steps with ddim"):
        GenL(4, 2).sample(toy_denoiser(), x, COND, UNCOND, sched, key=jax.random.key(0))
    with pytest.raises(VstarError, match="zero-SNR"):
        dpmpp_2m_sde_schedule(AC, 999, 4, vp_sigmas=S)
    # the DDIM default is untouched: a DDIM schedule still runs single
    Single().sample(toy_denoiser(), x, COND, UNCOND, make_schedule("diffusers", 3, 0.0), cfg_scale=2.0)
