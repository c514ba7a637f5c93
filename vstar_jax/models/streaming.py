"""StreamingT2V's two trained modules on top of the UNet: CAM (conditional attention) and APM
(appearance preservation), as optional parts of the UNet config (``unet.cam``, ``unet.apm``; absent
in the VideoCrafter2 / ModelScope configs, whose outputs do not change).

What is ported, read from ``Picsart-AI-Research/StreamingT2V`` (branch ``StreamingModelscope``,
``t2v_enhanced/model/diffusers_conditional/models/controlnet/``), with the released config
``t2v_enhanced/configs/text_to_video/config.yaml`` (merging_mode_base ``attention_cross_attention``,
merging_mode ``addition``, frame_expansion ``none``, zero_conv_mode ``Identity``,
num_control_input_frames 8, conditioning_embedding_out_channels [32, 96, 256, 512],
use_image_tokens_main true, resampler ``ImgEmbContextResampler``, image encoder OpenCLIP ViT-H-14):

CAM (short-term memory)
  * Frame encoder (``controlnet.py: ControlNetConditioningEmbedding``): ``conv_in`` 3x3 (cond channels
    -> c0), SiLU; for each i: conv 3x3 (c_i -> c_i), SiLU, conv 3x3 stride s (c_i -> c_{i+1}), SiLU
    (s = 2 when ``downsample_controlnet_cond``: pixel frames, 3 channels; else s = 1 on 4-channel
    latents); ``conv_out`` 3x3 (c_last -> model channels), zero-initialised.
  * Control branch (``controlnet.py: ControlNetModel.from_unet`` / ``forward``): a copy of the UNet's
    encoder (conv_in, transformer_in, down blocks, mid block; its weights start as the base's) run on
    the first C frames of the noisy input (``sample[:, :, :num_frames]``, num_frames = C) with the same
    timestep and text; the encoded frames are ADDED after transformer_in (``Merger``, mode addition).
    Its skip features (conv_in, every down-block output, every downsample) and its mid output are the
    residuals (zero convs: Identity).
  * Injection (``unet_3d_condition.py`` + ``cross_attention.py: ConditionalModel / CrossAttention``):
    every skip connection h_i of the base UNet (after the whole down path) and the mid-block output are
    replaced by h + proj_out(Attn(proj_in(GroupNorm(h)), ctrl_i)): GroupNorm (32 groups, eps 1e-6) over
    the (f, h, w) volume, proj_in Linear(c, c), attention over FRAMES at each pixel -- queries: the
    chunk's F frames, keys/values: the control branch's C frames at the same pixel (not normalised) --
    heads c // 64 of 64, q/k/v without bias, to_out with bias, then proj_out Linear(c, c)
    zero-initialised: at initialisation the UNet is exactly the plain UNet.

APM (long-term memory)
  * Resampler (``image_embedder.py: ImgEmbContextResampler``): image embeddings (b, n, D) -> mean over n
    -> Linear(D, 1280) -> SiLU -> Linear(1280, T * C_ctx) -> (b, T, C_ctx), T = 16 tokens, appended to
    the 77 text tokens (the pipeline's ``prompt_embeds = cat([text, img_cond], 1)``); the unconditional
    row embeds a zero image. The embedding is OpenCLIP ViT-H-14's image embedding (1024) of the anchor
    frame (``FrozenOpenCLIPImageEmbedder``; project: ``vstar_jax.models.clip_vision``).
  * Mixer, in every spatial cross-attention (``attention_processor.py: Attention.__init__`` with
    ``use_image_embedding`` and ``processor.py``): ctx' = ctx[:, :77] + silu(alpha) * LayerNorm(
    Conv1d_{77+T -> 77, k=3, pad 1}(ctx)), where the Conv1d's channels are the TOKENS and it slides along
    the feature axis; alpha is a learned scalar per attention layer, initialised to 0 (silu(0) = 0: the
    plain text context at initialisation). k and v of that cross-attention read ctx'.

The model: :class:`StreamingUNet`, a ControlNet-style wrapper around the base UNet's parts (as
maxdiffusion keeps ControlNet apart from the UNet): the base UNet (``vstar_jax.models.unet3d``) knows
nothing of CAM or APM beyond two generic seams, the encoder's ``cond_features`` (added after init_attn)
and the spatial blocks' ``context_mix`` (a module mapping the cross-attention context).

Parameter names here (one place; ``checkpoints_convert/streamingt2v.py`` maps the reference's keys):
``cam_cond_embedding``, ``cam_control`` (the base UNet's embedding, encoder and mid, own weights),
``cam_merge_{i}`` / ``cam_merge_mid``, ``apm_resampler``, and ``attn2_mix`` inside each spatial block;
the base UNet's own parameters sit beside them, named as in the plain UNet.

Settings (``unet.cam``, ``vstar_jax.models.unet_config.CAMConfig``): ``frames`` C, ``cond_channels``
(latent channels for latent conditioning), ``embed_channels`` (c_0..c_last), ``downsample`` (stride-2
stages), ``head_dim``, ``norm_groups``. (``unet.apm``, ``APMConfig``): ``tokens`` T, ``image_dim`` D,
``hidden`` (1280), ``text_len`` (77), ``image_encoder``.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.traverse_util import flatten_dict, unflatten_dict

from vstar_jax.models.clip_vision import openclip_pixels
from vstar_jax.models.layers import Attention, GroupNorm32
from vstar_jax.models.unet3d import (UNet3D, UNetCall, UNetDecoder, UNetEmbedding, UNetEncoder, UNetExtras,
                                     UNetMid, share_parts)
from vstar_jax.models.unet_config import CAMConfig, UNetConfig
from vstar_jax.models.vae import decode_latents


def cam_settings(unet_cfg) -> Optional[dict]:
    """The UNet config's CAM settings with defaults filled in, or None when it has no CAM."""
    cam = UNetConfig.from_config(unet_cfg, check=False).cam
    return dataclasses.asdict(cam) if cam is not None else None


