"""FIFO-Diffusion (vstar_jax.longvideo.fifo) against a transcription of its authors' code,
jjihwan/FIFO-Diffusion_public (commit b87ba5d), written from that repository's files and none of
this project's schedule, step or window helpers: lvdm's schedule as FIFO's copy makes it, the base
clip by ``p_sample_ddim``, the queue by ``prepare_latents`` / ``fifo_ddim_sampling`` /
``ddim_step`` / ``shift_latents``, in torch float32 as the reference runs. The JAX side runs the
product path: the schedule's keyword arguments through ``FIFO.schedule_kwargs`` as
``generation.request`` builds them, then ``Strategy.run``. Plus the UNet's per-frame timestep
embedding, and a sidecar written before the reference fix regenerating with its old rule."""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from vstar_jax.diffusion import schedules as S
from vstar_jax.diffusion.sampler import prepare_sampling
from vstar_jax.generation.request import schedule_kwargs
from vstar_jax.longvideo import FIFO, SampleInputs
from vstar_jax.longvideo.fifo import ITER_FOLD, QUEUE_FOLD, queue_layout

CFG = 5.0
T = 1000
VC2 = dict(flavor="videocrafter2", use_scale=True, scale_b=0.7, linear_start=0.00085, linear_end=0.012,
           num_timesteps=T)
LEGACY = pathlib.Path(__file__).parent / "data" / "fifo_legacy"


def pf_model(x, t, ctx, i):
    """eps depends on x, on each frame's own timestep, on the frame's context and on i."""
    t = jnp.asarray(t, jnp.float32)
    tf = t[:, None, :, None, None] if t.ndim == 2 else t[:, None, None, None, None]
    c = ctx.mean(axis=(2, 3))[:, None, :, None, None] if ctx.ndim == 4 else ctx.mean(axis=(1, 2))[:, None, None,
                                                                                                   None, None]
    return 0.1 * x + 1e-3 * tf + c + 0.01 * i


def torch_model(x, t, ctx, i):
    """pf_model in torch: x (b, c, f, h, w), t (f,) or scalar, ctx (f, L, C) one row per frame."""
    t = torch.as_tensor(np.asarray(t), dtype=torch.float32).reshape(-1)
    t = t.expand(x.shape[2]) if t.numel() == 1 else t
    c = torch.as_tensor(ctx, dtype=torch.float32).mean(dim=(1, 2))
    return 0.1 * x + 1e-3 * t[None, None, :, None, None] + c[None, None, :, None, None] + 0.01 * i


def test_queue_layout():
    prefix, index, starts, write_from = queue_layout(4, 2, True)
    assert prefix == 2 and index.tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6, 7]
    assert starts.tolist() == [6, 4, 2, 0] and write_from == 2  # 2n windows of F every F/2, reversed ranks
    prefix, index, starts, write_from = queue_layout(4, 2, False)
    assert prefix == 0 and index.tolist() == list(range(8)) and starts.tolist() == [4, 0] and write_from == 0


