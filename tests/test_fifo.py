"""FIFO-Diffusion (vstar_jax.longvideo.fifo) against a numpy transcription of the reference's
``fifo_ddim_sampling`` (jjihwan/FIFO-Diffusion_public, scripts/evaluation/funcs.py): the queue
layout, per-frame (diagonal) timesteps, prepare_latents, the sequential rank loop with lookahead,
dequeue/enqueue; plus the UNet's per-frame timestep embedding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vstar_jax.diffusion import schedules as S
from vstar_jax.diffusion.sampler import prepare_sampling
from vstar_jax.longvideo import FIFO, SampleInputs
from vstar_jax.longvideo.fifo import ITER_FOLD, QUEUE_FOLD, queue_layout

CFG = 5.0


def pf_model(x, t, ctx, i):
    """eps depends on x, on each frame's own timestep, on the frame's context and on i."""
    t = jnp.asarray(t, jnp.float32)
    tf = t[:, None, :, None, None] if t.ndim == 2 else t[:, None, None, None, None]
    c = ctx.mean(axis=(2, 3))[:, None, :, None, None] if ctx.ndim == 4 else ctx.mean(axis=(1, 2))[:, None, None,
                                                                                                   None, None]
    return 0.1 * x + 1e-3 * tf + c + 0.01 * i


def np_model(x, t, ctx, i):
    t = np.asarray(t, np.float64)
    return 0.1 * x + 1e-3 * t[None, None, :, None, None] + ctx.mean(axis=(1, 2))[None, None, :, None, None] + 0.01 * i


def test_queue_layout():
    prefix, index, starts, write_from = queue_layout(4, 2, True)
    assert prefix == 2 and index.tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6, 7]
    assert starts.tolist() == [6, 4, 2, 0] and write_from == 2  # 2n windows of F every F/2, reversed ranks
    prefix, index, starts, write_from = queue_layout(4, 2, False)
    assert prefix == 0 and index.tolist() == list(range(8)) and starts.tolist() == [4, 0] and write_from == 0


def _np_fifo(x_T, cond_pf, uncond, sched, key, window, partitions, lookahead, frames):
    """The reference loop in float64, the noise drawn with the strategy's documented keys."""
    f, L = window, window * partitions
    co = sched.coefficients()  # loop order
    ref = {k: np.asarray(v[::-1], np.float64) for k, v in co.items()}
    use_noise = bool((co["sigma"] > 0).any())
    step_keys = jax.random.split(key, L)

    def guided(x, t, c_rows, i):
        e_u = np_model(x, t, np.broadcast_to(uncond, c_rows.shape), i)
        e_c = np_model(x, t, c_rows, i)
        return e_u + CFG * (e_c - e_u)

    def step(x, eps, j):  # one DDIM step of a frame at reference index j (arrays per frame)
        x0 = (x - ref["sqrt_one_minus_alpha"][j] * eps) / ref["sqrt_alpha"][j] / ref["scale"][j]
        return ref["prev_x0_coef"][j] * x0 + ref["dir_coef"][j] * eps

    # base clip: plain DDIM over the first F frames
    x = np.asarray(x_T, np.float64)
    for i in range(L):
        j = np.full(f, L - 1 - i)
        x = step(x, guided(x, ref["timesteps"][j], cond_pf[:f], i), j[None, None, :, None, None])
        if use_noise:
            x = x + ref["sigma"][L - 1 - i] * np.asarray(jax.random.normal(step_keys[i], x.shape), np.float64)
    base = x
    # prepare_latents
    prefix = f // 2 if lookahead else 0
    b, c, _, h, w = base.shape
    qn = np.asarray(jax.random.normal(jax.random.fold_in(key, QUEUE_FOLD), (b, c, prefix + L, h, w)), np.float64)
    lat = []
    for i in range(prefix):
        lat.append(ref["sqrt_alpha"][0] * base[:, :, 0] + ref["sqrt_one_minus_alpha"][0] * qn[:, :, i])
    for i in range(L):
        fi = max(0, i - (L - f))
        lat.append(ref["sqrt_alpha"][i] * base[:, :, fi] + ref["sqrt_one_minus_alpha"][i] * qn[:, :, prefix + i])
    q = np.stack(lat, axis=2)
    ts = np.concatenate([np.full(prefix, ref["timesteps"][0]), ref["timesteps"]])
    idx_all = np.concatenate([np.zeros(prefix, int), np.arange(L)])
    outs = []
    k_iter = jax.random.fold_in(key, ITER_FOLD)
    n_ranks = 2 * partitions if lookahead else partitions
    for it in range(frames + L - f):
        k_new, k_step = jax.random.split(jax.random.fold_in(k_iter, it))
        for wi, rank in enumerate(reversed(range(n_ranks))):
            s = rank * (f // 2) if lookahead else rank * f
            idx = idx_all[s:s + f]
            frame_of = np.clip(it + s + np.arange(f) - prefix - (L - f), 0, frames - 1)
            xw = q[:, :, s:s + f].copy()
            eps = guided(xw, ts[s:s + f], cond_pf[frame_of], L - 1 - idx[f // 2])
            out = step(xw, eps, idx[None, None, :, None, None])
            if use_noise:
                out = out + ref["sigma"][idx][None, None, :, None, None] * np.asarray(
                    jax.random.normal(jax.random.fold_in(k_step, wi), xw.shape), np.float64)
            if lookahead:
                q[:, :, s + f // 2:s + f] = out[:, :, f // 2:]
            else:
                q[:, :, s:s + f] = out
        outs.append(q[:, :, prefix].copy())
        q[:, :, :-1] = q[:, :, 1:].copy()
        q[:, :, -1] = np.asarray(jax.random.normal(k_new, (b, c, 1, h, w)), np.float64)[:, :, 0]
    return np.stack(outs[L - f:], axis=2)


@pytest.mark.parametrize("window, partitions, lookahead, eta", [(4, 2, True, 1.0), (4, 1, False, 0.0),
                                                                 (2, 4, True, 0.0)])
def test_fifo_matches_the_reference_loop(window, partitions, lookahead, eta):
    frames = 9
    st = FIFO(window, partitions, lookahead)
    L = st.queue_steps
    sched = S.videocrafter2_schedule(L, eta=eta)
    rng = np.random.default_rng(window * 10 + partitions)
    cond = rng.standard_normal((frames, 3, 2)).astype(np.float32)
    uncond = rng.standard_normal((1, 3, 2)).astype(np.float32)
    key_x, key = jax.random.key(1), jax.random.key(2)
    x_T = st.init_noise(key_x, (1, 2, frames, 2, 2))
    assert x_T.shape == (1, 2, window, 2, 2)  # the base clip's noise
    x_T, _, context, coeffs, keys, use_noise, guided = prepare_sampling(x_T, cond, uncond, sched, None, key, "t",
                                                                        frames=frames)
    inputs = SampleInputs(x_T, context, coeffs, keys, key, jnp.float32(CFG), frames, guided, use_noise)
    got, _ = jax.jit(lambda x, ctx: st.run(pf_model, inputs._replace(x_T=x, context=ctx)))(x_T, context)
    assert got.shape == (1, 2, frames, 2, 2)
    ref = _np_fifo(np.asarray(x_T), cond, uncond, sched, key, window, partitions, lookahead, frames)
    err = np.abs(np.asarray(got, np.float64) - ref).max() / np.abs(ref).max()
    assert err < 1e-5, err


def test_unet_takes_one_timestep_per_frame():
    """(b, f) timesteps: each frame embedded with its own t (equal to running that t for all frames
    on that frame when the UNet has no temporal mixing of the embedding); equal t == the (b,) path."""
    from configs import unet_tiny
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
