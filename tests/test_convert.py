"""Converter entry points: real torch pickles / diffusers folders in, orbax checkpoints out."""
import os

import jax
import numpy as np
import pytest
import yaml

from vstar_jax.checkpoints_convert import diffusers as conv_diffusers
from vstar_jax.checkpoints_convert import videocrafter2 as conv_vc2
from vstar_jax.checkpoints_convert.common import ConversionError
from conftest import load_golden
from vstar_jax.io.checkpoint import load_checkpoint, read_config
from vstar_jax.models.unet3d import UNet3D

torch = pytest.importorskip("torch")


def _tiny_yaml(path, golden_cfg):
    unet = dict(golden_cfg)
    doc = {"model": {"params": {"linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000,
                                "scale_factor": 0.18215, "use_scale": True, "scale_b": 0.7, "image_size": [10, 16],
                                "channels": 4, "unet_config": {"params": unet}}}}
    with open(path, "w") as f:
        yaml.safe_dump(doc, f)
    return str(path)


@pytest.fixture(scope="module")
def vc2_unet_ckpt(tmp_path_factory, golden_dir):
    import json

    sd = load_golden("videocrafter2/unet_tiny.safetensors")
    d = tmp_path_factory.mktemp("vc2")
    ckpt = d / "model.ckpt"
    buffers = {"alphas_cumprod": torch.zeros(1000), "betas": torch.zeros(1000)}
    torch.save({"state_dict": {**{k: torch.from_numpy(v) for k, v in sd.items()}, **buffers},
                "global_step": 3}, ckpt)
    cfg = json.loads((golden_dir / "videocrafter2" / "README.json").read_text())["unet"]
    return str(ckpt), _tiny_yaml(d / "config.yaml", cfg)


def test_vc2_unet_conversion_roundtrip(vc2_unet_ckpt, tmp_path):
    ckpt, cfg_yaml = vc2_unet_ckpt
    out = tmp_path / "converted"
    conv_vc2.convert(ckpt, cfg_yaml, str(out), components=["unet"], verbose=False)
    params, config = load_checkpoint(str(out))
    assert config["components"] == ["unet"] and config["diffusion"]["use_scale"] is True
    io = load_golden("videocrafter2/unet_tiny_io.safetensors")
    y = UNet3D(config["unet"]).apply({"params": params["unet"]}, io["x"], io["t"], io["context"], fps=28)
    assert float(np.abs(np.asarray(y) - io["y"]).max() / np.abs(io["y"]).max()) < 1e-4
    # restore straight into a target sharding
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    params2, _ = load_checkpoint(str(out), sharding)
    leaf = jax.tree_util.tree_leaves(params2)[0]
    assert isinstance(leaf, jax.Array) and leaf.sharding == sharding


def test_vc2_missing_component_is_named_and_nothing_written(vc2_unet_ckpt, tmp_path):
    ckpt, cfg_yaml = vc2_unet_ckpt
    out = tmp_path / "converted"
    with pytest.raises(ValueError, match=r"\['vae'\]"):
        conv_vc2.convert(ckpt, cfg_yaml, str(out), components=["unet", "vae"], verbose=False)
    assert not out.exists() and os.listdir(tmp_path) == []


def test_vc2_truncated_checkpoint_clear_error(vc2_unet_ckpt, tmp_path):
    ckpt, cfg_yaml = vc2_unet_ckpt
    data = open(ckpt, "rb").read()
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(data[: len(data) // 3])
    out = tmp_path / "converted"
    assert conv_vc2.main(["--ckpt", str(bad), "--config", cfg_yaml, "--out", str(out), "--components", "unet"]) == 2
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        conv_vc2.convert(str(bad), cfg_yaml, str(out), components=["unet"], verbose=False)
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["bad.ckpt"]


def test_vc2_wrong_shape_named(vc2_unet_ckpt, tmp_path):
    ckpt, cfg_yaml = vc2_unet_ckpt
    doc = yaml.safe_load(open(cfg_yaml))
    doc["model"]["params"]["unet_config"]["params"]["context_dim"] = 48  # config disagrees with the weights
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConversionError, match="attn2.to_k.weight"):
        conv_vc2.convert(ckpt, str(bad_yaml), str(tmp_path / "o"), components=["unet"], verbose=False)
    assert not (tmp_path / "o").exists()


def test_existing_output_is_not_overwritten(vc2_unet_ckpt, tmp_path):
    ckpt, cfg_yaml = vc2_unet_ckpt
    out = tmp_path / "converted"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        conv_vc2.convert(ckpt, cfg_yaml, str(out), components=["unet"], verbose=False)
    assert (out / "keep.txt").read_text() == "x"


def test_diffusers_unet_folder_conversion(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(1)
    ref = diffusers.UNet3DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=8, cross_attention_dim=16,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        norm_num_groups=32).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    ref.save_pretrained(tmp_path / "model" / "unet")
    out = tmp_path / "converted"
    assert conv_diffusers.main([str(tmp_path / "model"), "--out", str(out), "--components", "unet"]) == 0
    params, config = load_checkpoint(str(out))
    assert read_config(str(out))["source"]["layout"] == "diffusers"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 3, 8, 8)).astype(np.float32)
    ctx = rng.standard_normal((1, 5, 16)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x), torch.tensor([50]), torch.from_numpy(ctx)).sample.numpy()
    got = UNet3D(config["unet"]).apply({"params": params["unet"]}, x, np.array([50]), ctx)
    assert float(np.abs(np.asarray(got) - want).max() / np.abs(want).max()) < 1e-4
    # a folder without the requested component: a clear error, nothing written
    assert conv_diffusers.main([str(tmp_path / "model"), "--out", str(tmp_path / "o2")]) == 2
    assert not (tmp_path / "o2").exists()
