"""The text-to-video 3D UNet (VideoCrafter2 ``lvdm`` UNetModel and diffusers
``UNet3DConditionModel`` / ModelScope): :class:`UNet3D`, made of four parts that each own their
layers' parameters: :class:`UNetEmbedding` (timestep / fps / demo-option embeddings, input checks),
:class:`UNetEncoder` (conv_in, init_attn, the down levels: lvdm's input blocks), :class:`UNetMid` and
:class:`UNetDecoder` (the up levels, norm_out, conv_out: lvdm's output blocks and out). The parts share
the parent's parameter scope (``nn.share_scope``), so the parameter tree is flat as the converters
write it (``conv_in``, ``down_0_0_res``, ``mid_spatial``, ``up_1_0_temporal``, ...). StreamingT2V's
CAM / APM wrap these parts (``vstar_jax.models.streaming.StreamingUNet``); the control branch there
runs its own embedding, encoder and mid.

The two checkpoints share one architecture (SPEC sections 1-2); the typed config
(:class:`~vstar_jax.models.unet_config.UNetConfig`) switches what differs: fps conditioning
(VideoCrafter2), the projection type of ``init_attn`` / ``transformer_in`` (Conv1d k=1 vs Linear: the
same map) and of the spatial transformers (``use_linear``).

Layout: the public call takes latents as the reference does, (b, c, f, h, w);
inside, spatial layers see (b*f, h, w, c) and temporal layers (b, f, h, w, c).
GroupNorms always run in float32 (the reference's ResBlock norms do; running the
others in float32 too only removes bf16 error). Matmul/conv dtype and parameter
dtype come from the config.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vstar_jax.errors import VstarError
from vstar_jax.models.attention import attention, rows_on_mesh
from vstar_jax.models.demo_options import TextFrameEmbed, frame_position_term
from vstar_jax.models.layers import Attention, GroupNorm32, timestep_embedding
from vstar_jax.models.layers import RelativePosition, relative_positions  # noqa: F401  (moved there; re-exported)
from vstar_jax.models.unet_config import UNetConfig
# the per-level layout helpers the converters import from here (defined with the typed config)
from vstar_jax.models.unet_config import (check_unet_config, unet_base_channels, unet_level_attention,  # noqa: F401
                                          unet_level_heads, unet_level_widths, unet_num_levels)
from vstar_jax.parallel.sharding import logical_to_spec

Dtype = Any


class TransformerBlock(nn.Module):
    """LayerNorm -> attn1 -> LayerNorm -> attn2 -> LayerNorm -> GEGLU feed-forward, each residual.

    attn2 attends to ``context`` (spatial) or to itself (temporal, ``context=None``).
    """

    dim: int
    heads: int
    head_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    backend: str = "xla"
    relative_position: int = 0  # temporal blocks: lvdm's relative position in attn1 and attn2
    # a module factory, called with name="attn2_mix", whose module maps the cross-attention context to
    # what attn2 reads (StreamingT2V APM: vstar_jax.models.streaming.APMContextMix); None = the context
    context_mix: Optional[Callable] = None

    @nn.compact
    def __call__(self, x, context=None, logit_transform=None, capture: bool = False, attend=None):
        if self.context_mix is not None and context is not None:
            context = self.context_mix(name="attn2_mix")(context)
        ln = lambda name: nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, param_dtype=self.param_dtype, name=name)
        attn = lambda name: Attention(self.heads, self.head_dim, self.dim, self.dtype, self.param_dtype,
                                      self.backend, self.relative_position, name=name)
        # attend (a wrapper of the attention function, e.g. FreeNoise's windows) serves self-attention only
        x = x + attn("attn1")(ln("norm1")(x).astype(self.dtype), None, logit_transform, capture, attend)
        x = x + attn("attn2")(ln("norm2")(x).astype(self.dtype), context, logit_transform, capture,
                              attend if context is None else None)
        h = ln("norm3")(x).astype(self.dtype)
        inner = self.dim * 4
        h = nn.Dense(inner * 2, dtype=self.dtype, param_dtype=self.param_dtype, name="ff_in")(h)
        h, gate = jnp.split(h, 2, axis=-1)
        h = h * jax.nn.gelu(gate, approximate=False)
        x = x + nn.Dense(self.dim, dtype=self.dtype, param_dtype=self.param_dtype, name="ff_out")(h)
        return x


# Transformer blocks act on each token independently except inside attention, whose rows are one image
# (spatial) or one pixel's frames (temporal). On CPU a block runs over chunks of tokens (nn.scan over
# groups of images / pixels, the same parameters), about CHUNK_ELEMS token-features (tokens x the block's
# width; the GEGLU hidden layer is 8x that) at a time, so each chunk's intermediates (q/k/v, logits, the
# 4x-wide GEGLU hidden layer) stay in cache instead of streaming whole-tensor intermediates through
# memory: 1.5-3x faster blocks on the 2-core developer machine. Only the plain path is chunked (no logit
# transform, weight capture or attend hook; not while initialising); CHUNK_ELEMS = 0 turns it off.
# Read at trace time.
CHUNK_ELEMS = 1 << 18


def _chunks(rows: int, tokens_per_row: int, width: int, enabled: bool) -> int:
    """How many chunks to split ``rows`` rows of ``tokens_per_row`` tokens into (1: no chunking): the
    smallest divisor of ``rows`` whose chunks hold at most CHUNK_ELEMS token-features (at least one row)."""
    budget = CHUNK_ELEMS // max(1, width)
    if not enabled or not CHUNK_ELEMS or jax.default_backend() != "cpu" or rows * tokens_per_row <= budget:
        return 1
    for k in range(1, rows + 1):
        if rows % k == 0 and (rows // k) * tokens_per_row <= budget:
            return k
    return rows


class _ChunkBlock(TransformerBlock):
    """A TransformerBlock in nn.scan's (carry, xs) form: the same module (names, parameters), one chunk."""

    @nn.compact
    def __call__(self, carry, xs):  # noqa: D102
        x, context = xs
        return carry, TransformerBlock.__call__(self, x, context)


