"""Converter UX: help, readable key reports, every component's problems in one run, output permissions."""
import os

import numpy as np
import pytest
import yaml

from vstar_jax.checkpoints_convert import videocrafter2 as conv_vc2
from vstar_jax.checkpoints_convert.common import ConversionError, ConversionErrors, PrefixView
from vstar_jax.checkpoints_convert.unet import convert_unet
from vstar_jax.configs import unet_tiny
from conftest import load_golden
from vstar_jax import cli
from vstar_jax.io.checkpoint import save_checkpoint

UNET = "model.diffusion_model."


def test_convert_help_lists_layouts_and_options(capsys):
    assert cli.main(["convert", "--help"]) == 0
    out = capsys.readouterr().out
    for text in ("videocrafter2", "diffusers", "--ckpt", "--config", "--text-heads", "model_dir", "--components",
                 "--dtype", "--overwrite", "vstar-jax verify"):
        assert text in out, text
    assert cli.main(["convert", "diffusers", "--help"]) == 0
    assert "--components" in capsys.readouterr().out
    assert cli.main(["--help"]) == 0 and "verify CKPT_DIR --source" in capsys.readouterr().out


@pytest.fixture(scope="module")
def golden_unet_sd():
    sd = dict(load_golden("videocrafter2/unet_tiny.safetensors"))
    assert all(k.startswith(UNET) for k in sd)
    return sd


def test_key_report_summary_then_prefixed_keys_capped(golden_unet_sd):
    sd = dict(golden_unet_sd)
    dropped = sorted(k for k in sd if k.startswith(UNET + "output_blocks."))[:25]
    for k in dropped:
        sd.pop(k)
    with pytest.raises(ConversionError) as e:
        convert_unet(PrefixView(sd, UNET), unet_tiny.get_config(), "lvdm")
    lines = str(e.value).splitlines()
    assert lines[0].startswith("unet (lvdm): checkpoint does not match the model config (25 missing)")
    assert len(lines[0]) < 200
    keys = [ln for ln in lines[1:] if ln.startswith("  missing: ")]
    assert len(keys) == ConversionError.CAP and all(ln.startswith("  missing: " + UNET) for ln in keys)
    assert lines[-1] == "  ... and 5 more missing"
    assert e.value.missing[0] == dropped[0][len(UNET):]  # attributes keep the stripped names


def test_key_report_names_the_config_field_behind_wrong_shapes(golden_unet_sd):
    cfg = unet_tiny.get_config()
    cfg.channel_mult = (1, 3)  # the weights are 32 x (1, 2)
    with pytest.raises(ConversionError) as e:
        convert_unet(PrefixView(golden_unet_sd, UNET), cfg, "lvdm")
    first = str(e.value).splitlines()[0]
    assert "wrong shape" in first and "likely cause: the config's model_channels x channel_mult gives 96" in first
    assert "where the weights have 64" in first


def test_every_component_and_stray_keys_reported_in_one_run(tmp_path, golden_dir):
    import json

    torch = pytest.importorskip("torch")
    readme = json.loads((golden_dir / "videocrafter2" / "README.json").read_text())
    sd = {**load_golden("videocrafter2/unet_tiny.safetensors"), **load_golden("videocrafter2/vae_tiny.safetensors")}
    sd.pop(UNET + "out.2.bias")  # the UNet misses a key
    vkey = next(k for k in sd if k.startswith("first_stage_model.") and k.endswith("conv_in.weight"))
    sd[vkey] = sd[vkey][:, :, :1]  # the VAE has a wrongly shaped one
    sd["some_adapter.weight"] = np.zeros(2, np.float32)  # a stray key outside every component
    torch.save({"state_dict": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}},
               tmp_path / "model.ckpt")
    vae = dict(readme["vae"])
    doc = {"model": {"params": {"unet_config": {"params": readme["unet"]},
                                "first_stage_config": {"params": {"embed_dim": vae.pop("embed_dim"), "ddconfig": vae}}}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ConversionErrors) as e:
        conv_vc2.convert(str(tmp_path / "model.ckpt"), str(tmp_path / "c.yaml"), str(tmp_path / "out"),
                         components=["unet", "vae"], verbose=False)
    text = str(e.value)
    assert text.splitlines()[0] == "3 parts of the checkpoint do not match: checkpoint, unet (lvdm), vae (LDM)"
    assert "  unexpected: some_adapter.weight" in text
    assert f"  missing: {UNET}out.2.bias" in text
    assert f"  wrong shape: {vkey}" in text
    assert not (tmp_path / "out").exists()


def test_output_directory_gets_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        out = save_checkpoint(str(tmp_path / "ckpt"), {"unet": {"w": np.ones(3, np.float32)}}, {"x": 1})
    finally:
        os.umask(old)
    assert os.stat(out).st_mode & 0o777 == 0o755
    assert os.stat(os.path.join(out, "config.json")).st_mode & 0o777 == 0o644
    assert all(os.stat(os.path.join(r, d)).st_mode & 0o777 == 0o755 for r, ds, _ in os.walk(out) for d in ds)
