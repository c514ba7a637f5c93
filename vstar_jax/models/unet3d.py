"""The text-to-video 3D UNet (VideoCrafter2 ``lvdm`` UNetModel and diffusers
``UNet3DConditionModel`` / ModelScope) as one Flax module.

The two checkpoints share one architecture (SPEC sections 1-2); a config
switches what differs: fps conditioning (VideoCrafter2), the projection type of
``init_attn`` / ``transformer_in`` (Conv1d k=1 vs Linear: the same map) and of
the spatial transformers (``use_linear``).

Layout: the public call takes latents as the reference does, (b, c, f, h, w);
inside, spatial layers see (b*f, h, w, c) and temporal layers (b, f, h, w, c).
GroupNorms always run in float32 (the reference's ResBlock norms do; running the
others in float32 too only removes bf16 error). Matmul/conv dtype and parameter
dtype come from the config.
"""
from __future__ import annotations

import math
import operator
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vstar_jax.models.attention import attention, rows_on_mesh
from vstar_jax.models.layers import Attention, GroupNorm32
from vstar_jax.models.layers import RelativePosition, relative_positions  # noqa: F401  (moved there; re-exported)
from vstar_jax.models.layers import cfg_get as _cfg_get

Dtype = Any


def timestep_embedding(timesteps: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding, [cos, sin] halves (lvdm / diffusers flip_sin_to_cos=True)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(timesteps, jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
    return emb


def frame_position_embedding(frames: int, dim: int) -> jax.Array:
    """(frames, dim): each frame's place in the clip, t = i / (frames - 1) in [0, 1], embedded like a
    timestep (x 1000). Normalised, so a longer video maps onto the trained range (demo-model options)."""
    pos = jnp.linspace(0.0, 1.0, frames) if frames > 1 else jnp.zeros((1,))
    return timestep_embedding(pos * 1000.0, dim)


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
    apm_text_len: int = 0  # StreamingT2V APM: >0 = context carries image tokens after this many text tokens

    @nn.compact
    def __call__(self, x, context=None, logit_transform=None, capture: bool = False, attend=None):
        if self.apm_text_len and context is not None:  # APM: text + silu(alpha) * mixed (models/streaming.py)
            from vstar_jax.models.streaming import APMContextMix  # noqa: PLC0415

            context = APMContextMix(self.apm_text_len, self.param_dtype, name="attn2_mix")(context)
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
    apm_text_len: int = 0  # StreamingT2V APM (TransformerBlock); 0 = off

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
                       self.apm_text_len, name=f"block_{i}")(y, ctx)
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


class TextFrameEmbed(nn.Module):
    """Demo-model option ``text_frame_cond`` (not in VideoCrafter2 or ModelScope): an MLP of the frame's
    mean text feature and its place in the clip (t = i / (f - 1), embedded like a timestep), added to the
    ResBlocks' embedding. A motion caption asks for (direction x time x place) at once: through
    cross-attention alone no lower-order part of that product lowers the loss (averaged over frames or
    over directions the object sits in the middle), and the tiny demo model never learned it; this MLP
    gives it a per-frame displacement code directly. Zero-initialised output: starts as the plain UNet.
    ``ctx`` is per frame, (b*f, L, C), so VSP's per-frame prompts reach it too."""

    channels: int
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, ctx: jax.Array, b: int, f: int) -> jax.Array:
        pe = jnp.tile(frame_position_embedding(f, self.channels), (b, 1))  # (b*f, mc)
        h = jnp.concatenate([ctx.astype(jnp.float32).mean(axis=1), pe], axis=-1)
        h = nn.silu(nn.Dense(4 * self.channels, param_dtype=self.param_dtype, name="fc_1")(h))
        return nn.Dense(4 * self.channels, param_dtype=self.param_dtype, kernel_init=nn.initializers.zeros,
                        name="fc_2")(h)


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


# ---------------------------------------------------------------- per-level layout from a config
# One place derives the per-level widths, head layout and attention flags from either config form, so
# the model, the converters' key plans and the pipeline agree: ``block_channels`` (per-level widths as a
# diffusers ``block_out_channels`` states them) or lvdm's ``model_channels`` x ``channel_mult``.