def apm_settings(unet_cfg) -> Optional[dict]:
    """The UNet config's APM settings with defaults filled in, or None when it has no APM."""
    apm = UNetConfig.from_config(unet_cfg, check=False).apm
    return dataclasses.asdict(apm) if apm is not None else None


def build_unet(config) -> nn.Module:
    """The UNet of a config: :class:`StreamingUNet` when it has CAM or APM, else the plain UNet3D."""
    return StreamingUNet(config) if UNetConfig.from_config(config).streaming else UNet3D(config)


class StreamingUNet(nn.Module):
    """StreamingT2V's UNet: the base UNet's parts (``vstar_jax.models.unet3d``: embedding, encoder, mid,
    decoder; in this module's own scope, so the parameter tree is the base UNet's plus the CAM / APM
    parts) wrapped ControlNet-style: :class:`CAMBranch` merges its control branch's features into the
    skips and the mid output between the base's mid and decoder; APM's resampler turns the anchor's image
    embedding into context tokens that every spatial cross-attention mixes in (``attn2_mix``).
    Without ``cam_frames`` / ``image_embed`` (or without the config entries) it is the plain UNet."""

    config: Any

    def setup(self):
        cfg = UNetConfig.from_config(self.config)
        base = cfg.without_streaming()
        self.embed, self.encoder, self.mid, self.decoder = (UNetEmbedding(base), UNetEncoder(base), UNetMid(base),
                                                            UNetDecoder(base))
        share_parts(self, self.embed, self.encoder, self.mid, self.decoder)
        self.cam = CAMBranch(cfg.cam, base.replace(remat=False)) if cfg.cam is not None else None
        if self.cam is not None:
            share_parts(self, self.cam)
        self.apm_resampler = None if cfg.apm is None else APMResampler(
            cfg.apm.tokens, base.context_dim, cfg.apm.hidden, base.weight_dtype)
        self.weight_dtype = base.weight_dtype

    def __call__(self, x: jax.Array, timesteps: jax.Array, context: jax.Array, fps: Optional[Any] = None,
                 step_index: Optional[Any] = None, *, tar: Optional[Any] = None, hooks: tuple = (),
                 capture_attention: bool = False, layout: Optional[Any] = None,
                 cam_frames: Optional[jax.Array] = None, image_embed: Optional[jax.Array] = None,
                 frame_times: Optional[jax.Array] = None) -> jax.Array:
        """UNet3D's call (``frame_times`` as there), plus ``cam_frames`` (b, c_cond, C, H, W): the previous chunk's last C frames
        (CAM), and ``image_embed`` (b, D) or (b, n, D): the anchor frame's image embedding (APM)."""
        extras = UNetExtras.of(tar, hooks, step_index, capture_attention, layout)
        with extras.on_mesh():
            call = self.embed(x, timesteps, context, fps, extras, frame_times)
            if image_embed is not None and self.apm_resampler is not None:
                call = self._with_image_tokens(call, image_embed)
            h, skips = self.encoder(call, x)
            h = self.mid(call, h)
            if cam_frames is not None and self.cam is not None:
                skips, h = self.cam(call, x, fps, cam_frames, skips, h)
            return self.decoder(call, h, skips)

    def _with_image_tokens(self, call: UNetCall, image_embed) -> UNetCall:
        """APM: the resampler's tokens after the text tokens of every spatial cross-attention, mixed in by
        each one's ``attn2_mix`` (:class:`APMContextMix`)."""
        tokens = self.apm_resampler(image_embed)
        text = call.text
        context = jnp.concatenate([text, jnp.repeat(tokens, call.frames, axis=0).astype(text.dtype)], axis=1)
        return call.replace(context=context,
                            context_mix=functools.partial(APMContextMix, text.shape[1], self.weight_dtype))


