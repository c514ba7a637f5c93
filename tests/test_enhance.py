"""StreamingT2V's enhancer (issue 27): chunked SDEdit, shared noise, randomized blending, the command.

The loop is checked against the project's own plain DDIM (one chunk, blending off: SDEdit bit for bit) and
randomized blending (shared noise + blending: the ``blend`` strategy's sampler bit for bit), and its owner map against the
transcription of the reference's chunk loop in ``test_longvideo.py`` (``streamingt2v_blend_x0``).
"""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vstar_jax import cli
from vstar_jax.demo import world
from vstar_jax.diffusion import sampler as SP
from vstar_jax.diffusion import schedules as S
from vstar_jax.enhance import sdedit as E
from vstar_jax.errors import VstarError
from vstar_jax.io.video import read_video, write_video
from vstar_jax.longvideo import windows as W
from vstar_jax.longvideo.blend import blend_offsets

from conftest import strategy_sample
from test_longvideo import streamingt2v_blend_x0

PROMPT = "a red circle moves to the right"


def toy_model(x, t, ctx, i):
    """A deterministic stand-in denoiser on CFG rows (depends on x, t, the context and the window's frames)."""
    t = jnp.asarray(t, jnp.float32).reshape((-1,) + (1,) * (x.ndim - 1))
    return jnp.tanh(0.3 * x + 0.2 * x.mean(axis=2, keepdims=True) + 1e-3 * t
                    + ctx.mean(axis=(1, 2)).reshape((-1,) + (1,) * (x.ndim - 1)))


def zero_model(x, t, ctx, i):
    return jnp.zeros_like(x)


def _inputs(frames, seed=0, c=2, hw=2):
    rng = np.random.default_rng(seed)
    z0 = rng.standard_normal((1, c, frames, hw, hw)).astype(np.float32)
    cond = rng.standard_normal((1, 3, 4)).astype(np.float32)
    uncond = rng.standard_normal((1, 3, 4)).astype(np.float32)
    return z0, cond, uncond


@functools.partial(jax.jit, static_argnames=("model", "frames", "window", "overlap", "shared", "blend", "guided",
                                             "use_noise"))
def _denoise_jit(x_start, ctx, co, k_steps, *, model, frames, window, overlap, shared, blend, guided, use_noise):
    return E.denoise_chunks(model, x_start, ctx, co, jnp.float32(3.0), k_steps, frames=frames, window=window,
                            overlap=overlap, shared_noise=shared, blend=blend, guided=guided, use_noise=use_noise)


def _denoise(model, x_start, k_steps, cond, uncond, sched, frames, window, overlap, shared, blend):
    """The enhancer's loop from ``x_start`` (one compiled program per setting and shape, cached)."""
    _, _, ctx, co, _, use_noise, guided = SP.prepare_sampling(jnp.zeros((1, 1, frames, 1, 1)), cond, uncond, sched,
                                                              None, k_steps, "t")
    return np.asarray(_denoise_jit(x_start, ctx, co, k_steps, model=model, frames=frames, window=window,
                                   overlap=overlap, shared=shared, blend=blend, guided=guided, use_noise=use_noise))


def _run(model, z0, cond, uncond, sched, key, window, overlap, shared, blend):
    """:func:`enhance_loop` = sdedit_start + denoise_chunks."""
    x_start, k_steps = E.sdedit_start(z0, key, sched.coefficients(), window=window, overlap=overlap,
                                      shared_noise=shared)
    return _denoise(model, x_start, k_steps, cond, uncond, sched, z0.shape[2], window, overlap, shared, blend)


def test_sdedit_schedule_keeps_the_steps_at_or_below_t_prime():
    full = S.make_schedule("diffusers", 50, 0.0)
    cut = E.sdedit_schedule(full, 0.6)  # the reference's total_noise_levels = 600: t_max = 599
    assert E.start_timestep(0.6) == 599 and cut.num_steps == 30 and cut.timesteps.max() <= 599
    assert cut.timesteps.tolist() == full.timesteps[:30].tolist() and E.sdedit_schedule(full, 1.0).num_steps == 50
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(VstarError, match="strength"):
            E.sdedit_schedule(full, bad)


