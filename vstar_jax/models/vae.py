"""LDM ``AutoencoderKL`` (VideoCrafter2's ``first_stage_model``; diffusers' ``AutoencoderKL``) in Flax.

NHWC inside, NCHW at the module boundary like the reference. Videos are (b, c, f, h, w) and
are coded frame by frame, in batches of frames (``lax.map`` over chunks), so memory is bounded
by the frame batch. GroupNorm runs in float32. The mid-block attention uses the project's
:func:`vstar_jax.models.attention.attention`.

Param tree: ``encoder`` / ``decoder`` with children ``conv_in``, ``down_{i}_block_{j}``,
``down_{i}_attn_{j}``, ``down_{i}_downsample``, ``mid_block_1``, ``mid_attn_1``, ``mid_block_2``,
``up_{i}_block_{j}``, ``up_{i}_attn_{j}``, ``up_{i}_upsample``, ``norm_out``, ``conv_out``; then
``quant_conv`` and ``post_quant_conv``. Level ``i`` counts from the highest resolution, as in LDM.

With the config's optional ``temporal`` entry the decoder also has VidRD's temporal layers
(``mid_temporal_{1,2}``, ``up_{i}_temporal_{j}`` after each ResNet block; zero-initialised, see
:mod:`vstar_jax.models.temporal_decoder`), and ``decode`` takes ``num_frames``: its batch is then
(videos x frames), decoded together. Without the entry nothing changes.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vstar_jax.models.attention import attention
from vstar_jax.models.layers import GroupNorm32
from vstar_jax.models.temporal_decoder import TemporalLayer, decode_video_windowed, temporal_settings

SCALE_FACTOR = 0.18215


def _conv(features: int, kernel: int, name: str, dtype, stride: int = 1, padding: Any = "SAME"):
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding, dtype=dtype, name=name)


class ResnetBlock(nn.Module):
    out_channels: int
    num_groups: int = 32
    eps: float = 1e-6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = GroupNorm32(self.num_groups, self.eps, name="norm1")(x)
        h = _conv(self.out_channels, 3, "conv1", self.dtype, padding=((1, 1), (1, 1)))(nn.swish(h))
        h = GroupNorm32(self.num_groups, self.eps, name="norm2")(h)
        h = _conv(self.out_channels, 3, "conv2", self.dtype, padding=((1, 1), (1, 1)))(nn.swish(h))
        if x.shape[-1] != self.out_channels:
            x = _conv(self.out_channels, 1, "nin_shortcut", self.dtype, padding="VALID")(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with a residual (q/k/v/proj_out are 1x1 convs = dense)."""

    num_groups: int = 32
    eps: float = 1e-6
    dtype: Any = jnp.float32
    backend: str = "xla"

    @nn.compact
    def __call__(self, x):
        b, hh, ww, c = x.shape
        h = GroupNorm32(self.num_groups, self.eps, name="norm")(x)
        dense = lambda name: nn.Dense(c, dtype=self.dtype, name=name)  # noqa: E731
        q, k, v = (dense(n)(h).reshape(b, hh * ww, 1, c) for n in ("q", "k", "v"))
        out = attention(q, k, v, backend=self.backend).reshape(b, hh, ww, c)
        return x + dense("proj_out")(out)


class Downsample(nn.Module):
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))  # asymmetric, as the reference
        return _conv(x.shape[-1], 3, "conv", self.dtype, stride=2, padding="VALID")(x)


class Upsample(nn.Module):
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # nearest x2
        return _conv(x.shape[-1], 3, "conv", self.dtype, padding=((1, 1), (1, 1)))(x)


def _mid(x, ch, cfg, dtype, backend, temporal=None):
    """The mid blocks; ``temporal``: a function (x, name) -> x run after each ResNet block (decoder)."""
    kw = dict(num_groups=cfg.norm_num_groups, eps=cfg.norm_eps, dtype=dtype)
    after = temporal or (lambda h, name: h)
    x = after(ResnetBlock(ch, name="mid_block_1", **kw)(x), "mid_temporal_1")
    if cfg.mid_attention:
        x = AttnBlock(backend=backend, name="mid_attn_1", **kw)(x)
    return after(ResnetBlock(ch, name="mid_block_2", **kw)(x), "mid_temporal_2")


class Encoder(nn.Module):
    config: Any
    dtype: Any = jnp.float32
    backend: str = "xla"

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        kw = dict(num_groups=cfg.norm_num_groups, eps=cfg.norm_eps, dtype=self.dtype)
        h = _conv(cfg.ch, 3, "conv_in", self.dtype, padding=((1, 1), (1, 1)))(x)
        res = cfg.resolution
        levels = len(cfg.ch_mult)
        for i, mult in enumerate(cfg.ch_mult):
            for j in range(cfg.num_res_blocks):
                h = ResnetBlock(cfg.ch * mult, name=f"down_{i}_block_{j}", **kw)(h)
                if res in cfg.attn_resolutions:
                    h = AttnBlock(backend=self.backend, name=f"down_{i}_attn_{j}", **kw)(h)
            if i != levels - 1:
                h = Downsample(self.dtype, name=f"down_{i}_downsample")(h)
                res //= 2
        h = _mid(h, h.shape[-1], cfg, self.dtype, self.backend)
        h = nn.swish(GroupNorm32(cfg.norm_num_groups, cfg.norm_eps, name="norm_out")(h))
        out = 2 * cfg.z_channels if cfg.double_z else cfg.z_channels
        return _conv(out, 3, "conv_out", self.dtype, padding=((1, 1), (1, 1)))(h)


