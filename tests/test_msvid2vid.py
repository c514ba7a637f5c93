"""MS-Vid2Vid-XL (StreamingT2V's refiner): the UNet converter against a torch transcription of the
reference module at tiny widths, and its logsnr_cosine_interp noise levels against a transcription of
the reference's formula."""
import json
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vstar_jax.checkpoints_convert import msvid2vid as conv_v2v
from vstar_jax.checkpoints_convert.unet import plan_unet_lvdm, plan_unet_msvid2vid
from vstar_jax.configs import unet_msvid2vid
from tiny_torch import modelscope_folder
from vstar_jax.diffusion import schedules as S
from vstar_jax.generation.model import ModelInfo, diffusion_settings
from vstar_jax.generation.request import schedule_kwargs
from vstar_jax.io.checkpoint import load_checkpoint, read_config
from vstar_jax.models.unet3d import UNet3D, _upsample_cropped
from vstar_jax.models.unet_config import UNetConfig

torch = pytest.importorskip("torch")
pytest.importorskip("einops")

# Vid2VidSDUNet at tiny widths: 2 levels of 32 / 64 channels (GroupNorm(32) everywhere), attention at
# level 0 and in the middle, heads of 16, context 1024 (the decoder's spatial transformers hard-code it)
TINY_REF = dict(in_dim=4, dim=32, y_dim=1024, context_dim=1024, out_dim=4, dim_mult=[1, 2], num_heads=2,
                head_dim=16, num_res_blocks=1, attn_scales=[1 / 1])
TINY_UNET = {"model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [1],
             "num_head_channels": 16, "init_attn_heads": 2}


@pytest.fixture(scope="module")
def tiny_ref():
    """The reference module at tiny widths, every weight perturbed (non-trivial norms, and no layer left
    at its zero initialisation)."""
    from msvid2vid_reference import build

    torch.manual_seed(0)
    ref = build(**TINY_REF)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return ref


@pytest.mark.slow
def test_converted_unet_matches_reference(tiny_ref, tmp_path):
    """The converter's CLI output runs as the reference does: float32, tolerance 1e-4 relative to the
    output's max (measured 1.7e-6; float32 summation order differs between torch and XLA). Slow (about
    10 s: the UNet's compile); CI runs the pieces below."""
    torch.save(tiny_ref.state_dict(), tmp_path / "unet.pth")
    (tmp_path / "unet.json").write_text(json.dumps(TINY_UNET))
    rng = np.random.default_rng(0)
    # 8 latent rows: 8 -> 5 (padding 2) -> 10 - 2 cropped = 8, the geometry the test is about
    x = rng.standard_normal((1, 4, 3, 8, 8)).astype(np.float32)
    y = rng.standard_normal((1, 3, 1024)).astype(np.float32)
    with torch.no_grad():
        want = tiny_ref(torch.from_numpy(x), torch.tensor([371]), torch.from_numpy(y)).numpy()
    modelscope_folder(tmp_path / "ms", perturb=(), scheduler=False)  # its VAE and text encoder come along
    out = tmp_path / "ckpt"
    assert conv_v2v.main([str(tmp_path / "unet.pth"), "--unet-config", str(tmp_path / "unet.json"),
                          "--modelscope", str(tmp_path / "ms"), "--out", str(out)]) == 0
    params, config = load_checkpoint(str(out))
    cfg = read_config(str(out))
    assert sorted(params) == ["text", "unet", "vae"]
    assert cfg["source"]["layout"] == "msvid2vid" and cfg["diffusion"]["prediction"] == "v"
    assert cfg["unet"]["downsample_padding"] == [2, 1] and cfg["unet"]["upsample_crop"] == 1
    run = jax.jit(lambda p, x, y: UNet3D(config["unet"]).apply({"params": p}, x, np.array([371]), y))
    got = np.asarray(run(params["unet"], x, y))
    rel = float(np.abs(got - want).max() / np.abs(want).max())
    assert rel < 1e-4, rel


