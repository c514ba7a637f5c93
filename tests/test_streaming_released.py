"""The released StreamingT2V layout end to end on a tiny random model: its checkpoint (UNet + CAM on
decoded pixel frames + APM with an OpenCLIP image tower) converted from the command line next to a
ModelScope folder, what CAM and APM read inside the sampling loop against a torch reference (diffusers'
VAE decode, the reference's kornia resize written in torch, transformers' CLIP vision tower), and
``vstar-jax generate --long-video streaming`` on the converted checkpoint with ``--from-sidecar``.

Tolerance 1e-4 relative (max |diff| / max |ref|), float32: the JAX and torch VAE / ViT sum in different
orders over a few thousand terms; measured ~1e-6."""
import json

import numpy as np
import pytest

from conftest import rel_err
from test_clip_preprocess import kornia_resize_ref
from test_streaming import _source_state_dict
from tiny_torch import hf_vision_to_openclip, modelscope_folder

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
CAM = dict(frames=2, cond_channels=3, embed_channels=(8, 16), downsample=True, head_dim=64, norm_groups=32)
APM = dict(tokens=3, image_dim=16, hidden=24, text_len=77, image_encoder="openclip_vit_h14")
VISION = dict(image_size=28, patch_size=14, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=2, projection_dim=16, hidden_act="gelu")


def _vision():
    torch.manual_seed(1)
    model = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**VISION)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "layrnorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _openclip_visual(model, prefix):
    """transformers' vision tower in OpenCLIP's ``visual.*`` layout (fused qkv, ``proj`` a matrix)."""
    return hf_vision_to_openclip({k: v.numpy() for k, v in model.state_dict().items()},
                                 VISION["num_hidden_layers"], prefix)


def _save_ckpt(path, sd):
    torch.save({"state_dict": {k: torch.tensor(np.asarray(v)) for k, v in sd.items()},
                "global_step": 1}, path)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """(converted checkpoint dir, torch VAE, torch vision tower, ckpt state dict, workdir)."""
    from vstar_jax.checkpoints_convert.streamingt2v import with_streaming
    from vstar_jax.checkpoints_convert.unet import unet_config_from_diffusers
    from vstar_jax.cli import main

    root = tmp_path_factory.mktemp("released")
    vae = modelscope_folder(root / "modelscope", perturb=("vae", "text"))["vae"]
    vision = _vision()
    base = unet_config_from_diffusers(json.loads((root / "modelscope" / "unet" / "config.json").read_text()))
    sd = _source_state_dict(with_streaming(base, CAM, APM), seed=2)
    sd = {k: (0.3 * v if k.startswith("base_model.") else v) for k, v in sd.items()}
    sd.update(_openclip_visual(vision, "image_encoder.model.visual."))
    # the rest of the Lightning state: the image model's unused text leftovers, the frozen VAE / text
    sd["image_encoder.model.token_embedding.weight"] = np.zeros((10, 4), np.float32)
    sd["vae.decoder.conv_out.bias"] = np.zeros(3, np.float32)
    sd["text_encoder.text_model.final_layer_norm.bias"] = np.zeros(32, np.float32)
    _save_ckpt(root / "streaming_t2v.ckpt", sd)
    out = root / "ckpt"
    assert main(["convert", "streamingt2v", str(root / "streaming_t2v.ckpt"), "--modelscope",
                 str(root / "modelscope"), "--image-head-width", "16", "--cam-frames", "2", "--out", str(out)]) == 0
    return out, vae, vision, sd, root


def test_conversion_reads_the_settings_and_every_component(released):
    from vstar_jax.io.checkpoint import read_config

    out, *_ = released
    cfg = read_config(str(out))
    assert cfg["components"] == ["image_encoder", "text", "unet", "vae"]
    assert cfg["unet"]["cam"].to_dict() == dict(CAM, embed_channels=[8, 16])
    assert cfg["unet"]["apm"].to_dict() == APM
    assert cfg["image_encoder"]["width"] == 32 and cfg["image_encoder"]["heads"] == 2
    assert cfg["image_encoder"]["image_size"] == 28 and cfg["image_encoder"]["output_dim"] == 16
    assert cfg["diffusion"]["flavor"] == "diffusers"
    assert (cfg["diffusion"]["steps"], cfg["diffusion"]["cfg"], cfg["diffusion"]["eta"]) == (50, 7.5, 1.0)