def _int_list(value, field: str) -> tuple:
    vals = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    try:
        ints = tuple(operator.index(v) for v in vals)
    except TypeError:
        ints = ()
    if not ints or any(isinstance(v, bool) for v in vals):
        raise ValueError(f"unet.{field} must be integers, got {value!r}")
    return ints


def unet_level_widths(cfg) -> tuple:
    """Per-level channel widths: ``block_channels`` when given, else ``model_channels`` x ``channel_mult``."""
    bc, mult = _cfg_get(cfg, "block_channels"), _cfg_get(cfg, "channel_mult")
    if bc is not None:
        widths = _int_list(bc, "block_channels")
        mc = _cfg_get(cfg, "model_channels")
        if mult is not None and mc is not None and tuple(int(m) * int(mc) for m in mult) != widths:
            raise ValueError(f"unet.block_channels {list(widths)} disagrees with model_channels x channel_mult "
                             f"({mc} x {list(mult)}); give one form")
    elif mult is not None:
        widths = tuple(m * int(_cfg_get(cfg, "model_channels")) for m in _int_list(mult, "channel_mult"))
    else:
        raise ValueError("unet config needs block_channels (per-level widths) or model_channels + channel_mult")
    if any(w < 1 for w in widths):
        raise ValueError(f"unet.block_channels / channel_mult: widths must be positive, got {list(widths)}")
    return widths


def unet_num_levels(cfg) -> int:
    """Number of UNet levels (resolutions): the latent must divide by 2 ** (levels - 1)."""
    return len(unet_level_widths(cfg))


def unet_base_channels(cfg) -> int:
    """Width of conv_in / init_attn and of the timestep sinusoid: model_channels (default: level 0's width)."""
    mc = _cfg_get(cfg, "model_channels")
    return int(mc) if mc is not None else unet_level_widths(cfg)[0]


def unet_level_attention(cfg) -> tuple:
    """(down, up): per-level flags, whether that level's down / up ResBlocks carry spatial+temporal
    transformers. Down from ``attention_resolutions`` (downsampling factors 2 ** level); up the same
    unless ``up_attention`` (one flag per level, level 0 first) says otherwise (diffusers up_block_types)."""
    n = unet_num_levels(cfg)
    res = tuple(_cfg_get(cfg, "attention_resolutions", ()) or ())
    down = tuple(2 ** level in res for level in range(n))
    up = _cfg_get(cfg, "up_attention")
    if up is None:
        return down, down
    up = tuple(bool(u) for u in up)
    if len(up) != n:
        raise ValueError(f"unet.up_attention has {len(up)} flags for {n} levels")
    return down, up


