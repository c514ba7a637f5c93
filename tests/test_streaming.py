"""StreamingT2V's CAM and APM (vstar_jax.models.streaming), their conversion from the released key layout
(vstar_jax.checkpoints_convert.streamingt2v) and the ``streaming:F:C`` strategy (vstar_jax.longvideo.streaming).

Parity: each module against a small PyTorch implementation written here from the reference's formulas
(Picsart-AI-Research/StreamingT2V, branch StreamingModelscope, files named in the module docstring),
random float32 weights moved with the converter's transforms; tolerance 1e-4 relative (max |diff| /
max |ref|)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vstar_jax.checkpoints_convert.common import conv1d_kernel, conv2d_kernel, linear_kernel
from vstar_jax.diffusion.sampler import Denoiser
from vstar_jax.errors import VstarError
from vstar_jax.models import streaming as ST

from lvdm_reference import LvdmDDIM, cfg

torch = pytest.importorskip("torch")
F_ = torch.nn.functional
TOL = 1e-4


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def _t(a):
    return torch.from_numpy(np.asarray(a, np.float32))


# ------------------------------------------------------------- PyTorch versions of the reference formulas
class TorchCondEncoder(torch.nn.Module):
    """controlnet.py: ControlNetConditioningEmbedding (no normalisation, no mask)."""

    def __init__(self, cin, chans, out, stride):
        super().__init__()
        self.conv_in = torch.nn.Conv2d(cin, chans[0], 3, padding=1)
        blocks = []
        for i in range(len(chans) - 1):
            blocks += [torch.nn.Conv2d(chans[i], chans[i], 3, padding=1),
                       torch.nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, stride=stride)]
        self.blocks = torch.nn.ModuleList(blocks)
        self.conv_out = torch.nn.Conv2d(chans[-1], out, 3, padding=1)

    def forward(self, x):
        h = F_.silu(self.conv_in(x))
        for blk in self.blocks:
            h = F_.silu(blk(h))
        return self.conv_out(h)


class TorchMerger(torch.nn.Module):
    """cross_attention.py: CrossAttention inside ConditionalModel ("(B F) C H W" in, frames attended per pixel)."""

    def __init__(self, c, head_dim):
        super().__init__()
        self.norm = torch.nn.GroupNorm(32, c, eps=1e-6)
        self.proj_in, self.proj_out = torch.nn.Linear(c, c), torch.nn.Linear(c, c)
        self.to_q, self.to_k, self.to_v = (torch.nn.Linear(c, c, bias=False) for _ in range(3))
        self.to_out = torch.nn.Linear(c, c)
        self.heads = c // head_dim

    def forward(self, x, cond):  # x (B, F, C, H, W), cond (B, Fc, C, H, W)
        b, f, c, h, w = x.shape
        y = self.norm(x.permute(0, 2, 1, 3, 4)).permute(0, 3, 4, 2, 1).reshape(b * h * w, f, c)
        y = self.proj_in(y)
        ctx = cond.permute(0, 3, 4, 1, 2).reshape(b * h * w, cond.shape[1], c)
        split = lambda t: t.reshape(t.shape[0], t.shape[1], self.heads, -1).transpose(1, 2)
        q, k, v = split(self.to_q(y)), split(self.to_k(ctx)), split(self.to_v(ctx))
        a = torch.softmax(q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5), -1) @ v
        a = self.to_out(a.transpose(1, 2).reshape(b * h * w, f, c))
        r = self.proj_out(a).reshape(b, h, w, f, c).permute(0, 3, 4, 1, 2)
        return x + r


class TorchResampler(torch.nn.Module):
    """image_embedder.py: ImgEmbContextResampler."""

    def __init__(self, d, hidden, tokens, cd):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(d, hidden), torch.nn.Linear(hidden, tokens * cd)
        self.tokens, self.cd = tokens, cd

    def forward(self, x):  # (B, n, D)
        return self.fc2(F_.silu(self.fc1(x.mean(1, keepdim=True)))).view(-1, self.tokens, self.cd)


class TorchMix(torch.nn.Module):
    """attention_processor.py + processor.py: conv (tokens as channels), conv_ln, silu(alpha)."""

    def __init__(self, n_in, n_text, cd):
        super().__init__()
        self.conv = torch.nn.Conv1d(n_in, n_text, kernel_size=3, padding="same")
        self.conv_ln = torch.nn.LayerNorm(cd)
        self.alpha = torch.nn.Parameter(torch.tensor(0.0))
        self.n_text = n_text

    def forward(self, ctx):
        return ctx[:, : self.n_text] + self.conv_ln(self.conv(ctx)) * F_.silu(self.alpha)


def _randomize(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module


def _conv(m):
    return {"kernel": conv2d_kernel(m.weight.detach().numpy()), "bias": m.bias.detach().numpy()}


def _dense(m, bias=True):
    d = {"kernel": linear_kernel(m.weight.detach().numpy())}
    if bias:
        d["bias"] = m.bias.detach().numpy()
    return d


@pytest.mark.parametrize("stride", [1, 2])
def test_cond_frame_encoder_matches_torch(stride):
    ref = _randomize(TorchCondEncoder(3, (4, 8, 8), 16, stride), 1)
    params = {"conv_in": _conv(ref.conv_in), "conv_out": _conv(ref.conv_out),
              **{f"block_{j}": _conv(b) for j, b in enumerate(ref.blocks)}}
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    want = ref(_t(x)).detach().numpy().transpose(0, 2, 3, 1)
    got = ST.CondFrameEncoder(16, (4, 8, 8), stride == 2).apply({"params": params}, x.transpose(0, 2, 3, 1))
    assert got.shape == want.shape and _rel(got, want) < TOL


def test_cam_merger_and_apm_match_torch():
    c, hd = 64, 16
    ref = _randomize(TorchMerger(c, hd), 2)
    params = {"norm": {"scale": ref.norm.weight.detach().numpy(), "bias": ref.norm.bias.detach().numpy()},
              "proj_in": _dense(ref.proj_in), "proj_out": _dense(ref.proj_out),
              "attention": {"to_q": _dense(ref.to_q, False), "to_k": _dense(ref.to_k, False),
                            "to_v": _dense(ref.to_v, False), "to_out": _dense(ref.to_out)}}
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 5, c, 3, 4)).astype(np.float32)
    cond = rng.normal(size=(2, 3, c, 3, 4)).astype(np.float32)
    want = ref(_t(x), _t(cond)).detach().numpy().transpose(0, 1, 3, 4, 2)
    got = ST.CAMMerger(hd, 32).apply({"params": params}, x.transpose(0, 1, 3, 4, 2), cond.transpose(0, 1, 3, 4, 2))
    assert _rel(got, want) < TOL

    res = _randomize(TorchResampler(12, 24, 3, 8), 3)
    emb = rng.normal(size=(2, 2, 12)).astype(np.float32)
    got = ST.APMResampler(3, 8, 24).apply({"params": {"fc_1": _dense(res.fc1), "fc_2": _dense(res.fc2)}}, emb)
    assert _rel(got, res(_t(emb)).detach().numpy()) < TOL

    mix = _randomize(TorchMix(7, 5, 8), 4)
    ctx = rng.normal(size=(3, 7, 8)).astype(np.float32)
    p = {"conv": {"kernel": conv1d_kernel(mix.conv.weight.detach().numpy()), "bias": mix.conv.bias.detach().numpy()},
         "norm": {"scale": mix.conv_ln.weight.detach().numpy(), "bias": mix.conv_ln.bias.detach().numpy()},
         "alpha": mix.alpha.detach().numpy()}
    got = ST.APMContextMix(5).apply({"params": p}, ctx)
    assert float(mix.alpha.detach()) != 0 and _rel(got, mix(_t(ctx)).detach().numpy()) < TOL


# ------------------------------------------------------------- the UNet with CAM + APM
def tiny_base():
    """The tiny UNet in ModelScope's form (no fps embedding), the base StreamingT2V builds on."""
    from vstar_jax.configs import unet_tiny

    c = unet_tiny.get_config()
    c.fps_cond = False
    return c


