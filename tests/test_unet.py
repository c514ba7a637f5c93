"""UNet3D parity: VideoCrafter2 golden vectors (lvdm layout) and diffusers UNet3DConditionModel.

Tolerance: 1e-4 relative to the output's max magnitude, float32. Measured ~1.5e-6 on the
golden tiny UNet and ~1e-6 against diffusers: the gap is float32 summation order only, so a
transposed kernel, a wrong norm eps or a head split error (all >1e-2) cannot pass.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from checkpoints_convert.common import ConversionError, PrefixView, load_state_dict
from checkpoints_convert.unet import convert_unet, unet_config_from_diffusers
from configs import unet_modelscope, unet_tiny, unet_videocrafter2
from conftest import GOLDEN, load_golden, rel_err
from vstar_jax.models.unet3d import UNet3D, count_params, init_shapes
from vstar_jax.vstar.tar import TARConfig

RTOL = 1e-4




@pytest.fixture(scope="module")
def golden_unet():
    load_golden("videocrafter2/unet_tiny.safetensors")  # skip/fail consistently when absent
    sd = PrefixView(load_state_dict(str(GOLDEN / "videocrafter2/unet_tiny.safetensors")), "model.diffusion_model.")
    cfg = unet_tiny.get_config()
    params = convert_unet(sd, cfg, "lvdm")
    model = UNet3D(cfg)
    fn = jax.jit(lambda p, x, t, c, fps, s: model.apply({"params": p}, x, t, c, fps=fps, step_index=s,
                                                          tar=TARConfig(((0, 1.0, 1.0), (1, 4.0, 1.0)), 13)))
    plain = jax.jit(lambda p, x, t, c, fps: model.apply({"params": p}, x, t, c, fps=fps))
    return params, plain, fn, load_golden("videocrafter2/unet_tiny_io.safetensors")


def test_golden_unet_outputs(golden_unet):
    params, plain, _, io = golden_unet
    assert rel_err(plain(params, io["x"], io["t"], io["context"], 28), io["y"]) < RTOL
    # per-frame context (VSP): (f, 77, C) with batch 1, as the reference takes it
    assert rel_err(plain(params, io["x"], io["t"], io["context_frames"], 28), io["y_frames"]) < RTOL
    # batch 2, different timesteps, fps 16
    assert rel_err(plain(params, io["x2"], io["t2"], io["context2"], 16), io["y2"]) < RTOL


def test_golden_unet_per_frame_context_4d_matches_reference_form(golden_unet):
    params, plain, _, io = golden_unet
    ctx4 = io["context_frames"][None]  # (1, f, 77, C)
    assert rel_err(plain(params, io["x"], io["t"], ctx4, 28), io["y_frames"]) < RTOL


def test_golden_unet_under_tar(golden_unet):
    params, _, tar_fn, io = golden_unet
    for step in (5, 20):
        y = tar_fn(params, io["x"], io["t"], io["context"], 28, step)
        assert rel_err(y, io[f"y_tar_step{step}"]) < RTOL
    # the regularized output really differs from the plain one at step 5 (TAR is active)
    assert rel_err(io["y_tar_step5"], io["y"]) > 1e-2


def test_bad_inputs_raise_clear_errors(golden_unet):
    params, plain, _, io = golden_unet
    with pytest.raises(ValueError, match="latents"):
        plain(params, io["x"][:, :3], io["t"], io["context"], 28)
    with pytest.raises(ValueError, match="context"):
        plain(params, io["x"], io["t"], io["context"][..., :16], 28)
    with pytest.raises(ValueError, match="context batch"):
        plain(params, io["x"], io["t"], io["context_frames"][:3], 28)


def test_full_size_parameter_counts():
    # shape-only initialization: nothing large is allocated
    assert count_params(init_shapes(UNet3D(unet_videocrafter2.get_config()))) == 1_413_284_420
    assert count_params(init_shapes(UNet3D(unet_modelscope.get_config()))) == 1_411_233_860


def test_converter_names_missing_unexpected_and_misshaped_keys(golden_unet):
    load_golden("videocrafter2/unet_tiny.safetensors")
    sd = dict(PrefixView(load_state_dict(str(GOLDEN / "videocrafter2/unet_tiny.safetensors")),
                         "model.diffusion_model."))
    sd.pop("input_blocks.1.1.proj_in.weight")
    sd["input_blocks.1.1.extra.weight"] = np.zeros(3, np.float32)
    sd["out.2.weight"] = sd["out.2.weight"][:, :, :2]
    with pytest.raises(ConversionError) as e:
        convert_unet(sd, unet_tiny.get_config(), "lvdm")
    err = e.value
    assert err.missing == ["input_blocks.1.1.proj_in.weight"]
    assert err.unexpected == ["input_blocks.1.1.extra.weight"]
    assert len(err.mismatched) == 1 and err.mismatched[0].startswith("out.2.weight")
    assert "input_blocks.1.1.proj_in.weight" in str(err) and "out.2.weight" in str(err)


# ---------------------------------------------------------------- diffusers UNet3DConditionModel

DIFFUSERS_CONFIGS = [
    dict(block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=8, cross_attention_dim=24,
         down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
         norm_num_groups=16, sample_size=8),  # transformers' GroupNorms follow norm_num_groups in diffusers
    dict(block_out_channels=(32, 64, 64), layers_per_block=2, attention_head_dim=16, cross_attention_dim=32,
         down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
         up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"), norm_num_groups=32, sample_size=8),
]


@pytest.mark.parametrize("dcfg", DIFFUSERS_CONFIGS, ids=["2level", "3level"])
def test_diffusers_unet3d_parity(dcfg):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    ref = diffusers.UNet3DConditionModel(**dcfg).eval()
    # diffusers zero-initializes some output layers; randomize everything so each weight matters
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    cfg = unet_config_from_diffusers(ref.config)
    params = convert_unet(sd, cfg, "diffusers")
    rng = np.random.default_rng(0)
    b, f, h, w = 2, 5, 8, 12
    x = rng.standard_normal((b, 4, f, h, w)).astype(np.float32)
    t = np.array([10, 700])
    ctx = rng.standard_normal((b, 7, dcfg["cross_attention_dim"])).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx)).sample.numpy()
    got = UNet3D(cfg).apply({"params": params}, jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx))
    assert rel_err(got, want) < RTOL


def test_bfloat16_config_runs_close_to_float32(golden_unet):
    """Mixed precision by config: bf16 params and matmuls, GroupNorm/softmax in float32."""
    params, _, _, io = golden_unet
    cfg = unet_tiny.get_config()
    cfg.dtype = cfg.param_dtype = "bfloat16"
    p16 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.bfloat16), params)
    y = UNet3D(cfg).apply({"params": p16}, io["x"], io["t"], io["context"], fps=28)
    assert y.dtype == jnp.float32
    err = rel_err(y, io["y"])
    assert 1e-5 < err < 5e-2  # really ran in bf16, and still the same function


def test_attention_backend_choice():
    from vstar_jax.models.attention import attention

    q = jnp.ones((1, 4, 2, 8), jnp.float32)
    np.testing.assert_allclose(attention(q, q, q, backend="auto"), attention(q, q, q, backend="xla"))
    if jax.default_backend() != "gpu":
        with pytest.raises(ValueError, match="needs a GPU"):
            attention(q, q, q, backend="cudnn")
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention(q, q, q, backend="flash")