def test_what_cam_and_apm_read_matches_torch(released):
    """CAM's input: the previous chunk's frames decoded and clamped to [-1, 1]; APM's: the decoded anchor
    through the reference's antialiased resize, CLIP normalisation and the vision tower (and a zero image
    for the unconditional row) -- against diffusers' VAE and transformers' CLIP vision in torch."""
    import jax
    import jax.numpy as jnp

    from vstar_jax.generation.model import Pipeline

    out, vae, vision, _, _ = released
    pipe = Pipeline.from_checkpoint(out)
    mem = pipe.streaming_memory()
    assert mem.cam_pixels and mem.image_encoder == "openclip"
    params = mem.params_of(pipe.params)
    sf = pipe.diffusion["scale_factor"]
    z = np.random.default_rng(3).standard_normal((1, 4, 2, 8, 8)).astype(np.float32)

    got_cam = np.asarray(jax.jit(mem.cam_input)(params, jnp.asarray(z)))
    null, emb = (np.asarray(a) for a in jax.jit(mem.anchor_pair)(params, jnp.asarray(z[:, :, 0])))
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        frames = torch.from_numpy(z[0].transpose(1, 0, 2, 3) / sf)
        raw = vae.decode(frames).sample
        px = raw.clamp(-1, 1)  # (C, 3, H, W)
        want_cam = px.numpy().transpose(1, 0, 2, 3)[None]
        both = torch.cat([torch.zeros_like(px[:1]), px[:1]])
        pre = (kornia_resize_ref(both, (28, 28)) + 1.0) / 2.0
        want = vision(pixel_values=(pre - mean) / std).image_embeds.numpy()
    print(f"relative error: CAM frames {rel_err(got_cam, want_cam):.2e}, anchor {rel_err(emb, want[1:]):.2e}, "
          f"zero image {rel_err(null, want[:1]):.2e}")
    assert got_cam.shape == (1, 3, 2, 16, 16) and np.abs(got_cam).max() <= 1.0 < float(raw.abs().max())  # clamped
    assert rel_err(got_cam, want_cam) < TOL, rel_err(got_cam, want_cam)
    assert rel_err(emb, want[1:]) < TOL and rel_err(null, want[:1]) < TOL, (rel_err(emb, want[1:]), rel_err(null, want[:1]))


@pytest.mark.filterwarnings("ignore:os.fork")
def test_generate_streaming_on_the_converted_checkpoint_and_from_sidecar(released, capsys):
    """``vstar-jax generate --long-video streaming:4:2`` runs on the released layout (the UNet takes
    3-channel pixel frames for CAM and a 16-wide embedding for APM: the latent stand-ins would not fit),
    and ``--from-sidecar`` repeats it bit for bit. At eta 0 (ModelScope's deterministic DDIM: no noise keys
    to fold per chunk)."""
    from vstar_jax.cli import main
    from vstar_jax.longvideo import parse_strategy

    out, _, _, _, root = released
    video = root / "a.mp4"
    args = ["generate", "a boat on a lake", "--checkpoint", str(out), "--long-video", "streaming:4:2", "--frames", "6",
            "--steps", "2", "--height", "16", "--width", "16", "--seed", "4", "--eta", "0", "--out", str(video), "--quiet"]
    assert main(args) == 0, capsys.readouterr().err
    side = json.loads(video.with_suffix(".json").read_text())
    assert side["long_video"] == parse_strategy("streaming:4:2").to_dict() and side["frames"] == 6
    assert side["eta"] == 0 and side["cfg"] == 7.5  # the converter's defaults: the reference's CFG
    again = root / "b.mp4"
    assert main(["generate", "--from-sidecar", str(video.with_suffix(".json")), "--out", str(again),
                 "--quiet"]) == 0, capsys.readouterr().err
    assert json.loads(again.with_suffix(".json").read_text())["frames_sha256"] == side["frames_sha256"]