def tiny_cfg():
    c = tiny_base()
    c.cam = dict(frames=2, cond_channels=4, embed_channels=(8, 16), downsample=False, head_dim=16, norm_groups=32)
    c.apm = dict(tokens=3, image_dim=12, hidden=24, text_len=5, image_encoder="latent")
    return c


def _random_params(cfg, seed=0):
    """Params shaped like StreamingUNet(cfg) with CAM/APM, from a seeded numpy PRNG (no init compile); the
    zero-initialised leaves (CAM's conv_out and proj_out, APM's alpha) left at zero."""
    from flax.traverse_util import flatten_dict, unflatten_dict

    from vstar_jax.checkpoints_convert.streamingt2v import expected_shapes

    rng = np.random.default_rng(seed)
    flat = flatten_dict(expected_shapes(cfg))
    out = {}
    for k, s in flat.items():
        zero = (k[-2:] in {("conv_out", "kernel"), ("conv_out", "bias")} and k[0] == "cam_cond_embedding") or \
            (k[0].startswith("cam_merge") and k[1] == "proj_out") or k[-1] == "alpha"
        out[k] = np.zeros(s.shape, np.float32) if zero else (rng.normal(size=s.shape) * 0.2).astype(np.float32)
    return unflatten_dict(out)


def _inputs(seed=1):
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    return (jax.random.normal(k[0], (1, 4, 4, 8, 8)), jnp.array([400]), jax.random.normal(k[1], (1, 5, 32)),
            jax.random.normal(k[2], (1, 4, 2, 8, 8)), jax.random.normal(k[3], (1, 12)))