def test_tiny_reference_weights_convert_to_their_places(tiny_ref):
    """Every key of the tiny reference lands (apply_plan refuses a missing, unexpected or misshapen one),
    and the two placements of its own go where the UNet reads them."""
    sd = {k: v.numpy() for k, v in tiny_ref.state_dict().items()}
    params = conv_v2v.convert_msvid2vid_unet(sd, conv_v2v.msvid2vid_unet_config(TINY_UNET))
    np.testing.assert_array_equal(params["downsample_0"]["kernel"],
                                  sd["input_blocks.2.op.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["init_attn"]["proj_in"]["kernel"],
                                  sd["input_blocks.0.1.proj_in.weight"][:, :, 0].T)
    np.testing.assert_array_equal(params["up_0_1_spatial"]["block_0"]["attn2"]["to_k"]["kernel"],
                                  sd["output_blocks.3.1.transformer_blocks.0.attn2.to_k.weight"].T)


def test_cropped_upsampling_matches_reference():
    """The decoder's 2x nearest upsampling with one row cropped top and bottom against the reference's
    ``Upsample`` (no conv: the conv is a plain 3x3 one), and the encoder's (2, 1)-padded downsampling
    geometry through the whole UNet (shapes only)."""
    from msvid2vid_reference import build

    x = np.random.default_rng(1).standard_normal((2, 3, 5, 4)).astype(np.float32)  # (n, c, h, w)
    with torch.no_grad():
        want = build("Upsample", channels=3, use_conv=False, dims=2.0)(torch.from_numpy(x)).numpy()
    got = np.asarray(_upsample_cropped(x.transpose(0, 2, 3, 1), 1, (8, 8))).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(got, want)
    model = UNet3D(conv_v2v.msvid2vid_unet_config(TINY_UNET))
    shape = lambda h: jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 2, h, 8)),  # noqa
                                                        jnp.array([1]), jnp.zeros((1, 3, 1024))))
    shape(10)  # 10 -> 6 -> 12 - 2 = 10
    with pytest.raises(ValueError, match="down / up geometry"):
        shape(7)  # 7 -> 4 -> 8 - 2 = 6: refused by name, not a concatenate's shape error


def test_plan_is_lvdm_with_two_placements():
    """The key map differs from lvdm's in exactly the init temporal transformer and the downsample convs
    (on the released config), and the refiner's config is VideoCrafter2's without fps but with its geometry."""
    cfg = unet_msvid2vid.get_config()
    v2v, lvdm = plan_unet_msvid2vid(cfg), plan_unet_lvdm(cfg)
    assert sorted(v2v.values()) == sorted(lvdm.values())
    moved = {k for k in v2v if k not in lvdm}
    assert {k.split(".op.")[0] for k in moved if ".op." in k} == {"input_blocks.3", "input_blocks.6",
                                                                  "input_blocks.9"}
    assert all(k.startswith("input_blocks.0.1.") or ".op." in k for k in moved)
    released = UNetConfig.from_config(cfg)
    assert released.latent_fits(90, 0) and released.latent_fits(160, 1)  # 720 x 1280 video
    assert not released.latent_fits(88, 0) and released.latent_fits(88, 1)


def test_resolution_check_follows_the_geometry():
    conf = {"unet": unet_msvid2vid.get_config().to_dict(), "diffusion": dict(conv_v2v.DIFFUSION),
            "vae": {"ch_mult": [1, 2, 4, 4]}}
    info = ModelInfo.from_config(conf, "v2v")
    assert info.latent_hw(720, 1280) == (90, 160)
    with pytest.raises(ValueError, match="cannot take back"):
        info.latent_hw(704, 1280)


# ---------------------------------------------------------------- the noise levels
def _reference_sigmas(n=1000, logsnr_min=-15, logsnr_max=15, scale_min=2.0, scale_max=4.0):
    """StreamingT2V (branch StreamingModelscope) .../video_to_video/utils/schedules_sdedit.py, transcribed:
    _logsnr_cosine (lines 29-34), _logsnr_cosine_shifted (37-40), _logsnr_cosine_interp (43-52),
    logsnrs_to_sigmas (20-21), noise_schedule's zero-terminal-SNR stretch (73-86), with the arguments
    video_to_video_model.py passes (n=1000, zero_terminal_snr=True, scale_min=2.0, scale_max=4.0)."""
    def cosine(n):
        t_min = math.atan(math.exp(-0.5 * logsnr_min))
        t_max = math.atan(math.exp(-0.5 * logsnr_max))
        t = torch.linspace(1, 0, n)
        return -2 * torch.log(torch.tan(t_min + t * (t_max - t_min)))

    def shifted(n, scale):
        logsnrs = cosine(n)
        logsnrs += 2 * math.log(1 / scale)
        return logsnrs

    t = torch.linspace(1, 0, n)
    logsnrs = t * shifted(n, scale_min) + (1 - t) * shifted(n, scale_max)
    sigmas = torch.sqrt(torch.sigmoid(-logsnrs))
    if sigmas.max() != 1.0:
        scale = (1.0 - sigmas.min()) / (sigmas.max() - sigmas.min())
        sigmas = sigmas.min() + scale * (sigmas - sigmas.min())
    return sigmas.numpy()


