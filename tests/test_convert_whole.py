"""One command converts a whole checkpoint (UNet + VAE + text encoder) in each layout."""
import json
import os

import numpy as np
import pytest
import yaml

from vstar_jax.checkpoints_convert import diffusers as conv_diffusers
from vstar_jax.checkpoints_convert import videocrafter2 as conv_vc2
from conftest import load_golden, rel_err
from vstar_jax.io.checkpoint import load_checkpoint
from vstar_jax.models.text import TextTransformer
from vstar_jax.models.unet3d import UNet3D
from vstar_jax.models.vae import AutoencoderKL

torch = pytest.importorskip("torch")
RTOL = 1e-4




@pytest.fixture(scope="module")
def vc2_whole(tmp_path_factory, golden_dir):
    readme = json.loads((golden_dir / "videocrafter2" / "README.json").read_text())
    sd = {**load_golden("videocrafter2/unet_tiny.safetensors"), **load_golden("videocrafter2/vae_tiny.safetensors"),
          **load_golden("openclip/text_tiny.safetensors")}
    d = tmp_path_factory.mktemp("vc2whole")
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in sd.items()}}, d / "model.ckpt")
    vae = dict(readme["vae"])
    doc = {"model": {"params": {
        "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000, "scale_factor": 0.18215,
        "use_scale": True, "scale_b": 0.7, "image_size": [10, 16], "channels": 4,
        "unet_config": {"params": readme["unet"]},
        "first_stage_config": {"params": {"embed_dim": vae.pop("embed_dim"), "ddconfig": vae}},
        "cond_stage_config": {"params": {"freeze": True, "layer": "penultimate"}}}}}
    (d / "config.yaml").write_text(yaml.safe_dump(doc))
    return d, sd


def test_vc2_whole_checkpoint_roundtrip(vc2_whole, tmp_path):
    d, _ = vc2_whole
    out = tmp_path / "vc2"
    assert conv_vc2.main(["--ckpt", str(d / "model.ckpt"), "--config", str(d / "config.yaml"), "--out", str(out),
                         "--text-heads", "4"]) == 0
    params, cfg = load_checkpoint(str(out))
    assert cfg["components"] == ["text", "unet", "vae"]
    io = load_golden("videocrafter2/unet_tiny_io.safetensors")
    y = UNet3D(cfg["unet"]).apply({"params": params["unet"]}, io["x"], io["t"], io["context"], fps=28)
    assert rel_err(y, io["y"]) < RTOL
    vio = load_golden("videocrafter2/vae_tiny_io.safetensors")
    vae = AutoencoderKL(cfg["vae"])
    assert rel_err(vae.apply({"params": params["vae"]}, vio["z"], method=AutoencoderKL.decode), vio["decoded"]) < RTOL
    assert rel_err(vae.apply({"params": params["vae"]}, vio["image"], method=AutoencoderKL.encode), vio["moments"]) < RTOL
    tio = load_golden("openclip/text_tiny_io.safetensors")
    assert cfg["text"]["layer"] == "penultimate"
    hidden = TextTransformer(cfg["text"]).apply({"params": params["text"]}, tio["token_ids"])
    assert rel_err(hidden, tio["penultimate"]) < RTOL


def test_vc2_missing_component_and_corruption(vc2_whole, tmp_path):
    d, sd = vc2_whole
    no_text = tmp_path / "no_text.ckpt"
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in sd.items() if not k.startswith("cond_stage")}},
               no_text)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"component\(s\) \['text'\]"):
        conv_vc2.convert(str(no_text), str(d / "config.yaml"), str(out), verbose=False)
    corrupt = tmp_path / "corrupt.ckpt"
    data = bytearray((d / "model.ckpt").read_bytes())
    data[len(data) // 2: len(data) // 2 + 4096] = os.urandom(4096)
    corrupt.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="cannot read checkpoint.*CRC"):
        conv_vc2.convert(str(corrupt), str(d / "config.yaml"), str(out), verbose=False)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.ckpt", "no_text.ckpt"]


@pytest.mark.slow  # ~34 s of CI; each part is converted in CI on its own (test_convert's diffusers UNet folder,
# test_vae's diffusers autoencoder parity, test_text), and the VC2 whole checkpoint above stays in CI
def test_diffusers_whole_folder_roundtrip(tmp_path):
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from tiny_torch import modelscope_folder

    model = tmp_path / "model"
    m = modelscope_folder(model)
    unet, vae, text = m["unet"], m["vae"], m["text"]
    out = tmp_path / "ms"
    assert conv_diffusers.main([str(model), "--out", str(out)]) == 0
    params, cfg = load_checkpoint(str(out))
    assert cfg["diffusion"]["flavor"] == "diffusers" and cfg["diffusion"]["steps_offset"] == 1
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 3, 8, 8)).astype(np.float32)
    ctx = rng.standard_normal((1, 77, 32)).astype(np.float32)
    tokens = np.zeros((2, 77), np.int64)
    tokens[:, :4] = [[49406, 320, 1929, 49407], [49406, 49407, 0, 0]]
    with torch.no_grad():
        want_unet = unet(torch.from_numpy(x), torch.tensor([10]), torch.from_numpy(ctx)).sample.numpy()
        want_dec = vae.decode(torch.from_numpy(x[:, :, 0])).sample.numpy()
        want_txt = text(torch.from_numpy(tokens)).last_hidden_state.numpy()
    got_unet = UNet3D(cfg["unet"]).apply({"params": params["unet"]}, x, np.array([10]), ctx)
    got_dec = AutoencoderKL(cfg["vae"]).apply({"params": params["vae"]}, x[:, :, 0], method=AutoencoderKL.decode)
    got_txt = TextTransformer(cfg["text"]).apply({"params": params["text"]}, tokens.astype(np.int32))
    assert rel_err(got_unet, want_unet) < RTOL and rel_err(got_dec, want_dec) < RTOL and rel_err(got_txt, want_txt) < RTOL
    # a folder without the text encoder: named, nothing written
    import shutil

    shutil.rmtree(model / "text_encoder")
    assert conv_diffusers.main([str(model), "--out", str(tmp_path / "ms2")]) == 2
    assert not (tmp_path / "ms2").exists()