_CAM_UNET: dict = {}


def _cam_unet(cfg, x, t, ctx):
    """One jitted UNet-with-CAM/APM of ``tiny_cfg`` on ``_inputs``' x, t, ctx: (params, prev, img) -> out
    (shared by the tests below, so it compiles once)."""
    if "fn" not in _CAM_UNET:
        _CAM_UNET["fn"] = jax.jit(lambda p, prev, img: ST.StreamingUNet(cfg).apply({"params": p}, x, t, ctx,
                                                                                 cam_frames=prev, image_embed=img))
    return _CAM_UNET["fn"]


def test_zero_initialised_cam_and_apm_give_the_plain_unet_exactly():
    """At CAM's and APM's initialisation (zero proj_out / conv_out, alpha 0) the UNet fed with previous
    frames and an anchor embedding equals the plain UNet (no cam/apm in its config) bit for bit; moving
    alpha and one merger's proj_out off zero changes it (so the modules are in the graph)."""
    from vstar_jax.models.unet3d import UNet3D

    cfg = tiny_cfg()
    params = _random_params(cfg)
    x, t, ctx, prev, img = _inputs()
    fn = _cam_unet(cfg, x, t, ctx)
    plain = jax.jit(lambda p: UNet3D(tiny_base()).apply({"params": p}, x, t, ctx))
    want = np.asarray(plain({k: v for k, v in params.items() if not k.startswith(("cam_", "apm_"))}))
    np.testing.assert_array_equal(np.asarray(fn(params, prev, img)), want)
    moved = jax.tree_util.tree_map(lambda v: v, params)
    moved["cam_merge_1"]["proj_out"]["kernel"] = np.full_like(moved["cam_merge_1"]["proj_out"]["kernel"], 0.1)
    moved["mid_spatial"]["block_0"]["attn2_mix"]["alpha"] = np.float32(1.0)
    assert np.abs(np.asarray(fn(moved, prev, img)) - want).max() > 1e-3