class ControlBranch(nn.Module):
    """CAM's control branch (``ControlNetModel.from_unet``): the base UNet's embedding, encoder and mid
    with their own weights (``cam_control``), the encoded conditioning frames added after init_attn.
    Returns (skips, mid)."""

    cfg: UNetConfig

    def setup(self):
        self.embed, self.encoder, self.mid = UNetEmbedding(self.cfg), UNetEncoder(self.cfg), UNetMid(self.cfg)
        share_parts(self, self.embed, self.encoder, self.mid)

    def __call__(self, x, timesteps, context, fps, cond_features):
        call = self.embed(x, timesteps, context, fps, UNetExtras())
        h, skips = self.encoder(call, x, cond_features)
        return skips, self.mid(call, h)


class CAMBranch(nn.Module):
    """CAM (short-term memory), in the enclosing :class:`StreamingUNet`'s scope: the frame encoder
    (``cam_cond_embedding``), the control branch (``cam_control``: :class:`ControlBranch` on the first C
    noisy frames, with the same timestep and ``call.text``: the text alone, as the reference's
    ``use_image_tokens_ctrl`` false) and one merger per skip connection and for the mid
    output (``cam_merge_{i}``, ``cam_merge_mid``): zero-initialised attention over frames from the base's
    features to the control branch's. Returns the merged (skips, mid)."""

    cam: CAMConfig
    base: UNetConfig  # the control branch's config: the base UNet's (not rematerialised)

    @nn.compact
    def __call__(self, call: UNetCall, x, fps, cam_frames, skips, mid):
        b, f, n_cond = call.batch, call.frames, self.cam.frames
        if cam_frames.ndim != 5 or cam_frames.shape[0] != b or cam_frames.shape[2] != n_cond:
            raise ValueError(f"cam_frames must be ({b}, c, {n_cond}, H, W), got {tuple(cam_frames.shape)}")
        if f < n_cond:
            raise ValueError(f"CAM needs at least {n_cond} frames per call, got {f}")
        pdtype = self.base.weight_dtype
        frames = cam_frames.transpose(0, 2, 3, 4, 1).reshape((b * n_cond,) + cam_frames.shape[3:]
                                                             + (cam_frames.shape[1],))
        feats = CondFrameEncoder(self.base.base_channels, self.cam.embed_channels, self.cam.downsample, pdtype,
                                 name="cam_cond_embedding")(frames.astype(jnp.float32))
        ctrl_ctx = call.text.reshape((b, f) + call.text.shape[1:])[:, :n_cond]
        timesteps = call.timesteps.reshape(b, -1)[:, 0] if call.per_frame else call.timesteps
        ctrl_skips, ctrl_mid = ControlBranch(self.base, name="cam_control")(x[:, :, :n_cond], timesteps, ctrl_ctx,
                                                                             fps, feats)
        merge = lambda name: CAMMerger(self.cam.head_dim, self.cam.norm_groups, pdtype, name=name)  # noqa: E731
        as5 = lambda t, n: t.reshape((b, n) + t.shape[1:])  # noqa: E731
        new = [merge(f"cam_merge_{i}")(as5(s, f), as5(r, n_cond)).reshape(s.shape)
               for i, (s, r) in enumerate(zip(skips, ctrl_skips))]
        mid = merge("cam_merge_mid")(as5(mid, f), as5(ctrl_mid, n_cond)).reshape(mid.shape)
        return new, mid