class Decoder(nn.Module):
    config: Any
    dtype: Any = jnp.float32
    backend: str = "xla"

    @nn.compact
    def __call__(self, z, num_frames: int = 1):
        cfg = self.config
        kw = dict(num_groups=cfg.norm_num_groups, eps=cfg.norm_eps, dtype=self.dtype)
        settings = temporal_settings(cfg)

        def temporal(h, name):  # VidRD's temporal layer after a ResNet block (none for the image decoder)
            if settings is None:
                return h
            return TemporalLayer(settings, backend=self.backend, name=name, **kw)(h, num_frames)

        levels = len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // 2 ** (levels - 1)
        h = _conv(block_in, 3, "conv_in", self.dtype, padding=((1, 1), (1, 1)))(z)
        h = _mid(h, block_in, cfg, self.dtype, self.backend, temporal)
        for i in reversed(range(levels)):
            for j in range(cfg.num_res_blocks + 1):
                h = ResnetBlock(cfg.ch * cfg.ch_mult[i], name=f"up_{i}_block_{j}", **kw)(h)
                h = temporal(h, f"up_{i}_temporal_{j}")
                if res in cfg.attn_resolutions:
                    h = AttnBlock(backend=self.backend, name=f"up_{i}_attn_{j}", **kw)(h)
            if i != 0:
                h = Upsample(self.dtype, name=f"up_{i}_upsample")(h)
                res *= 2
        h = nn.swish(GroupNorm32(cfg.norm_num_groups, cfg.norm_eps, name="norm_out")(h))
        return _conv(cfg.out_ch, 3, "conv_out", self.dtype, padding=((1, 1), (1, 1)))(h)


def _nchw_to_nhwc(x):
    return jnp.transpose(x, (0, 2, 3, 1))


def _nhwc_to_nchw(x):
    return jnp.transpose(x, (0, 3, 1, 2))


class AutoencoderKL(nn.Module):
    """KL autoencoder. ``encode``: image (n, 3, H, W) -> moments (n, 2*embed_dim, h, w);
    ``decode``: z (n, embed_dim, h, w) -> image (n, out_ch, H, W). ``__call__`` = decode(mean(encode))."""

    config: Any
    dtype: Any = jnp.float32
    backend: str = "xla"

    def setup(self):
        cfg = self.config
        if not cfg.double_z:
            raise ValueError("AutoencoderKL needs double_z=True (mean and logvar)")
        self.encoder = Encoder(cfg, self.dtype, self.backend)
        self.decoder = Decoder(cfg, self.dtype, self.backend)
        self.quant_conv = nn.Conv(2 * cfg.embed_dim, (1, 1), dtype=self.dtype) if cfg.use_quant_conv else None
        self.post_quant_conv = (
            nn.Conv(cfg.z_channels, (1, 1), dtype=self.dtype) if cfg.use_post_quant_conv else None
        )

    def encode(self, x):
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"encode expects (n, {self.config.in_channels}, H, W), got {x.shape}")
        h = self.encoder(_nchw_to_nhwc(x).astype(self.dtype))
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        return _nhwc_to_nchw(h)

    def decode(self, z, num_frames: Optional[int] = None):
        """``num_frames``: with temporal layers, z holds n / num_frames videos of num_frames frames each
        (video-major); None = one video of n frames. Ignored by the image decoder."""
        if z.ndim != 4 or z.shape[1] != self.config.embed_dim:
            raise ValueError(f"decode expects (n, {self.config.embed_dim}, h, w), got {z.shape}")
        h = _nchw_to_nhwc(z).astype(self.dtype)
        if self.post_quant_conv is not None:
            h = self.post_quant_conv(h)
        return _nhwc_to_nchw(self.decoder(h, z.shape[0] if num_frames is None else int(num_frames)))

    def __call__(self, x):
        mean, _ = split_moments(self.encode(x))
        return self.decode(mean)


# -- posterior helpers ---------------------------------------------------------------------------

def split_moments(moments):
    """(mean, logvar) of moments (n, 2c, ...) split on axis 1; logvar clipped to [-30, 20] (LDM)."""
    mean, logvar = jnp.split(moments, 2, axis=1)
    return mean, jnp.clip(logvar, -30.0, 20.0)


def sample_posterior(moments, rng: Optional[jax.Array] = None):
    """Sample the diagonal Gaussian posterior (its mean when ``rng`` is None)."""
    mean, logvar = split_moments(moments)
    if rng is None:
        return mean
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)


# -- videos in frame batches ---------------------------------------------------------------------