@pytest.mark.parametrize("shared", [True, pytest.param(False, marks=pytest.mark.slow)])  # CI: one compile pair
def test_one_chunk_without_blending_is_plain_sdedit_bit_for_bit(shared, eta=1.0):
    """SDEdit = the encoded video noised to the first DDIM step at or below T', then DDIM from there. The
    noising is one elementwise expression (checked against the formula; XLA may fuse it with an FMA, so it is
    compared to 1e-6); from the same noised start the chunked loop is plain DDIM (the ``single`` strategy's sampler) bit for bit."""
    z0, cond, uncond = _inputs(6)
    sched = E.sdedit_schedule(S.videocrafter2_schedule(10, eta), 0.5)
    key = jax.random.key(3)
    k_x, k_steps = jax.random.split(key)
    co = sched.coefficients()
    # diffusion_sdedit.py `diffuse`: alphas * x0 + sigmas * noise, alphas = sqrt(alpha_cumprod); VideoCrafter2's
    # use_scale also multiplies x0 by scale_arr[t] (lvdm/models/ddpm3d.py `q_sample`)
    a, scale = np.float64(sched.alphas[-1]), np.float64(sched.scale[-1])
    assert scale < 1.0  # use_scale is on: the scale matters
    x_start, ks = E.sdedit_start(z0, key, co, window=6, overlap=2, shared_noise=shared)
    assert np.array_equal(np.asarray(jax.random.key_data(ks)), np.asarray(jax.random.key_data(k_steps)))
    noise = np.asarray(jax.random.normal(k_x if shared else jax.random.fold_in(k_x, 0), z0.shape, jnp.float32))
    want = (np.sqrt(a) * scale * z0 + np.sqrt(1 - a) * noise).astype(np.float32)
    x_one = np.asarray(x_start if shared else x_start[0])
    assert np.abs(x_one - want).max() < 1e-6
    got = _denoise(toy_model, x_start, k_steps, cond, uncond, sched, 6, 6, 2, shared, blend=False)
    steps_key = k_steps if shared else jax.random.fold_in(k_steps, 0)  # a chunk's own step noise
    plain = np.asarray(strategy_sample("single", toy_model, x_one, cond, uncond, sched, cfg_scale=3.0,
                                       key=steps_key).latents)
    assert np.array_equal(got, plain)


def test_shared_noise_is_identical_on_the_overlap_and_differs_without():
    shape, window, overlap = (1, 2, 16, 2, 2), 8, 4
    starts = W.chunk_starts(16, window, overlap)
    key = jax.random.key(0)
    for shared in (True, False):
        n = np.asarray(E.chunk_noises(key, shape, starts, window, shared))
        same = [np.array_equal(n[k][:, :, window - overlap:], n[k + 1][:, :, :overlap]) for k in range(len(starts) - 1)]
        assert all(same) if shared else not any(same)
    # the documented rule (sdedit.py's RNG_RULE): one long draw, or chunk k's own draw from fold_in(k_x, k)
    n = np.asarray(E.chunk_noises(key, shape, starts, window, False))
    for k in range(len(starts)):
        assert np.array_equal(n[k], np.asarray(jax.random.normal(jax.random.fold_in(key, k), n[k].shape)))
    long = np.asarray(jax.random.normal(key, shape))
    assert np.array_equal(np.asarray(E.chunk_noises(key, shape, starts, window, True))[1], long[:, :, 4:12])
    # the loop starts from these noises: with eps = 0 and eta = 0, x0 = x_T' / sqrt(a) at every step, so the
    # output is z0 + sqrt(1 - a) / sqrt(a) * (the noise of the chunk that owns the frame)
    z0, cond, uncond = _inputs(16)
    sched = E.sdedit_schedule(S.videocrafter2_schedule(10, 0.0, use_scale=False), 0.5)
    a, a_end = np.float64(sched.alphas[-1]), np.float64(sched.alphas_prev[0])  # the last step lands on a_end
    k_x, _ = jax.random.split(key)
    for shared in (True, False):
        got = _run(zero_model, z0, cond, uncond, sched, key, window, overlap, shared, blend=False)
        noise = (got / np.sqrt(a_end) - z0) * np.sqrt(a) / np.sqrt(1 - a)
        n = np.asarray(E.chunk_noises(k_x, z0.shape, starts, window, shared))
        for k, s in enumerate(starts):  # blend off: chunk k owns its frames from s_k to the next chunk's start
            end = int(starts[k + 1]) if k + 1 < len(starts) else s + window
            assert np.abs(noise[:, :, s:end] - n[k][:, :, :end - s]).max() < 1e-4, (shared, k)


