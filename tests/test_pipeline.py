"""generate_video end to end on a tiny random checkpoint (UNet + VAE + text encoder).

Shapes: 4 frames of 8x8 latents (16x16 video), 2 DDIM steps. Checks: files written and
readable with the requested frame count, the sidecar reproduces the frames bit for bit,
seeds and synopses change the video, TAR + a 3-state synopsis + attention capture run
and the regularized layers' maps are more diagonal than the unregularized init_attn's,
and every bad input is a one-line ValueError raised before the model is loaded.
"""
import json
import time

import jax
import numpy as np
import pytest

from tiny_checkpoint import shared_tiny_checkpoint
from vstar_jax import pipeline as pl
from vstar_jax.generation import model as gm
from vstar_jax.runtime import runtime
from vstar_jax.io.video import read_video
from vstar_jax.tar_vsp.analysis import band_score
from vstar_jax.tar_vsp.tar import preset

pytestmark = pytest.mark.filterwarnings("ignore:os.fork")

PROMPT = "a red ball rolls to the right"
FRAMES, STEPS, SEED = 4, 2, 3


@pytest.fixture(scope="module")
def ckpt():
    return shared_tiny_checkpoint()


@pytest.fixture(scope="module")
def first(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "clip.mp4"
    return pl.generate_video(PROMPT, checkpoint=ckpt, frames=FRAMES, steps=STEPS, seed=SEED, out=out, gif=True,
                             progress=False)


def _mad(a, b):
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def test_writes_video_gif_and_sidecar(first, ckpt):
    v = first.video
    assert v.dtype == np.uint8 and v.shape == (FRAMES, 16, 16, 3)
    assert v.std() > 5  # not a constant image
    mp4 = read_video(first.path)
    gif = read_video(first.gif_path)
    assert mp4.shape == v.shape and gif.shape == v.shape
    sc = json.loads(open(first.sidecar_path).read())
    assert sc == json.loads(json.dumps(first.sidecar))
    for key, want in {"prompt": PROMPT, "frames": FRAMES, "steps": STEPS, "seed": SEED, "cfg": 12.0, "eta": 1.0,
                      "fps": 28, "checkpoint": ckpt, "tar": None, "synopsis": None, "height": 16, "width": 16,
                      "latent_shape": [1, 4, FRAMES, 8, 8], "format": pl.SIDECAR_FORMAT}.items():
        assert sc[key] == want, key
    assert sc["frames_sha256"] == pl.frames_digest(v)
    assert sc["schedule"]["flavor"] == "videocrafter2" and sc["schedule"]["use_scale"] is True
    assert {"jax", "flax", "vstar_jax"} <= set(sc["versions"])
    # the mp4 (lossy H.264) is much closer to these frames than to another seed's
    other = pl.generate_video(PROMPT, checkpoint=ckpt, frames=FRAMES, steps=STEPS, seed=SEED + 1, progress=False)
    assert _mad(mp4, v) < 0.6 * _mad(mp4, other.video)
    assert _mad(gif, v) < 0.3 * _mad(gif, other.video)


def test_sidecar_regenerates_bit_for_bit(first, tmp_path):
    again = pl.regenerate(first.sidecar_path, out=tmp_path / "again.mp4", progress=False)
    np.testing.assert_array_equal(again.video, first.video)
    np.testing.assert_array_equal(again.latents, first.latents)
    assert again.sidecar["frames_sha256"] == first.sidecar["frames_sha256"]
    np.testing.assert_array_equal(read_video(again.path), read_video(first.path))
    assert open(again.path, "rb").read() == open(first.path, "rb").read()


def test_seed_decides_the_video(first, ckpt):
    same = pl.generate_video(PROMPT, checkpoint=ckpt, frames=FRAMES, steps=STEPS, seed=SEED, progress=False)
    np.testing.assert_array_equal(same.video, first.video)
    other = pl.generate_video(PROMPT, checkpoint=ckpt, frames=FRAMES, steps=STEPS, seed=SEED + 7, progress=False)
    assert (other.video != first.video).mean() > 0.5
    prompt2 = pl.generate_video("a blue cube", checkpoint=ckpt, frames=FRAMES, steps=STEPS, seed=SEED, progress=False)
    assert (prompt2.latents != first.latents).mean() > 0.5


@pytest.fixture(scope="module")
def vstar_run(ckpt, tmp_path_factory):
    d = tmp_path_factory.mktemp("vstar")
    states = ["a red ball at the left", "a red ball in the middle", "a red ball at the right"]
    return pl.generate_video(PROMPT, checkpoint=ckpt, frames=FRAMES, steps=STEPS, seed=SEED, tar="64D1_32D8",
                             synopsis=states, out=d / "vstar.mp4", attention_png=d / "attn.png", progress=False)


def test_tar_vsp_attention_run(vstar_run, first):
    r = vstar_run
    assert r.video.shape == (FRAMES, 16, 16, 3)
    assert r.sidecar["tar"] == preset("64D1_32D8").to_dict()
    assert r.sidecar["tar_spec"] == "64D1_32D8"
    assert len(r.sidecar["synopsis"]) == 3 and r.sidecar["synopsis_source"] == {"kind": "user"}
    assert r.sidecar["attention"] is True
    assert (r.latents != first.latents).mean() > 0.5
    # one map per temporal attention (init_attn, 2 down, mid, 4 up; attn1 and attn2), in UNet order
    names = list(r.attention)
    assert len(names) == 16 and names[:2] == ["init_attn.attn1", "init_attn.attn2"]
    assert names[2] == "down_0_0.attn1" and names[-1] == "up_0_1.attn2"
    for m in r.attention.values():
        assert m.shape == (STEPS, FRAMES, FRAMES)
        np.testing.assert_allclose(m.sum(-1), 1.0, atol=1e-5)  # softmax rows, averaged
    # TAR (level 0, sigma 1) makes level-0 maps more diagonal than the unregularized init_attn
    lvl0 = np.mean([band_score(r.attention[n][0], 0) for n in names if n.startswith(("down_0_", "up_0_"))])
    init = np.mean([band_score(r.attention[n][0], 0) for n in names if n.startswith("init_attn")])
    assert lvl0 > init + 0.1, (lvl0, init)
    png = open(r.attention_png, "rb").read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    npz = np.load(r.sidecar["outputs"]["attention_npz"])
    assert sorted(npz.files) == sorted(names)
    np.testing.assert_array_equal(npz["down_0_0.attn1"], r.attention["down_0_0.attn1"])


def test_vstar_sidecar_regenerates_and_synopsis_matters(vstar_run, ckpt):
    again = pl.regenerate(vstar_run.sidecar_path, progress=False)
    np.testing.assert_array_equal(again.video, vstar_run.video)
    kw = pl.sidecar_kwargs(vstar_run.sidecar)
    kw["synopsis"] = ["a green ball", "a green ball in the middle", "a ball at the right"]
    changed = pl.generate_video(PROMPT, record_attention=True, progress=False, **kw)
    assert (changed.latents != vstar_run.latents).mean() > 0.5


# ----------------------------------------------------------------------------- bad inputs
def _bad_cases(tmp):
    blocker = tmp / "a-file"
    blocker.write_text("x")
    return [
        (dict(prompt=""), "empty prompt"),
        (dict(prompt="   "), "empty prompt"),
        (dict(frames=1), "frames must be >= 2"),
        (dict(frames=2, synopsis=["a", "b", "c"]), "needs at least 3 frames"),
        (dict(synopsis=["only one state"]), "at least 2 visual states"),
        (dict(synopsis=["a", ""]), "empty visual state"),
        (dict(tar="64D3"), "bad TAR spec"),
        (dict(tar="L5:1"), "TAR level(s) [5] do not exist"),
        (dict(out=blocker / "x.mp4"), "not writable"),
        (dict(out=tmp / "x.avi"), "must end in"),
        (dict(attention_png=tmp / "a.jpg"), "must end in .png"),
        (dict(height=17), "not a multiple of the VAE factor 2"),
        (dict(height=18), "divisible by 2"),
        (dict(steps=3), "do not fit"),
        (dict(steps=0), "steps must be >= 1"),
        (dict(eta=-1.0), "eta must be >= 0"),
        (dict(seed=-1), "seed must be >= 0"),
        (dict(vsp_mode="cubic"), "unknown VSP mode"),
        (dict(checkpoint=str(tmp / "missing")), "checkpoint directory not found"),
        (dict(gif=True, out=None), "needs an output path"),
        (dict(attention_backend="flash"), "unknown attention backend 'flash'"),
        (dict(attention_backend="pallas", tar="64D1"), "needs a TPU" if jax.default_backend() != "tpu" else "TAR"),
    ] + ([(dict(attention_backend="cudnn"), "'cudnn' needs a GPU")] if jax.default_backend() != "gpu" else [])


def test_bad_inputs_fail_fast_before_loading(ckpt, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the model must not be loaded or run for a bad input")

    monkeypatch.setattr(pl, "load_pipeline", boom)
    monkeypatch.setattr(pl, "_compiled_sampler", boom)
    for kwargs, msg in _bad_cases(tmp_path):
        args = dict(prompt=PROMPT, checkpoint=ckpt, frames=FRAMES, steps=STEPS, out=tmp_path / "ok.mp4",
                     progress=False)
        args.update(kwargs)
        t0 = time.time()
        with pytest.raises(ValueError) as e:
            pl.generate_video(args.pop("prompt"), **args)
        assert msg in str(e.value), (kwargs, str(e.value))
        assert "\n" not in str(e.value)
        assert time.time() - t0 < 5.0
    assert not (tmp_path / "ok.mp4").exists()


def test_no_checkpoint_needs_one_until_the_demo_model_exists(monkeypatch):
    from vstar_jax.generation import builtin

    monkeypatch.setattr(builtin, "_LOADERS", {})  # no package registered a built-in model
    monkeypatch.setattr(runtime(), "pipelines", {})
    with pytest.raises(ValueError, match="checkpoint is required"):
        pl.generate_video(PROMPT, frames=FRAMES, progress=False)


# ------------------------------------------------------------------- the public API (issues 25, 29)
def test_generate_video_documents_every_setting_and_takes_only_those():
    """GenerationOptions is the one list: generate_video's signature and docstring come from its fields,
    and every setting make_request validates is one of them."""
    import dataclasses
    import inspect

    from vstar_jax.generation import options

    fields = dataclasses.fields(options.GenerationOptions)
    params = inspect.signature(pl.generate_video).parameters
    assert list(params) == ["prompt"] + [f.name for f in fields]
    for f in fields:
        assert f.metadata["doc"].strip(), f.name
        assert params[f.name].default == f.default and params[f.name].kind is inspect.Parameter.KEYWORD_ONLY
        assert f"``{f.name}`` (default ``{f.default!r}``): " in pl.generate_video.__doc__, f.name
    request = set(inspect.signature(pl.make_request).parameters) - {"prompt", "info", "capture", "llm_asked"}
    assert request == set(options.REQUEST_SETTINGS) and request <= set(options.FIELDS)
    assert not [p for p in params if p.startswith("_")]  # no test hooks in the public signature (issue 29)


def test_an_unknown_setting_is_one_line_naming_it(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("nothing may be loaded for a bad setting")

    monkeypatch.setattr(pl, "model_info", boom)
    for call, name in ((lambda: pl.generate_video(PROMPT, frame=4), "'frame' (did you mean 'frames'?)"),
                       (lambda: pl.generate_video(PROMPT, _sampler=boom), "'_sampler'"),
                       (lambda: pl.generate_batch([{"prompt": PROMPT, "sed": 1}]), "item 0: unknown setting 'sed'"),
                       (lambda: pl.generate_batch([{"prompt": PROMPT}], tarr="64D1"), "unknown setting 'tarr'")):
        with pytest.raises(pl.VstarError) as e:
            call()
        assert name in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_the_package_exports_the_public_api_without_starting_jax():
    import subprocess
    import sys

    import vstar_jax

    assert vstar_jax.generate_video is pl.generate_video and vstar_jax.regenerate is pl.regenerate
    from vstar_jax import enhance

    assert vstar_jax.enhance_video is enhance.enhance_video
    assert all(getattr(vstar_jax, name) is getattr(pl, name) for name in vstar_jax.__all__ if name != "enhance_video")
    code = "import sys, vstar_jax, vstar_jax.cli; assert 'jax' not in sys.modules, 'jax imported'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]


def test_default_output_name():
    assert pl.default_output("A Red Ball, rolling!", 7) == "outputs/a-red-ball-rolling-7.mp4"
    assert pl.default_output("???", 0) == "outputs/video-0.mp4"


# ------------------------------------------------------------------- the embedded demo model
@pytest.fixture()
def demo_asset(tmp_path, monkeypatch):
    """The shipped demo model if present, else a random one in its shipped format."""
    from vstar_jax.demo import model as dm

    monkeypatch.setattr(runtime(), "pipelines", {})
    if not (dm.ASSET_DIR / dm.PARAMS_FILE).exists():
        from vstar_jax.configs import demo_tiny
        from tiny_checkpoint import _random_like
        from vstar_jax.models.text import text_param_shapes
        from vstar_jax.models.unet3d import UNet3D, init_shapes

        cfg = demo_tiny.get_config()
        _, _, f, h, w = dm.latent_shape(cfg, 2)
        rng = np.random.default_rng(0)
        params = {"unet": _random_like(init_shapes(UNet3D(cfg.unet), f, h, w), rng),
                  "text": _random_like(text_param_shapes(cfg.text), rng)}
        dm.save_demo_model(tmp_path / "demo", params, cfg)
        monkeypatch.setattr(dm, "ASSET_DIR", tmp_path / "demo")
    return dm


def test_default_model_without_checkpoint(demo_asset, tmp_path):
    from vstar_jax import cli

    out = tmp_path / "demo.mp4"
    assert cli.main(["generate", "a red square moves right", "--frames", "4", "--steps", "2", "--out", str(out),
                     "--quiet"]) == 0
    sc = json.loads(out.with_suffix(".json").read_text())
    assert sc["checkpoint"] == pl.DEMO_SOURCE and sc["frames"] == 4
    cfg = demo_asset.load_demo_model().config
    side = cfg.size * cfg.get("display_scale", 1)
    frames = read_video(out)
    assert frames.shape == (4, side, side, 3)
    again = pl.regenerate(out.with_suffix(".json"), progress=False)  # checkpoint None -> the demo model
    assert again.sidecar["frames_sha256"] == sc["frames_sha256"]


@pytest.mark.slow  # one XLA compile of the demo sampler in bf16: ~12 s of CPU, over CI's per-test budget
def test_bf16_generation_on_the_demo_model_is_close_to_float32(demo_asset):
    """A whole generation with the demo model's UNet in bfloat16 (the pipeline's UNet-setting override)
    runs end to end and its frames are within 35 dB PSNR of float32's (same prompt, seed and settings
    as the test above, whose float32 program this one reuses when run after it).

    Why 35 dB (RMS error <= 4.5 of 255 grey levels): bfloat16 keeps 8 significant bits, and the bf16 UNet's
    output differs from float32's by about 1e-2 of its range (tests/test_unet.py bounds it by 5e-2), which
    the sampler carries into the frames: measured 40.3 dB here, and 40.7-49 dB (median 46.3) over 100
    prompts at the model's 25 steps, where the pixel checker's verdicts agree on all 100
    (benchmarks/bf16_generation.py, RESULTS.md). Another seed's video is 13 dB from this one, so the bound
    tells a bf16 run of this video from a different or broken one; identical frames mean bf16 never ran."""
    if demo_asset.ASSET_DIR.name != "demo_model":  # the fixture's random stand-in (test_readme_command fails on CI)
        pytest.skip("the bound is for the shipped demo model, not a random one")
    pipe = gm.load_pipeline(None)
    bf16 = pipe.with_unet_settings(dtype="bfloat16")
    kw = dict(frames=4, steps=2, seed=0, progress=False)
    v32, v16 = (pl.generate_video("a red square moves right", pipeline=p, **kw).video.astype(np.float64)
                for p in (pipe, bf16))
    mse = float(np.mean((v32 - v16) ** 2))
    assert mse > 0, "bf16 frames identical to float32's: the bf16 UNet did not run"
    assert 10 * np.log10(255.0 ** 2 / mse) >= 35.0
    assert bf16.unet.config["dtype"] == "bfloat16" and bf16.params is pipe.params  # params shared, cast per use


def test_readme_command_shows_the_prompted_colour_and_motion(tmp_path, monkeypatch):
    """README's first command, on the shipped model (v-prediction through the pipeline's sampler): the
    written mp4, shrunk back to the model's pixels, shows a red object moving right for the checker."""
    import os

    from vstar_jax import cli
    from vstar_jax.demo import checker, model as dm

    if not (dm.ASSET_DIR / dm.PARAMS_FILE).exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"shipped demo model missing at {dm.ASSET_DIR}")
        pytest.skip("shipped demo model not built yet")
    monkeypatch.setattr(runtime(), "pipelines", {})
    out = tmp_path / "red_circle.mp4"
    assert cli.main(["generate", "a red circle moves to the right", "--out", str(out), "--quiet"]) == 0
    cfg = dm.load_demo_model().config
    frames = read_video(out)
    assert frames.shape[0] == cfg.frames
    k = cfg.display_scale
    small = frames.reshape(cfg.frames, cfg.size, k, cfg.size, k, 3).mean(axis=(2, 4)) / 255.0  # undo nearest x k
    r = checker.check(small, "a red circle moves to the right")
    assert r["found_ok"] and r["color_ok"], r["segments"]
    assert r["motion_ok"], r["segments"]  # ... moving to the right


def test_llm_synopsis_reaches_the_sampler(ckpt, tmp_path, fake_sampler):
    """An OpenAI-compatible endpoint (a local stub server) writes the synopsis; its states become
    the per-frame context handed to the sampler and are recorded (without the API key)."""
    import http.server
    import threading

    import jax.numpy as jnp

    from vstar_jax.diffusion.sampler import SampleOutput

    reply = "Here you go:\n1. a red ball at the left\n2. a red ball in the middle\n3. a red ball at the right\n"
    seen_requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen_requests.append((self.path, body, self.headers.get("Authorization")))
            data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    seen = {}

    def sampler(unet, params, cond, uncond, key, fps, cfg_scale, *, plan):
        seen.update(cond=cond.shape, uncond=uncond.shape, plan=plan)
        return SampleOutput(jnp.zeros(plan.latent_shape), None, None)

    fake_sampler(sampler)
    try:
        r = pl.generate_video(PROMPT, checkpoint=ckpt, frames=FRAMES, steps=STEPS, progress=False,
                              llm={"url": f"http://127.0.0.1:{server.server_port}/v1", "model": "stub",
                                   "api_key": "sk-secret", "num_states": 3},
                              out=tmp_path / "llm.mp4")
    finally:
        server.shutdown()
    path, body, auth = seen_requests[0]
    assert path == "/v1/chat/completions" and body["model"] == "stub" and auth == "Bearer sk-secret"
    assert PROMPT in body["messages"][-1]["content"] and "3" in body["messages"][-1]["content"]
    assert r.sidecar["synopsis"] == ["a red ball at the left", "a red ball in the middle", "a red ball at the right"]
    assert r.sidecar["synopsis_source"]["kind"] == "llm" and r.sidecar["synopsis_source"]["num_states"] == 3
    assert "sk-secret" not in (tmp_path / "llm.json").read_text()
    assert seen["cond"] == (FRAMES, 77, 32) and seen["uncond"] == (1, 77, 32)


@pytest.mark.slow
def test_sampling_matches_a_plain_ddim_loop(first, ckpt):
    """The compiled pipeline loop against a Python loop of the documented arithmetic: x_T and
    step noise from the PRNG rule, one UNet call on [x; x] with [uncond; cond] contexts and
    fps 28, CFG 12, VideoCrafter2 use_scale DDIM steps (``ddim_step``)."""
    import jax

    from vstar_jax.diffusion.sampler import cfg_combine, ddim_step, step_coefficients
    from vstar_jax.diffusion.schedules import videocrafter2_schedule

    pipe = pl.load_pipeline(ckpt)
    cond, uncond = pipe.encode([PROMPT]), pipe.encode([""])
    k_x, k_steps = jax.random.split(jax.random.key(SEED))
    x = jax.random.normal(k_x, (1, 4, FRAMES, 8, 8))
    sched = videocrafter2_schedule(STEPS, 1.0, use_scale=True)
    unet = jax.jit(lambda p, x, t, c, i: pipe.unet.apply({"params": p}, x, t, c, fps=28, step_index=i))
    keys = jax.random.split(k_steps, STEPS)
    ctx = np.concatenate([uncond, cond])
    for i in range(STEPS):
        co = step_coefficients(sched, STEPS - 1 - i)
        t = np.full((2,), co["timesteps"], np.int32)
        eps = unet(pipe.params["unet"], np.concatenate([x, x]), t, ctx, i)
        eps = cfg_combine(eps[:1], eps[1:], 12.0)
        x, _ = ddim_step(x, eps, co, jax.random.normal(keys[i], x.shape))
    ref = np.asarray(x)
    err = np.abs(first.latents - ref).max() / np.abs(ref).max()
    assert err < 1e-4, err


def test_sampler_receives_the_settings(ckpt, fake_sampler):
    """What the compiled loop is given: the prompt's and the empty prompt's embeddings, fps,
    cfg, the seed's key and a plan whose schedule is VideoCrafter2's use_scale DDIM."""
    import jax.numpy as jnp

    from vstar_jax.diffusion.sampler import SampleOutput
    from vstar_jax.diffusion.schedules import videocrafter2_schedule

    seen = {}

    def sampler(unet, params, cond, uncond, key, fps, cfg_scale, *, plan):
        seen.update(cond=np.asarray(cond), uncond=np.asarray(uncond), key=key, fps=float(fps),
                    cfg=float(cfg_scale), plan=plan)
        return SampleOutput(jnp.zeros(plan.latent_shape), None, None)

    fake_sampler(sampler)
    pl.generate_video(PROMPT, checkpoint=ckpt, frames=FRAMES, steps=STEPS, cfg=7.5, fps=16, seed=11,
                      progress=False)
    pipe = pl.load_pipeline(ckpt)
    np.testing.assert_array_equal(seen["cond"], pipe.encode([PROMPT]))
    np.testing.assert_array_equal(seen["uncond"], pipe.encode([""]))
    assert (seen["fps"], seen["cfg"]) == (16.0, 7.5)
    import jax

    np.testing.assert_array_equal(jax.random.key_data(seen["key"]), jax.random.key_data(jax.random.key(11)))
    plan = seen["plan"]
    assert plan.latent_shape == (1, 4, FRAMES, 8, 8) and plan.tar is None and not plan.capture
    want = videocrafter2_schedule(STEPS, 1.0, use_scale=True).coefficients()
    got = plan.schedule().coefficients()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


# ----------------------------------------------------------------- issue 25: mutations the suite missed
def test_fps_reaches_the_unet_through_generate_video(first, ckpt):
    """The fps a generation asks for conditions the UNet (the tiny config has VideoCrafter2's fps
    embedding): fps 8 and the default 28 give different latents (the slow
    test_sampling_matches_a_plain_ddim_loop checks the loop itself against a direct UNet loop).
    Catches ``make_denoiser(..., fps=None)`` in generation/sampling.py (the UNet then falls back to
    28 whatever was asked, while the sidecar still says 8)."""
    slow = pl.generate_video(PROMPT, checkpoint=ckpt, frames=FRAMES, steps=STEPS, seed=SEED, fps=8, progress=False)
    assert first.sidecar["fps"] == 28 and slow.sidecar["fps"] == 8
    diff = np.abs(slow.latents - first.latents).max() / np.abs(first.latents).max()
    assert diff > 1e-3, diff


def test_video_is_the_vae_decoding_of_latents_over_the_scale_factor(first, ckpt):
    """generate_video's frames are the VAE's decoding of latents / scale_factor (0.18215 here, so an
    inverted scale is ~30x off), computed here with the VAE module directly. Catches
    ``latents * scale_factor`` before decoding in generation/outputs.py."""
    import jax
    import jax.numpy as jnp

    from vstar_jax.models.vae import AutoencoderKL

    pipe = pl.load_pipeline(ckpt)
    sf = pipe.diffusion["scale_factor"]
    assert sf == pytest.approx(0.18215) and first.sidecar["scale_factor"] == sf
    z = np.asarray(first.latents, np.float32)[0] / np.float32(sf)  # (c, f, h, w)
    frames = jnp.asarray(np.moveaxis(z, 1, 0))  # (f, c, h, w)
    px = jax.jit(lambda p, z: pipe.vae.apply({"params": p}, z, method=AutoencoderKL.decode))(pipe.params["vae"], frames)
    px = np.asarray(px, np.float32)  # (f, 3, H, W) in about [-1, 1]
    want = (np.clip(px, -1.0, 1.0) + 1.0) * 127.5  # the video's uint8 mapping before truncation
    got = first.video.astype(np.float64).transpose(0, 3, 1, 2)
    assert got.shape == want.shape
    assert (got <= want + 0.01).all() and (got > want - 1.01).all()


def test_sidecar_round_trip_keeps_every_request_field(ckpt, tmp_path, monkeypatch):
    """Every field of GenerationRequest (from dataclasses.fields, so a new field cannot be forgotten)
    survives build_sidecar -> JSON -> regenerate's path (load_sidecar, sidecar_kwargs, generate_video's
    make_request). Two requests between them move every field off its default (attention capture and a
    long-video method exclude each other). Catches e.g. ``vsp_mode`` missing from SIDECAR_ARGS."""
    import dataclasses

    from vstar_jax.generation.request import GenerationRequest

    # Fields not compared, each with its reason:
    not_compared = {}
    # Fields that come from the checkpoint, not from the caller (cannot be moved off the default here)
    from_checkpoint = {"schedule_kwargs", "flavor", "prediction", "ddim_steps"}
    info = pl.model_info(ckpt)
    common = dict(steps=4, cfg=7.5, eta=0.5, seed=1234, fps=12, save_fps=5.0, tar="64D4",
                  synopsis=["a red ball", "a blue ball", "a green ball"], vsp_mode="same", height=32, width=24,
                  frame_batch=3, attention_backend="xla")
    # attention_backend: 'xla' (off the default) and 'auto' (not what a sidecar without it gets: the config's 'xla')
    setups = [dict(common, frames=12, long_video="genl:8:4"), dict(common, frames=6, capture=True, attention_backend="auto")]
    default = pl.make_request("p", info)
    originals, rebuilt = [], []
    real = pl.make_request

    class _Stop(Exception):
        pass

    def capture(*a, **k):
        rebuilt.append(real(*a, **k))
        raise _Stop

    for i, kw in enumerate(setups):
        req = real("a ball changes colour", info, **kw)
        sc = pl.build_sidecar(req, checkpoint=info.source, video_size=(req.latent_hw[0] * 2, req.latent_hw[1] * 2),
                              latent_shape=[1, 4, req.frames, *req.latent_hw], vae_factor=info.vae_factor,
                              frames_sha256="0" * 64, mesh=None, paths={"video": None}, timing={},
                              scale_factor=0.18215)
        path = tmp_path / f"s{i}.json"
        path.write_text(json.dumps(sc))
        monkeypatch.setattr(pl, "make_request", capture)
        with pytest.raises(_Stop):
            pl.regenerate(path, progress=False)
        monkeypatch.setattr(pl, "make_request", real)
        originals.append(req)
    names = [f.name for f in dataclasses.fields(GenerationRequest)]
    assert set(not_compared) | from_checkpoint <= set(names)
    for name in names:
        if name in not_compared or name in from_checkpoint:
            continue
        assert any(getattr(r, name) != getattr(default, name) for r in originals), f"{name} is never moved off its default"
        for orig, again in zip(originals, rebuilt):
            assert getattr(again, name) == getattr(orig, name), name
    for orig, again in zip(originals, rebuilt):  # the checkpoint's settings come back the same way
        for name in from_checkpoint:
            assert getattr(again, name) == getattr(orig, name), name


# ------------------------------------------------------------------ issue 23: the attention backend setting
def test_attention_backend_reaches_the_unet_and_the_sidecar(first, ckpt, fake_sampler):
    """The backend asked for is the UNet config's the compiled loop is given (single videos and batches),
    whatever the checkpoint's config says; the default is 'auto', which the sidecar records."""
    import jax.numpy as jnp

    from vstar_jax.diffusion.sampler import SampleOutput

    assert first.sidecar["attention_backend"] == "auto"
    seen = []

    def record(unet, params, cond, uncond, key, fps, cfg_scale, *, plan):
        seen.append(unet.config["attention_backend"])
        return SampleOutput(jnp.zeros(plan.latent_shape), None, None)

    def fake_batch(unet, params, conds, *a, plan, items):
        seen.append(unet.config["attention_backend"])
        return SampleOutput(jnp.zeros((conds.shape[0],) + plan.latent_shape), None, None)

    fake_sampler(record, fake_batch)
    for backend in ("xla", "auto"):
        pl.generate_video(PROMPT, checkpoint=ckpt, frames=FRAMES, steps=STEPS, progress=False,
                          attention_backend=backend)
    assert seen == ["xla", "auto"]
    res = pl.generate_batch([{"prompt": PROMPT, "seed": 0}, {"prompt": PROMPT, "seed": 1, "attention_backend": "xla"}],
                            checkpoint=ckpt, frames=FRAMES, steps=STEPS, progress=False)
    assert sorted(seen[2:]) == ["auto", "xla"]  # one call per backend
    assert [r.sidecar["attention_backend"] for r in res] == ["auto", "xla"]


def test_sidecar_without_attention_backend_uses_the_checkpoint_config(first, ckpt):
    """A sidecar written before the setting existed ran with the checkpoint config's backend: it
    regenerates with that one (not today's default), read from the config, not a constant."""
    import dataclasses

    sc = dict(first.sidecar)
    del sc["attention_backend"]
    kw = pl.sidecar_kwargs(sc)
    assert kw["attention_backend"] is None
    info = pl.model_info(ckpt)
    for configured in ("xla", "auto"):
        got = pl.make_request(PROMPT, dataclasses.replace(info, attention_backend=configured),
                              attention_backend=kw["attention_backend"])
        assert got.attention_backend == configured
    assert pl.sidecar_kwargs(first.sidecar)["attention_backend"] == "auto"