def _map_frames(fn, video, frame_batch: int):
    """Apply ``fn`` ((n, c, h, w) -> (n, c', h', w')) to every frame of (b, c, f, h, w) video,
    ``frame_batch`` frames at a time under ``lax.map``; returns (b, c', f, h', w')."""
    if video.ndim != 5:
        raise ValueError(f"expected a video (b, c, f, h, w), got shape {video.shape}")
    if frame_batch < 1:
        raise ValueError(f"frame_batch must be >= 1, got {frame_batch}")
    b, c, f, h, w = video.shape
    frames = jnp.transpose(video, (0, 2, 1, 3, 4)).reshape(b * f, c, h, w)  # (b t) c h w
    n = b * f
    batch = min(frame_batch, n)
    chunks = math.ceil(n / batch)
    pad = chunks * batch - n
    if pad:
        frames = jnp.concatenate([frames, jnp.zeros((pad, c, h, w), frames.dtype)], axis=0)
    out = jax.lax.map(fn, frames.reshape(chunks, batch, c, h, w))
    out = out.reshape((chunks * batch,) + out.shape[2:])[:n]
    out = out.reshape((b, f) + out.shape[1:])
    return jnp.transpose(out, (0, 2, 1, 3, 4))


def encode_video(vae: AutoencoderKL, params, video, frame_batch: int = 16):
    """Moments (b, 2*embed_dim, f, h, w) of a video (b, 3, f, H, W) in [-1, 1]."""
    return _map_frames(lambda x: vae.apply({"params": params}, x, method=AutoencoderKL.encode), video, frame_batch)


def decode_video(vae: AutoencoderKL, params, latents, frame_batch: int = 16):
    """Video (b, 3, f, H, W) of unscaled latents (b, embed_dim, f, h, w). With temporal layers, frame
    windows of ``frame_batch`` frames plus the receptive field either side (equal to one pass)."""
    if temporal_settings(vae.config) is not None:
        return decode_video_windowed(vae, params, latents, frame_batch)
    return _map_frames(lambda z: vae.apply({"params": params}, z, method=AutoencoderKL.decode), latents, frame_batch)


def encode_to_latents(vae, params, video, *, rng=None, frame_batch: int = 16, scale_factor: float = SCALE_FACTOR):
    """Diffusion latents scale_factor * z of a video; z is the posterior mean, or a sample with ``rng``."""
    z = sample_posterior(encode_video(vae, params, video, frame_batch), rng)
    return scale_factor * z


def decode_latents(vae, params, latents, *, frame_batch: int = 16, scale_factor: float = SCALE_FACTOR):
    """Video (b, 3, f, H, W) of diffusion latents: decode(latents / scale_factor)."""
    return decode_video(vae, params, latents / scale_factor, frame_batch)


def vae_param_shapes(config, dtype=jnp.float32):
    """ShapeDtypeStruct pytree of the VAE params (for converters; nothing is allocated)."""
    vae = AutoencoderKL(config, dtype=dtype)
    # The spatial size only needs to survive the downsampling; params do not depend on it.
    side = 2 ** (len(config.ch_mult) - 1) * 2
    x = jax.ShapeDtypeStruct((1, config.in_channels, side, side), jnp.float32)
    return jax.eval_shape(lambda x: vae.init(jax.random.PRNGKey(0), x), x)["params"]


def init_temporal_params(config, seed: int = 0) -> dict:
    """Fresh temporal-layer params of a VAE config with ``temporal``, flat {'decoder/<layer>/...': array}:
    norms at identity, q/k/v kernels normal with variance 1 / fan_in (LeCun, as Flax's Dense default but
    not truncated), biases and the output projections (the conv, ``proj_out``) zero -- so the decoder
    is the image decoder exactly. Written in numpy (a layer's params depend only on its channel count):
    nothing is compiled, which matters for a converter adding layers to a 1 GB VAE."""
    settings = temporal_settings(config)
    if settings is None:
        return {}
    ch, mult = int(config.ch), tuple(config.ch_mult)
    layers = [("mid_temporal_1", ch * mult[-1]), ("mid_temporal_2", ch * mult[-1])]
    layers += [(f"up_{i}_temporal_{j}", ch * mult[i]) for i in range(len(mult)) for j in range(int(config.num_res_blocks) + 1)]
    rng = np.random.default_rng(seed)
    out = {}
    for name, c in layers:
        pre = f"decoder/{name}/"
        if settings.conv:
            out.update({pre + "conv_norm/scale": np.ones(c, np.float32), pre + "conv_norm/bias": np.zeros(c, np.float32),
                        pre + "conv/kernel": np.zeros((3, 1, 1, c, c), np.float32), pre + "conv/bias": np.zeros(c, np.float32)})
        if settings.attention:
            out.update({pre + "attn_norm/scale": np.ones(c, np.float32), pre + "attn_norm/bias": np.zeros(c, np.float32),
                        pre + "proj_out/kernel": np.zeros((c, c), np.float32), pre + "proj_out/bias": np.zeros(c, np.float32)})
            for m in ("q", "k", "v"):
                out[pre + f"{m}/kernel"] = (rng.standard_normal((c, c)) / np.sqrt(c)).astype(np.float32)
                out[pre + f"{m}/bias"] = np.zeros(c, np.float32)
    return out