@pytest.mark.slow  # three loop compiles (~10 s here); the path is Blend.run, tested against the reference in test_longvideo
def test_shared_noise_with_blending_is_the_blend_strategy_bit_for_bit():
    """The owner map and offsets are randomized blending's own: the blend strategy sampling the noised video."""
    z0, cond, uncond = _inputs(12, seed=1)
    sched = E.sdedit_schedule(S.videocrafter2_schedule(8, 1.0), 0.6)
    key = jax.random.key(5)
    k_x, k_steps = jax.random.split(key)
    x_t, _ = E.sdedit_start(z0, key, sched.coefficients(), window=6, overlap=3)
    want = np.asarray(strategy_sample("blend:6:3", toy_model, x_t, cond, uncond, sched, cfg_scale=3.0,
                                      key=k_steps).latents)
    got = _denoise(toy_model, x_t, k_steps, cond, uncond, sched, 12, 6, 3, shared=True, blend=True)
    assert np.array_equal(got, want)
    assert not np.array_equal(got, _denoise(toy_model, x_t, k_steps, cond, uncond, sched, 12, 6, 3, True, False))


@pytest.mark.parametrize("seed", [0, 1, 2])  # one compile: the seeds are arguments
def test_independent_chunks_are_merged_by_the_reference_owner_map(seed):
    """Without shared noise the chunks are merged once, by the owner map of the reference's chunk loop
    (test_longvideo.streamingt2v_blend_x0) with one row of blend_offsets."""
    n_frames, window, overlap = 16, 6, 4
    starts = W.chunk_starts(n_frames, window, overlap)
    z0, cond, uncond = _inputs(n_frames, seed)
    sched = E.sdedit_schedule(S.videocrafter2_schedule(6, 0.0, use_scale=False), 0.5)
    key = jax.random.key(seed)
    k_x, k_steps = jax.random.split(key)
    got = _run(zero_model, z0, cond, uncond, sched, key, window, overlap, shared=False, blend=True)
    a, a_end = np.float64(sched.alphas[-1]), np.float64(sched.alphas_prev[0])
    noise = (got / np.sqrt(a_end) - z0) * np.sqrt(a) / np.sqrt(1 - a)
    n = np.asarray(E.chunk_noises(k_x, z0.shape, starts, window, shared=False))
    owner = [min(range(len(starts)), key=lambda k: np.abs(noise[:, :, f] - n[k][:, :, f - starts[k]]).max()
                 if starts[k] <= f < starts[k] + window else np.inf) for f in range(n_frames)]
    offsets = np.asarray(blend_offsets(k_steps, 1, len(starts), overlap))[0]
    _, want = streamingt2v_blend_x0(np.zeros((1, 1, n_frames, 1, 1)), window, overlap, offsets,
                                    lambda s: np.zeros((1, 1, window, 1, 1)))
    assert [int(starts[k]) for k in owner] == want.tolist()


# ------------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def demo_video(tmp_path_factory):
    """16 frames of the demo world at the demo model's display size (96x96: 12x12 upscaled 8 times)."""
    d = tmp_path_factory.mktemp("enhance")
    video, _ = world.render_caption(PROMPT, frames=16, size=12, seed=0)
    frames = world.to_uint8(video).repeat(8, axis=1).repeat(8, axis=2)
    path = d / "in.mp4"
    write_video(path, frames, fps=8)
    return d, path


FAST = ["--chunk", "8", "--overlap", "4", "--steps", "8", "--strength", "0.5", "--quiet"]


@pytest.mark.slow  # compiles the demo UNet's enhancer loop: ~30 s on the shared 2-core machine
def test_cli_round_trip_and_from_sidecar(demo_video, capsys):
    d, src = demo_video
    out = d / "out.mp4"
    assert cli.main(["enhance", str(src), "--prompt", PROMPT, "--out", str(out), *FAST]) == 0
    sc = json.loads(out.with_suffix(".json").read_text())
    assert sc["format"] == "vstar-jax-enhance/1" and sc["frames"] == 16 and sc["chunk"] == 8
    assert sc["sdedit_steps"] == 4 and sc["shared_noise"] and sc["blend"] and len(sc["input_sha256"]) == 64
    assert sc["chunk_clock"] == "video"  # the default; --from-sidecar below regenerates with it bit for bit
    frames = read_video(out)
    assert frames.shape == (16, 96, 96, 3)
    capsys.readouterr()
    again = d / "again.mp4"
    assert cli.main(["enhance", "--from-sidecar", str(out.with_suffix(".json")), "--out", str(again), "--quiet"]) == 0
    assert "identical frames" in capsys.readouterr().out
    # the input changed: refused before any compute
    other = d / "other.mp4"
    video, _ = world.render_caption("a blue square moves up", frames=16, size=12, seed=1)
    write_video(other, world.to_uint8(video).repeat(8, axis=1).repeat(8, axis=2), fps=8)
    sc["input"] = str(other)
    bad = d / "edited.json"
    bad.write_text(json.dumps(sc))
    assert cli.main(["enhance", "--from-sidecar", str(bad), "--out", str(d / "x.mp4"), "--quiet"]) == 2
    assert "not the video the sidecar recorded" in capsys.readouterr().err
    assert not (d / "x.mp4").exists()