_ScanBlock = nn.scan(_ChunkBlock, variable_broadcast="params", split_rngs={"params": False}, in_axes=0, out_axes=0)


def _block(chunks: int, *args, name: str):
    """TransformerBlock(*args, name=name), or its chunked form when ``chunks`` > 1: called as
    ``fn(x, context)`` on inputs whose leading axis is the chunk axis."""
    if chunks == 1:
        return TransformerBlock(*args, name=name)
    mod = _ScanBlock(*args, name=name)
    return lambda x, context: mod(None, (x, context))[1]


class SpatialTransformer(nn.Module):
    """GroupNorm -> proj_in -> transformer blocks (self + cross attention) -> proj_out, residual.

    x: (n, h, w, c), context: (n, L, C). Conv 1x1 and Linear projections are the same map.
    """

    heads: int
    head_dim: int
    depth: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    backend: str = "xla"
    groups: int = 32
    chunked: bool = True  # CPU chunks (CHUNK_ELEMS); off on a device mesh, whose layout splits these axes
    context_mix: Optional[Callable] = None  # TransformerBlock.context_mix (StreamingT2V APM); None = off

    @nn.compact
    def __call__(self, x, context):
        n, h, w, c = x.shape
        inner = self.heads * self.head_dim
        k = _chunks(n, h * w, inner, self.chunked and not self.is_initializing())
        y = GroupNorm32(self.groups, 1e-6, name="norm")(x).reshape(n, h * w, c)
        ctx = context.astype(self.dtype)
        if k > 1:  # (k, n / k, h * w, c): chunks of whole images, a free reshape
            y, ctx = y.reshape(k, n // k, h * w, c), ctx.reshape((k, n // k) + ctx.shape[1:])
        y = nn.Dense(inner, dtype=self.dtype, param_dtype=self.param_dtype, name="proj_in")(y)
        for i in range(self.depth):
            y = _block(k, inner, self.heads, self.head_dim, self.dtype, self.param_dtype, self.backend, 0,
                       self.context_mix, name=f"block_{i}")(y, ctx)
        y = nn.Dense(c, dtype=self.dtype, param_dtype=self.param_dtype, name="proj_out")(y)
        return x + y.reshape(n, h, w, c).astype(x.dtype)


class TemporalTransformer(nn.Module):
    """Self-attention over frames at every pixel (attn1 and attn2 both self-attention).

    x: (b, f, h, w, c). GroupNorm spans the whole (f, h, w) volume, as the reference
    normalizes the 5-D tensor. ``logit_transform`` (TAR) applies to both attentions.
    """

    heads: int
    head_dim: int
    depth: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    backend: str = "xla"
    groups: int = 32
    relative_position: int = 0  # lvdm use_relative_position: max frame offset (temporal_length); 0 = off
    chunked: bool = True  # CPU chunks of pixels (CHUNK_ELEMS); off on a device mesh (pixels are split there)

    @nn.compact
    def __call__(self, x, logit_transform=None, capture: bool = False, attend=None):
        b, f, h, w, c = x.shape
        inner = self.heads * self.head_dim
        # Channels-last throughout: (b, f, h*w, c) is a free reshape; attention runs over axis 1.
        plain = logit_transform is None and not capture and attend is None
        k = _chunks(h * w, b * f, inner, self.chunked and plain and not self.is_initializing())
        y = GroupNorm32(self.groups, 1e-6, name="norm")(x).reshape(b, f, h * w, c)
        if k > 1:  # (k, b, f, h*w / k, c): chunks of pixels, each with all its frames (one copy at width c)
            y = y.reshape(b, f, k, h * w // k, c).transpose(2, 0, 1, 3, 4)
        y = nn.Dense(inner, dtype=self.dtype, param_dtype=self.param_dtype, name="proj_in")(y)
        for i in range(self.depth):
            if k > 1:
                y = _block(k, inner, self.heads, self.head_dim, self.dtype, self.param_dtype, self.backend,
                           self.relative_position, name=f"block_{i}")(y, None)
            else:
                y = TransformerBlock(inner, self.heads, self.head_dim, self.dtype, self.param_dtype, self.backend,
                                     self.relative_position, name=f"block_{i}")(y, None, logit_transform, capture,
                                                                                attend)
        y = nn.Dense(c, dtype=self.dtype, param_dtype=self.param_dtype, name="proj_out")(y)
        if k > 1:
            y = y.transpose(1, 2, 0, 3, 4)
        return x + y.reshape(b, f, h, w, c).astype(x.dtype)


class TemporalConvBlock(nn.Module):
    """Four (GroupNorm, SiLU, Conv3d (3,1,1)) stages over frames, residual. x: (b, f, h, w, c)."""

    channels: int
    groups: int = 32
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = x
        for i in range(1, 5):
            h = GroupNorm32(self.groups, 1e-5, name=f"norm{i}")(h)
            h = nn.silu(h)
            h = FrameConv(self.channels, self.dtype, self.param_dtype, name=f"conv{i}")(h)
        return x + h


class FrameConv(nn.Module):
    """``nn.Conv(channels, (3, 1, 1), padding=((1, 1), (0, 0), (0, 0)))`` over (b, f, h, w, c), same
    parameters (``kernel`` (3, 1, 1, in, out), ``bias``), computed as a (3, 1) 2-D conv over a free
    (b, f, h*w, c) view: XLA CPU runs that ~2.4x faster than its 3-D conv with a (3, 1, 1) kernel."""

    channels: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, f, hh, ww, c = x.shape
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 1, 1, c, self.channels), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.channels,), self.param_dtype)
        y = jax.lax.conv_general_dilated(
            x.reshape(b, f, hh * ww, c).astype(self.dtype), kernel[:, 0].astype(self.dtype), (1, 1),
            ((1, 1), (0, 0)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return (y + bias.astype(self.dtype)).reshape(b, f, hh, ww, self.channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv, + time embedding, GroupNorm-SiLU-Conv, skip; then the temporal conv.

    x: (b*f, h, w, c); emb: (b*f, E).
    """

    out_channels: int
    frames: int
    temporal_conv: bool = True
    groups: int = 32
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, emb):
        conv = lambda n, k, name: nn.Conv(n, (k, k), padding=k // 2, dtype=self.dtype, param_dtype=self.param_dtype,
                                          name=name)
        h = nn.silu(GroupNorm32(self.groups, 1e-5, name="in_norm")(x))
        h = conv(self.out_channels, 3, "in_conv")(h)
        e = nn.Dense(self.out_channels, dtype=self.dtype, param_dtype=self.param_dtype, name="emb_proj")(
            nn.silu(emb))
        h = h + e[:, None, None, :].astype(h.dtype)
        h = nn.silu(GroupNorm32(self.groups, 1e-5, name="out_norm")(h))
        h = conv(self.out_channels, 3, "out_conv")(h)
        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, 1, "skip")(x)
        h = x + h
        if self.temporal_conv:
            n, hh, ww, c = h.shape
            t = TemporalConvBlock(self.out_channels, self.groups, self.dtype, self.param_dtype,
                                  name="temporal_conv")(h.reshape(n // self.frames, self.frames, hh, ww, c))
            h = t.reshape(n, hh, ww, c)
        return h


def _blocks(remat: bool):
    """(ResBlock, SpatialTransformer, TemporalTransformer), rematerialised when ``remat`` (config
    ``remat: bool``, default False): activations inside each block are recomputed in the backward
    pass instead of stored. ``nn.remat`` keeps the module names, so the parameter tree is unchanged.
    TemporalTransformer's logit_transform, capture and attend arguments are static (argnums count self), so
    the rematerialised one must be called with them given positionally, as the UNet's parts do."""
    if not remat:
        return ResBlock, SpatialTransformer, TemporalTransformer
    return _REMAT_BLOCKS


_REMAT_BLOCKS = (nn.remat(ResBlock), nn.remat(SpatialTransformer), nn.remat(TemporalTransformer, static_argnums=(2, 3, 4)))


# ---------------------------------------------------------------- what one call's parts share
@dataclasses.dataclass(frozen=True)
class UNetExtras:
    """The optional extras of one UNet call. ``hooks``: temporal-attention hooks, each with optional
    methods ``logit_transform(level, step_index)`` (TAR: every temporal transformer but ``init_attn``)
    and ``attend(attention) -> attention`` (FreeNoise's windows: every temporal transformer), and
    ``frames_on_mesh(layout, batch, frames) -> bool``: on a mesh, keep the temporal transformers' frames
    split as the spatial rows are (no switch to the pixels split), the hook's ``attend(attention, layout)``
    computing its attention there (FreeNoise's halo exchange);
    ``step_index``: the DDIM loop index they read; ``capture``: sow the temporal attention maps
    (``intermediates``); ``layout``: where the activations lie on a device mesh
    (``vstar_jax.parallel.sharding.ActivationLayout``): spatial layers with the (batch x frame) rows
    split, temporal layers with all frames local and the pixels split; None leaves every layout to XLA
    (one device)."""

    hooks: tuple = ()
    step_index: Any = None
    capture: bool = False
    layout: Any = None

    @classmethod
    def of(cls, tar=None, hooks=(), step_index=None, capture=False, layout=None) -> "UNetExtras":
        """The public call's keywords: ``tar`` (``vstar_jax.tar_vsp.tar.TARConfig``) is one more hook, first."""
        return cls(((tar,) if tar is not None else ()) + tuple(hooks or ()), step_index, bool(capture), layout)

    def on_mesh(self):
        """The context a call runs in: on a mesh, attention knows how its rows are split
        (:func:`~vstar_jax.models.attention.rows_on_mesh`: the TPU Pallas kernel runs per device)."""
        lay = self.layout
        if lay is None:
            return contextlib.nullcontext()
        return rows_on_mesh(lay.mesh, logical_to_spec(("rows",), lay.rules, lay.mesh)[0])

    def rows(self, v: jax.Array) -> jax.Array:
        """``v`` (rows, ..., channels) laid out as the spatial layers take it (as it is off a mesh)."""
        if self.layout is None:
            return v
        return self.layout.constrain(v, ("rows",) + (None,) * (v.ndim - 2) + ("channels",))

    def switch(self, v: jax.Array, to_pixels: bool) -> jax.Array:
        """(b, f, 1, pixels, c) between the spatial rows' layout and the temporal layers' (pixels split)."""
        return v if self.layout is None else self.layout.switch(v, to_pixels)


@dataclasses.dataclass(frozen=True)
class UNetCall:
    """What every part of one UNet call reads (made by :class:`UNetEmbedding`)."""

    batch: int
    frames: int
    timesteps: jax.Array  # (b,), or (b*f,) one per frame, frame-major like the activations
    per_frame: bool
    text: jax.Array  # (b*f, L, C): the text context, one row per (batch, frame)
    emb: jax.Array  # (b*f, E): what the ResBlocks add (timestep, fps, demo options)
    extras: UNetExtras
    context: Optional[jax.Array] = None  # the spatial cross-attention context; None: ``text``
    context_mix: Optional[Callable] = None  # SpatialTransformer.context_mix (StreamingT2V APM)

    @property
    def cross_context(self) -> jax.Array:
        return self.text if self.context is None else self.context

    def replace(self, **changes) -> "UNetCall":
        return dataclasses.replace(self, **changes)


def _temporal(cfg: UNetConfig, call: UNetCall, h, heads: int, head_dim: int, level: int, name: str,
              regularize: bool = True):
    """A temporal transformer on (b*f, h, w, c) rows, built in the calling part's scope. ``regularize``:
    whether the hooks' logit transforms apply (not on ``init_attn``)."""
    ex = call.extras
    transform = _logit_transform(ex.hooks, level, ex.step_index) if regularize else None
    # (b, f, 1, h*w, c): a free view in which every frame is local and the pixels split (the layout switch
    # from the spatial rows is one all-to-all each way on a mesh), or, when a hook computes its attention
    # where the frames lie (FreeNoise's halos), the rows' frame split kept
    keep = ex.layout is not None and any(getattr(hk, "frames_on_mesh", lambda *_: False)(ex.layout, call.batch,
                                                                                          call.frames)
                                         for hk in ex.hooks)
    y = h.reshape(call.batch, call.frames, 1, -1, h.shape[-1])
    y = ex.layout.constrain(y, ("batch", "frames", None, None, "channels")) if keep else ex.switch(y, True)
    out = _blocks(cfg.remat)[2](heads, head_dim, cfg.transformer_depth, cfg.compute_dtype, cfg.weight_dtype,
                                cfg.attention_backend, cfg.transformer_norm_groups, cfg.relative_position,
                                chunked=ex.layout is None, name=name)(y, transform, ex.capture,
                                                                      _attend(ex.hooks, ex.layout if keep else None))
    return ex.rows((out if keep else ex.switch(out, False)).reshape(h.shape))


def _spatial(cfg: UNetConfig, call: UNetCall, h, level: int, name: str):
    """The spatial transformer (self + cross attention) and, when on, the temporal one of ``level``."""
    heads, head_dim = cfg.level_heads[level]
    h = _blocks(cfg.remat)[1](heads, head_dim, cfg.transformer_depth, cfg.compute_dtype, cfg.weight_dtype,
                              cfg.attention_backend, cfg.transformer_norm_groups, chunked=call.extras.layout is None,
                              context_mix=call.context_mix, name=f"{name}_spatial")(h, call.cross_context)
    if cfg.temporal_attention:
        h = _temporal(cfg, call, h, heads, head_dim, level, f"{name}_temporal")
    return h


def _res(cfg: UNetConfig, call: UNetCall, h, out_ch: int, name: str):
    return _blocks(cfg.remat)[0](out_ch, call.frames, cfg.temporal_conv, cfg.norm_groups, cfg.compute_dtype,
                                 cfg.weight_dtype, name=name)(h, call.emb)


def _res_attn(cfg: UNetConfig, call: UNetCall, h, out_ch: int, level: int, has_attn: bool, name: str):
    """One down / up step: a ResBlock, then (``has_attn``) the level's transformers."""
    h = call.extras.rows(_res(cfg, call, h, out_ch, f"{name}_res"))
    return _spatial(cfg, call, h, level, name) if has_attn else h


# ---------------------------------------------------------------- the parts
class UNetEmbedding(nn.Module):
    """Checks the inputs and embeds what the ResBlocks add: the timestep (``time_embed_1/2``),
    VideoCrafter2's fps (``fps_embed_1/2``) and the demo-model options (vstar_jax.models.demo_options).
    Returns the :class:`UNetCall` the other parts read."""

    cfg: UNetConfig

    @nn.compact
    def __call__(self, x, timesteps, context, fps, extras: UNetExtras, frame_times=None) -> UNetCall:
        """``frame_times``: the demo options' clock values of this call's frames, (f,) or (b, f), in place of
        the call's own clock (:func:`~vstar_jax.models.demo_options.frame_embedding`); ignored by a UNet
        without those options."""
        c = self.cfg
        if x.ndim != 5 or x.shape[1] != c.in_channels:
            raise ValueError(f"UNet3D expects latents (b, {c.in_channels}, f, h, w), got {tuple(x.shape)}")
        b, f = x.shape[0], x.shape[2]
        timesteps = jnp.asarray(timesteps)
        per_frame = timesteps.ndim == 2
        if per_frame:  # one timestep per frame: (b, f) -> (b*f,), frame-major like the activations
            if timesteps.shape != (b, f):
                raise ValueError(f"per-frame timesteps must be ({b}, {f}), got {tuple(timesteps.shape)}")
            timesteps = timesteps.reshape(-1)
        else:
            timesteps = jnp.broadcast_to(timesteps.reshape(-1), (b,))
        ctx = extras.rows(_frame_context(context, b, f, c.context_dim))
        mc, pdtype = c.base_channels, c.weight_dtype
        dense = lambda name: nn.Dense(mc * 4, dtype=jnp.float32, param_dtype=pdtype, name=name)  # noqa: E731
        emb = dense("time_embed_2")(nn.silu(dense("time_embed_1")(timestep_embedding(timesteps, mc))))
        if c.fps_cond:
            fps_arr = jnp.broadcast_to(jnp.asarray(28 if fps is None else fps).reshape(-1), (b,))
            femb = dense("fps_embed_2")(nn.silu(dense("fps_embed_1")(timestep_embedding(fps_arr, mc))))
            emb = emb + (jnp.repeat(femb, f, axis=0) if per_frame else femb)
        if not per_frame:
            emb = jnp.repeat(emb, f, axis=0)  # (b*f, E), frame-major within each batch row
        if c.frame_position:
            emb = emb + frame_position_term(b, f, mc, pdtype, c.frame_clock, c.trained_frames, frame_times)
        if c.text_frame_cond:
            emb = emb + TextFrameEmbed(mc, pdtype, c.frame_clock, c.trained_frames, name="text_frame_embed")(
                ctx, b, f, frame_times)
        return UNetCall(b, f, timesteps, per_frame, ctx, extras.rows(emb.astype(c.compute_dtype)), extras)


class UNetEncoder(nn.Module):
    """lvdm's input blocks: ``conv_in``, ``init_attn`` (temporal attention over the input features) and
    the down levels (``down_{level}_{i}`` ResBlocks with their transformers, ``downsample_{level}``).
    Returns (h, skips): every feature the decoder concatenates back, in order."""

    cfg: UNetConfig

    @nn.compact
    def __call__(self, call: UNetCall, x, cond_features=None):
        """``cond_features``: StreamingT2V's CAM control branch adds its encoded frames after init_attn."""
        c = self.cfg
        b, _, f, hgt, wid = x.shape
        h = call.extras.rows(x.transpose(0, 2, 3, 4, 1).reshape(b * f, hgt, wid, -1).astype(c.compute_dtype))
        h = nn.Conv(c.base_channels, (3, 3), padding=1, dtype=c.compute_dtype, param_dtype=c.weight_dtype,
                    name="conv_in")(h)
        if c.init_attn:
            h = _temporal(c, call, h, c.init_attn_heads, c.init_attn_width, 0, "init_attn", regularize=False)
        if cond_features is not None:
            h = h + cond_features.reshape(h.shape).astype(h.dtype)
        skips = [h]
        down, _ = c.level_attention
        top = c.num_levels - 1
        for level, w in enumerate(c.widths):
            for i in range(c.num_res_blocks):
                h = _res_attn(c, call, h, w, level, down[level], f"down_{level}_{i}")
                skips.append(h)
            if level != top:
                ph, pw = c.downsample_padding
                h = nn.Conv(w, (3, 3), strides=(2, 2), padding=((ph, ph), (pw, pw)), dtype=c.compute_dtype,
                            param_dtype=c.weight_dtype, name=f"downsample_{level}")(h)
                skips.append(h)
        return h, skips


class UNetMid(nn.Module):
    """The middle block: ``mid_res_0``, ``mid_spatial`` (+ ``mid_temporal``), ``mid_res_1``."""

    cfg: UNetConfig

    @nn.compact
    def __call__(self, call: UNetCall, h):
        c = self.cfg
        ch = c.widths[-1]
        h = _res(c, call, h, ch, "mid_res_0")
        h = _spatial(c, call, h, c.num_levels - 1, "mid")
        return _res(c, call, h, ch, "mid_res_1")


class UNetDecoder(nn.Module):
    """lvdm's output blocks and out: the up levels (``up_{level}_{i}`` on the features concatenated with
    the skips, ``upsample_{level}``), ``norm_out``, ``conv_out``. Returns (b, out_channels, f, h, w)."""

    cfg: UNetConfig

    @nn.compact
    def __call__(self, call: UNetCall, h, skips):
        c = self.cfg
        skips = list(skips)
        hgt, wid = skips[0].shape[1:3]
        _, up = c.level_attention
        for level in reversed(range(c.num_levels)):
            out_ch = c.widths[level]
            for i in range(c.num_res_blocks + 1):
                h = call.extras.rows(jnp.concatenate([h, skips.pop()], axis=-1))
                h = _res_attn(c, call, h, out_ch, level, up[level], f"up_{level}_{i}")
            if level != 0:
                th, tw = skips[-1].shape[1:3]
                if c.upsample_crop:  # MS-Vid2Vid-XL: 2x nearest, then rows cropped top and bottom
                    h = _upsample_cropped(h, c.upsample_crop, (th, tw))
                else:
                    h = jax.image.resize(h, (h.shape[0], th, tw, h.shape[-1]), method="nearest")
                h = nn.Conv(out_ch, (3, 3), padding=1, dtype=c.compute_dtype, param_dtype=c.weight_dtype,
                            name=f"upsample_{level}")(h)
        h = nn.silu(GroupNorm32(c.norm_groups, 1e-5, name="norm_out")(h))
        h = nn.Conv(c.out_channels, (3, 3), padding=1, dtype=c.compute_dtype, param_dtype=c.weight_dtype,
                    name="conv_out")(h)
        return h.astype(jnp.float32).reshape(call.batch, call.frames, hgt, wid, -1).transpose(0, 4, 1, 2, 3)


def _upsample_cropped(h, crop: int, target: tuple):
    """(n, h, w, c) repeated 2x in rows and columns (nearest), ``crop`` rows dropped top and bottom
    (StreamingT2V ``.../video_to_video/modules/unet_v2v.py``, ``Upsample.forward``: ``x[..., 1:-1, :]``);
    refused when that does not meet the skip's (rows, columns) ``target``."""
    h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)[:, crop:h.shape[1] * 2 - crop]
    if tuple(h.shape[1:3]) != tuple(target):
        raise ValueError(f"upsampling with a {crop}-row crop gives {tuple(h.shape[1:3])}, but the skip is "
                         f"{tuple(target)}: the latent size does not fit this UNet's down / up geometry")
    return h


def share_parts(module: nn.Module, *parts: nn.Module) -> None:
    """Give ``parts`` (submodules ``module`` made in its setup) ``module``'s own scope: their parameters
    sit directly in it, under the names the converters write, as if ``module`` had made their layers."""
    for part in parts:
        nn.share_scope(module, part)


class UNet3D(nn.Module):
    """The 3D UNet of ``config`` (a ConfigDict, a plain dict or a :class:`UNetConfig`; see configs/unet_*.py).
    A config with StreamingT2V's CAM / APM is :class:`vstar_jax.models.streaming.StreamingUNet`'s."""

    config: Any

    def setup(self):
        cfg = UNetConfig.from_config(self.config)
        if cfg.streaming:
            raise VstarError("this UNet config has StreamingT2V's CAM / APM (unet.cam / unet.apm): build it with "
                             "vstar_jax.models.streaming.StreamingUNet (or build_unet)")
        self.embed, self.encoder, self.mid, self.decoder = (UNetEmbedding(cfg), UNetEncoder(cfg), UNetMid(cfg),
                                                            UNetDecoder(cfg))
        share_parts(self, self.embed, self.encoder, self.mid, self.decoder)

    def __call__(self, x: jax.Array, timesteps: jax.Array, context: jax.Array, fps: Optional[Any] = None,
                 step_index: Optional[Any] = None, *, tar: Optional[Any] = None, hooks: tuple = (),
                 capture_attention: bool = False, layout: Optional[Any] = None,
                 frame_times: Optional[jax.Array] = None) -> jax.Array:
        """``x`` (b, c, f, h, w) latents; ``timesteps`` (b,) or one per frame (b, f) (FIFO-Diffusion; the
        embedding is then per frame); ``context`` (b, L, C), per frame (b, f, L, C), or (f, L, C) with
        b == 1 (VSP); ``fps`` (VideoCrafter2's fps conditioning, default 28); ``frame_times`` (f,) or (b, f):
        the demo options' frame clock of these frames (a chunk's places in a longer video; None: the
        call's own, :func:`~vstar_jax.models.demo_options.frame_clock`; ignored without those options).
        The rest are :class:`UNetExtras` (``tar`` is one more hook, ``vstar_jax.tar_vsp.tar.TARConfig``)."""
        extras = UNetExtras.of(tar, hooks, step_index, capture_attention, layout)
        with extras.on_mesh():
            call = self.embed(x, timesteps, context, fps, extras, frame_times)
            h, skips = self.encoder(call, x)
            return self.decoder(call, self.mid(call, h), skips)


def _logit_transform(hooks: tuple, level: int, step_index):
    """The hooks' logit transforms for one temporal attention at ``level``, chained (or None)."""
    fns = [fn for fn in (getattr(h, "logit_transform", lambda *_: None)(level, step_index) for h in hooks)
           if fn is not None]
    if not fns:
        return None
    if len(fns) == 1:
        return fns[0]

    def chained(logits):
        for fn in fns:
            logits = fn(logits)
        return logits

    return chained


def _attend(hooks: tuple, layout=None):
    """The attention function wrapped by the hooks that replace how self-attention is computed; ``layout``:
    the frames stay split on it, and the hooks that asked for that (``frames_on_mesh``) are given it."""
    fn = None
    for h in hooks:
        wrap = getattr(h, "attend", None)
        if wrap is not None:
            on_mesh = layout is not None and hasattr(h, "frames_on_mesh")
            fn = wrap(fn or attention, layout) if on_mesh else wrap(fn or attention)
    return fn


def _frame_context(context: jax.Array, b: int, f: int, dim: int) -> jax.Array:
    """Text context as one row per (batch, frame): (b*f, L, C).

    Accepts (b, L, C) (repeated over frames), (b, f, L, C) (per frame), or, as the
    reference does, (f, L, C) with b == 1 (VSP per-frame embeddings).
    """
    if context.shape[-1] != dim:
        raise ValueError(f"context last dim must be {dim}, got shape {tuple(context.shape)}")
    if context.ndim == 4:
        if context.shape[:2] != (b, f):
            raise ValueError(f"per-frame context must be ({b}, {f}, L, {dim}), got {tuple(context.shape)}")
        return context.reshape(b * f, *context.shape[2:])
    if context.ndim != 3:
        raise ValueError(f"context must be (b, L, C), (b, f, L, C) or (f, L, C); got {tuple(context.shape)}")
    if context.shape[0] == b:
        return jnp.repeat(context, f, axis=0)
    if b == 1 and context.shape[0] == f:
        return context
    if context.shape[0] == b * f:
        return context
    raise ValueError(f"context batch {context.shape[0]} matches neither batch {b} nor {f} frames")


def init_shapes(model: nn.Module, frames: int = 2, height: int = 8, width: int = 8):
    """Parameter ShapeDtypeStructs without allocating anything (``jax.eval_shape``)."""
    cfg = UNetConfig.from_config(model.config, check=False)
    x = jax.ShapeDtypeStruct((1, cfg.in_channels, frames, height, width), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    ctx = jax.ShapeDtypeStruct((1, 77, cfg.context_dim), jnp.float32)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(x.shape), jnp.zeros(t.shape, jnp.int32),
                                             jnp.zeros(ctx.shape)))["params"]


def count_params(tree) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
