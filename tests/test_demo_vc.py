"""demo_vc, the demo model with a trained length (issue 26): its clipped frame clock, the built-in names
that select it wherever a checkpoint is taken, its float16 storage, and the statistics of
benchmarks/demo_dynamics.py (McNemar, the sustained-motion verdict)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vstar_jax.demo import ASSET_DIR, DEMO_VC_DIR, checker, model as dm, world
from vstar_jax.errors import VstarError
from vstar_jax.generation import builtin
from vstar_jax.models.demo_options import TextFrameEmbed, frame_clock
from vstar_jax.models.unet_config import UNetConfig

def _bench():
    from benchmarks import demo_dynamics  # `python -m pytest` from the root, as test_clip_parallel's imports

    return demo_dynamics


def test_frame_clocks():
    """normalised: i / (f - 1); clipped at L: i / (L - 1) up to frame L - 1, then 1 (at f == L the same
    clock); none: 0."""
    np.testing.assert_allclose(frame_clock(5), [0, 0.25, 0.5, 0.75, 1.0], rtol=0, atol=1e-7)
    np.testing.assert_allclose(frame_clock(8, "clipped", 8), frame_clock(8), rtol=0, atol=1e-7)
    got = np.asarray(frame_clock(12, "clipped", 8))
    np.testing.assert_allclose(got[:8], np.arange(8) / 7, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(got[8:], 1.0)
    np.testing.assert_allclose(frame_clock(4, "clipped", 8), np.arange(4) / 7, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(frame_clock(6, "none"), 0.0)
    with pytest.raises(ValueError, match="frame clock"):
        frame_clock(4, "absolute")
    with pytest.raises(ValueError, match="trained_frames"):
        frame_clock(4, "clipped", 1)


def test_unet_config_takes_the_clock_and_refuses_a_clipped_clock_without_length():
    base = {"in_channels": 4, "out_channels": 4, "model_channels": 32, "channel_mult": (1,), "num_res_blocks": 1,
            "attention_resolutions": (1,), "num_head_channels": 16, "context_dim": 32, "norm_groups": 8}
    assert UNetConfig.from_config(base).frame_clock == "normalised"
    c = UNetConfig.from_config({**base, "frame_clock": "clipped", "trained_frames": 8})
    assert (c.frame_clock, c.trained_frames) == ("clipped", 8)
    with pytest.raises(VstarError, match="trained_frames"):
        UNetConfig.from_config({**base, "frame_clock": "clipped"})
    with pytest.raises(VstarError, match="frame_clock"):
        UNetConfig.from_config({**base, "frame_clock": "relative"})


def test_text_frame_embed_with_a_clipped_clock_stops_at_the_trained_length():
    """The per-frame code of a clipped clock equals the normalised one at the trained length; in a 2x video
    its first L frames are the trained ones and every later frame repeats the last."""
    ctx = jax.random.normal(jax.random.key(0), (1, 3, 8))
    mod = TextFrameEmbed(16, clock="normalised")
    params = mod.init(jax.random.key(1), jnp.repeat(ctx, 8, 0), 1, 8)["params"]
    params = jax.tree_util.tree_map(lambda p: p + 0.1, params)  # fc_2 starts at zero: make the code non-zero
    run = lambda clock, f: np.asarray(TextFrameEmbed(16, clock=clock, trained_frames=8).apply(  # noqa: E731
        {"params": params}, jnp.repeat(ctx, f, 0), 1, f))
    trained = run("normalised", 8)
    np.testing.assert_array_equal(run("clipped", 8), trained)
    long = run("clipped", 16)
    np.testing.assert_allclose(long[:8], trained, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(long[8:], np.repeat(trained[7:8], 8, 0), rtol=1e-6, atol=1e-6)
    assert not np.allclose(run("normalised", 16)[:8], trained, atol=1e-3)  # the normalised clock stretches


def test_builtin_names(tmp_path, monkeypatch):
    assert builtin.named(None) == "demo" and builtin.named("demo") == "demo"
    assert builtin.named("demo_vc") == "demo_vc" and builtin.named("builtin:demo_vc") == "demo_vc"
    assert builtin.named(str(tmp_path)) is None and builtin.named("ckpt/vc2") is None
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo_vc").mkdir()
    assert builtin.named("demo_vc") is None  # a folder of that name wins
    assert builtin.named("builtin:demo_vc") == "demo_vc"
    assert dm.asset_folder("builtin:demo_vc") == (DEMO_VC_DIR, "demo_vc")
    with pytest.raises(ValueError, match="no built-in demo model"):
        dm.asset_folder("builtin:nope")


def test_float16_storage_roundtrip(tmp_path):
    from test_demo_model import _tiny_config
    from tiny_checkpoint import _random_like
    from vstar_jax.models.text import text_param_shapes
    from vstar_jax.models.unet3d import UNet3D, init_shapes

    config = _tiny_config()
    _, _, f, h, w = dm.latent_shape(config, 2)
    rng = np.random.default_rng(0)  # shapes only (no UNet compile): the format is what is tested
    params = {"unet": _random_like(init_shapes(UNet3D(config.unet), f, h, w), rng),
              "text": _random_like(text_param_shapes(config.text), rng)}
    dm.save_demo_model(tmp_path, params, config, {"steps": 0}, dtype="float16")
    m = dm.load_demo_model(tmp_path)
    half = jax.tree_util.tree_map(lambda p: np.asarray(p, np.float16).astype(np.float32), params["unet"])
    jax.tree_util.tree_map(np.testing.assert_array_equal, m.unet_params, half)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(m.unet_params))
    assert json.loads((tmp_path / dm.CONFIG_FILE).read_text())["stored_dtype"] == "float16"
    with pytest.raises(ValueError, match="float16"):
        dm.save_demo_model(tmp_path / "x", params, config, dtype="bfloat16")


def _shipped_vc():
    if not (DEMO_VC_DIR / dm.PARAMS_FILE).exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"shipped demo_vc model missing at {DEMO_VC_DIR}")
        pytest.skip("demo_vc not exported yet")
    return dm.load_demo_model("demo_vc")


def test_shipped_demo_vc_is_a_clipped_clock_model_within_the_package_budget():
    m = _shipped_vc()
    assert m.config.unet.frame_clock == "clipped" and m.config.unet.trained_frames == m.frames == 8
    assert m.name == "demo_vc"
    assets = ASSET_DIR.parent
    size = sum(p.stat().st_size for p in assets.rglob("*") if p.is_file())
    assert size < 30 * 2**20, size


def test_generate_and_regenerate_with_demo_vc_by_name(tmp_path):
    """``--checkpoint demo_vc`` everywhere a checkpoint is taken: the sidecar records builtin:demo_vc and
    --from-sidecar loads it again by name."""
    from vstar_jax import cli, pipeline as pl
    from vstar_jax.generation import model as gm

    _shipped_vc()
    out = tmp_path / "vc.mp4"
    assert cli.main(["generate", "a red square moves right", "--checkpoint", "demo_vc", "--frames", "4",
                     "--steps", "2", "--out", str(out), "--quiet"]) == 0
    sc = json.loads(out.with_suffix(".json").read_text())
    assert sc["checkpoint"] == "builtin:demo_vc"
    again = pl.regenerate(out.with_suffix(".json"), out=tmp_path / "again.mp4", progress=False)
    assert again.sidecar["frames_sha256"] == sc["frames_sha256"]
    pipe = gm.load_pipeline("demo_vc")  # the clipped-clock model, not the default one
    assert pipe.source == "builtin:demo_vc" and gm.load_pipeline(None).source == "builtin:demo"
    assert UNetConfig.from_config(pipe.unet.config).frame_clock == "clipped"


def test_mcnemar_exact():
    b = _bench()
    # 6 discordant pairs all one way: two-sided exact p = 2 / 2**6
    got = b.mcnemar([False] * 6 + [True] * 4, [True] * 10)
    assert (got["a_only"], got["b_only"]) == (0, 6) and got["p"] == pytest.approx(2 / 64)
    assert b.mcnemar([True, False], [True, False])["p"] == 1.0
    # 3 vs 1 discordant: p = 2 * P(X <= 1), X ~ Bin(4, 1/2) = 2 * 5/16
    assert b.mcnemar([True, True, True, False, True], [False, False, False, True, True])["p"] == pytest.approx(10 / 16)
    with pytest.raises(ValueError):
        b.mcnemar([True], [True, False])


def test_sustained_move_tells_a_video_that_stops_from_one_that_keeps_moving():
    """A world clip of a move, rendered at 32 frames, keeps moving in every 8-frame stretch; the same move
    in 8 frames followed by 24 still frames passes the checker's whole-video direction (its fitted slope)
    but not the sustained verdict: the quasi-static failure the table measures."""
    b = _bench()
    spec = world.spec_from_caption("a red circle moves to the right", seed=0)
    moving = world.to_uint8(world.render(spec, 32, 24))
    assert b.sustained_move(moving, spec, 8)
    short = world.to_uint8(world.render(spec, 8, 24))
    stops = np.concatenate([short, np.repeat(short[-1:], 24, 0)])
    assert checker.check(stops, spec)["motion_ok"]
    assert not b.sustained_move(stops, spec, 8)
    assert b.sustained_move(short, spec, 8)


def test_dynamics_settings_parse_and_refuse():
    b = _bench()
    assert b.parse_setting("tar=64D4+vsp") == {"name": "tar=64D4+vsp", "tar": "64D4", "vsp": True, "method": None}
    assert b.parse_setting("genl")["method"] == "genl" and b.method_spec("fifo", 8) == "fifo:8:4"
    for bad in ("tar=nope", "genl+vsp", "warp"):
        with pytest.raises(ValueError):
            b.parse_setting(bad)
    assert b.uniform_band(8) == pytest.approx(22 / 64)
    specs = b.family_specs("color", 5, 0)
    assert all(len(s["states"]) == 2 and s["states"][1]["action"] == "recolor" for s in specs)
