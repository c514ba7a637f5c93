"""Chunked long-video sampling (vstar_jax.longvideo): the strategy protocol and registry, window
math, Gen-L-Video averaging, StreamingT2V randomized blending, reduction to the single pass at N == F,
compile size. Every sampler call goes through the registry and ``Strategy.sample`` (what the pipeline runs)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vstar_jax.diffusion import sampler as SP
from vstar_jax.diffusion import schedules as S
from vstar_jax.longvideo import windows as W
from vstar_jax.longvideo import Blend, GenL, parse_strategy
from vstar_jax.longvideo.blend import blend_offsets

from conftest import strategy_sample
from lvdm_reference import LvdmDDIM, cfg

CFG = 7.5


def sample(spec, model_fn, x_T, cond, uncond, sched, **kw):
    """The strategy named ``spec`` from the registry, sampled as the pipeline samples (``Strategy.sample``)."""
    return strategy_sample(spec, model_fn, x_T, cond, uncond, sched, **kw)


def genl_sample(model_fn, x_T, cond, uncond, sched, *, window, stride, **kw):
    return sample(f"genl:{window}:{stride}", model_fn, x_T, cond, uncond, sched, **kw)


def blend_sample(model_fn, x_T, cond, uncond, sched, *, window, overlap, **kw):
    return sample(f"blend:{window}:{overlap}", model_fn, x_T, cond, uncond, sched, **kw)


# ----------------------------------------------------------------------------- dummy models
def dummy_model(x, t, ctx, i):
    """eps = 0.1 x + 0.01 * (frame position in the window) + mean(context of the frame)
    + 0.001 * step_index + 1e-5 * t: depends on the window, the per-frame context and i."""
    f = x.shape[2]
    pos = 0.01 * jnp.arange(f, dtype=jnp.float32)[None, None, :, None, None]
    if ctx.ndim == 4:
        c = ctx.mean(axis=(2, 3))[:, None, :, None, None]
    else:
        c = ctx.mean(axis=(1, 2))[:, None, None, None, None]
    return 0.1 * x + pos + c + 0.001 * i + 1e-5 * t[:, None, None, None, None].astype(jnp.float32)


def dummy_model_np(x, t, ctx, i):
    f = x.shape[2]
    pos = 0.01 * np.arange(f)[None, None, :, None, None]
    if ctx.ndim == 4:
        c = ctx.mean(axis=(2, 3))[:, None, :, None, None]
    else:
        c = ctx.mean(axis=(1, 2))[:, None, None, None, None]
    return 0.1 * x + pos + c + 0.001 * i + 1e-5 * t


def start_model(x, t, ctx, i):
    """eps = 1 + the window's first frame index (the per-frame context holds frame numbers)."""
    return jnp.broadcast_to(1.0 + ctx[:, :1].mean(axis=(1, 2, 3))[:, None, None, None, None], x.shape)


# ------------------------------------------------------------------------- numpy references
def _noises(key, n, shape):
    """The step noise as the product draws it (step i: normal(split(key, n)[i], shape)): a raw input."""
    return [np.asarray(jax.random.normal(k, shape, jnp.float32), np.float64) for k in jax.random.split(key, n)]