def test_without_the_image_encoder_it_is_refused_and_openclip_file_fills_it(released, capsys):
    """A checkpoint without ``image_encoder.*``: the UNet converts, the converter says what it left out,
    and ``streaming`` is refused in one line before compute; ``--openclip FILE`` supplies the tower."""
    import jax
    from safetensors.numpy import save_file

    from vstar_jax.cli import main
    from vstar_jax.io.checkpoint import load_checkpoint

    out, _, vision, sd, root = released
    bare = {k: v for k, v in sd.items() if not k.startswith("image_encoder.")}
    _save_ckpt(root / "bare.ckpt", bare)
    conv = ["convert", "streamingt2v", str(root / "bare.ckpt"), "--unet-config", str(root / "modelscope/unet/config.json"),
            "--image-head-width", "16", "--cam-frames", "2"]
    assert main(conv + ["--out", str(root / "bare")]) == 0
    assert "APM's image encoder not written" in capsys.readouterr().err
    video = root / "c.mp4"
    code = main(["generate", "x", "--checkpoint", str(root / "bare"), "--long-video", "streaming:4:2", "--frames", "6",
                 "--steps", "2", "--out", str(video), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not video.exists()
    assert err[-1].startswith("error: ") and "no VAE" in err[-1] and "no OpenCLIP image encoder for APM" in err[-1]

    save_file(_openclip_visual(vision, "visual."), str(root / "open_clip.safetensors"))
    assert main(conv + ["--openclip", str(root / "open_clip.safetensors"), "--out", str(root / "filled")]) == 0
    got, _ = load_checkpoint(str(root / "filled"), components=["image_encoder"])
    want, _ = load_checkpoint(str(out), components=["image_encoder"])
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))


@pytest.mark.slow  # ~75 s (a 4-device subprocess); test_sharding keeps the generation-on-a-mesh check in CI
def test_streaming_on_a_mesh_equals_one_device(released):
    """The released layout's loop (VAE decode and CLIP tower inside it) on data 2 x frames 2 simulated
    devices: the same latents as one device within 3e-5. Float summation order only: measured 1.1e-5 on
    this machine's CPU (the VAE decode and the CLIP tower between chunks amplify reordering), where a
    shard in the wrong place gives O(1)."""
    from conftest import run_on_host_devices

    out = released[0]
    script = (
        "import numpy as np\n"
        "from vstar_jax import pipeline as pl\n"
        f"kw = dict(checkpoint={str(out)!r}, frames=6, steps=2, seed=2, height=16, width=16, progress=False,\n"
        "          long_video='streaming:4:2', tar='L0:1', out=None)\n"
        "one = pl.generate_video('a boat', **kw).latents\n"
        "got = pl.generate_video('a boat', mesh={'data': 2, 'frames': 2}, **kw).latents\n"
        "print('REL', float(np.abs(got - one).max() / np.abs(one).max()), float(np.abs(one).max()))\n")
    r = run_on_host_devices(script, 4, timeout=600)
    rel, peak = (float(v) for v in next(l for l in r.stdout.splitlines() if l.startswith("REL")).split()[1:])
    assert peak > 0.1 and rel < 3e-5, (rel, peak)


def test_verify_against_the_released_checkpoint(released, capsys):
    """``vstar-jax verify CKPT --source streaming_t2v.ckpt``: UNet (+ CAM/APM) and image encoder equal to
    the source through the key plan, VAE and text against the recorded ModelScope folder; a source whose
    tensor differs fails naming it."""
    from vstar_jax.cli import main

    out, _, _, sd, root = released
    assert main(["verify", str(out), "--source", str(root / "streaming_t2v.ckpt")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "PASS (4/4 components pass)", lines
    assert any(l.split()[:2] == ["image_encoder", "PASS"] for l in lines)
    key = "base_model.up_blocks.1.attentions.0.transformer_blocks.0.attn2.conv.weight"
    _save_ckpt(root / "tampered.ckpt", dict(sd, **{key: sd[key] + 0.5}))
    assert main(["verify", str(out), "--source", str(root / "tampered.ckpt"), "--components", "unet"]) == 1
    text = capsys.readouterr().out
    assert "unet  FAIL" in text and f"values differ from source {key}" in text


def test_converter_refuses_before_work(released, capsys):
    """An existing output (without --overwrite) and a checkpoint of another model: one line each, exit 2,
    nothing written."""
    from vstar_jax.cli import main

    out, _, _, sd, root = released
    conv = ["convert", "streamingt2v", str(root / "streaming_t2v.ckpt"), "--unet-config",
            str(root / "modelscope/unet/config.json"), "--cam-frames", "2"]
    assert main(conv + ["--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"error: output directory exists: {out} (pass overwrite=True / --overwrite)"
    _save_ckpt(root / "other.ckpt", {k: v for k, v in sd.items() if k.startswith("image_encoder.")})
    conv[2] = str(root / "other.ckpt")
    assert main(conv + ["--out", str(root / "other")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {root / 'other.ckpt'}: not a StreamingT2V checkpoint") and "\n" not in err
    assert not (root / "other").exists()