# ----------------------------------------------------------------- the reference, transcribed
class RefSampler:
    """FIFO's ``DDIMSampler.make_schedule`` (lvdm/models/samplers/ddim.py:22-59) over the model's
    buffers (lvdm/models/ddpm3d.py:113-127 ``register_schedule``, :362-376 ``use_scale``), with
    ``make_beta_schedule("linear")`` (lvdm/models/utils_diffusion.py:31-34), ``make_ddim_timesteps``
    ('uniform', :56-79) and ``make_ddim_sampling_parameters`` (:81-93), each in the reference's own
    numpy / torch mix of types (so its float32 / float64 arithmetic too)."""

    def __init__(self, num_steps, eta, *, linear_start=0.00085, linear_end=0.012, scale_a=1.0, scale_b=0.7,
                 mid_step=400):
        betas = (torch.linspace(linear_start ** 0.5, linear_end ** 0.5, T, dtype=torch.float64) ** 2).numpy()
        alphas_cumprod = np.cumprod(1. - betas, axis=0)
        ac = torch.tensor(alphas_cumprod, dtype=torch.float32)  # the model's float32 buffer
        scale_arr = np.concatenate((np.linspace(scale_a, scale_b, mid_step), np.full(T, scale_b)))  # unfixed branch
        scale_arr = torch.tensor(scale_arr, dtype=torch.float32)

        self.ddim_timesteps = np.linspace(0, T - 1, num_steps).round().copy().astype(np.int64)
        ts = self.ddim_timesteps
        self.ddim_scale_arr = scale_arr[ts]
        self.ddim_scale_arr_prev = np.asarray([scale_arr[0]] + scale_arr[ts[:-1]].tolist())
        alphas = ac[ts]
        alphas_prev = np.asarray([ac[0]] + ac[ts[:-1]].tolist())
        self.ddim_sigmas = eta * np.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev))
        self.ddim_alphas = alphas
        self.ddim_alphas_prev = alphas_prev
        self.ddim_sqrt_one_minus_alphas = np.sqrt(1. - alphas)

    def coeffs(self, index):
        size = (1, 1, 1, 1, 1)
        full = lambda a: torch.full(size, a[index])  # noqa: E731 - as the reference's torch.full(size, arr[index])
        return (full(self.ddim_alphas), full(self.ddim_alphas_prev), full(self.ddim_sigmas),
                full(self.ddim_sqrt_one_minus_alphas))

    def p_sample_ddim(self, x, e_t, index, z):
        """ddim.py:244-281 with ``use_scale`` (VideoCrafter2): the base clip's step."""
        a_t, a_prev, sigma_t, sqrt_one_minus_at = self.coeffs(index)
        pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        dir_xt = (1. - a_prev - sigma_t ** 2).sqrt() * e_t
        noise = sigma_t * z
        scale_t = torch.full((1, 1, 1, 1, 1), self.ddim_scale_arr[index])
        scale_t_prev = torch.full((1, 1, 1, 1, 1), self.ddim_scale_arr_prev[index])
        pred_x0 /= scale_t
        return a_prev.sqrt() * scale_t_prev * pred_x0 + dir_xt + noise

    def ddim_step(self, sample, noise_pred, indices, z, *, use_scale=False):
        """ddim.py:298-334: one DDIM step per frame at its own index, without ``use_scale``;
        ``use_scale=True`` is the project's ``scale_in_queue`` variant (p_sample_ddim's :271-277
        per frame), not in the reference."""
        outs = []
        for i, index in enumerate(indices):
            x, e_t = sample[:, :, [i]], noise_pred[:, :, [i]]
            if use_scale:
                outs.append(self.p_sample_ddim(x, e_t, index, z[:, :, [i]]))
                continue
            a_t, a_prev, sigma_t, sqrt_one_minus_at = self.coeffs(index)
            pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
            dir_xt = (1. - a_prev - sigma_t ** 2).sqrt() * e_t
            noise = sigma_t * z[:, :, [i]]
            outs.append(a_prev.sqrt() * pred_x0 + dir_xt + noise)
        return torch.cat(outs, dim=2)


