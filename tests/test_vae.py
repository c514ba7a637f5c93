"""VAE: golden LDM parity, diffusers AutoencoderKL parity, frame batching, converter errors."""
import numpy as np
import pytest

import jax

from conftest import load_golden, rel_err
from vstar_jax.configs import vae_tiny, vae_videocrafter2
from vstar_jax.checkpoints_convert.common import ConversionError, PrefixView
from vstar_jax.checkpoints_convert.vae import (
    convert_vae_diffusers,
    convert_vae_ldm,
    vae_config_from_diffusers,
    vae_config_from_ldm,
)
from vstar_jax.models.vae import (
    AutoencoderKL,
    decode_latents,
    decode_video,
    encode_to_latents,
    sample_posterior,
    split_moments,
    vae_param_shapes,
)

RTOL = 1e-4




@pytest.fixture(scope="module")
def golden():
    sd = load_golden("videocrafter2/vae_tiny.safetensors")
    io = load_golden("videocrafter2/vae_tiny_io.safetensors")
    cfg = vae_tiny.get_config()
    params = convert_vae_ldm(PrefixView(sd, "first_stage_model."), cfg)
    return cfg, params, sd, io


def test_tiny_config_matches_golden_readme(golden_dir):
    import json

    dd = json.loads((golden_dir / "videocrafter2" / "README.json").read_text())["vae"]
    built = vae_config_from_ldm(dd, embed_dim=dd["embed_dim"])
    assert built.to_dict() == vae_tiny.get_config().to_dict()


def test_golden_moments_and_decoded(golden):
    cfg, params, _, io = golden
    vae = AutoencoderKL(cfg)
    moments = vae.apply({"params": params}, io["image"], method=AutoencoderKL.encode)
    decoded = vae.apply({"params": params}, io["z"], method=AutoencoderKL.decode)
    assert moments.shape == io["moments"].shape and decoded.shape == io["decoded"].shape
    assert rel_err(moments, io["moments"]) < RTOL
    assert rel_err(decoded, io["decoded"]) < RTOL


def test_video_frame_batches_equal_one_batch(golden):
    cfg, params, _, io = golden
    vae = AutoencoderKL(cfg)
    # (b=2, c, f=3, h, w) latents from the golden z frames; frame_batch 2 pads the last chunk.
    z = np.stack([io["z"], io["z"][::-1]], axis=0).transpose(0, 2, 1, 3, 4)
    chunked = np.asarray(jax.jit(lambda p, z: decode_video(vae, p, z, frame_batch=2))(params, z))
    whole = np.asarray(jax.jit(lambda p, z: decode_latents(vae, p, z, frame_batch=16))(params, 0.18215 * z))
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-5)
    # frame order: frame t of row b is the reference decode of z[b, :, t]
    want = np.stack([io["decoded"], io["decoded"][::-1]], axis=0).transpose(0, 2, 1, 3, 4)
    assert rel_err(chunked, want) < RTOL

    video = io["image"][None].transpose(0, 2, 1, 3, 4)  # (1, 3, f=3, 32, 32)
    lat = jax.jit(lambda p, v: encode_to_latents(vae, p, v, frame_batch=2))(params, video)
    mean = io["moments"][:, :4].transpose(1, 0, 2, 3)[None]
    assert lat.shape == (1, 4, 3, 16, 16)
    assert rel_err(lat, 0.18215 * mean) < RTOL


def test_posterior_helpers(golden):
    *_, io = golden
    mean, logvar = split_moments(io["moments"])
    np.testing.assert_array_equal(np.asarray(mean), io["moments"][:, :4])
    np.testing.assert_array_equal(np.asarray(logvar), np.clip(io["moments"][:, 4:], -30, 20))
    np.testing.assert_array_equal(np.asarray(sample_posterior(io["moments"])), io["moments"][:, :4])
    big = np.concatenate([np.zeros((4000, 1), np.float32), np.full((4000, 1), np.log(4.0), np.float32)], 1)
    draws = np.asarray(sample_posterior(big, jax.random.PRNGKey(0)))
    assert abs(draws.std() - 2.0) < 0.1 and abs(draws.mean()) < 0.1


def test_bad_shapes_raise(golden):
    cfg, params, _, _ = golden
    vae = AutoencoderKL(cfg)
    with pytest.raises(ValueError, match="expected a video"):
        decode_video(vae, params, np.zeros((4, 16, 16), np.float32))
    with pytest.raises(ValueError, match="decode expects"):
        vae.apply({"params": params}, np.zeros((1, 3, 16, 16), np.float32), method=AutoencoderKL.decode)


def test_ldm_converter_names_bad_keys(golden):
    cfg, _, sd, _ = golden
    good = {k: v for k, v in PrefixView(sd, "first_stage_model.").items()}
    bad = dict(good)
    del bad["decoder.mid.attn_1.q.weight"]
    bad["decoder.extra.weight"] = np.zeros(3, np.float32)
    bad["encoder.conv_in.weight"] = np.zeros((32, 4, 3, 3), np.float32)
    with pytest.raises(ConversionError) as info:
        convert_vae_ldm(bad, cfg)
    err = info.value
    assert err.missing == ["decoder.mid.attn_1.q.weight"]
    assert err.unexpected == ["decoder.extra.weight"]
    assert len(err.mismatched) == 1 and "encoder.conv_in.weight" in err.mismatched[0]
    for name in ("decoder.mid.attn_1.q.weight", "decoder.extra.weight", "encoder.conv_in.weight"):
        assert name in str(err)
    # training-only loss weights of a full LDM checkpoint are ignored
    convert_vae_ldm({**good, "loss.logvar": np.zeros(())}, cfg)


def test_full_size_config_shapes():
    shapes = vae_param_shapes(vae_videocrafter2.get_config())
    n = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))
    assert n == 83_653_863  # LDM f8 KL VAE (SD 1.x / VideoCrafter2 first stage)


@pytest.fixture(scope="module")
def diffusers_vae():
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    config = dict(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=32, norm_num_groups=8,
        block_out_channels=(16, 32, 32), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    )
    model = diffusers.AutoencoderKL(**config).eval()
    with torch.no_grad():  # random, non-trivial norms and biases
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model, dict(model.config)


def test_diffusers_autoencoder_parity(diffusers_vae):
    import torch

    model, config = diffusers_vae
    cfg = vae_config_from_diffusers(config)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    params = convert_vae_diffusers(sd, cfg)
    vae = AutoencoderKL(cfg)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
    z = rng.normal(size=(2, 4, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want_m = model.quant_conv(model.encoder(torch.from_numpy(x))).numpy()
        want_d = model.decode(torch.from_numpy(z)).sample.numpy()
    got_m = vae.apply({"params": params}, x, method=AutoencoderKL.encode)
    got_d = vae.apply({"params": params}, z, method=AutoencoderKL.decode)
    assert rel_err(got_m, want_m) < RTOL
    assert rel_err(got_d, want_d) < RTOL
    assert cfg.scale_factor == pytest.approx(config["scaling_factor"])


def test_diffusers_converter_names_bad_keys(diffusers_vae):
    model, config = diffusers_vae
    cfg = vae_config_from_diffusers(config)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    del sd["decoder.up_blocks.0.upsamplers.0.conv.weight"]
    with pytest.raises(ConversionError, match=r"decoder\.up_blocks\.0\.upsamplers\.0\.conv\.weight"):
        convert_vae_diffusers(sd, cfg)