# G-U-N/Gen-L-Video (commit e31cd2c) glv/pipelines/pipeline_tuning_free.py:941-948 (get_views):
# (N - W) // S + 1 windows at i * S.
def glv_get_views(video_length, window_size, stride):
    return [(i * stride, i * stride + window_size) for i in range((video_length - window_size) // stride + 1)]


def genl_reference(x_T, cond, uncond, steps, eta, key, window, stride):
    """Gen-L-Video's denoising loop, G-U-N/Gen-L-Video glv/pipelines/pipeline_tuning_free.py:561-597
    (per view: CFG, one scheduler step of the view; value += x_prev, count += 1; latents =
    where(count > 0, value / count, value)), with VideoCrafter2's DDIM step (tests/lvdm_reference.py)
    as the scheduler. Two documented choices of vstar_jax/longvideo/genl.py differ from that code and
    are written out here: (1) a last window anchored at N - F when the stride does not land there
    (get_views leaves those frames uncovered, i.e. zero); (2) the step noise is one draw for the long
    latent, each view adding its slice (the reference's scheduler draws fresh noise per view, which
    averaging shrinks); adding a shared slice per view is the same as adding it after the average."""
    n_frames = x_T.shape[2]
    ddim = LvdmDDIM(steps, eta)
    views = glv_get_views(n_frames, window, stride)
    if views[-1][1] != n_frames:  # choice (1)
        views.append((n_frames - window, n_frames))
    noises = _noises(key, ddim.total_steps, x_T.shape)
    latents = x_T.astype(np.float64)
    for i, step, index in ddim.time_range():
        count = np.zeros_like(latents)
        value = np.zeros_like(latents)
        for t_start, t_end in views:
            view = latents[:, :, t_start:t_end]
            e_t = cfg(dummy_model_np(view, step, uncond[None, t_start:t_end], i),
                      dummy_model_np(view, step, cond[None, t_start:t_end], i), CFG)
            noise = noises[i][:, :, t_start:t_end] if eta > 0 else None  # choice (2)
            view_prev, _ = ddim.p_sample_ddim(view, e_t, index, noise)
            value[:, :, t_start:t_end] += view_prev
            count[:, :, t_start:t_end] += 1
        latents = np.where(count > 0, value / np.maximum(count, 1), value)
    return latents


BLEND_OFFSET_FOLD = 0x626C6E64  # Blend.rng_rule(): the offsets' key is fold_in(k_steps, 0x626c6e64)


def _blend_offsets_raw(key, steps, n_chunks, overlap):
    """The documented PRNG rule of the offsets (randint(fold_in(k, 0x626c6e64), (steps, chunks), 0, O));
    the reference draws random.randint(0, O - 1) at the same places."""
    return np.asarray(jax.random.randint(jax.random.fold_in(key, BLEND_OFFSET_FOLD), (steps, n_chunks), 0, overlap))


def _streamingt2v_n_chunks(n_frames, chunk_size, overlap_size):
    n, chunk_start = 0, 0
    while chunk_start + chunk_size <= n_frames:  # the loop of diffusion_sdedit.py:171
        n, chunk_start = n + 1, chunk_start + chunk_size - overlap_size
    return n


def streamingt2v_blend_x0(xt, chunk_size, overlap_size, offsets, chunk_x0):
    """Picsart-AI-Research/StreamingT2V, branch StreamingModelscope (commit a8aceea),
    t2v_enhanced/thirdparty/modelscope/models/multi_modal/video_to_video/utils/diffusion_sdedit.py:168-188
    (model_fn): chunks in order from 0 by chunk_size - overlap_size while they fit; chunk 0 writes all
    its frames, a later chunk writes x0 from chunk_start + random_offset on. ``chunk_x0(start)`` is the
    chunk's x0 prediction; ``offsets[k]`` the k-th chunk's random_offset. Returns (x0, owner start)."""
    x0 = np.full(xt.shape, np.nan)
    owner = np.full(xt.shape[2], -1)
    chunk_start, k = 0, 0
    while chunk_start + chunk_size <= xt.shape[2]:
        x0_chunk = chunk_x0(chunk_start)
        random_offset = 0 if chunk_start == 0 else int(offsets[k])
        x0[:, :, chunk_start + random_offset:chunk_start + chunk_size] = x0_chunk[:, :, random_offset:]
        owner[chunk_start + random_offset:chunk_start + chunk_size] = chunk_start
        chunk_start += chunk_size - overlap_size
        k += 1
    if chunk_start + overlap_size > xt.shape[2]:
        raise NotImplementedError("not dividable into chunks")
    assert not np.isnan(x0).any()  # (torch.empty_like there: an uncovered frame would be garbage)
    return x0, owner


def blend_reference(x_T, cond, uncond, steps, eta, key, window, overlap):
    """StreamingT2V's randomized blending (``streamingt2v_blend_x0``) driving VideoCrafter2's DDIM step
    (tests/lvdm_reference.py): each chunk's x0 is lvdm's pred_x0 of the chunk; the solver step of the
    whole latent takes the blended x0, its eps recomputed from x0 as diffusion_sdedit.py:106 does.
    The whole long latent is noised once (SPEC: overlaps share noise)."""
    n_frames = x_T.shape[2]
    ddim = LvdmDDIM(steps, eta)
    offsets = _blend_offsets_raw(key, ddim.total_steps, _streamingt2v_n_chunks(n_frames, window, overlap), overlap)
    noises = _noises(key, ddim.total_steps, x_T.shape)
    x = x_T.astype(np.float64)
    for i, step, index in ddim.time_range():
        def chunk_x0(s, x=x, i=i, step=step, index=index):
            xw = x[:, :, s:s + window]
            e_t = cfg(dummy_model_np(xw, step, uncond[None, s:s + window], i),
                      dummy_model_np(xw, step, cond[None, s:s + window], i), CFG)
            return ddim.p_sample_ddim(xw, e_t, index)[1]

        x0, _ = streamingt2v_blend_x0(x, window, overlap, offsets[i], chunk_x0)
        eps = ddim.eps_from_x0(x, x0, index)
        x, _ = ddim.p_sample_ddim(x, eps, index, noises[i] if eta > 0 else None)
    return x


def _inputs(n_frames, seed=0, h=3, w=2):
    rng = np.random.default_rng(seed)
    x_T = rng.standard_normal((1, 2, n_frames, h, w)).astype(np.float32)
    cond = rng.standard_normal((n_frames, 5, 4)).astype(np.float32)  # per frame (VSP)
    uncond = np.broadcast_to(rng.standard_normal((1, 5, 4)).astype(np.float32), (n_frames, 5, 4)).copy()
    return x_T, cond, uncond


def _scaled_err(a, ref):
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return np.abs(a - ref).max() / max(1.0, np.abs(ref).max())


# ------------------------------------------------------------------------------- window math
def test_sliding_starts_gen_l_video():
    np.testing.assert_array_equal(W.sliding_starts(32, 16, 8), [0, 8, 16])
    np.testing.assert_array_equal(W.sliding_starts(64, 16, 8), [0, 8, 16, 24, 32, 40, 48])
    np.testing.assert_array_equal(W.sliding_starts(16, 16, 8), [0])
    # a stride that does not land on N - F gets a last window anchored at the end
    np.testing.assert_array_equal(W.sliding_starts(30, 16, 8), [0, 8, 14])
    np.testing.assert_array_equal(W.coverage(30, 16, [0, 8, 14]),
                                  [1] * 8 + [2] * 6 + [3] * 2 + [2] * 8 + [1] * 6)
    np.testing.assert_array_equal(W.coverage(32, 16, [0, 8, 16]), [1] * 8 + [2] * 16 + [1] * 8)


def test_chunk_starts_streaming_t2v():
    np.testing.assert_array_equal(W.chunk_starts(24, 24, 8), [0])
    np.testing.assert_array_equal(W.chunk_starts(56, 24, 8), [0, 16, 32])
    assert W.nearest_chunk_lengths(60, 24, 8) == (56, 72)
    assert W.nearest_chunk_lengths(10, 24, 8) == (None, 24)
    with pytest.raises(ValueError, match=r"60 frames do not split into chunks of 24 overlapping 8.*use 56 or 72"):
        W.chunk_starts(60, 24, 8)
    np.testing.assert_array_equal(W.chunk_starts(60, 24, 8, trim=True), [0, 16, 32])


@pytest.mark.parametrize("call, msg", [
    (lambda: W.sliding_starts(8, 16, 8), "window 16 is longer than the video"),
    (lambda: W.sliding_starts(32, 16, 17), "stride 17 > window 16"),
    (lambda: W.sliding_starts(32, 16, 0), "stride must be >= 1"),
    (lambda: W.sliding_starts(32.0, 16, 8), "frames must be an integer"),
    (lambda: W.chunk_starts(16, 24, 8), "window 24 is longer than the video"),
    (lambda: W.chunk_starts(40, 24, 24), "overlap 24 must be smaller than the window 24"),
    (lambda: W.chunk_starts(40, 24, 0), "overlap must be >= 1"),
])
def test_window_errors(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()


def test_parse_strategy():
    assert parse_strategy(None).name == "single" and parse_strategy("none").name == "single"
    assert parse_strategy("genl:16:8") == GenL(16, 8)
    assert parse_strategy("genl:window=16,stride=8") == GenL(16, 8)
    cfg = parse_strategy({"method": "blend", "window": 24, "overlap": 8})
    assert cfg == Blend(24, 8) and hash(cfg) == hash(Blend(24, 8))
    assert cfg.to_dict() == {"method": "blend", "window": 24, "overlap": 8}
    assert parse_strategy(cfg.to_dict()) == cfg and parse_strategy(cfg.spec()) == cfg
    assert cfg.check(56, 25).calls == 3 * 25 and GenL(16, 8).check(64, 25).calls == 7 * 25
    for bad, msg in [("genl:16:8:2", "at most 2 numbers"), ("loop:16:4", "unknown long-video method 'loop'"),
                     ("genl:16:x", "stride must be an int"), ("genl:8:16", "stride 16 > window 8"),
                     ("genl:0:1", "window must be a positive integer"), ("blend:8:8", "overlap 8 must be smaller"),
                     ({"method": "genl", "window": 16, "overlap": 8}, "unexpected"), (3, "must be None")]:
        with pytest.raises(ValueError, match=msg):
            parse_strategy(bad)
    with pytest.raises(ValueError, match="known: blend, fifo, freenoise, genl, single, streaming, vidrd"):
        parse_strategy("loop")
    with pytest.raises(ValueError, match="use 56 or 72 frames"):
        cfg.check(60, 25)


# ------------------------------------------------------------------------------ samplers
@pytest.mark.parametrize("steps, eta", [(4, 1.0), (7, 0.5), (25, 1.0)])
def test_lvdm_reference_precision_is_torchs(steps, eta):
    """tests/lvdm_reference.py's schedule against the reference's own torch/numpy expressions run with
    torch (ddpm3d.py:118-133, utils_diffusion.py:76-80, ddim.py:56 and torch.full): bit for bit."""
    torch = pytest.importorskip("torch")
    ddim = LvdmDDIM(steps, eta)
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    ac = torch.tensor(np.cumprod(1.0 - betas.numpy()), dtype=torch.float32)
    ts = ddim.ddim_timesteps
    alphas = ac[ts]
    alphas_prev = np.asarray([ac[0]] + ac[ts[:-1]].tolist())
    sigmas = eta * np.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev))  # noqa: mixed on purpose
    for index in range(ddim.total_steps):
        got = ddim.scalars(index)
        assert got["a_t"] == torch.full((1,), alphas[index])[0].item()
        assert got["a_prev"] == torch.full((1,), alphas_prev[index])[0].item()
        assert got["sigma_t"] == torch.full((1,), sigmas[index])[0].item()
        assert got["sqrt_one_minus_at"] == np.asarray(np.sqrt(1.0 - alphas))[index]


@pytest.mark.parametrize("per_frame, eta", [(True, 1.0), (False, 1.0), (False, 0.0)])
def test_both_reduce_to_ddim_sample_when_n_equals_f(per_frame, eta):
    sched = S.videocrafter2_schedule(5, eta=eta)
    x_T, cond, uncond = _inputs(8)
    if not per_frame:
        cond, uncond = cond[:1], uncond[:1]
    key = jax.random.key(3)
    ref = sample("single", dummy_model, x_T, cond, uncond, sched, cfg_scale=CFG, key=key, return_x0=True)
    g = genl_sample(dummy_model, x_T, cond, uncond, sched, window=8, stride=4, cfg_scale=CFG, key=key,
                    return_x0=True)
    b = blend_sample(dummy_model, x_T, cond, uncond, sched, window=8, overlap=3, cfg_scale=CFG, key=key,
                     return_x0=True)
    # blending one chunk is the same arithmetic: bit for bit
    np.testing.assert_array_equal(b.latents, ref.latents)
    np.testing.assert_array_equal(b.pred_x0, ref.pred_x0)
    # averaging one window: XLA fuses the step differently (measured <= 3.8e-7 of the scale ~25)
    assert _scaled_err(g.latents, ref.latents) < 1e-6
    assert _scaled_err(g.pred_x0, ref.pred_x0) < 1e-6


@pytest.mark.parametrize("n_frames, window, stride", [(12, 4, 2), (11, 4, 3), (16, 8, 8)])
def test_genl_matches_numpy_averaging(n_frames, window, stride):
    sched = S.videocrafter2_schedule(4, eta=1.0)
    x_T, cond, uncond = _inputs(n_frames, seed=n_frames)
    key = jax.random.key(7)
    out = genl_sample(dummy_model, x_T, cond, uncond, sched, window=window, stride=stride, cfg_scale=CFG,
                      key=key).latents
    ref = genl_reference(x_T, cond, uncond, 4, 1.0, key, window, stride)
    err = _scaled_err(out, ref)
    assert err < 1e-5, err  # float32 product vs float64 reference over 4 steps; the bugs this catches are >> 1e-3
    if n_frames == 12:  # the windows matter: co-denoising differs from one pass over all frames
        full = sample("single", dummy_model, x_T, cond, uncond, sched, cfg_scale=CFG, key=key).latents
        assert _scaled_err(out, full) > 1e-3


@pytest.mark.parametrize("n_frames, window, overlap", [(12, 6, 3), (14, 6, 2), (11, 5, 2), (10, 6, 4)])
def test_blend_matches_numpy_reference(n_frames, window, overlap):
    sched = S.videocrafter2_schedule(4, eta=1.0)
    x_T, cond, uncond = _inputs(n_frames, seed=n_frames)
    key = jax.random.key(11)
    out = blend_sample(dummy_model, x_T, cond, uncond, sched, window=window, overlap=overlap, cfg_scale=CFG,
                       key=key).latents
    ref = blend_reference(x_T, cond, uncond, 4, 1.0, key, window, overlap)
    err = _scaled_err(out, ref)
    assert err < 1e-5, err  # float32 product vs float64 reference (rounding ~1e-7); a wrong chunk or offset is >> 1e-3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blend_takes_chunk_k_minus_1_before_s_k_plus_r_k(seed):
    """eps of a frame = 1 + the start of the chunk it was taken from; recover it from pred_x0."""
    n_frames, window, overlap, steps = 16, 6, 4, 4
    sched = S.videocrafter2_schedule(steps, eta=0.0)
    frame_ctx = np.broadcast_to(np.arange(n_frames, dtype=np.float32)[:, None, None], (n_frames, 2, 2)).copy()
    key = jax.random.key(seed)
    out = blend_sample(start_model, np.zeros((1, 1, n_frames, 1, 1), np.float32), frame_ctx, None, sched,
                       window=window, overlap=overlap, key=key, return_x0=True)
    n_chunks = _streamingt2v_n_chunks(n_frames, window, overlap)
    offsets = np.asarray(blend_offsets(key, steps, n_chunks, overlap))
    assert offsets[:, 0].tolist() == [0] * steps and offsets.min() >= 0 and offsets.max() < overlap
    raw = _blend_offsets_raw(key, steps, n_chunks, overlap)  # the documented rule, drawn here
    ddim = LvdmDDIM(steps, 0.0)
    x = np.zeros((1, 1, n_frames, 1, 1))
    seen_offsets = set()
    for i, _, index in ddim.time_range():
        x0 = np.asarray(out.pred_x0[i], np.float64)
        eps = ddim.eps_from_x0(x, x0, index)
        owner_start = np.rint(eps - 1).astype(int).reshape(-1)
        _, expected = streamingt2v_blend_x0(x, window, overlap, raw[i], lambda s: np.zeros((1, 1, window, 1, 1)))
        assert owner_start.tolist() == expected.tolist(), (i, raw[i])
        seen_offsets.update(raw[i, 1:].tolist())
        x, _ = ddim.p_sample_ddim(x, eps, index)
    assert len(seen_offsets) > 1  # offsets are drawn fresh per chunk and step


def test_deterministic_for_a_key_and_key_matters():
    sched = S.videocrafter2_schedule(4, eta=1.0)
    x_T, cond, uncond = _inputs(12)

    def run(fn, k, **kw):
        return np.asarray(fn(dummy_model, x_T, cond, uncond, sched, key=jax.random.key(k), **kw).latents)

    for fn, kw in ((genl_sample, {"window": 4, "stride": 2}), (blend_sample, {"window": 6, "overlap": 3})):
        a, b, c = run(fn, 0, **kw), run(fn, 0, **kw), run(fn, 1, **kw)
        np.testing.assert_array_equal(a, b)
        assert np.abs(a - c).max() > 1e-3
    # eta = 0: blend offsets still come from the key
    sched0 = S.videocrafter2_schedule(4, eta=0.0)
    a = blend_sample(dummy_model, x_T, cond, uncond, sched0, window=6, overlap=3, key=jax.random.key(0)).latents
    b = blend_sample(dummy_model, x_T, cond, uncond, sched0, window=6, overlap=3, key=jax.random.key(5)).latents
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-4
    with pytest.raises(ValueError, match="needs a PRNG key"):
        blend_sample(dummy_model, x_T, cond, uncond, sched0, window=6, overlap=3)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        genl_sample(dummy_model, x_T, cond, uncond, sched, window=4, stride=2)


def test_capture_aux_is_stacked_per_step_and_window():
    sched = S.videocrafter2_schedule(4, eta=0.0)
    x_T, cond, uncond = _inputs(12)

    def model(x, t, ctx, i):
        return dummy_model(x, t, ctx, i), {"seen": ctx.mean(axis=(2, 3))[1], "i": i}

    out = genl_sample(model, x_T, cond, uncond, sched, window=4, stride=4, cfg_scale=CFG, capture=True)
    assert out.aux["seen"].shape == (4, 3, 4)
    np.testing.assert_array_equal(out.aux["i"], np.repeat(np.arange(4)[:, None], 3, axis=1))  # TAR step index
    np.testing.assert_allclose(out.aux["seen"][0].reshape(-1), cond.mean(axis=(1, 2)), atol=1e-6)  # per-frame ctx


def _count_eqns(jaxpr) -> int:
    n = 0
    for eqn in jaxpr.eqns:
        n += 1
        for v in eqn.params.values():
            for sub in (v if isinstance(v, (tuple, list)) else (v,)):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    n += _count_eqns(inner)
    return n


@pytest.mark.parametrize("method, kw", [(genl_sample, {"window": 16, "stride": 8}),
                                        (blend_sample, {"window": 16, "overlap": 8})])
def test_compiled_program_does_not_grow_with_frames(method, kw):
    sched = S.videocrafter2_schedule(4, eta=1.0)
    sizes, calls = [], []
    for n_frames in (32, 64):
        x_T, cond, uncond = _inputs(n_frames, h=2, w=2)
        traced = []

        def model(x, t, ctx, i):
            traced.append(x.shape)
            return dummy_model(x, t, ctx, i)

        fn = lambda x, c, u, k: method(model, x, c, u, sched, key=k, cfg_scale=CFG, **kw).latents  # noqa: E731,B023
        jaxpr = jax.make_jaxpr(fn)(x_T, cond, uncond, jax.random.key(0))
        sizes.append(_count_eqns(jaxpr.jaxpr))
        calls.append(traced)
    assert sizes[0] == sizes[1]
    assert calls == [[(2, 2, 16, 2, 2)], [(2, 2, 16, 2, 2)]]  # one model call traced, on one window


_W1 = np.linspace(-1, 1, 4 * 512, dtype=np.float32).reshape(4, 512)


def wide_model(x, t, ctx, i):
    """A model with an activation 128x the size of its input (a matmul XLA cannot fuse away)."""
    h = jnp.tanh(jnp.einsum("bcfhw,cd->bfhwd", x, _W1))
    return x + jnp.einsum("bfhwd,cd->bcfhw", h, _W1) + ctx.mean()


def test_working_memory_is_bounded_by_the_window_not_the_length():
    """XLA's temp buffer for 64 frames is about that of 16 frames (windows of 8); measured on
    CPU: 16.4 -> 17.3 MiB for genl, while one pass over all frames grows 32 -> 259 MiB for 16 -> 128."""
    sched = S.videocrafter2_schedule(4, eta=1.0)
    temps = []
    for n_frames in (16, 64):
        x, c = jnp.zeros((1, 4, n_frames, 16, 16)), jnp.zeros((1, 7, 8))
        fn = lambda x, c, k: genl_sample(wide_model, x, c, c, sched, window=8, stride=4, key=k).latents  # noqa: E731
        mem = jax.jit(fn).lower(x, c, jax.random.key(0)).compile().memory_analysis()
        if mem is None:
            pytest.skip("this backend reports no memory analysis")
        temps.append(mem.temp_size_in_bytes)
    window_activation = 2 * 8 * 16 * 16 * 512 * 4  # CFG rows x window x pixels x width x float32
    assert temps[0] > window_activation  # the activation is really materialized
    assert temps[1] - temps[0] < 0.25 * window_activation, temps  # 4x the frames, not 4x the memory


# ------------------------------------------------------------------------ pipeline and CLI
PROMPT = "a red ball rolls to the right"


@pytest.fixture(scope="module")
def tiny_ckpt():
    from tiny_checkpoint import shared_tiny_checkpoint

    return shared_tiny_checkpoint()


def test_pipeline_rejects_bad_long_video_before_loading(tiny_ckpt, monkeypatch, tmp_path):
    from vstar_jax import pipeline as pl

    def boom(*a, **k):
        raise AssertionError("the model must not be loaded or run for a bad input")

    monkeypatch.setattr(pl, "load_pipeline", boom)
    monkeypatch.setattr(pl, "_compiled_sampler", boom)
    cases = [
        (dict(frames=12, long_video="genl:4:2:1"), "at most 2 numbers"),
        (dict(frames=12, long_video={"method": "fifo", "window": 4, "stride": 2}), "unexpected ['stride']"),
        (dict(frames=12, long_video={"method": "loop"}), "unknown long-video method"),
        (dict(frames=12, long_video="genl:16:8"), "window 16 is longer than the video (12 frames)"),
        (dict(frames=13, long_video="blend:6:2"), "use 10 or 14 frames"),
        (dict(frames=13, long_video="freenoise:4:2"), "use 12 or 14"),
        (dict(frames=12, long_video="fifo:4:2", steps=3), "runs exactly window x partitions = 8 DDIM steps"),
        (dict(frames=12, long_video="vidrd:6:2"), "use 10 or 14 frames"),
        (dict(frames=12, long_video="genl:6:2", mesh={"frames": 4}), "needs 4 devices"),
        (dict(frames=12, long_video="genl:4:2", record_attention=True), "attention maps"),
    ]
    for kwargs, msg in cases:
        args = dict(steps=2, out=tmp_path / "x.mp4", progress=False)
        args.update(kwargs)
        with pytest.raises(ValueError) as e:
            pl.generate_video(PROMPT, checkpoint=tiny_ckpt, **args)
        assert msg in str(e.value) and "\n" not in str(e.value), (kwargs, str(e.value))
    assert not (tmp_path / "x.mp4").exists()


def test_plan_carries_the_long_video_setting(tiny_ckpt, fake_sampler):
    from vstar_jax import pipeline as pl
    from vstar_jax.diffusion.sampler import SampleOutput

    seen = {}

    def sampler(unet, params, cond, uncond, key, fps, cfg_scale, *, plan):
        seen["plan"] = plan
        return SampleOutput(jnp.zeros(plan.latent_shape), None, None)

    fake_sampler(sampler)
    res = pl.generate_video(PROMPT, checkpoint=tiny_ckpt, frames=14, steps=2, progress=False,
                            long_video={"method": "blend", "window": 6, "overlap": 2})
    assert seen["plan"].long_video == Blend(6, 2)
    assert seen["plan"].latent_shape[2] == 14 and res.video.shape[0] == 14
    assert res.sidecar["long_video"] == {"method": "blend", "window": 6, "overlap": 2}
    assert pl.sidecar_kwargs(res.sidecar)["long_video"] == res.sidecar["long_video"]


def test_cli_long_video_flag(monkeypatch):
    from vstar_jax import cli
    from vstar_jax import pipeline as pl

    seen = {}

    class Res:
        path = "x.mp4"

    def fake(prompt, **kw):
        seen.update(kw)
        return Res()

    monkeypatch.setattr(pl, "generate_video", fake)
    assert cli.main(["generate", PROMPT, "--frames", "64", "--long-video", "genl:16:8", "--quiet"]) == 0
    assert seen["long_video"] == "genl:16:8" and parse_strategy(seen["long_video"]) == GenL(16, 8)
    assert cli.main(["generate", PROMPT, "--quiet"]) == 0 and seen["long_video"] is None


LONG = {"frames": 12, "steps": 2, "seed": 5}


@pytest.fixture(scope="module")
def long_run(tiny_ckpt, tmp_path_factory):
    """12 frames with 4-frame UNet windows (Gen-L-Video stride 2), 2 DDIM steps, tiny checkpoint."""
    from vstar_jax import pipeline as pl

    out = tmp_path_factory.mktemp("long") / "long.mp4"
    return pl.generate_video(PROMPT, checkpoint=tiny_ckpt, out=out, progress=False, long_video="genl:4:2", **LONG)


@pytest.mark.filterwarnings("ignore:os.fork")
def test_generate_long_video_end_to_end_and_regenerate(long_run, tmp_path):
    """The frame count, the recorded setting, and the sidecar reproducing the video bit for bit."""
    from vstar_jax import pipeline as pl
    from vstar_jax.io.video import read_video

    res, frames = long_run, LONG["frames"]
    assert res.video.shape == (frames, 16, 16, 3) and res.video.std() > 5
    assert read_video(res.path).shape == res.video.shape
    assert res.sidecar["long_video"] == {"method": "genl", "window": 4, "stride": 2}
    assert res.sidecar["frames"] == frames and res.sidecar["latent_shape"] == [1, 4, frames, 8, 8]
    again = pl.regenerate(res.sidecar_path, out=tmp_path / "again.mp4", progress=False)
    np.testing.assert_array_equal(again.video, res.video)
    np.testing.assert_array_equal(again.latents, res.latents)
    assert again.sidecar["long_video"] == res.sidecar["long_video"]


@pytest.mark.slow
def test_pipeline_long_video_matches_genl_sample_with_the_unet(long_run, tiny_ckpt):
    """The pipeline's latents against genl_sample called directly with the tiny UNet: seed rule,
    [uncond; cond] contexts, fps 28, cfg 12 (a second UNet compile, hence slow)."""
    from vstar_jax import pipeline as pl
    from vstar_jax.diffusion.schedules import videocrafter2_schedule

    frames, steps, seed = LONG["frames"], LONG["steps"], LONG["seed"]
    pipe = pl.load_pipeline(tiny_ckpt)
    seen = []

    def model_fn(x, t, ctx, i):
        seen.append(x.shape)
        return pipe.unet.apply({"params": pipe.params["unet"]}, x, t, ctx, fps=jnp.float32(28), step_index=i)

    k_x, k_steps = jax.random.split(jax.random.key(seed))
    x_T = jax.random.normal(k_x, (1, 4, frames, 8, 8), jnp.float32)
    ref = jax.jit(lambda x, c, u, k: genl_sample(model_fn, x, c, u, videocrafter2_schedule(steps, 1.0), window=4,
                                                 stride=2, cfg_scale=12.0, key=k).latents)(
        x_T, pipe.encode([PROMPT]), pipe.encode([""]), k_steps)
    assert seen == [(2, 4, 4, 8, 8)]  # the UNet sees one 4-frame window (CFG rows), traced once
    err = _scaled_err(long_run.latents, ref)
    assert err < 1e-4, err  # measured 5.0e-6 (two jits fuse the UNet differently), as test_pipeline's loop check


@pytest.mark.filterwarnings("ignore:os.fork")
@pytest.mark.parametrize("spec, frames, steps", [
    pytest.param("freenoise:4:2", 8, 2, marks=pytest.mark.slow),  # ~40 s each; fifo (the most involved) stays in CI
    ("fifo:4:2", 8, None),
    pytest.param("vidrd:6:2", 10, 2, marks=pytest.mark.slow)])
def test_new_methods_compose_with_tar_and_vsp_and_regenerate(tiny_ckpt, tmp_path, spec, frames, steps):
    """Each method through the pipeline with TAR and a 2-state synopsis (per-frame contexts over the
    whole length): the frame count, the sidecar's record of the method and its PRNG rule, and
    --from-sidecar reproducing the frames bit for bit."""
    from vstar_jax import pipeline as pl
    from vstar_jax.longvideo import parse_strategy

    kw = dict(checkpoint=tiny_ckpt, frames=frames, steps=steps, seed=2, tar="L0:1", long_video=spec,
              synopsis=["a red ball on the left", "a red ball on the right"], progress=False)
    res = pl.generate_video(PROMPT, out=tmp_path / "a.mp4", **kw)
    st = parse_strategy(spec)
    assert res.video.shape == (frames, 16, 16, 3) and res.video.std() > 1
    assert res.sidecar["long_video"] == st.to_dict() and st.rng_rule() in res.sidecar["rng"]["rule"]
    if st.name == "fifo":  # the schedule the run used: FIFO's reference timestep rule, recorded
        assert res.sidecar["schedule"]["timestep_spacing"] == "linspace"
    assert res.sidecar["tar"]["levels"] == [[0, 1.0, 1.0]] and len(res.sidecar["synopsis"]) == 2
    again = pl.regenerate(res.sidecar_path, out=tmp_path / "b.mp4", progress=False)
    np.testing.assert_array_equal(again.video, res.video)
    assert again.sidecar["frames_sha256"] == res.sidecar["frames_sha256"]
    assert again.sidecar["long_video"] == st.to_dict()


@pytest.mark.parametrize("spec, ref_fn, kw", [("genl:4:2", genl_reference, {"window": 4, "stride": 2}),
                                              ("blend:6:3", blend_reference, {"window": 6, "overlap": 3})])
def test_the_protocol_runs_each_registered_method(spec, ref_fn, kw):
    """Through the registry and Strategy.run (what the pipeline calls), each method is its own
    algorithm: routing one name to another method's loop fails here."""
    from vstar_jax.longvideo import SampleInputs

    st = parse_strategy(spec)
    sched = S.videocrafter2_schedule(4, eta=1.0)
    x_T, cond, uncond = _inputs(12, seed=4)
    key = jax.random.key(3)
    x_T, _, ctx, co, keys, use_noise, guided = SP.prepare_sampling(x_T, cond, uncond, sched, None, key, "t")
    inputs = SampleInputs(x_T, ctx, co, keys, key, jnp.float32(CFG), 12, guided, use_noise)
    got = jax.jit(lambda x, c: st.run(dummy_model, inputs._replace(x_T=x, context=c))[0])(x_T, ctx)
    ref = ref_fn(np.asarray(x_T), cond, uncond, 4, 1.0, key, **kw)
    assert _scaled_err(got, ref) < 1e-5  # float32 vs float64 rounding only