def reference_fifo(x_T, cond_pf, uncond, key, video_length, num_partitions, lookahead, new_video_length, eta,
                   scale_in_queue=False):
    """FIFO-Diffusion_public's ``videocrafter_main`` path in torch float32: num_inference_steps =
    f n (videocrafter_main.py:138); the base clip by ``DDIMSampler.ddim_sampling`` (ddim.py:134-183);
    ``prepare_latents`` (scripts/evaluation/funcs.py:14-34); ``fifo_ddim_sampling`` (:158-244) with
    ``fifo_onestep`` (ddim.py:186-200) and ``shift_latents`` (:37-44); the last N dequeued frames
    are the video (videocrafter_main.py:108). CFG as ``DDIMSampler.unet`` (ddim.py:284-296).

    torch.randn is replaced by the strategy's documented keys (its ``rng_rule``); ``cond_pf`` holds
    one context per output frame; queue position p takes output frame it + p - prefix - (L - f)
    (the project's VSP extension; with one prompt all rows are equal, as the reference). The toy
    model's ``i`` is the project's TAR step gate (the window's middle frame), not in the reference."""
    f, n = video_length, num_partitions
    L = f * n  # args.num_inference_steps
    sampler = RefSampler(L, eta)
    cond_pf = torch.as_tensor(np.array(cond_pf))
    uncond_rows = torch.as_tensor(uncond).expand(f, *uncond.shape[1:])
    step_keys = jax.random.split(key, L)

    def unet(x, t, ctx, i):
        e_t = torch_model(x, t, ctx, i)
        e_t_uncond = torch_model(x, t, uncond_rows, i)
        return e_t_uncond + CFG * (e_t - e_t_uncond)

    # base clip: ddim_sampling over np.flip(ddim_timesteps), index = total_steps - i - 1
    img = torch.as_tensor(np.array(x_T))
    for i, step in enumerate(np.flip(sampler.ddim_timesteps)):
        index = L - i - 1
        z = torch.as_tensor(np.asarray(jax.random.normal(step_keys[i], img.shape)))
        img = sampler.p_sample_ddim(img, unet(img, step, cond_pf[:f], i), index, z)
    video = img

    # prepare_latents
    b, c, _, h, w = video.shape
    prefix = f // 2 if lookahead else 0
    qn = torch.as_tensor(np.asarray(jax.random.normal(jax.random.fold_in(key, QUEUE_FOLD), (b, c, prefix + L, h, w))))
    latents_list = []
    for i in range(prefix):
        alpha = sampler.ddim_alphas[0]
        beta = 1 - alpha
        latents_list.append(alpha ** 0.5 * video[:, :, [0]] + beta ** 0.5 * qn[:, :, [i]])
    for i in range(L):
        alpha = sampler.ddim_alphas[i]
        frame_idx = max(0, i - (L - f))
        latents_list.append(alpha ** 0.5 * video[:, :, [frame_idx]] + (1 - alpha) ** 0.5 * qn[:, :, [prefix + i]])
    latents = torch.cat(latents_list, dim=2)

    # fifo_ddim_sampling
    timesteps, indices = sampler.ddim_timesteps, np.arange(L)
    if lookahead:
        timesteps = np.concatenate([np.full((f // 2,), timesteps[0]), timesteps])
        indices = np.concatenate([np.full((f // 2,), 0), indices])
    k_iter = jax.random.fold_in(key, ITER_FOLD)
    frames = []
    for it in range(new_video_length + L - f):
        k_new, k_step = jax.random.split(jax.random.fold_in(k_iter, it))
        for wi, rank in enumerate(reversed(range(2 * n if lookahead else n))):
            start_idx = rank * (f // 2) if lookahead else rank * f
            midpoint_idx, end_idx = start_idx + f // 2, start_idx + f
            t, idx = timesteps[start_idx:end_idx], indices[start_idx:end_idx]
            rows = np.clip(it + start_idx + np.arange(f) - prefix - (L - f), 0, new_video_length - 1)
            input_latents = latents[:, :, start_idx:end_idx].clone()
            noise_pred = unet(input_latents, t, cond_pf[rows], L - 1 - idx[f // 2])
            z = torch.as_tensor(np.asarray(jax.random.normal(jax.random.fold_in(k_step, wi), input_latents.shape)))
            output_latents = sampler.ddim_step(input_latents, noise_pred, idx, z, use_scale=scale_in_queue)
            if lookahead:
                latents[:, :, midpoint_idx:end_idx] = output_latents[:, :, -(f // 2):]
            else:
                latents[:, :, start_idx:end_idx] = output_latents
        frames.append(latents[:, :, [prefix]].clone())  # first_frame_idx, before shift_latents
        latents[:, :, :-1] = latents[:, :, 1:].clone()
        latents[:, :, -1] = torch.as_tensor(np.asarray(jax.random.normal(k_new, (b, c, 1, h, w))))[:, :, 0]
    return torch.cat(frames[-new_video_length:], dim=2).numpy()


def _run_fifo(st, eta, frames, per_frame, seed=0):
    """The product path: schedule kwargs as generation.request builds them, Strategy.run jitted."""
    L = st.queue_steps
    sched = S.make_schedule("videocrafter2", L, eta, **dict(st.schedule_kwargs("videocrafter2", schedule_kwargs(VC2))))
    rng = np.random.default_rng(st.window * 10 + st.partitions + seed)
    cond = rng.standard_normal((frames if per_frame else 1, 3, 2)).astype(np.float32)
    uncond = rng.standard_normal((1, 3, 2)).astype(np.float32)
    key_x, key = jax.random.key(1 + seed), jax.random.key(2 + seed)
    x_T = st.init_noise(key_x, (1, 2, frames, 2, 2))
    assert x_T.shape == (1, 2, st.window, 2, 2)  # the base clip's noise
    x_T, _, context, coeffs, keys, use_noise, guided = prepare_sampling(x_T, cond, uncond, sched, None, key, "t",
                                                                        frames=frames)
    inputs = SampleInputs(x_T, context, coeffs, keys, key, jnp.float32(CFG), frames, guided, use_noise)
    got, _ = jax.jit(lambda x, ctx: st.run(pf_model, inputs._replace(x_T=x, context=ctx)))(x_T, context)
    assert got.shape == (1, 2, frames, 2, 2)
    cond_pf = np.broadcast_to(cond, (frames,) + cond.shape[1:])
    return np.asarray(got, np.float64), x_T, cond_pf, uncond, key


@pytest.mark.parametrize("window, partitions, lookahead, eta, per_frame, scale_in_queue", [
    (4, 2, True, 1.0, False, False),  # the F4/n2 with lookahead, eta 1, one prompt
    (4, 1, False, 0.5, True, False),  # F4/n1 without lookahead, eta 0.5, one context per frame
    (2, 4, True, 0.0, False, True)])  # the consistent variant: use_scale in the queue too
def test_fifo_matches_the_reference_code(window, partitions, lookahead, eta, per_frame, scale_in_queue):
    """Float32 both sides; < 1e-5 relative leaves room for float32 rounding over the 8-step base clip
    and ~10 queue iterations (measured ~1e-7), while either reference difference (timesteps
    linspace vs range + 1, the queue step's missing use_scale) moves the video by > 1e-2."""
    frames = 9
    st = FIFO(window, partitions, lookahead, scale_in_queue=scale_in_queue)
    got, x_T, cond_pf, uncond, key = _run_fifo(st, eta, frames, per_frame)
    ref = reference_fifo(x_T, cond_pf, uncond, key, window, partitions, lookahead, frames, eta,
                         scale_in_queue=scale_in_queue)
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err < 1e-5, err


def test_the_reference_timesteps_and_the_legacy_rule():
    """FIFO's schedule is linspace(0, 999, L).round() (t = 0 first); ``timesteps=model`` keeps the
    checkpoint's range(0, T, T // L) + 1; the diffusers flavour takes diffusers' own linspace
    spacing (the same timesteps)."""
    fifo = FIFO(4, 2)
    kw = dict(fifo.schedule_kwargs("videocrafter2", schedule_kwargs(VC2)))
    assert S.make_schedule("videocrafter2", 8, 1.0, **kw).timesteps.tolist() == \
        RefSampler(8, 1.0).ddim_timesteps.tolist() == [0, 143, 285, 428, 571, 714, 856, 999]
    model = FIFO(4, 2, timesteps="model")
    kw = dict(model.schedule_kwargs("videocrafter2", schedule_kwargs(VC2)))
    assert S.make_schedule("videocrafter2", 8, 1.0, **kw).timesteps.tolist() == list(range(1, 1000, 125))
    ms = {"flavor": "diffusers", "linear_start": 0.00085, "linear_end": 0.012, "num_timesteps": T,
          "timestep_spacing": "leading"}
    kw = dict(fifo.schedule_kwargs("diffusers", schedule_kwargs(ms)))
    assert S.make_schedule("diffusers", 8, 0.0, **kw).timesteps.tolist() == [0, 143, 285, 428, 571, 714, 856, 999]
    with pytest.raises(ValueError, match="fifo timesteps must be one of linspace, model"):
        FIFO(4, 2, timesteps="uniform")


def test_unet_takes_one_timestep_per_frame():
    """(b, f) timesteps: each frame embedded with its own t (equal to running that t for all frames
    on that frame when the UNet has no temporal mixing of the embedding); equal t == the (b,) path."""
    from vstar_jax.configs import unet_tiny
    from vstar_jax.models.unet3d import UNet3D

    cfg = unet_tiny.get_config()
    unet = UNet3D(cfg)
    x = jax.random.normal(jax.random.key(0), (2, cfg.in_channels, 4, 8, 8))
    ctx = jax.random.normal(jax.random.key(1), (2, 77, cfg.context_dim))
    params = unet.init(jax.random.key(2), x, jnp.array([10, 10]), ctx)["params"]
    same = unet.apply({"params": params}, x, jnp.full((2, 4), 700), ctx)
    np.testing.assert_allclose(np.asarray(same), np.asarray(unet.apply({"params": params}, x, jnp.array([700, 700]),
                                                                       ctx)), atol=1e-5, rtol=0)
    diag = unet.apply({"params": params}, x, jnp.array([[100, 300, 500, 700]] * 2), ctx)
    assert float(jnp.abs(diag - same).max()) > 1e-3
    with pytest.raises(ValueError, match="per-frame timesteps must be"):
        unet.apply({"params": params}, x, jnp.zeros((2, 3), jnp.int32), ctx)


def test_steps_and_lengths():
    st = FIFO(8, 2)
    assert st.steps_for(None) == 16 and st.steps_for(16) == 16
    with pytest.raises(ValueError, match="runs exactly window x partitions = 16 DDIM steps"):
        st.steps_for(25)
    with pytest.raises(ValueError, match="at least 8 frames"):
        st.check(6, 16)
    plan = st.check(64, 16)
    assert plan.unet_frames == 8 and plan.calls == 16 + (64 + 16 - 8) * 4
    with pytest.raises(ValueError, match="even with lookahead"):
        FIFO(7)


def test_a_sidecar_from_before_the_reference_fix_regenerates_with_its_old_rule(tmp_path):
    """tests/data/fifo_legacy: a demo-model ``fifo:4:2`` video written by the code before the fix
    (commit e5f72bb: the model's DDIM timesteps, use_scale in the queue step), with its sidecar
    (no ``timesteps`` / ``scale_in_queue`` fields) and its final latents. ``--from-sidecar`` fills the
    old rule in (FIFO.SIDECAR_LEGACY) and reproduces those latents (without the fill-in, today's default
    rule runs and the latents differ by 0.32 relative)."""
    from vstar_jax import pipeline as pl

    sc = json.loads((LEGACY / "sidecar.json").read_text())
    assert set(sc["long_video"]) == {"method", "window", "partitions", "lookahead"}
    (tmp_path / "old.json").write_text(json.dumps(sc))
    want = np.load(LEGACY / "latents.npy")
    res = pl.regenerate(tmp_path / "old.json", out=tmp_path / "again.mp4", progress=False, verify=False)
    assert res.sidecar["long_video"] == {**sc["long_video"], "timesteps": "model", "scale_in_queue": True}
    assert "timestep_spacing" not in res.sidecar["schedule"]
    err = np.abs(np.asarray(res.latents) - want).max() / np.abs(want).max()
    assert err < 1e-5, err  # the same program on another CPU may round differently; measured 0 here


@pytest.mark.parametrize("partitions", [1, 2])  # 2 or 4 windows an iteration: K = 1 or 2 windows per block
def test_the_queue_shift_on_two_blocks_equals_the_serial_shift(partitions):
    """fifo.shift_windows on 2 window blocks, where the frame moving back and the frames moving forward
    travel as one roll of the blocks' end windows (``_neighbour_frames``), gives every window the same next
    input as the one-block shift (D = 1, the two rolls of the serial path, which the reference parity test
    above checks), bit for bit, with K = 1 (fifo:8:1, the demo's) and K = 2 windows per block. Mutation:
    the forward frames taken from the block's first window instead of its last fails K = 2; from frame 0
    on fails both."""
    from vstar_jax.longvideo.fifo import _window_grid, shift_windows

    f, b, c, h, w = 6, 1, 2, 2, 2
    _, index, starts, write_from = queue_layout(f, partitions, True)
    n = len(starts)
    rng = np.random.default_rng(partitions)
    x_in = jnp.asarray(rng.standard_normal((n, b, c, f, h, w)), jnp.float32)  # rank order
    written = jnp.asarray(rng.standard_normal((n, b, c, f - write_from, h, w)), jnp.float32)
    fresh = jnp.asarray(rng.standard_normal((b, c, 1, h, w)), jnp.float32)
    one = shift_windows(x_in[None], written[None], fresh, _window_grid(starts, index, f, 1), True)[0]
    grid = _window_grid(starts, index, f, 2)
    assert grid.rank.shape == (2, n // 2) and (grid.rank.reshape(-1) == np.arange(n)).all()
    two = shift_windows(x_in.reshape((2, n // 2) + x_in.shape[1:]), written.reshape((2, n // 2) + written.shape[1:]),
                        fresh, grid, True)
    np.testing.assert_array_equal(np.asarray(two).reshape(one.shape), np.asarray(one))
