"""VidRD (vstar_jax.longvideo.vidrd): one clip is plain DDIM; FNR + PNS noise statistics; the staged
guidance weights; the whole clip-by-clip loop against a numpy transcription of the documented
choices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vstar_jax.diffusion import schedules as S
from vstar_jax.diffusion.sampler import prepare_sampling
from vstar_jax.longvideo import SampleInputs, VidRD, parse_strategy
from vstar_jax.longvideo.vidrd import CLIP_FOLD, PNS_FOLD, dsg_weights, pns_noise

from lvdm_reference import LvdmDDIM, cfg

CFG = 4.0


def model(x, t, ctx, i):
    c = ctx.mean(axis=(2, 3))[:, None, :, None, None] if ctx.ndim == 4 else ctx.mean(axis=(1, 2))[:, None, None,
                                                                                                   None, None]
    mix = 0.05 * x.mean(axis=2, keepdims=True)  # frames see each other (so the overlap steers new frames)
    return 0.1 * x + mix + c + 0.01 * i + 1e-5 * t[:, None, None, None, None].astype(jnp.float32)


def np_model(x, t, ctx, i):
    mix = 0.05 * x.mean(axis=2, keepdims=True)
    return 0.1 * x + mix + ctx.mean(axis=(1, 2))[None, None, :, None, None] + 0.01 * i + 1e-5 * t


STEPS = 6  # asks for 6 DDIM steps; lvdm's range(0, 1000, 1000 // 6) makes 7 of them


def _inputs(st, frames, eta, steps=STEPS, seed=0):
    sched = S.videocrafter2_schedule(steps, eta=eta)
    rng = np.random.default_rng(seed)
    cond = rng.standard_normal((frames, 3, 2)).astype(np.float32)
    uncond = rng.standard_normal((1, 3, 2)).astype(np.float32)
    key = jax.random.key(9)
    x_T = st.init_noise(jax.random.key(4), (1, 2, frames, 2, 3))
    x_T, _, ctx, co, keys, use_noise, guided = prepare_sampling(x_T, cond, uncond, sched, None, key, "t",
                                                                frames=frames)
    return sched, cond, uncond, key, SampleInputs(x_T, ctx, co, keys, key, jnp.float32(CFG), frames, guided, use_noise)


def _run(st, inputs):
    return jax.jit(lambda x, c: st.run(model, inputs._replace(x_T=x, context=c))[0])(inputs.x_T, inputs.context)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_one_clip_is_ddim(eta):
    st = VidRD(8, 4)
    sched, cond, uncond, key, inputs = _inputs(st, 8, eta)
    got = _run(st, inputs)
    ref = parse_strategy("single").sample(model, inputs.x_T, cond, uncond, sched, cfg_scale=CFG, key=key).latents
    assert np.abs(np.asarray(got) - np.asarray(ref)).max() / np.abs(np.asarray(ref)).max() < 1e-6


def test_pns_noise_keeps_unit_variance_and_correlates_frames():
    alpha = 0.5
    reused = jax.random.normal(jax.random.key(0), (4000, 1, 2, 1, 1))
    fresh = jax.random.normal(jax.random.key(1), (4000, 1, 6, 1, 1))
    e = np.asarray(pns_noise(reused, fresh, alpha))[:, 0, :, 0, 0]
    np.testing.assert_array_equal(e[:, :2], np.asarray(reused)[:, 0, :, 0, 0])
    assert np.allclose(e.std(axis=0), 1.0, atol=0.05)
    corr = [np.corrcoef(e[:, j - 1], e[:, j])[0, 1] for j in range(2, 8)]
    assert np.allclose(corr, alpha / np.sqrt(1 + alpha ** 2), atol=0.05), corr
    e0 = np.asarray(pns_noise(reused, fresh, 0.0))
    np.testing.assert_array_equal(e0[:, :, 2:], np.asarray(fresh))


def test_dsg_weights():
    assert dsg_weights(10, 0.4, 0.7).tolist() == pytest.approx([1, 1, 1, 1, 0.75, 0.5, 0.25, 0, 0, 0])
    for steps in (4, 5, 6, 7, 25, 50):  # against the docstring's formula (6: H = round(2.4) = 2)
        want = [_np_dsg_weight(i, steps, 0.4, 0.7) for i in range(steps)]
        assert dsg_weights(steps, 0.4, 0.7).tolist() == pytest.approx(want, abs=1e-7), steps
    assert dsg_weights(5, 0.0, 0.0).tolist() == [0] * 5 and dsg_weights(4, 1.0, 1.0).tolist() == [1] * 4


def _np_dsg_weight(i, steps, hard_until, soft_until):
    """The DSG weight of loop index i as vidrd.py's module docstring states it: 1 while
    i < H = round(hard_until x steps), then w = 1 - (i - H + 1) / (S - H + 1) while
    i < S = round(soft_until x steps), then 0."""
    hard, soft = round(hard_until * steps), round(soft_until * steps)
    if i < hard:
        return 1.0
    if i < soft:
        return 1.0 - (i - hard + 1) / (soft - hard + 1)
    return 0.0


def _np_vidrd(st, x_T, cond, uncond, steps, eta, key, frames):
    """VidRD has no official code: this transcribes the choices written in vstar_jax/longvideo/vidrd.py's
    module docstring (docs/long-videos.md "Choices where the reference is silent"; SPEC: FNR, PNS, DSG), not its
    functions. The DDIM loop of each clip is VideoCrafter2's (tests/lvdm_reference.py); noise keys
    follow the docstring's PRNG rule."""
    f, o = st.window, st.overlap
    ddim = LvdmDDIM(steps, eta)
    n = ddim.total_steps

    def denoise(x, ctx, keys, cache):
        """One clip's DDIM loop; before step i the first O latents get DSG from the previous clip's
        cache of that step; returns x_0 and this clip's last O latents before every step."""
        x = np.asarray(x, np.float64).copy()
        traj = []
        for i, step, index in ddim.time_range():
            if cache is not None:
                w = _np_dsg_weight(i, n, st.hard_until, st.soft_until)
                x[:, :, :o] = w * cache[i] + (1 - w) * x[:, :, :o]
            traj.append(x[:, :, f - o:].copy())
            e_t = cfg(np_model(x, step, np.broadcast_to(uncond, ctx.shape), i), np_model(x, step, ctx, i), CFG)
            noise = np.asarray(jax.random.normal(keys[i], x.shape), np.float64) if eta > 0 else None
            x, _ = ddim.p_sample_ddim(x, e_t, index, noise)
        return x, traj

    noise = np.asarray(x_T, np.float64)
    x, cache = denoise(noise, cond[:f], jax.random.split(key, n), None)  # clip 0: the pipeline's step keys
    video = [x]
    norm = 1 / np.sqrt(1 + st.pns_alpha ** 2)
    for k, s in enumerate(range(f - o, frames - f + 1, f - o), start=1):  # clip k starts O before clip k-1's end
        fresh = np.asarray(jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, PNS_FOLD), k),
                                             (1, 2, f - o, 2, 3)), np.float64)
        new = noise[:, :, ::-1][:, :, :o].copy()  # FNR: frame j gets clip k-1's noise frame F - 1 - j
        chain = [new[:, :, -1]]
        for j in range(f - o):  # PNS: eps_j = (a eps_{j-1} + d_j) / sqrt(1 + a^2) from the last reused one
            chain.append((st.pns_alpha * chain[-1] + fresh[:, :, j]) * norm)
        noise = np.concatenate([new, np.stack(chain[1:], axis=2)], axis=2)
        keys = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, CLIP_FOLD), k), n)
        x, cache = denoise(noise, cond[s:s + f], keys, cache)
        video.append(x[:, :, o:])  # the video keeps clip k-1's overlap frames
    return np.concatenate(video, axis=2)