class CondFrameEncoder(nn.Module):
    """The CAM frame encoder: conditioning frames (n, H, W, c_cond) -> features (n, h, w, out)."""

    out_channels: int
    embed_channels: tuple = (32, 96, 256, 512)
    downsample: bool = True
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, frames):
        conv = lambda n, s, name, **kw: nn.Conv(n, (3, 3), strides=(s, s), padding=((1, 1), (1, 1)),
                                                param_dtype=self.param_dtype, name=name, **kw)
        h = nn.silu(conv(self.embed_channels[0], 1, "conv_in")(frames))
        stride = 2 if self.downsample else 1
        for i in range(len(self.embed_channels) - 1):
            h = nn.silu(conv(self.embed_channels[i], 1, f"block_{2 * i}")(h))
            h = nn.silu(conv(self.embed_channels[i + 1], stride, f"block_{2 * i + 1}")(h))
        return conv(self.out_channels, 1, "conv_out", kernel_init=nn.initializers.zeros)(h)


class CAMMerger(nn.Module):
    """Injects the control branch's features into one skip connection: h + proj_out(attention over
    frames from GroupNorm(h) to the control features at the same pixel). proj_out starts at zero.

    x: (b, f, h, w, c) base features; cond: (b, C, h, w, c) control features."""

    head_dim: int = 64
    groups: int = 32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, cond):
        b, f, hh, ww, c = x.shape
        heads = max(c // self.head_dim, 1)
        y = GroupNorm32(self.groups, 1e-6, name="norm")(x).reshape(b, f, hh * ww, c)
        y = nn.Dense(c, param_dtype=self.param_dtype, name="proj_in")(y)
        ctx = cond.reshape(b, cond.shape[1], hh * ww, c).astype(y.dtype)
        y = Attention(heads, c // heads, c, param_dtype=self.param_dtype, name="attention")(y, ctx)
        y = nn.Dense(c, param_dtype=self.param_dtype, kernel_init=nn.initializers.zeros, name="proj_out")(y)
        return x + y.reshape(b, f, hh, ww, c).astype(x.dtype)


class APMResampler(nn.Module):
    """Image embeddings (b, n, D) or (b, D) -> T context tokens (b, T, context_dim)."""

    tokens: int
    context_dim: int
    hidden: int = 1280
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, emb):
        emb = jnp.asarray(emb, jnp.float32)
        if emb.ndim == 2:
            emb = emb[:, None]
        h = emb.mean(axis=1)
        h = nn.silu(nn.Dense(self.hidden, param_dtype=self.param_dtype, name="fc_1")(h))
        h = nn.Dense(self.tokens * self.context_dim, param_dtype=self.param_dtype, name="fc_2")(h)
        return h.reshape(h.shape[0], self.tokens, self.context_dim)


class APMContextMix(nn.Module):
    """ctx (n, text_len + T, C) -> text + silu(alpha) * LayerNorm(Conv1d over the feature axis with the
    tokens as channels (text_len + T -> text_len, kernel 3, padding 1)); alpha starts at 0."""

    text_len: int = 77
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, ctx):
        text = ctx[:, : self.text_len]
        t = jnp.swapaxes(ctx, 1, 2)  # (n, C, L): the feature axis is the conv's length axis
        m = nn.Conv(self.text_len, (3,), padding=((1, 1),), param_dtype=self.param_dtype, name="conv")(t)
        m = nn.LayerNorm(epsilon=1e-5, param_dtype=self.param_dtype, name="norm")(jnp.swapaxes(m, 1, 2))
        alpha = self.param("alpha", nn.initializers.zeros, (), self.param_dtype)
        return text + jax.nn.silu(alpha).astype(m.dtype) * m.astype(text.dtype)


