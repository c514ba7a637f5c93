"""`vstar-jax verify`: a user's own check of a converted checkpoint against its source.

Passes on a good conversion; fails (exit 1), naming the component, when one converted array is changed."""
import json

import numpy as np
import pytest
import yaml
from flax.traverse_util import flatten_dict

from vstar_jax.checkpoints_convert import diffusers as conv_diffusers
from vstar_jax.checkpoints_convert import videocrafter2 as conv_vc2
from vstar_jax.checkpoints_convert import verify as ver
from conftest import load_golden
from vstar_jax import cli
from vstar_jax.io.checkpoint import load_checkpoint, read_config, save_checkpoint

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")


def _perturb(src, dst, component, path, delta=0.5):
    """Rewrite one converted array through the project's checkpoint save API."""
    params, _ = load_checkpoint(str(src))
    cfg = {k: v for k, v in read_config(str(src)).items() if k not in ("components", "format")}
    node = params[component]
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = np.asarray(node[path[-1]]) + np.float32(delta)
    save_checkpoint(str(dst), params, cfg)
    return dst


@pytest.fixture(scope="module")
def diffusers_conversion(tmp_path_factory):
    d = tmp_path_factory.mktemp("verify_diffusers")
    from tiny_torch import modelscope_folder

    model = d / "model"
    modelscope_folder(model, unet_channels=(16, 24), vae_channels=(16, 32), groups=8, scheduler=False)
    out = d / "converted"
    conv_diffusers.convert(str(model), str(out), verbose=False)
    return model, out


def test_verify_diffusers_pass_then_fail_on_one_changed_array(diffusers_conversion, tmp_path, capsys):
    model, out = diffusers_conversion
    assert cli.main(["verify", str(out), "--source", str(model)]) == 0
    text = capsys.readouterr().out
    for comp in ("unet", "vae", "text"):
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(comp + " "))
        assert "PASS" in line and "max rel err" in line, line
        assert float(line.split("max rel err ")[1].split()[0]) < 1e-4
    assert text.strip().splitlines()[-1].startswith("PASS (3/3")

    bad = _perturb(out, tmp_path / "bad", "unet", ("conv_out", "bias"))
    assert ver.main([str(bad), "--source", str(model)]) == 1
    text = capsys.readouterr().out
    lines = {ln.split()[0]: ln for ln in text.splitlines() if ln.startswith("  ")}
    assert "FAIL" in lines["unet"] and "PASS" in lines["vae"] and "PASS" in lines["text"]
    assert text.strip().splitlines()[-1].startswith("FAIL: unet")


def test_verify_bad_input_is_one_line_exit_2(diffusers_conversion, tmp_path, capsys):
    _, out = diffusers_conversion
    assert ver.main([str(out), "--source", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: source not found") and err.count("\n") == 1


@pytest.fixture(scope="module")
def vc2_conversion(tmp_path_factory, golden_dir):
    readme = json.loads((golden_dir / "videocrafter2" / "README.json").read_text())
    sd = {**load_golden("videocrafter2/unet_tiny.safetensors"), **load_golden("videocrafter2/vae_tiny.safetensors"),
          **load_golden("openclip/text_tiny.safetensors")}
    d = tmp_path_factory.mktemp("verify_vc2")
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in sd.items()}}, d / "model.ckpt")
    vae = dict(readme["vae"])
    doc = {"model": {"params": {
        "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000, "scale_factor": 0.18215,
        "use_scale": True, "scale_b": 0.7, "image_size": [10, 16], "channels": 4,
        "unet_config": {"params": readme["unet"]},
        "first_stage_config": {"params": {"embed_dim": vae.pop("embed_dim"), "ddconfig": vae}},
        "cond_stage_config": {"params": {"freeze": True, "layer": "penultimate"}}}}}
    (d / "config.yaml").write_text(yaml.safe_dump(doc))
    out = d / "converted"
    conv_vc2.convert(str(d / "model.ckpt"), str(d / "config.yaml"), str(out), text_heads=4, verbose=False)
    return d, out


def test_verify_videocrafter2_arrays_and_forward(vc2_conversion, tmp_path, capsys):
    d, out = vc2_conversion
    # the YAML recorded at conversion is the default
    assert ver.main([str(out), "--source", str(d / "model.ckpt")]) == 0
    text = capsys.readouterr().out
    for comp in ("unet", "vae", "text"):
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(comp + " "))
        assert "PASS" in line and "equal to the source" in line and "forward finite" in line, line

    bad = _perturb(out, tmp_path / "bad", "vae", ("decoder", "conv_in", "bias"), delta=1e-3)
    assert ver.main([str(bad), "--source", str(d / "model.ckpt"), "--config", str(d / "config.yaml")]) == 1
    text = capsys.readouterr().out
    lines = {ln.split()[0]: ln for ln in text.splitlines() if ln.startswith("  ") and not ln.startswith("      ")}
    assert "FAIL" in lines["vae"] and "1 problem" in lines["vae"]
    assert "PASS" in lines["unet"] and "PASS" in lines["text"]
    assert "decoder/conv_in/bias: values differ from source first_stage_model.decoder.conv_in.bias" in text
    assert text.strip().splitlines()[-1].startswith("FAIL: vae")


def test_verify_videocrafter2_vae_with_temporal_layers(vc2_conversion, tmp_path, capsys):
    """convert --vae-temporal: the image part equals the source, the temporal arrays are reported as
    zero-initialised, then (changed) as fine-tuned; both pass."""
    d, _ = vc2_conversion
    out = tmp_path / "temporal"
    conv_vc2.convert(str(d / "model.ckpt"), str(d / "config.yaml"), str(out), components=["vae"],
                     vae_temporal="conv,attention:1", verbose=False)
    assert read_config(str(out))["vae"]["temporal"]["attention_window"] == 1
    assert ver.main([str(out), "--source", str(d / "model.ckpt")]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("vae "))
    assert "PASS" in line and "equal to the source" in line and "zero-initialised" in line, line
    # a fine-tuned decoder: its image part still equals the source; the note says so
    params, cfg = load_checkpoint(str(out))
    params["vae"]["decoder"]["up_1_temporal_0"]["conv"]["kernel"] += np.float32(0.01)
    image_cfg, image_params, note, finite = ver._split_vae(cfg["vae"], params["vae"])
    assert "fine-tuned" in note and finite and "temporal" not in image_cfg
    assert not any("temporal" in "/".join(k) for k in flatten_dict(image_params))