@pytest.mark.parametrize("window, overlap, eta", [(6, 2, 1.0), (6, 3, 0.0)])
def test_vidrd_matches_the_documented_algorithm(window, overlap, eta):
    st = VidRD(window, overlap)
    frames = window + 2 * (window - overlap)
    sched, cond, uncond, key, inputs = _inputs(st, frames, eta, seed=window + overlap)
    got = np.asarray(_run(st, inputs), np.float64)
    assert got.shape == (1, 2, frames, 2, 3)
    ref = _np_vidrd(st, inputs.x_T, cond, uncond, STEPS, eta, key, frames)
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err < 1e-5, err  # float32 product vs float64 reference, 6 steps x 3 clips: rounding only
    # the overlap guidance matters: without it the clips differ
    free = np.asarray(_run(VidRD(window, overlap, hard_until=0.0, soft_until=0.0), inputs))
    assert np.abs(free - got)[:, :, window:].max() > 1e-3


def test_lengths_and_settings():
    st = VidRD(16, 8)
    assert st.check(32, 25).calls == 3 * 25
    with pytest.raises(ValueError, match="use 24 or 32 frames"):
        st.check(30, 25)
    with pytest.raises(ValueError, match="hard_until <= soft_until"):
        VidRD(16, 8, hard_until=0.8, soft_until=0.5)
    assert VidRD.from_spec("window=8,overlap=4,pns_alpha=0") == VidRD(8, 4, pns_alpha=0.0)