def test_bad_input_is_one_line_before_compute(demo_video, tmp_path, capsys, monkeypatch):
    _, src = demo_video
    from vstar_jax.enhance import job

    def no_compute(*a, **k):
        raise AssertionError("computed")

    monkeypatch.setattr(job, "enhance_latents", no_compute)
    monkeypatch.setattr(job, "read_latents", no_compute)
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    out = ["--out", str(tmp_path / "o.mp4"), "--quiet"]
    cases = [
        ([str(text), "--prompt", PROMPT], "is not a video"),
        ([str(src), "--prompt", PROMPT, "--strength", "0"], "strength must be in (0, 1]"),
        ([str(src), "--prompt", PROMPT, "--strength", "1.5"], "strength must be in (0, 1]"),
        ([str(src), "--prompt", PROMPT, "--chunk", "8", "--overlap", "8"], "must be larger than the overlap"),
        ([str(src), "--prompt", PROMPT, "--chunk", "32", "--overlap", "8"], "fewer than one chunk"),
        ([str(src), "--prompt", PROMPT, "--chunk", "8", "--overlap", "4", "--size", "12x24"], "aspect ratios differ"),
        ([str(src), "--prompt", PROMPT, "--chunk", "8", "--overlap", "4", "--size", "10x10"], "cannot run at 10x10"),
        ([str(src), "--chunk", "8", "--overlap", "4"], "empty prompt"),
        ([str(src), "--prompt", PROMPT, "--guide-rescale", "1.5"], "--guide-rescale must be <= 1"),
        ([str(src), "--prompt", PROMPT, "--guide-rescale", "-0.1"], "--guide-rescale must be >= 0"),
        ([str(src), "--prompt", PROMPT, "--guide-rescale", "nan"], "--guide-rescale must be a finite number"),
        ([str(src), "--prompt", PROMPT, "--solver", "euler"], "argument --solver: invalid choice"),
    ]
    for args, msg in cases:
        assert cli.main(["enhance", *args, *out]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and msg in err[0], (args, err)
    assert not (tmp_path / "o.mp4").exists()


def test_generate_enhance_settings_are_checked_before_compute(capsys, monkeypatch):
    from vstar_jax import pipeline as pl

    def no_compute(*a, **k):
        raise AssertionError("computed")

    monkeypatch.setattr(pl, "generate_video", no_compute)
    cases = [
        (["--enhance", "demo"], "chunks of 24 frames"),  # the demo model's 8 frames
        (["--frames", "24", "--enhance", "demo", "--enhance-strength", "2"], "--enhance-strength must be in (0, 1]"),
        (["--enhance-strength", "0.5"], "needs --enhance"),
        (["--enhance-negative-prompt", "blurry"], "needs --enhance"),
        (["--frames", "24", "--enhance", "/no/such/refiner"], "checkpoint directory not found"),
    ]
    for args, msg in cases:
        assert cli.main(["generate", PROMPT, *args, "--quiet"]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and msg in err[0], (args, err)


def test_sampler_settings_per_refiner_and_legacy_sidecars(demo_video, tmp_path):
    """The reference's sampler is the default on MS-Vid2Vid-XL's schedule, DDIM on the demo model; the strength
    is the reference's 0.6 unless the refiner's config sets its own (the demo models: 0.3, from their
    config.json; mutation: sampler_defaults ignoring it fails); an explicit solver brings its own step count;
    a sidecar without the new fields regenerates with what it ran."""
    from vstar_jax.checkpoints_convert.msvid2vid import DIFFUSION
    from vstar_jax.enhance import job
    from vstar_jax.generation.model import diffusion_settings

    assert job.sampler_defaults(diffusion_settings({"diffusion": DIFFUSION, "unet": {}})) == job.REFERENCE_SAMPLER
    assert job.REFERENCE_SAMPLER["solver"] == "dpmpp_2m_sde" and job.REFERENCE_SAMPLER["guide_rescale"] == 0.2
    _, src = demo_video
    assert job.sampler_defaults(diffusion_settings({"diffusion": {}, "unet": {}}))["strength"] == 0.6
    assert job.sampler_defaults(diffusion_settings({"diffusion": {"sdedit_strength": 0.45}, "unet": {}}))[
        "strength"] == 0.45
    req = job.make_enhance_request(src, PROMPT, chunk=8, overlap=4)
    assert (req.solver, req.steps, req.sdedit_steps, req.guide_rescale, req.negative_prompt) == ("ddim", 50, 15, 0, "")
    assert req.strength == 0.3
    assert job.make_enhance_request(src, PROMPT, chunk=8, overlap=4, strength=0.6).sdedit_steps == 30
    req = job.make_enhance_request(src, PROMPT, chunk=8, overlap=4, solver="dpmpp_2m_sde", guide_rescale=0.2,
                                   negative_prompt="blurry")
    assert (req.steps, req.sdedit_steps, req.eta, req.negative_prompt) == (30, 30, 1.0, "blurry")
    assert job.plan_of(req).schedule().solver == "dpmpp_2m_sde" and job.plan_of(req).rescale
    legacy = {k: 1 for k in job.SIDECAR_ARGS if k not in job.SIDECAR_LEGACY}
    legacy.update(format=job.ENHANCE_SIDECAR_FORMAT, input=str(src), input_sha256="0" * 64, height=96, width=96)
    (tmp_path / "old.json").write_text(json.dumps(legacy))
    assert job.load_enhance_sidecar(tmp_path / "old.json")["format"] == job.ENHANCE_SIDECAR_FORMAT


@pytest.mark.slow  # compiles the demo UNet's enhancer loop with DPM++ 2M SDE and the rescale
def test_dpm_solver_negative_prompt_round_trip(demo_video, capsys):
    d, src = demo_video
    out = d / "dpm.mp4"
    args = ["enhance", str(src), "--prompt", PROMPT, "--chunk", "8", "--overlap", "4", "--steps", "4", "--strength",
            "0.5", "--solver", "dpmpp_2m_sde", "--guide-rescale", "0.2", "--quiet"]
    assert cli.main([*args, "--negative-prompt", "a blue square", "--out", str(out)]) == 0
    sc = json.loads(out.with_suffix(".json").read_text())
    assert (sc["solver"], sc["guide_rescale"], sc["negative_prompt"], sc["sdedit_steps"]) == (
        "dpmpp_2m_sde", 0.2, "a blue square", 4)
    capsys.readouterr()
    assert cli.main(["enhance", "--from-sidecar", str(out.with_suffix(".json")), "--out", str(d / "dpm2.mp4"),
                     "--quiet"]) == 0
    assert "identical frames" in capsys.readouterr().out
    assert cli.main([*args, "--out", str(d / "dpm3.mp4")]) == 0  # the empty negative prompt: other frames
    assert json.loads((d / "dpm3.json").read_text())["frames_sha256"] != sc["frames_sha256"]


@pytest.mark.slow
def test_generate_then_enhance(tmp_path, capsys):
    out = tmp_path / "g.mp4"
    assert cli.main(["generate", PROMPT, "--frames", "24", "--steps", "4", "--out", str(out), "--enhance", "demo",
                     "--enhance-strength", "0.3", "--quiet"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out), str(tmp_path / "g-enhanced.mp4")]
    sc = json.loads((tmp_path / "g-enhanced.json").read_text())
    assert sc["strength"] == 0.3 and sc["frames"] == 24 and sc["chunk"] == 24


@pytest.mark.slow
def test_a_converted_diffusers_unet_is_a_refiner(tmp_path):
    """A tiny random ModelScope-architecture model (diffusers layout) converted by the project's converter
    refines a video through its VAE (encode, chunked SDEdit, decode)."""
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from tiny_torch import modelscope_folder

    from vstar_jax.checkpoints_convert import diffusers as conv_diffusers
    from vstar_jax.enhance import enhance_video

    model, ckpt = tmp_path / "model", tmp_path / "ckpt"
    modelscope_folder(model, unet_channels=(16, 24), vae_channels=(16, 32), groups=8, scheduler=False)
    conv_diffusers.convert(str(model), str(ckpt), verbose=False)
    video, _ = world.render_caption(PROMPT, frames=6, size=16, seed=0)
    src = tmp_path / "in.mp4"
    write_video(src, world.to_uint8(video), fps=8)
    res = enhance_video(src, PROMPT, checkpoint=str(ckpt), out=str(tmp_path / "out.mp4"), size="16x16", chunk=4,
                        overlap=2, steps=4, strength=0.5, progress=False)
    assert res.latents.shape == (1, 4, 6, 8, 8) and np.isfinite(res.latents).all()
    assert not np.allclose(res.latents, res.input_latents)
    assert read_video(res.path).shape == (6, 16, 16, 3) and res.sidecar["schedule"]["flavor"] == "diffusers"
