"""The UNet split into parts (embedding, encoder, mid, decoder; StreamingT2V's CAM / APM as a wrapper) and
its typed config (issue 29).

* The parameter trees are the ones the converters write and the shipped checkpoints hold: every path and
  shape of the tiny VideoCrafter2, ModelScope (diffusers form), demo (both demo options) and StreamingT2V
  (CAM + APM) UNets equals ``data/unet_param_trees.json.gz``, recorded from the single-module UNet
  (commit 5bb08e5) before the split. Traced only (``jax.eval_shape``), nothing compiled.
* ``UNetConfig.from_config`` refuses an unknown key in one line naming it and the nearest field, and
  wrong types / layouts the UNet cannot build; the configs that exist (configs/*.py, the embedded demo
  model's saved config and its streaming settings) all load.
"""
import gzip
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import pytest
from flax.traverse_util import flatten_dict

from vstar_jax.configs import demo_tiny, unet_modelscope, unet_tiny, unet_videocrafter2
from vstar_jax.errors import VstarError
from vstar_jax.models.streaming import StreamingUNet, build_unet
from vstar_jax.models.unet3d import UNet3D
from vstar_jax.models.unet_config import UNetConfig

DATA = pathlib.Path(__file__).parent / "data"
ASSETS = pathlib.Path(__file__).resolve().parents[1] / "vstar_jax" / "assets" / "demo_model"


def _modelscope_tiny():
    from vstar_jax.checkpoints_convert.unet import unet_config_from_diffusers

    return unet_config_from_diffusers(dict(
        block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=8, cross_attention_dim=32,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        norm_num_groups=32))


def _demo():
    u = demo_tiny.get_config().unet
    u.frame_position = True  # both demo options (text_frame_cond is on in the shipped config)
    return u


def _streaming_tiny():
    c = unet_tiny.get_config()
    c.fps_cond = False
    c.cam = dict(frames=2, cond_channels=4, embed_channels=(8, 16), downsample=False, head_dim=16, norm_groups=32)
    c.apm = dict(tokens=3, image_dim=12, hidden=24, text_len=5, image_encoder="latent")
    return c


CONFIGS = {"vc2_tiny": unet_tiny.get_config, "modelscope_tiny": _modelscope_tiny, "demo": _demo,
           "streaming_tiny": _streaming_tiny}


def _tree(cfg) -> dict:
    """{path: shape} of the UNet's init params, every part built (CAM frames, an APM image embedding)."""
    cfg = ml_collections.FrozenConfigDict(cfg)
    x = jnp.zeros((1, int(cfg.in_channels), 4, 8, 8))
    kw = {}
    if cfg.get("cam"):
        kw["cam_frames"] = jnp.zeros((1, int(cfg.cam.cond_channels), int(cfg.cam.frames), 8, 8))
    if cfg.get("apm"):
        kw["image_embed"] = jnp.zeros((1, int(cfg.apm.image_dim)))
    shapes = jax.eval_shape(lambda: build_unet(cfg).init(jax.random.PRNGKey(0), x, jnp.array([400]),
                                                         jnp.zeros((1, 5, int(cfg.context_dim))), **kw))
    return {"/".join(k): list(v.shape) for k, v in flatten_dict(shapes["params"]).items()}


def test_param_trees_are_the_single_module_unets():
    want_all = json.loads(gzip.decompress((DATA / "unet_param_trees.json.gz").read_bytes()))
    assert sorted(want_all) == sorted(CONFIGS)
    for name, make in CONFIGS.items():
        want = {"/".join(k): v for k, v in flatten_dict(want_all[name]).items()}
        got = _tree(make())
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        assert not missing and not extra, f"{name}: missing {missing[:5]}, unexpected {extra[:5]}"
        assert got == want, f"{name}: shapes differ: {[k for k in want if got[k] != want[k]][:5]}"


def test_unknown_keys_and_wrong_values_are_refused_in_one_line():
    cfg = unet_tiny.get_config()
    cfg.model_channel = 32  # misspelt: used to take model_channels' default silently
    with pytest.raises(VstarError) as e:
        UNetConfig.from_config(cfg)
    msg = str(e.value)
    assert "\n" not in msg and "'model_channel' (did you mean 'model_channels'?)" in msg, msg
    cases = [
        (dict(cam=dict(frame=4)), "unet.cam config: unknown key 'frame' (did you mean 'frames'?)"),
        (dict(fps_cond="yes"), "unet.fps_cond must be true or false"),
        (dict(num_res_blocks=0), "unet.num_res_blocks must be >= 1"),
        (dict(dtype="float64"), "unet.dtype must be one of float32, bfloat16, float16"),
        (dict(attention_backend="flash"), "unet.attention_backend must be one of xla"),
        (dict(norm_groups=24), "unet.norm_groups 24 does not divide model_channels 32"),  # check_unet_config's
        (dict(use_relative_position=True, temporal_length=0), "temporal_length >= 1"),
    ]
    for change, want in cases:
        d = {**unet_tiny.get_config().to_dict(), **change}
        with pytest.raises(VstarError) as e:
            UNetConfig.from_config(d)
        assert "\n" not in str(e.value) and want in str(e.value), (change, str(e.value))
    d = unet_tiny.get_config().to_dict()
    del d["context_dim"]
    with pytest.raises(VstarError, match="unet config lacks context_dim"):
        UNetConfig.from_config(d)


def test_every_config_in_use_loads_and_picks_its_unet():
    for make in (unet_tiny.get_config, unet_videocrafter2.get_config, unet_modelscope.get_config, _modelscope_tiny,
                 lambda: demo_tiny.get_config().unet):
        cfg = UNetConfig.from_config(make())
        assert UNetConfig.from_config(cfg.to_dict()) == cfg  # a saved (plain dict) config reads back the same
        assert type(build_unet(make())) is UNet3D
    # the embedded demo model's saved config.json, plus its shipped CAM / APM settings (streaming.json)
    saved = json.loads((ASSETS / "config.json").read_text())["config"]["unet"]
    assert UNetConfig.from_config(saved) == UNetConfig.from_config(demo_tiny.get_config().unet)
    settings = json.loads((ASSETS / "streaming.json").read_text())["settings"]
    cfg = UNetConfig.from_config({**saved, **settings})
    assert cfg.cam.frames == 4 and cfg.cam.embed_channels == (32, 64) and cfg.apm.image_encoder == "latent"
    assert type(build_unet({**saved, **settings})) is StreamingUNet
    # a CAM / APM config built as the plain UNet is refused in one line naming the wrapper
    with pytest.raises(VstarError, match="StreamingUNet") as e:
        jax.eval_shape(lambda: UNet3D(_streaming_tiny()).init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 2, 8, 8)),
                                                              jnp.array([1]), jnp.zeros((1, 5, 32))))
    assert "\n" not in str(e.value)
