"""VidRD's temporal-aware VAE decoder (issue 28): zero-init == image decoder bit for bit, windowed
decoding == one pass, the converter's and orbax's handling of the temporal layers."""
from types import SimpleNamespace

import jax
import ml_collections
import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from flax.traverse_util import unflatten_dict

from vstar_jax.checkpoints_convert.common import PrefixView
from vstar_jax.checkpoints_convert.vae import (add_temporal, convert_vae_diffusers, convert_vae_ldm,
                                               ldm_key_to_diffusers, ldm_plan, parse_temporal_spec)
from vstar_jax.configs import vae_tiny
from conftest import load_golden
from vstar_jax.generation.outputs import decode_batches
from vstar_jax.io.checkpoint import load_checkpoint, save_checkpoint
from vstar_jax.io.video import video_to_uint8
from vstar_jax.models.temporal_decoder import (decode_windows, num_temporal_layers, receptive_field,
                                               split_temporal, temporal_mask, temporal_settings, window_plan,
                                               with_temporal, without_temporal)
from vstar_jax.models.vae import AutoencoderKL, init_temporal_params, vae_param_shapes


@pytest.fixture(scope="module")
def golden_vae():
    """The golden tiny LDM VAE converted twice: as the image VAE and with zero-init temporal layers."""
    sd = PrefixView(load_golden("videocrafter2/vae_tiny.safetensors"), "first_stage_model.")
    io = load_golden("videocrafter2/vae_tiny_io.safetensors")
    cfg = vae_tiny.get_config()
    tcfg = with_temporal(cfg, attention_window=1)
    return cfg, convert_vae_ldm(sd, cfg), tcfg, convert_vae_ldm(sd, tcfg), io


def test_settings_and_receptive_field():
    cfg = vae_tiny.get_config()
    assert temporal_settings(cfg) is None and receptive_field(cfg) == 0
    t = with_temporal(cfg, attention_window=3)
    assert num_temporal_layers(t) == 2 + 2 * 2  # mid 2 + (num_res_blocks + 1) per level
    assert receptive_field(t) == 6 * (1 + 3)
    assert receptive_field(with_temporal(cfg, attention=False)) == 6
    assert temporal_settings(without_temporal(t)) is None
    assert parse_temporal_spec("conv,attention:4") == {"conv": True, "attention": True, "attention_window": 4}
    for bad in ("lstm", "conv:x", "attention:0", "attention:100000"):
        with pytest.raises(ValueError, match="vae-temporal|attention_window"):
            parse_temporal_spec(bad)
    with pytest.raises(ValueError, match="unknown keys"):
        temporal_settings({"temporal": {"conv": True, "kernel": 5}})


def test_window_plan_tiles_and_keeps_context():
    for n, core, halo in [(30, 4, 12), (7, 3, 2), (5, 8, 3), (40, 5, 0)]:
        plan = window_plan(n, core, halo)
        kept = [t for _, _, s, e in plan for t in range(s, e)]
        assert kept == list(range(n))
        assert len({hi - lo for lo, hi, _, _ in plan}) == 1  # one compiled shape
        for lo, hi, s, e in plan:
            assert 0 <= lo <= s < e <= hi <= n
            assert lo == 0 or s - lo >= halo
            assert hi == n or hi - e >= halo


def test_zero_init_temporal_decoder_is_the_image_decoder_bit_for_bit():
    """An image VAE plus freshly initialised temporal layers (what the converter and the trainer add)
    decodes 9 frames exactly as the image VAE does: every temporal branch adds 0.0."""
    cfg = micro_config()
    tcfg = with_temporal(cfg, attention_window=1)
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(np.float32),
                                    vae_param_shapes(cfg))
    fresh = init_temporal_params(tcfg)
    assert len(fresh) == 3 * 14  # 3 layers (mid 2, up 1) x 14 arrays
    tparams = flax_unflatten({**flatten_dict(params, sep="/"), **fresh})
    z = rng.standard_normal((9, 4, 4, 4)).astype(np.float32)  # 9 frames of one video
    want = jax.jit(lambda p, z: AutoencoderKL(cfg).apply({"params": p}, z, method=AutoencoderKL.decode))(params, z)
    got = jax.jit(lambda p, z: AutoencoderKL(tcfg).apply({"params": p}, z, num_frames=9,
                                                         method=AutoencoderKL.decode))(tparams, z)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_converter_adds_zero_temporal_layers_to_a_source_without_them(golden_vae):
    cfg, params, tcfg, tparams, _ = golden_vae
    image, temporal = split_temporal(tparams)
    assert len(temporal) == 6 * 14 and set(image) == set(split_temporal(params)[0])  # 6 layers x 14 arrays
    for k, v in image.items():  # the converter took every image array from the source, unchanged
        np.testing.assert_array_equal(v, split_temporal(params)[0][k])
    for k, v in init_temporal_params(tcfg).items():
        np.testing.assert_array_equal(temporal[k], v)
    assert not any(np.any(temporal[k]) for k in temporal if k.endswith(("conv/kernel", "proj_out/kernel")))