def unet_level_heads(cfg) -> tuple:
    """(heads, head_dim) of each level's transformers. ``num_head_channels``: head width, one int or one
    per level (heads = width // head_dim, as lvdm and diffusers floor it); or, with num_head_channels
    -1/None, ``num_heads`` (one int or one per level; head_dim = width // heads, lvdm's num_heads form).
    Levels whose layout cannot work (0 heads or 0-wide heads) get None and are refused where used."""
    widths = unet_level_widths(cfg)
    n = len(widths)

    def per_level(value, field):
        vals = _int_list(value, field)
        if len(vals) == 1 and not isinstance(value, (list, tuple)):
            return vals * n
        if len(vals) != n:
            raise ValueError(f"unet.{field} has {len(vals)} entries for {n} levels")
        return vals

    nhc = _cfg_get(cfg, "num_head_channels", -1)
    out = []
    if nhc is not None and nhc != -1:
        for w, hd in zip(widths, per_level(nhc, "num_head_channels")):
            out.append((w // hd, hd) if hd > 0 and w // hd > 0 else None)
    else:
        nh = _cfg_get(cfg, "num_heads", -1)
        if nh is None or nh == -1:
            raise ValueError("unet config needs num_head_channels (head width) or num_heads")
        for w, h in zip(widths, per_level(nh, "num_heads")):
            out.append((h, w // h) if h > 0 and w // h > 0 else None)
    return tuple(out)


def check_unet_config(cfg) -> None:
    """Refuse, in one line naming the field, a config the UNet cannot build (GroupNorm groups that do not
    divide a width, empty heads at a level with attention, ...)."""
    widths = unet_level_widths(cfg)
    mc = unet_base_channels(cfg)
    down, up = unet_level_attention(cfg)
    heads = unet_level_heads(cfg)
    groups = int(_cfg_get(cfg, "norm_groups", 32) or 0)
    tgroups = int(_cfg_get(cfg, "transformer_norm_groups", 32) or 0)
    if groups < 1 or tgroups < 1:
        raise ValueError(f"unet.norm_groups / transformer_norm_groups must be >= 1, got {groups} / {tgroups}")
    for name, w in [("model_channels", mc)] + [(f"level {i} width", w) for i, w in enumerate(widths)]:
        if w % groups:
            raise ValueError(f"unet.norm_groups {groups} does not divide {name} {w}")
    top = len(widths) - 1
    for level, w in enumerate(widths):
        if down[level] or up[level] or level == top:
            if w % tgroups:
                raise ValueError(f"unet.transformer_norm_groups {tgroups} does not divide level {level} width {w}")
            if heads[level] is None:
                raise ValueError(f"unet head layout (num_head_channels / num_heads) gives no heads at level "
                                 f"{level} (width {w})")
    if _cfg_get(cfg, "init_attn", True):
        if mc % tgroups:
            raise ValueError(f"unet.transformer_norm_groups {tgroups} does not divide model_channels {mc}")
        _init_attn_head_dim(cfg)


def _init_attn_head_dim(cfg) -> int:
    hd = _cfg_get(cfg, "init_attn_head_dim") or _cfg_get(cfg, "num_head_channels", -1)
    if isinstance(hd, (list, tuple)) or hd is None or int(hd) < 1:
        raise ValueError("init_attn needs one head width: set unet.init_attn_head_dim (or an int num_head_channels)")
    return int(hd)


def _blocks(remat: bool):
    """(ResBlock, SpatialTransformer, TemporalTransformer), rematerialised when ``remat`` (config
    ``remat: bool``, default False): activations inside each block are recomputed in the backward
    pass instead of stored. ``nn.remat`` keeps the module names, so the parameter tree is unchanged.
    TemporalTransformer's logit_transform, capture and attend arguments are static (argnums count self), so
    the rematerialised one must be called with them given positionally, as UNet3D does."""
    if not remat:
        return ResBlock, SpatialTransformer, TemporalTransformer
    return _REMAT_BLOCKS


def _dtype(name: str):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]


class UNet3D(nn.Module):
    """The 3D UNet. ``config`` is a ConfigDict (see ``configs/unet_*.py``) or a plain dict."""

    config: Any

    def _cfg(self, key, default=None):
        cfg = self.config
        return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)

    def __call__(self, *args, layout: Optional[Any] = None, **kwargs) -> jax.Array:
        """See :meth:`_forward`. On a mesh (``layout``), attention knows how its rows are split
        (:func:`~vstar_jax.models.attention.rows_on_mesh`: the TPU Pallas kernel runs per device)."""
        if layout is None:
            return self._forward(*args, **kwargs)
        from vstar_jax.parallel.sharding import logical_to_spec  # noqa: PLC0415

        with rows_on_mesh(layout.mesh, logical_to_spec(("rows",), layout.rules, layout.mesh)[0]):
            return self._forward(*args, layout=layout, **kwargs)

    @nn.compact
    def _forward(
        self,
        x: jax.Array,
        timesteps: jax.Array,
        context: jax.Array,
        fps: Optional[Any] = None,
        step_index: Optional[Any] = None,
        tar: Optional[Any] = None,
        capture_attention: bool = False,
        hooks: tuple = (),
        cam_frames: Optional[jax.Array] = None,
        image_embed: Optional[jax.Array] = None,
        cond_features: Optional[jax.Array] = None,
        encoder_only: bool = False,
        layout: Optional[Any] = None,
    ) -> jax.Array:
        """``timesteps``: (b,) or one per frame (b, f) (FIFO-Diffusion; the embedding is then per
        frame). ``hooks``: temporal-attention hooks, each with optional methods
        ``logit_transform(level, step_index)`` (TAR: every temporal transformer but ``init_attn``)
        and ``attend(attention) -> attention`` (FreeNoise's windows: every temporal transformer);
        ``tar`` is one more such hook (``vstar_jax.tar_vsp.tar.TARConfig``). ``layout``: where the
        activations lie on a device mesh (``vstar_jax.parallel.sharding.ActivationLayout``): spatial
        layers with the (batch x frame) rows split, temporal layers with all frames local and the pixels
        split; None leaves every layout to XLA (one device).

        StreamingT2V (``vstar_jax.models.streaming``, only with ``unet.cam`` / ``unet.apm`` in the config):
        ``cam_frames`` (b, c_cond, C, H, W): the previous chunk's last C frames (CAM); ``image_embed``
        (b, D) or (b, n, D): the anchor frame's image embedding (APM). Without them (or without the
        config entries) the UNet is the plain UNet. ``cond_features`` / ``encoder_only`` serve the CAM
        control branch (a copy of this UNet's encoder: returns (skips, mid))."""
        c = self._cfg
        hooks = ((tar,) if tar is not None else ()) + tuple(hooks or ())
        ResBlock, SpatialTransformer, TemporalTransformer = _blocks(bool(c("remat", False)))  # noqa: N806
        dtype, pdtype = _dtype(c("dtype", "float32")), _dtype(c("param_dtype", "float32"))
        backend = c("attention_backend", "xla")
        check_unet_config(self.config)
        widths = unet_level_widths(self.config)
        mc = unet_base_channels(self.config)
        down_attn, up_attn = unet_level_attention(self.config)
        level_heads = unet_level_heads(self.config)
        nres = c("num_res_blocks")
        depth = c("transformer_depth", 1)
        groups = c("norm_groups", 32)
        use_tconv = c("temporal_conv", True)
        use_tattn = c("temporal_attention", True)
        # lvdm fixes the transformers' GroupNorm at 32 groups; diffusers uses norm_num_groups
        tgroups = c("transformer_norm_groups", 32)
        # lvdm use_relative_position (VideoCrafter1-style temporal attention; VideoCrafter2 and ModelScope: off)
        rel = int(c("temporal_length", 16)) if c("use_relative_position", False) else 0
        if c("use_relative_position", False) and rel < 1:
            raise ValueError(f"use_relative_position needs temporal_length >= 1, got {c('temporal_length')}")

        if x.ndim != 5 or x.shape[1] != c("in_channels"):
            raise ValueError(f"UNet3D expects latents (b, {c('in_channels')}, f, h, w), got {tuple(x.shape)}")
        b, _, f, hgt, wid = x.shape
        timesteps = jnp.asarray(timesteps)
        per_frame = timesteps.ndim == 2
        if per_frame:  # one timestep per frame: (b, f) -> (b*f,), frame-major like the activations
            if timesteps.shape != (b, f):
                raise ValueError(f"per-frame timesteps must be ({b}, {f}), got {tuple(timesteps.shape)}")
            timesteps = timesteps.reshape(-1)
        else:
            timesteps = jnp.broadcast_to(timesteps.reshape(-1), (b,))
        ctx = _frame_context(context, b, f, c("context_dim"))
        lay = layout.constrain if layout is not None else (lambda v, names: v)
        chunked = layout is None  # CPU chunking scans over the axes a mesh layout splits
        rows = lambda v: lay(v, ("rows",) + (None,) * (v.ndim - 2) + ("channels",))  # noqa: E731
        ctx = rows(ctx)
        sp_ctx, apm_len = ctx, 0  # spatial cross-attention context: + APM image tokens when given
        if image_embed is not None and c("apm", None):
            from vstar_jax.models.streaming import APMResampler, apm_settings  # noqa: PLC0415

            apm = apm_settings(self.config)
            tokens = APMResampler(int(apm["tokens"]), int(c("context_dim")), int(apm["hidden"]), pdtype,
                                  name="apm_resampler")(image_embed)
            sp_ctx = jnp.concatenate([ctx, jnp.repeat(tokens, f, axis=0).astype(ctx.dtype)], axis=1)
            apm_len = ctx.shape[1]

        emb = timestep_embedding(timesteps, mc)
        tdense = lambda n, name: nn.Dense(n, dtype=jnp.float32, param_dtype=pdtype, name=name)
        emb = tdense(mc * 4, "time_embed_2")(nn.silu(tdense(mc * 4, "time_embed_1")(emb)))
        if c("fps_cond", False):
            fps_arr = jnp.broadcast_to(jnp.asarray(28 if fps is None else fps).reshape(-1), (b,))
            femb = timestep_embedding(fps_arr, mc)
            femb = tdense(mc * 4, "fps_embed_2")(nn.silu(tdense(mc * 4, "fps_embed_1")(femb)))
            emb = emb + (jnp.repeat(femb, f, axis=0) if per_frame else femb)
        if not per_frame:
            emb = jnp.repeat(emb, f, axis=0)  # (b*f, E), frame-major within each batch row
        if c("frame_position", False):
            # Not in VideoCrafter2/ModelScope (demo model option): each frame's place in the clip,
            # t = i / (f - 1) in [0, 1], embedded like a timestep and added to the ResBlocks' embedding.
            # Normalised, so a longer video maps onto the same trained range. Zero-initialised output.
            pemb = nn.silu(tdense(mc * 4, "frame_embed_1")(frame_position_embedding(f, mc)))
            pemb = nn.Dense(mc * 4, dtype=jnp.float32, param_dtype=pdtype, kernel_init=nn.initializers.zeros,
                            name="frame_embed_2")(pemb)
            emb = emb + jnp.tile(pemb, (b, 1))
        if c("text_frame_cond", False):
            emb = emb + TextFrameEmbed(mc, pdtype, name="text_frame_embed")(ctx, b, f)
        emb = rows(emb.astype(dtype))

        def temporal(h, ch, heads, hd, level, name, regularize=True):
            transform = _logit_transform(hooks, level, step_index) if regularize else None
            # (b, f, 1, h*w, c): a free view in which every frame is local and the pixels split (the
            # layout switch from the spatial rows is one all-to-all each way on a mesh)
            switch = layout.switch if layout is not None else (lambda v, to_pixels: v)
            y = switch(h.reshape(b, f, 1, -1, h.shape[-1]), True)
            out = TemporalTransformer(heads, hd, depth, dtype, pdtype, backend, tgroups, rel, chunked=chunked,
                                      name=name)(
                y, transform, capture_attention, _attend(hooks))
            return rows(switch(out, False).reshape(h.shape))

        def res_attn(h, out_ch, level, has_attn, name):
            h = rows(ResBlock(out_ch, f, use_tconv, groups, dtype, pdtype, name=f"{name}_res")(h, emb))
            if has_attn:
                heads, head_ch = level_heads[level]
                h = SpatialTransformer(heads, head_ch, depth, dtype, pdtype, backend, tgroups, chunked=chunked,
                                       apm_text_len=apm_len, name=f"{name}_spatial")(h, sp_ctx)
                if use_tattn:
                    h = temporal(h, out_ch, heads, head_ch, level, f"{name}_temporal")
            return h

        h = rows(x.transpose(0, 2, 3, 4, 1).reshape(b * f, hgt, wid, -1).astype(dtype))
        h = nn.Conv(mc, (3, 3), padding=1, dtype=dtype, param_dtype=pdtype, name="conv_in")(h)
        if c("init_attn", True):
            h = temporal(h, mc, c("init_attn_heads", 8), _init_attn_head_dim(self.config), 0, "init_attn",
                         regularize=False)
        if cond_features is not None:  # CAM control branch: encoded frames added after init_attn
            h = h + cond_features.reshape(h.shape).astype(h.dtype)
        skips = [h]
        top = len(widths) - 1
        for level, w in enumerate(widths):
            for i in range(nres):
                h = res_attn(h, w, level, down_attn[level], f"down_{level}_{i}")
                skips.append(h)
            if level != top:
                h = nn.Conv(w, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), dtype=dtype,
                            param_dtype=pdtype, name=f"downsample_{level}")(h)
                skips.append(h)

        ch = widths[top]
        mid_heads, mid_hd = level_heads[top]
        h = ResBlock(ch, f, use_tconv, groups, dtype, pdtype, name="mid_res_0")(h, emb)
        h = SpatialTransformer(mid_heads, mid_hd, depth, dtype, pdtype, backend, tgroups, chunked=chunked,
                               apm_text_len=apm_len, name="mid_spatial")(h, sp_ctx)
        if use_tattn:
            h = temporal(h, ch, mid_heads, mid_hd, top, "mid_temporal")
        h = ResBlock(ch, f, use_tconv, groups, dtype, pdtype, name="mid_res_1")(h, emb)
        if encoder_only:
            return skips, h
        if cam_frames is not None and c("cam", None):
            skips, h = _cam_inject(self, x, timesteps.reshape(b, -1)[:, 0] if per_frame else timesteps, ctx, fps,
                                   cam_frames, skips, h, b, f)

        for level in reversed(range(len(widths))):
            out_ch = widths[level]
            for i in range(nres + 1):
                h = rows(jnp.concatenate([h, skips.pop()], axis=-1))
                h = res_attn(h, out_ch, level, up_attn[level], f"up_{level}_{i}")
            if level != 0:
                th, tw = skips[-1].shape[1:3]
                h = jax.image.resize(h, (h.shape[0], th, tw, h.shape[-1]), method="nearest")
                h = nn.Conv(out_ch, (3, 3), padding=1, dtype=dtype, param_dtype=pdtype, name=f"upsample_{level}")(h)

        h = nn.silu(GroupNorm32(groups, 1e-5, name="norm_out")(h))
        h = nn.Conv(c("out_channels"), (3, 3), padding=1, dtype=dtype, param_dtype=pdtype, name="conv_out")(h)
        return h.astype(jnp.float32).reshape(b, f, hgt, wid, -1).transpose(0, 4, 1, 2, 3)


def _cam_inject(self, x, timesteps, ctx, fps, cam_frames, skips, mid, b, f):
    """StreamingT2V CAM (models/streaming.py): run the control branch (a copy of this UNet's encoder on the
    first C noisy frames + the encoded conditioning frames) and merge its features into every skip
    connection and the mid-block output by zero-initialised attention over frames."""
    from vstar_jax.models.streaming import CAMMerger, CondFrameEncoder, cam_settings, control_config  # noqa: PLC0415

    cam = cam_settings(self.config)
    n_cond = int(cam["frames"])
    if cam_frames.ndim != 5 or cam_frames.shape[0] != b or cam_frames.shape[2] != n_cond:
        raise ValueError(f"cam_frames must be ({b}, c, {n_cond}, H, W), got {tuple(cam_frames.shape)}")
    if f < n_cond:
        raise ValueError(f"CAM needs at least {n_cond} frames per call, got {f}")
    pdtype = _dtype(self._cfg("param_dtype", "float32"))
    mc = unet_base_channels(self.config)
    frames = cam_frames.transpose(0, 2, 3, 4, 1).reshape((b * n_cond,) + cam_frames.shape[3:] + (cam_frames.shape[1],))
    feats = CondFrameEncoder(mc, tuple(cam["embed_channels"]), bool(cam["downsample"]), pdtype,
                             name="cam_cond_embedding")(frames.astype(jnp.float32))
    ctrl_ctx = ctx.reshape((b, f) + ctx.shape[1:])[:, :n_cond]
    ctrl_skips, ctrl_mid = UNet3D(control_config(self.config), name="cam_control")(
        x[:, :, :n_cond], timesteps, ctrl_ctx, fps, cond_features=feats, encoder_only=True)
    merge = lambda name: CAMMerger(int(cam["head_dim"]), int(cam["norm_groups"]), pdtype, name=name)
    as5 = lambda t, n: t.reshape((b, n) + t.shape[1:])
    new = [merge(f"cam_merge_{i}")(as5(s, f), as5(r, n_cond)).reshape(s.shape)
           for i, (s, r) in enumerate(zip(skips, ctrl_skips))]
    mid = merge("cam_merge_mid")(as5(mid, f), as5(ctrl_mid, n_cond)).reshape(mid.shape)
    return new, mid


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


def _attend(hooks: tuple):
    """The attention function wrapped by the hooks that replace how self-attention is computed."""
    fn = None
    for h in hooks:
        wrap = getattr(h, "attend", None)
        if wrap is not None:
            fn = wrap(fn or attention)
    return fn


_REMAT_BLOCKS = (nn.remat(ResBlock), nn.remat(SpatialTransformer), nn.remat(TemporalTransformer, static_argnums=(2, 3, 4)))


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


def init_shapes(model: UNet3D, frames: int = 2, height: int = 8, width: int = 8):
    """Parameter ShapeDtypeStructs without allocating anything (``jax.eval_shape``)."""
    cfg = model.config
    get = cfg.get if hasattr(cfg, "get") else (lambda k, d=None: getattr(cfg, k, d))
    x = jax.ShapeDtypeStruct((1, get("in_channels"), frames, height, width), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    ctx = jax.ShapeDtypeStruct((1, 77, get("context_dim")), jnp.float32)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(x.shape), jnp.zeros(t.shape, jnp.int32),
                                             jnp.zeros(ctx.shape)))["params"]


def count_params(tree) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