def split_params(params: Mapping) -> tuple[dict, dict]:
    """(base, extra): the UNet params without and with only the CAM / APM parts (flat dicts keyed by
    '/'-joined paths), so the base file stays what it was and the extra ships on its own."""
    flat = flatten_dict(jax.tree_util.tree_map(lambda x: x, dict(params)), sep="/")
    extra = {k: v for k, v in flat.items()
             if any(p.startswith(("cam_", "apm_")) or p == "attn2_mix" for p in k.split("/"))}
    base = {k: v for k, v in flat.items() if k not in extra}
    return base, extra


def merge_params(base: Mapping, extra_flat: Mapping) -> dict:
    """Base UNet params (nested) + extra CAM / APM params ('/'-joined flat keys) -> one nested tree."""
    flat = flatten_dict(dict(base), sep="/")
    flat.update(extra_flat)
    return unflatten_dict(flat, sep="/")


def init_control_from_base(params: Mapping) -> dict:
    """``ControlNetModel.from_unet``: the control branch's encoder weights start as the base UNet's
    (every ``cam_control`` leaf whose path exists in the base is copied)."""
    flat = flatten_dict(dict(params))
    out = dict(flat)
    for k in flat:
        if k[0] == "cam_control" and k[1:] in flat and flat[k[1:]].shape == flat[k].shape:
            out[k] = flat[k[1:]]
    return unflatten_dict(out)


def memory_inputs(unet_cfg) -> tuple[bool, str]:
    """(cam_pixels, image_encoder) of a StreamingT2V UNet config: whether CAM's frame encoder reads
    decoded pixel frames (the reference's ``downsample_controlnet_cond``: 3 channels, stride-2 stages)
    rather than the latent frames, and APM's image encoder: ``"latent"`` (the anchor latent flattened:
    the demo model's parameter-free stand-in) or ``"openclip"`` (a CLIP vision tower on the decoded
    anchor frame: the released model's OpenCLIP ViT-H-14)."""
    cfg = UNetConfig.from_config(unet_cfg, check=False)
    pixels = cfg.cam is not None and cfg.cam.downsample
    enc = cfg.apm.image_encoder if cfg.apm is not None else "latent"
    return pixels, ("latent" if enc == "latent" else "openclip")


def latent_anchor_embedding(frame):
    """APM's ``latent`` stand-in for an image tower: the anchor latent (b, c, h, w) flattened to (b, c*h*w)
    (the demo model's; its trainer embeds the anchor the same way)."""
    frame = jnp.asarray(frame, jnp.float32)
    return frame.reshape(frame.shape[0], -1)