def test_logsnr_cosine_interp_matches_reference():
    """Float32 sigmas against the transcription: within 1e-6 relative (measured 2.4e-7, 3 ulps: numpy's and
    torch's float32 tan / log / exp round differently). alpha_cumprod = 1 - sigma ** 2 (float32, as
    GaussianDiffusion_SDEdit's alphas ** 2, diffusion_sdedit.py line 28) within 3e-7 absolute (measured
    2.4e-7; relative it reaches ~1e-4 near t = T, where 1 - sigma ** 2 cancels in the reference too). The
    last level is pure noise (zero terminal SNR), the first almost clean."""
    sig = _reference_sigmas()
    mine = S.logsnr_cosine_interp_sigmas()
    assert mine.dtype == np.float32 and mine.shape == (1000,)
    assert float(np.max(np.abs(mine.astype(np.float64) - sig) / sig)) < 1e-6
    want = (1 - torch.from_numpy(sig) ** 2).numpy()
    ac = S.logsnr_cosine_interp_alphas_cumprod()
    assert ac.dtype == np.float32 and float(np.abs(ac - want).max()) <= 3e-7
    assert ac[-1] == 0.0 and ac[0] > 0.9999 and np.all(np.diff(ac) <= 0) and ac[500] < ac[0]


def test_logsnr_schedule_is_selectable_from_the_diffusion_config():
    """The converter's diffusion section, read as a checkpoint's, builds the refiner's DDIM schedule."""
    d = diffusion_settings({"diffusion": conv_v2v.DIFFUSION, "unet": {"in_channels": 4}, "vae": {"ch_mult": [1, 2]}})
    assert d["prediction"] == "v"
    sched = S.make_schedule(d["flavor"], 50, 0.0, **dict(schedule_kwargs(d)))
    np.testing.assert_array_equal(sched.alphas_cumprod, S.logsnr_cosine_interp_alphas_cumprod())
    assert sched.timesteps[-1] == 981 and sched.alphas[-1] > 0  # DDIM never reaches alpha_cumprod 0


def test_bad_unet_config_is_one_line_before_reading_weights(tmp_path, capsys):
    (tmp_path / "unet.pth").write_bytes(b"not read")
    (tmp_path / "unet.json").write_text(json.dumps({"model_chanels": 32}))
    out = tmp_path / "o"
    assert conv_v2v.main([str(tmp_path / "unet.pth"), "--unet-config", str(tmp_path / "unet.json"),
                          "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "model_channels" in err and "\n" not in err and not out.exists()


@pytest.mark.slow
def test_enhance_with_a_tiny_converted_msvid2vid(tiny_ref, tmp_path, monkeypatch):
    """``vstar-jax enhance`` end to end with a tiny converted MS-Vid2Vid-XL: the reference module's weights
    (context 1024: its decoder's spatial transformers hard-code it) with a one-layer 1024-wide CLIP text
    encoder in the ModelScope folder (the tiny folder's is 32 wide), so the refiner's defaults -- the
    reference's DPM++ 2M SDE with guide rescale 0.2 -- run on a real converted UNet, VAE and text encoder."""
    transformers = pytest.importorskip("transformers")
    from vstar_jax.enhance import enhance_video
    from vstar_jax.io.video import read_video, write_video

    torch.save(tiny_ref.state_dict(), tmp_path / "unet.pth")
    (tmp_path / "unet.json").write_text(json.dumps(TINY_UNET))
    for name in ("xformers", "xformers.ops"):  # the reference's stand-ins (no __spec__) would stop diffusers' import
        monkeypatch.delitem(sys.modules, name, raising=False)
    modelscope_folder(tmp_path / "ms", perturb=(), scheduler=False)
    torch.manual_seed(1)
    transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=49408, hidden_size=1024, intermediate_size=64, num_attention_heads=8, num_hidden_layers=1,
        max_position_embeddings=77, hidden_act="gelu", bos_token_id=49406, eos_token_id=49407,
        pad_token_id=1)).eval().save_pretrained(tmp_path / "ms" / "text_encoder")
    ckpt = tmp_path / "ckpt"
    assert conv_v2v.main([str(tmp_path / "unet.pth"), "--unet-config", str(tmp_path / "unet.json"),
                          "--modelscope", str(tmp_path / "ms"), "--out", str(ckpt)]) == 0
    rng = np.random.default_rng(0)
    src = tmp_path / "in.mp4"
    write_video(src, rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8), fps=8)
    res = enhance_video(src, "a red circle", checkpoint=str(ckpt), out=str(tmp_path / "out.mp4"), size="16x16",
                        chunk=4, overlap=2, steps=3, progress=False)
    sc = res.sidecar
    assert (sc["solver"], sc["steps"], sc["sdedit_steps"], sc["guide_rescale"], sc["cfg"]) == (
        "dpmpp_2m_sde", 3, 3, 0.2, 7.5)
    assert res.latents.shape == (1, 4, 6, 8, 8) and np.isfinite(res.latents).all()
    assert not np.allclose(res.latents, res.input_latents)
    assert read_video(res.path).shape == (6, 16, 16, 3)