def test_cam_changes_the_output_through_every_skip_connection():
    """Each skip-connection merger (cam_merge_0..3), moved off zero alone (the mid merger and APM at
    zero), changes the UNet's output: the merged skips are what the up path reads. Catches ``CAMBranch`` returning the unmerged skips (``return skips, mid``)."""
    cfg = tiny_cfg()
    params = _random_params(cfg)
    x, t, ctx, prev, img = _inputs()
    fn = _cam_unet(cfg, x, t, ctx)
    base = np.asarray(fn(params, prev, img))
    names = sorted(k for k in params if k.startswith("cam_merge_") and k != "cam_merge_mid")
    assert names == [f"cam_merge_{i}" for i in range(4)]  # conv_in, down_0_0, downsample_0, down_1_0
    rng = np.random.default_rng(5)
    for name in names:
        moved = jax.tree_util.tree_map(lambda v: v, params)
        k = moved[name]["proj_out"]["kernel"]
        moved[name]["proj_out"]["kernel"] = (0.3 * rng.standard_normal(k.shape)).astype(np.float32)
        out = np.asarray(fn(moved, prev, img))
        assert np.abs(out - base).max() / np.abs(base).max() > 1e-3, name


# ------------------------------------------------------------- conversion of the released key layout
def _source_state_dict(cfg, seed=0):
    """A StreamingT2V-layout state dict for cfg: every planned key with the source shape (inverse transforms)."""
    from flax.traverse_util import flatten_dict

    from vstar_jax.checkpoints_convert.streamingt2v import expected_shapes, plan_streamingt2v

    exp = flatten_dict(expected_shapes(cfg))
    rng = np.random.default_rng(seed)
    sd = {}
    for key, (dst, kind) in plan_streamingt2v(cfg).items():
        s = tuple(exp[dst].shape)
        src = {"dense": lambda s: s[::-1], "conv2d": lambda s: (s[3], s[2], s[0], s[1]),
               "conv1d": lambda s: (s[2], s[1], s[0]), "conv3d": lambda s: (s[4], s[3], s[0], s[1], s[2]),
               "identity": lambda s: s}[kind](s)
        sd[key] = rng.normal(size=src).astype(np.float32)
    return sd