@dataclasses.dataclass(frozen=True)
class StreamingMemory:
    """What CAM and APM read, made from the latents inside the sampling loop (static and hashable;
    params are passed at the call: ``{"vae": ..., "image_encoder": ...}``, only what is used).

    * ``cam_input(params, z)``: the previous chunk's last C latent frames (b, c, C, h, w) -> what CAM
      takes: the frames themselves, or (``cam_pixels``) the decoded frames (b, 3, C, H, W) in [-1, 1]
      (the reference decodes the chunk, clamps to [0, 1] and conditions on ``2 x - 1``).
    * ``anchor_pair(params, frame)``: the anchor latent (b, c, h, w) -> (unconditional, conditional)
      image embeddings (b, D): the reference embeds the anchor's decoded frame with its frozen OpenCLIP
      ViT-H-14 (``FrozenOpenCLIPImageEmbedder``: antialiased bicubic resize to 224, CLIP
      normalisation, class-token embedding) and a zero image (``zeros_like``) for the CFG
      unconditional row; the ``latent`` stand-in flattens the latent (a zero latent unconditionally).
    """

    cam_pixels: bool = False
    image_encoder: str = "latent"
    vae: Any = None  # vstar_jax.models.vae.AutoencoderKL when anything is decoded
    vision: Any = None  # vstar_jax.models.clip_vision.CLIPVisionTransformer ("openclip")
    scale_factor: float = 1.0  # diffusion latents = scale_factor * z

    @property
    def decodes(self) -> bool:
        return self.cam_pixels or self.image_encoder != "latent"

    def params_of(self, params: Mapping) -> dict:
        """The parts of a checkpoint's params this memory reads ({} for the latent stand-ins)."""
        out = {}
        if self.decodes:
            out["vae"] = params["vae"]
        if self.image_encoder != "latent":
            out["image_encoder"] = params["image_encoder"]
        return out

    def decode(self, params, z):
        """Latent frames (b, c, n, h, w) -> pixel frames (b, 3, n, H, W) clamped to [-1, 1]: the VAE's one
        decoder (:func:`~vstar_jax.models.vae.decode_latents`), all b * n frames in one batch."""
        b, _, n = z.shape[:3]
        px = decode_latents(self.vae, params["vae"], jnp.asarray(z, jnp.float32), frame_batch=b * n,
                            scale_factor=self.scale_factor)
        return jnp.clip(px.astype(jnp.float32), -1.0, 1.0)

    def cam_input(self, params, z):
        return self.decode(params, z) if self.cam_pixels else jnp.asarray(z, jnp.float32)

    def embed_pixels(self, params, px):
        """Decoded frames (b, 3, H, W) in [-1, 1] -> CLIP image embeddings (b, D)."""
        x = openclip_pixels(jnp.transpose(px, (0, 2, 3, 1)), int(self.vision.config.image_size))
        return self.vision.apply({"params": params["image_encoder"]}, x).astype(jnp.float32)

    def anchor_pair(self, params, frame):
        frame = jnp.asarray(frame, jnp.float32)
        if self.image_encoder == "latent":
            emb = latent_anchor_embedding(frame)
            return jnp.zeros_like(emb), emb
        px = self.decode(params, frame[:, :, None])[:, :, 0]
        both = self.embed_pixels(params, jnp.concatenate([jnp.zeros_like(px), px], axis=0))
        return both[: frame.shape[0]], both[frame.shape[0]:]


def has_streaming_modules(unet_cfg) -> list[str]:
    """What ``streaming`` needs and this UNet config lacks: [] or e.g. ['CAM (unet.cam)']."""
    cfg = UNetConfig.from_config(unet_cfg, check=False)
    return [name for name, part in (("CAM (unet.cam)", cfg.cam), ("APM (unet.apm)", cfg.apm)) if part is None]