def _trained_like(tparams, seed=0, scale=0.2):
    """Temporal params as after fine-tuning: every temporal array perturbed (the zero ones too)."""
    rng = np.random.default_rng(seed)
    mask = temporal_mask(tparams)
    return jax.tree_util.tree_map(
        lambda v, m: (np.asarray(v) + scale * rng.standard_normal(np.shape(v))).astype(np.float32) if m else v,
        tparams, mask)


def micro_config():
    """The smallest VAE the decoder code takes (one level, mid blocks only, 8 channels): cheap to compile."""
    cfg = vae_tiny.get_config()
    cfg.update(ch=8, ch_mult=(1,), num_res_blocks=0, norm_num_groups=4, mid_attention=False, resolution=8)
    return cfg


def test_windowed_decoding_equals_one_pass():
    """decode_windows and generation's decode_batches (frame_batch 4, halo = the receptive field 6:
    windows of 16 of the 20 frames) against the 20 frames decoded in one pass, within 1e-5."""
    tcfg = with_temporal(micro_config(), attention_window=1)
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(np.float32),
                                    vae_param_shapes(tcfg))  # temporal layers included, all non-zero
    vae = AutoencoderKL(ml_collections.FrozenConfigDict(tcfg))
    n, sf = 20, np.float32(0.5)
    z = rng.standard_normal((1, 4, n, 4, 4)).astype(np.float32)
    flat = z[0].transpose(1, 0, 2, 3)
    one = np.asarray(jax.jit(lambda p, z: vae.apply({"params": p}, z, num_frames=n,
                                                    method=AutoencoderKL.decode))(params, flat))
    one = one.transpose(1, 0, 2, 3)[None]
    assert receptive_field(tcfg) == 6
    windows = window_plan(n, 4, 6)
    assert len(windows) == 5 and {hi - lo for lo, hi, _, _ in windows} == {16}  # really windowed
    got = np.concatenate(list(decode_windows(vae, params, z, frame_batch=4)), axis=2)
    assert got.shape == one.shape
    np.testing.assert_allclose(got, one, rtol=0, atol=1e-5 * np.abs(one).max())
    # generation's decode path (the same compiled windows): uint8 frames of latents / scale_factor
    pipe = SimpleNamespace(decoder=None, pixel_space=False, vae=vae, params={"vae": params},
                           diffusion={"scale_factor": float(sf)})
    frames = np.concatenate(list(decode_batches(pipe, z * sf, frame_batch=4)))
    want = video_to_uint8(one)[0]
    assert frames.shape == want.shape == (n, 4, 4, 3)
    assert np.abs(frames.astype(int) - want.astype(int)).max() <= 1  # uint8 truncation of 1e-6 differences


def test_converter_names_and_orbax_round_trip(golden_vae, tmp_path):
    cfg, params, tcfg, tparams, _ = golden_vae
    plan = ldm_plan(vae_param_shapes(tcfg))
    tkeys = {k: v for k, v in plan.items() if "temporal" in k}
    assert "decoder.up.1.temporal.0.conv.weight" in tkeys and tkeys["decoder.up.1.temporal.0.conv.weight"][1] == "conv3d"
    assert "decoder.mid.temporal_2.proj_out.weight" in tkeys
    assert ldm_key_to_diffusers("decoder.up.1.temporal.0.q.weight", 2) == "decoder.up_blocks.0.temporal.0.q.weight"
    assert ldm_key_to_diffusers("decoder.mid.temporal_1.conv.bias", 2) == "decoder.mid_block.temporal.0.conv.bias"
    assert add_temporal(cfg, None) is cfg
    # a source that has the temporal layers (a re-exported fine-tuned decoder) gives them back exactly
    trained = _trained_like(tparams, seed=3)
    flat = _flat(trained)
    sd = {}
    for key, (dst, kind) in plan.items():
        w = flat["/".join(dst)]
        sd[key] = {"conv3d": lambda a: a.transpose(4, 3, 0, 1, 2), "conv2d": lambda a: a.transpose(3, 2, 0, 1),
                   "dense": lambda a: a.T, "identity": lambda a: a}[kind](w)
    again = convert_vae_ldm(sd, tcfg)
    for k, v in _flat(again).items():
        np.testing.assert_array_equal(v, flat[k])
    levels = len(tcfg.ch_mult)
    again_d = convert_vae_diffusers({ldm_key_to_diffusers(k, levels): v for k, v in sd.items()}, tcfg)
    assert set(_flat(again_d)) == set(flat)
    # orbax: the temporal arrays and the config entry survive a checkpoint
    save_checkpoint(str(tmp_path / "ck"), {"vae": trained}, {"vae": tcfg.to_dict()})
    loaded, lcfg = load_checkpoint(str(tmp_path / "ck"))
    assert temporal_settings(lcfg["vae"]) == temporal_settings(tcfg)
    for k, v in _flat(loaded["vae"]).items():
        np.testing.assert_array_equal(np.asarray(v), flat[k])


def flax_unflatten(flat):
    return unflatten_dict(flat, sep="/")


def _flat(tree):
    return {k: np.asarray(v) for k, v in flatten_dict(jax.device_get(tree), sep="/").items()}