def test_streamingt2v_conversion_and_its_key_report():
    from vstar_jax.checkpoints_convert.common import ConversionError
    from vstar_jax.checkpoints_convert.streamingt2v import convert_streamingt2v_unet

    cfg = tiny_cfg()
    sd = _source_state_dict(cfg)
    sd["image_encoder.model.visual.proj"] = np.zeros((4, 4), np.float32)  # frozen encoders: skipped
    params = convert_streamingt2v_unet(sd, cfg)
    mix = "base_model.down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    np.testing.assert_array_equal(params["down_0_0_spatial"]["block_0"]["attn2_mix"]["conv"]["kernel"],
                                  sd[f"{mix}.conv.weight"].transpose(2, 1, 0))
    assert params["down_0_0_spatial"]["block_0"]["attn2_mix"]["alpha"] == sd[f"{mix}.alpha"]
    np.testing.assert_array_equal(params["cam_control"]["conv_in"]["kernel"],
                                  sd["unet.conv_in.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["apm_resampler"]["fc_1"]["kernel"], sd["resampler.context_embedding.0.weight"].T)
    assert "cam_merge_mid" in params and "cam_merge_3" in params and "cam_merge_4" not in params

    bad = dict(sd)
    del bad["base_model.cross_attention_merger_mid_block.temporal_transformer.proj_out.weight"]
    bad["unet.controlnet_cond_embedding.extra.weight"] = np.zeros(3, np.float32)
    bad["resampler.context_embedding.0.weight"] = np.zeros((7, 12), np.float32)
    with pytest.raises(ConversionError) as e:
        convert_streamingt2v_unet(bad, cfg)
    msg = str(e.value)
    assert "1 missing, 1 unexpected, 1 wrong shape" in msg.splitlines()[0]
    assert "missing: base_model.cross_attention_merger_mid_block.temporal_transformer.proj_out.weight" in msg
    assert "unexpected: unet.controlnet_cond_embedding.extra.weight" in msg
    assert "wrong shape: resampler.context_embedding.0.weight (7, 12)" in msg


# ------------------------------------------------------------- the streaming strategy
def _dummy(x, t, ctx, i, cam_frames=None, image_embed=None):
    """eps depends on x, the frame, the step, and (when given) the CAM frames and the anchor embedding."""
    f = x.shape[2]
    eps = 0.1 * x + 0.01 * jnp.arange(f, dtype=jnp.float32)[None, None, :, None, None] + 0.001 * i
    eps = eps + ctx.mean(axis=(1, 2))[:, None, None, None, None]
    if cam_frames is not None:
        eps = eps + 0.3 * cam_frames.mean(axis=2, keepdims=True) + 0.05 * image_embed.mean(axis=1)[:, None, None, None, None]
    return eps


def _embed(frame):
    return frame.reshape(frame.shape[0], -1) * 2.0


# what CAM and APM read is the model's (decoded frames for the released one): the Denoiser carries them
_denoiser = Denoiser(_dummy, cam_input=lambda z: z[:, :, ::-1] * 0.5,
                     anchor_pair=lambda frame: (_embed(jnp.zeros_like(frame)) - 1.0, _embed(frame)))


def _np_dummy(x, ctx, i, cam=None, img=None):
    """_dummy for one CFG row in numpy: ctx (1, L, C) the row's context, img (1, D) its image embedding."""
    f = x.shape[2]
    eps = 0.1 * x + 0.01 * np.arange(f)[None, None, :, None, None] + 0.001 * i + ctx.mean()
    if cam is not None:
        eps = eps + 0.3 * cam.mean(axis=2, keepdims=True) + 0.05 * img.mean()
    return eps


def _np_embed(frame):
    return frame.reshape(frame.shape[0], -1) * 2.0


STREAM_OFFSET_FOLD = 0x7374726D  # Streaming.rng_rule(): offsets = randint(fold_in(k_steps, 0x7374726d), (chunks, steps), 0, C)


def _reference(x_T, cond, uncond, steps, eta, key, cfg_scale, window, n_cond, blend):
    """StreamingT2V's autoregressive loop, Picsart-AI-Research/StreamingT2V branch StreamingModelscope
    (commit a8aceea) t2v_enhanced/model/video_ldm.py:229-291: chunk 0 is a text-to-video chunk; chunk
    k >= 1 is generated whole, conditioned (CAM) on the previous chunk's last C frames
    (``condition_input[:, num_control_input_frames:]``, :265, with F = 2C there) and (APM, ``fixed``,
    :247-253) on the first chunk's first frame, a zero image's embedding on the CFG unconditional row;
    the video is chunk 0 then every later chunk from frame C on (:287-291). Each chunk's denoising is
    VideoCrafter2's DDIM loop (tests/lvdm_reference.py). With ``blend``, the project's documented
    composition (vstar_jax/longvideo/streaming.py) of StreamingT2V's randomized blending: at every step
    the chunk's x0 is overwritten before r ~ U{0..C-1} by the previous chunk's clean frames as
    diffusion_sdedit.py:176-180 overwrites x0, eps recomputed from x0 as :106, and the chunk then
    writes all its frames. What CAM reads of a chunk and the anchor embedding are the toy model's
    (``_denoiser.cam_input`` / ``anchor_pair``). Raw inputs: x_T of the whole length (chunks take their
    frames' noise), the step keys split(key, steps), chunk k's noise at step i normal(fold_in(key_i, k))."""
    ddim = LvdmDDIM(steps, eta)
    keys = jax.random.split(key, ddim.total_steps)
    hop = window - n_cond
    n_chunks = (x_T.shape[2] - window) // hop + 1
    offsets = np.asarray(jax.random.randint(jax.random.fold_in(key, STREAM_OFFSET_FOLD),
                                            (n_chunks, ddim.total_steps), 0, n_cond))
    chunks_conditional = []
    video = np.zeros(x_T.shape)
    for idx in range(n_chunks):
        s = idx * hop
        x = np.asarray(x_T[:, :, s:s + window], np.float64)
        if idx > 0:
            input_frames = chunks_conditional[-1][:, :, window - n_cond:]  # the previous chunk's last C
            cam = input_frames[:, :, ::-1] * 0.5  # _denoiser.cam_input
            anchor = chunks_conditional[0][:, :, 0]
            img_u, img_c = _np_embed(np.zeros_like(anchor)) - 1.0, _np_embed(anchor)  # _denoiser.anchor_pair
        for i, step, index in ddim.time_range():
            if idx == 0:
                e_t = cfg(_np_dummy(x, uncond, i), _np_dummy(x, cond, i), cfg_scale)
            else:
                e_t = cfg(_np_dummy(x, uncond, i, cam, img_u), _np_dummy(x, cond, i, cam, img_c), cfg_scale)
            if idx > 0 and blend:
                _, x0 = ddim.p_sample_ddim(x, e_t, index)
                r = int(offsets[idx, i])
                x0[:, :, :r] = input_frames[:, :, :r]
                e_t = ddim.eps_from_x0(x, x0, index)
            noise = None
            if eta > 0:
                k = keys[i] if idx == 0 else jax.random.fold_in(keys[i], idx)
                noise = np.asarray(jax.random.normal(k, x.shape, jnp.float32), np.float64)
            x, _ = ddim.p_sample_ddim(x, e_t, index, noise)
        chunks_conditional.append(x)
        if idx == 0 or blend:
            video[:, :, s:s + window] = x
        else:
            video[:, :, s + n_cond:s + window] = x[:, :, n_cond:]
    return video


@pytest.mark.parametrize("blend", [True, False])
def test_streaming_matches_the_chunk_by_chunk_reference(blend):
    from vstar_jax.diffusion import sampler as SP
    from vstar_jax.diffusion import schedules as S
    from vstar_jax.longvideo import SampleInputs, parse_strategy

    st = parse_strategy(f"streaming:window=4,cond=2,blend={int(blend)}")
    sched = S.videocrafter2_schedule(4, eta=1.0)
    rng = np.random.default_rng(5)
    x_T = rng.normal(size=(1, 2, 8, 2, 2)).astype(np.float32)
    cond, uncond = rng.normal(size=(1, 3, 4)).astype(np.float32), rng.normal(size=(1, 3, 4)).astype(np.float32)
    key = jax.random.key(3)
    x_T, _, ctx, co, keys, use_noise, guided = SP.prepare_sampling(x_T, cond, uncond, sched, None, key, "t")
    inputs = SampleInputs(x_T, ctx, co, keys, key, jnp.float32(5.0), 8, guided, use_noise)
    got = jax.jit(lambda x: st.run(_denoiser, inputs._replace(x_T=x))[0])(x_T)
    ref = _reference(np.asarray(x_T), cond, uncond, 4, 1.0, key, 5.0, 4, 2, blend)
    assert _rel(got, ref) < 1e-5  # float32 product vs float64 reference: rounding only
    # one chunk is the single pass
    one = jax.jit(lambda x: st.run(_denoiser, inputs._replace(x_T=x, frames=4))[0])(x_T[:, :, :4])
    single = jax.jit(lambda x: parse_strategy(None).run(_dummy, inputs._replace(x_T=x, frames=4))[0])(x_T[:, :, :4])
    np.testing.assert_array_equal(np.asarray(one), np.asarray(single))


def test_streaming_spec_lengths_and_model_checks():
    from vstar_jax.generation.model import ModelInfo
    from vstar_jax.longvideo import Streaming, parse_strategy

    st = parse_strategy("streaming:8:4")
    assert st == Streaming(8, 4, True) and st.check(16, 25).calls == 75 and st.check(64, 1).note == "15 chunks"
    assert parse_strategy(st.to_dict()) == st
    for bad, msg in [("streaming:8:8", "must be fewer"), ("streaming:0:4", "positive")]:
        with pytest.raises(VstarError, match=msg):
            parse_strategy(bad)
    with pytest.raises(VstarError, match=r"makes 8 \+ k\*4 frames .* got 18"):
        st.check(18, 4)
    base = {"unet": {"in_channels": 4, "model_channels": 32, "channel_mult": [1, 2]}}
    with pytest.raises(VstarError) as e:
        st.check_model(ModelInfo.from_config(base, "ckpt"))
    assert str(e.value) == ("ckpt: long_video streaming needs StreamingT2V's trained modules; this checkpoint has "
                            "no CAM (unet.cam) and no APM (unet.apm)")
    cam_only = {"unet": dict(base["unet"], cam={"frames": 4})}
    with pytest.raises(VstarError, match=r"no APM \(unet.apm\)$"):
        st.check_model(ModelInfo.from_config(cam_only, "ckpt"))
    both = {"unet": dict(base["unet"], cam={"frames": 4, "downsample": False}, apm={"image_encoder": "latent"})}
    st.check_model(ModelInfo.from_config(both, "ckpt"))
    with pytest.raises(VstarError, match=r"built for 4 conditioning frames; use streaming:8:4"):
        parse_strategy("streaming:8:2").check_model(ModelInfo.from_config(both, "ckpt"))
    # the released layout: CAM on decoded frames (3 stride-2 stages), APM on OpenCLIP's embedding
    released = {"unet": dict(base["unet"], cam={"frames": 4}, apm={"tokens": 16})}
    with pytest.raises(VstarError) as e:
        st.check_model(ModelInfo.from_config(released, "ckpt"))
    assert str(e.value).startswith("ckpt: long_video streaming cannot run: no VAE (its CAM / APM read decoded "
                                   "frames); no OpenCLIP image encoder for APM (component 'image_encoder'")
    vae2 = dict(released, vae={"ch_mult": [1, 2]})  # a VAE of factor 2 against a CAM that downsamples 8x
    with pytest.raises(VstarError, match=r"downsamples by 8 but the VAE by 2$"):
        st.check_model(ModelInfo.from_config(dict(vae2, image_encoder={"image_size": 28}), "ckpt"))
    vae8 = dict(released, vae={"ch_mult": [1, 2, 4, 4]}, image_encoder={"image_size": 28})
    st.check_model(ModelInfo.from_config(vae8, "ckpt"))


@pytest.mark.slow  # ~25-50 s (two demo-UNet compiles); the chunk-by-chunk reference test above stays in CI
@pytest.mark.filterwarnings("ignore:os.fork")
def test_streaming_on_the_demo_model_with_tar_vsp_and_from_sidecar(tmp_path):
    """The shipped CAM/APM through the pipeline (``--long-video streaming:8:4``) with TAR and a 2-state
    synopsis: 12 frames (2 chunks), the sidecar's record and PRNG rule, and --from-sidecar bit for bit."""
    from vstar_jax import pipeline as pl
    from vstar_jax.demo.streaming import load_streaming
    from vstar_jax.longvideo import parse_strategy

    if load_streaming() is None:
        pytest.skip("no shipped streaming.safetensors")
    st = parse_strategy("streaming:8:4")
    res = pl.generate_video("a red circle moves right", out=tmp_path / "a.mp4", **STREAM_KW)
    assert res.video.shape[0] == 12 and res.video.std() > 1
    assert res.sidecar["long_video"] == st.to_dict() and st.rng_rule() in res.sidecar["rng"]["rule"]
    again = pl.regenerate(res.sidecar_path, out=tmp_path / "b.mp4", progress=False)
    np.testing.assert_array_equal(again.video, res.video)
    assert again.sidecar["frames_sha256"] == res.sidecar["frames_sha256"]


STREAM_KW = dict(frames=12, steps=2, seed=3, tar="L0:1", long_video="streaming:8:4", progress=False,
                 synopsis=["a red circle on the left", "a red circle on the right"])


def test_demo_model_without_cam_apm_is_refused_before_compute(tmp_path, monkeypatch):
    """The demo model without its CAM/APM file: one line naming both, before any sampling or output."""
    from vstar_jax import pipeline as pl
    from vstar_jax.demo import model as dm

    base = dm.pipeline_from_demo(dm.load_demo_model(streaming=False))
    monkeypatch.setattr(pl, "sample_latents", lambda *a, **k: pytest.fail("sampled"))
    with pytest.raises(VstarError, match=r"^builtin:demo: .* no CAM \(unet.cam\) and no APM \(unet.apm\)$"):
        pl.generate_video("a red circle moves right", pipeline=base, out=tmp_path / "c.mp4", **STREAM_KW)
    assert not (tmp_path / "c.mp4").exists()
