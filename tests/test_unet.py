"""UNet3D parity: VideoCrafter2 golden vectors (lvdm layout) and diffusers UNet3DConditionModel.

Tolerance: 1e-4 relative to the output's max magnitude, float32. Measured ~1.5e-6 on the
golden tiny UNet and ~1e-6 against diffusers: the gap is float32 summation order only, so a
transposed kernel or a head split error (>1e-2) cannot pass. A wrong GroupNorm eps can: at these
random weights the activations are O(1), so in_norm at 1e-6 instead of 1e-5 moves the golden error
from 1.45e-6 to 1.26e-6 (measured, issue 25); test_norm_eps.py asserts every epsilon directly.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vstar_jax.checkpoints_convert.common import ConversionError, PrefixView, load_state_dict
from vstar_jax.checkpoints_convert.unet import convert_unet, unet_config_from_diffusers
from vstar_jax.configs import unet_modelscope, unet_tiny, unet_videocrafter2
from conftest import GOLDEN, load_golden, rel_err
from vstar_jax.models.unet3d import UNet3D, count_params, init_shapes
from vstar_jax.tar_vsp.tar import TARConfig

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


def test_converter_maps_relative_position_tables(golden_unet):
    """lvdm use_relative_position: the converter takes every attn1/attn2 k/v table of the temporal
    transformers (and init_attn) as is, and names them when a checkpoint lacks them."""
    from vstar_jax.checkpoints_convert.unet import plan_unet_lvdm, unet_config_from_lvdm

    load_golden("videocrafter2/unet_tiny.safetensors")
    sd = dict(PrefixView(load_state_dict(str(GOLDEN / "videocrafter2/unet_tiny.safetensors")),
                         "model.diffusion_model."))
    cfg = unet_tiny.get_config()
    cfg.use_relative_position, cfg.temporal_length = True, 4
    with pytest.raises(ConversionError) as e:
        convert_unet(sd, cfg, "lvdm")
    assert e.value.missing and all("relative_position_" in k for k in e.value.missing)
    assert "init_attn.0.transformer_blocks.0.attn1.relative_position_k.embeddings_table" in e.value.missing
    rng = np.random.default_rng(0)
    tables = {k: rng.standard_normal((9, cfg.num_head_channels)).astype(np.float32)
              for k in plan_unet_lvdm(cfg) if "relative_position_" in k}
    params = convert_unet({**sd, **tables}, cfg, "lvdm")
    np.testing.assert_array_equal(
        params["mid_temporal"]["block_0"]["attn2"]["relative_position_v"]["embeddings_table"],
        tables["middle_block.2.transformer_blocks.0.attn2.relative_position_v.embeddings_table"])
    got = unet_config_from_lvdm({"use_relative_position": True, "temporal_length": 16, "num_head_channels": 64})
    assert got.use_relative_position and got.temporal_length == 16
    with pytest.raises(ValueError, match="needs temporal_length"):
        unet_config_from_lvdm({"use_relative_position": True, "num_head_channels": 64})


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
    # jitted (one compile) rather than eager: op-by-op dispatch of the whole UNet in bf16 took ~40 s of CI
    y = jax.jit(lambda p, x, t, c: UNet3D(cfg).apply({"params": p}, x, t, c, fps=28))(p16, io["x"], io["t"],
                                                                                       io["context"])
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


def test_relative_position_attention_matches_lvdm_formula():
    """rel_k / rel_v as lvdm's CrossAttention(relative_position=True) computes them, written out in
    numpy on its (b h) n d layout: sim = (q k^T + q . K[i, j]) * scale; out = A v + sum_j A[i, j] V[i, j]."""
    from vstar_jax.models.attention import attention
    from vstar_jax.models.unet3d import relative_positions

    rng = np.random.default_rng(0)
    b, n, h, d, m = 2, 6, 3, 4, 3
    q, k, v = (rng.standard_normal((b, n, h, d)).astype(np.float32) for _ in range(3))
    tk, tv = (rng.standard_normal((2 * m + 1, d)).astype(np.float32) for _ in range(2))
    idx = np.asarray(relative_positions(n, n, m))
    assert idx[0, -1] == 2 * m and idx[-1, 0] == 0 and idx[2, 3] == m + 1  # clipped j - i, shifted by m
    out = attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), rel_k=jnp.asarray(tk[idx]),
                    rel_v=jnp.asarray(tv[idx]))
    fold = lambda t: t.transpose(0, 2, 1, 3).reshape(b * h, n, d)  # noqa: E731
    qq, kk, vv = fold(q), fold(k), fold(v)
    sim = (np.einsum("bid,bjd->bij", qq, kk) + np.einsum("btd,tsd->bts", qq, tk[idx])) * d ** -0.5
    w = np.exp(sim - sim.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    ref = np.einsum("bij,bjd->bid", w, vv) + np.einsum("bts,tsd->btd", w, tv[idx])
    ref = ref.reshape(b, h, n, d).transpose(0, 2, 1, 3)
    assert rel_err(out, ref) < 1e-5


@pytest.mark.slow  # four eager UNet passes (~45 s of CI); the shipped demo model runs these tables in every
# demo generation test, and test_converter_maps_relative_position_tables checks their layout in CI
def test_unet_relative_position_tables_and_zero_table_equivalence():
    """use_relative_position adds a k and a v table to every temporal attn1/attn2 (init_attn too); with
    zero tables the UNet is the plain one, and with trained tables frame order matters."""
    from flax.traverse_util import flatten_dict, unflatten_dict

    cfg = unet_tiny.get_config()
    cfg.fps_cond = False
    plain = UNet3D(cfg)
    cfg_rel = unet_tiny.get_config()
    cfg_rel.fps_cond = False
    cfg_rel.use_relative_position, cfg_rel.temporal_length = True, 3
    rel = UNet3D(cfg_rel)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((1, 4, 5, 8, 8)).astype(np.float32))
    t = jnp.array([500])
    ctx = jnp.asarray(rng.standard_normal((1, 77, cfg.context_dim)).astype(np.float32))
    p_rel = rel.init(jax.random.PRNGKey(0), x, t, ctx)["params"]
    flat = flatten_dict(p_rel)
    tables = [k for k in flat if k[-1] == "embeddings_table"]
    n_temporal = sum(1 for k in flatten_dict(init_shapes(plain, 5))
                     if k[-3:] == ("attn1", "to_q", "kernel") and ("temporal" in k[0] or k[0] == "init_attn"))
    assert len(tables) == 4 * n_temporal > 0  # k and v tables in attn1 and attn2 of each temporal block
    assert any(k[0] == "init_attn" for k in tables)
    assert all(flat[k].shape == (2 * 3 + 1, cfg.num_head_channels) for k in tables)
    zero = unflatten_dict({k: (jnp.zeros_like(a) if k[-1] == "embeddings_table" else a) for k, a in flat.items()})
    p_plain = unflatten_dict({k: a for k, a in flat.items() if k[-1] != "embeddings_table"
                              and k[-2] not in ("relative_position_k", "relative_position_v")})
    y_plain = plain.apply({"params": p_plain}, x, t, ctx)
    assert rel_err(rel.apply({"params": zero}, x, t, ctx), y_plain) < 1e-6
    assert rel_err(rel.apply({"params": p_rel}, x, t, ctx), y_plain) > 1e-3


@pytest.mark.slow  # ~31 s of CI (eager UNet passes) for a demo-training option the shipped demo model does not use
def test_frame_position_option_starts_neutral_and_orders_frames():
    """unet.frame_position (demo option): zero-initialised, so the UNet starts as the plain one; once
    trained, frames with the same input and noise get different outputs by their place in the clip."""
    from flax.traverse_util import flatten_dict, unflatten_dict

    cfg = unet_tiny.get_config()
    cfg.fps_cond, cfg.temporal_conv, cfg.temporal_attention, cfg.init_attn = False, False, False, False
    plain = UNet3D(cfg)
    cfg_fp = unet_tiny.get_config()
    cfg_fp.fps_cond, cfg_fp.temporal_conv, cfg_fp.temporal_attention, cfg_fp.init_attn = False, False, False, False
    cfg_fp.frame_position = True
    fp = UNet3D(cfg_fp)
    rng = np.random.default_rng(2)
    frame = rng.standard_normal((1, 4, 1, 8, 8)).astype(np.float32)
    x = jnp.asarray(np.repeat(frame, 4, axis=2))  # 4 identical frames
    t, ctx = jnp.array([300]), jnp.asarray(rng.standard_normal((1, 77, cfg.context_dim)).astype(np.float32))
    p = fp.init(jax.random.PRNGKey(0), x, t, ctx)["params"]
    flat = flatten_dict(p)
    p_plain = unflatten_dict({k: a for k, a in flat.items() if not k[0].startswith("frame_embed")})
    y = fp.apply({"params": p}, x, t, ctx)
    assert rel_err(y, plain.apply({"params": p_plain}, x, t, ctx)) < 1e-6
    y = np.asarray(y)
    assert np.abs(y[:, :, 0] - y[:, :, 3]).max() < 1e-5  # no temporal layers, no position: frames equal
    flat[("frame_embed_2", "kernel")] = jnp.asarray(rng.standard_normal(flat[("frame_embed_2", "kernel")].shape),
                                                    jnp.float32)
    y2 = np.asarray(fp.apply({"params": unflatten_dict(flat)}, x, t, ctx))
    assert np.abs(y2[:, :, 0] - y2[:, :, 3]).max() > 1e-3


def test_text_frame_cond_starts_neutral_and_reads_caption_and_frame():
    """unet.text_frame_cond (demo option, models.demo_options.TextFrameEmbed): zero-initialised, so the UNet starts as
    the plain one; with its output layer trained, identical frames get outputs that depend on their place
    in the clip and on the caption, also through a per-frame (VSP) context."""
    from flax.traverse_util import flatten_dict, unflatten_dict

    def cfg(on):
        c = unet_tiny.get_config()
        c.fps_cond, c.temporal_conv, c.temporal_attention, c.init_attn = False, False, False, False
        c.text_frame_cond = on
        return c

    plain, tfc = UNet3D(cfg(False)), UNet3D(cfg(True))
    rng = np.random.default_rng(3)
    x = jnp.asarray(np.repeat(rng.standard_normal((1, 4, 1, 8, 8)).astype(np.float32), 4, axis=2))
    t = jnp.array([500])
    ctx_a = jnp.asarray(rng.standard_normal((1, 77, 32)).astype(np.float32))
    ctx_b = jnp.asarray(rng.standard_normal((1, 77, 32)).astype(np.float32))
    p = tfc.init(jax.random.PRNGKey(0), x, t, ctx_a)["params"]
    flat = flatten_dict(p)
    assert {k[0] for k in flat} - {k[0] for k in flatten_dict(plain.init(jax.random.PRNGKey(0), x, t, ctx_a)["params"])} \
        == {"text_frame_embed"}
    p_plain = unflatten_dict({k: a for k, a in flat.items() if k[0] != "text_frame_embed"})
    assert rel_err(tfc.apply({"params": p}, x, t, ctx_a), plain.apply({"params": p_plain}, x, t, ctx_a)) < 1e-6
    key = ("text_frame_embed", "fc_2", "kernel")
    flat[key] = jnp.asarray(rng.standard_normal(flat[key].shape).astype(np.float32) * 0.1)
    trained = {"params": unflatten_dict(flat)}
    y_a = np.asarray(tfc.apply(trained, x, t, ctx_a))
    assert np.abs(y_a[:, :, 0] - y_a[:, :, 3]).max() > 1e-3  # frames told apart by their place
    y_plain = np.asarray(plain.apply({"params": p_plain}, x, t, ctx_a))
    assert np.abs(y_plain[:, :, 0] - y_plain[:, :, 3]).max() < 1e-5  # (nothing else here orders frames)
    # the branch itself: per frame, a function of the frame's mean text feature and its place in the clip
    from vstar_jax.models.demo_options import TextFrameEmbed

    branch = TextFrameEmbed(cfg(True).model_channels)
    per_frame = jnp.concatenate([jnp.repeat(ctx_a, 2, axis=0), jnp.repeat(ctx_b, 2, axis=0)])  # b=1, f=4
    bp = {"params": trained["params"]["text_frame_embed"]}
    e = np.asarray(branch.apply(bp, per_frame, 1, 4))
    assert e.shape == (4, 4 * cfg(True).model_channels)
    # the formula, written out: fc_2(silu(fc_1([mean over tokens, frame-position embedding])))
    from vstar_jax.models.demo_options import frame_position_embedding

    w = jax.tree_util.tree_map(np.asarray, bp["params"])
    pe = np.asarray(frame_position_embedding(4, cfg(True).model_channels))
    z = np.concatenate([np.asarray(per_frame).mean(1), pe], -1)
    hid = z @ w["fc_1"]["kernel"] + w["fc_1"]["bias"]
    want = (hid / (1 + np.exp(-hid))) @ w["fc_2"]["kernel"] + w["fc_2"]["bias"]
    np.testing.assert_allclose(e, want, rtol=1e-5, atol=1e-6)
    assert np.abs(e[0] - e[1]).max() > 1e-3  # same caption, other place in the clip
    e_b = np.asarray(branch.apply(bp, jnp.repeat(ctx_b, 4, axis=0), 1, 4))
    assert np.abs(e[0] - e_b[0]).max() > 1e-3  # same place, other caption (VSP: per-frame captions reach it)
    np.testing.assert_allclose(e[2:], e_b[2:], atol=1e-6)
    shuffled = jnp.repeat(ctx_b[:, ::-1], 4, axis=0)  # same tokens, other order: the same mean
    np.testing.assert_allclose(np.asarray(branch.apply(bp, shuffled, 1, 4)), e_b, atol=1e-5)
