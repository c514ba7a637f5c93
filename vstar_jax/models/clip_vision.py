"""CLIP vision tower (ViT) with its projection, in Flax (for the CLIP score).

Patch embedding (conv, no bias), a class token, learned positions, ``ln_pre``, pre-LN residual
blocks (the text tower's ``ResidualBlock`` without a mask), ``ln_post`` on the class token, and
``visual_projection`` (width, output_dim). Same computation as transformers'
``CLIPVisionModelWithProjection`` and OpenCLIP's ``VisionTransformer`` (class-token pooling).

Input: normalized pixels (n, H, W, 3) float, NHWC; ``preprocess`` makes them from uint8 frames.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vstar_jax.models.text import ResidualBlock

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def vision_config(*, image_size=224, patch_size=14, width=1280, layers=32, heads=16, mlp_dim=5120,
                  act="gelu", layer_norm_eps=1e-5, output_dim=1024) -> ml_collections.ConfigDict:
    """ConfigDict of a CLIP vision tower (defaults: OpenCLIP ViT-H-14)."""
    c = ml_collections.ConfigDict()
    c.image_size = int(image_size)
    c.patch_size = int(patch_size)
    c.width = int(width)
    c.layers = int(layers)
    c.heads = int(heads)
    c.mlp_dim = int(mlp_dim)
    c.act = act
    c.layer_norm_eps = float(layer_norm_eps)
    c.output_dim = int(output_dim)
    return c


class CLIPVisionTransformer(nn.Module):
    """``apply({"params": p}, pixels)`` -> image embeddings (n, output_dim), unnormalized."""

    config: Any
    dtype: Any = jnp.float32
    backend: str = "xla"

    @nn.compact
    def __call__(self, pixels):
        cfg = self.config
        want = (cfg.image_size, cfg.image_size, 3)
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != want:
            raise ValueError(f"pixels must be (n, {cfg.image_size}, {cfg.image_size}, 3), got {pixels.shape}")
        p = cfg.patch_size
        x = nn.Conv(cfg.width, (p, p), strides=(p, p), padding="VALID", use_bias=False,
                    dtype=self.dtype, name="patch_embedding")(pixels.astype(self.dtype))
        n = x.shape[0]
        x = x.reshape(n, -1, cfg.width)
        cls = self.param("class_embedding", nn.initializers.normal(cfg.width ** -0.5), (cfg.width,))
        pos = self.param("positional_embedding", nn.initializers.normal(0.01), (x.shape[1] + 1, cfg.width))
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (n, 1, cfg.width)), x], axis=1)
        x = x + pos.astype(x.dtype)
        ln = lambda name: nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=jnp.float32, name=name)  # noqa: E731
        x = ln("ln_pre")(x.astype(jnp.float32)).astype(self.dtype)
        for i in range(cfg.layers):
            x = ResidualBlock(cfg.heads, cfg.mlp_dim, cfg.act, cfg.layer_norm_eps, self.dtype, self.backend,
                              name=f"resblocks_{i}")(x, None)
        pooled = ln("ln_post")(x[:, 0].astype(jnp.float32))
        proj = self.param("visual_projection", nn.initializers.normal(cfg.width ** -0.5), (cfg.width, cfg.output_dim))
        return pooled @ proj


def vision_param_shapes(config, dtype=jnp.float32):
    """ShapeDtypeStruct pytree of the vision params (for converters; nothing is allocated)."""
    model = CLIPVisionTransformer(config, dtype=dtype)
    pixels = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), pixels)["params"]


def preprocess(frames: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 (n, H, W, 3) RGB -> normalized float32 (n, S, S, 3): CLIP's resize of the short side
    to S (bicubic), centre crop, and mean/std normalization. (CLIP uses PIL's bicubic filter;
    OpenCV's differs by a few grey levels.)"""
    import cv2

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (n, H, W, 3), got {frames.dtype} {frames.shape}")
    h, w = frames.shape[1:3]
    scale = image_size / min(h, w)
    nh, nw = max(image_size, round(h * scale)), max(image_size, round(w * scale))
    top, left = (nh - image_size) // 2, (nw - image_size) // 2
    out = np.empty((len(frames), image_size, image_size, 3), np.float32)
    for i, f in enumerate(frames):
        r = cv2.resize(f, (nw, nh), interpolation=cv2.INTER_CUBIC)
        out[i] = r[top:top + image_size, left:left + image_size].astype(np.float32) / 255.0
    return (out - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)


# --- OpenCLIP image-conditioning preprocessing (StreamingT2V), pure JAX ---------------------------


def _reflect_index(i: np.ndarray, n: int) -> np.ndarray:
    """torch 'reflect' padding as an index map: mirror about the edge pixels without repeating them."""
    if n == 1:
        return np.zeros_like(i)
    period = 2 * (n - 1)
    i = np.mod(i, period)
    return np.where(i < n, i, period - i)


def _gaussian_blur_matrix(n: int, sigma: float, k: int) -> np.ndarray:
    """(n, n) float64 matrix of kornia's 1-D gaussian filter (correlation, 'reflect' border folded in)."""
    x = np.arange(k, dtype=np.float64) - k // 2
    if k % 2 == 0:
        x = x + 0.5
    g = np.exp(-(x ** 2) / (2.0 * sigma ** 2))
    g = g / g.sum()
    front = (k - 1) // 2  # kornia's _compute_padding: (k-1)//2 in front, the rest behind
    m = np.zeros((n, n), np.float64)
    rows = np.arange(n)
    for j in range(k):
        np.add.at(m, (rows, _reflect_index(rows + j - front, n)), g[j])
    return m


def _bicubic_matrix(n_out: int, n_in: int, a: float = -0.75) -> np.ndarray:
    """(n_out, n_in) float64 matrix of torch's ``interpolate(mode="bicubic", align_corners=True)``
    along one axis: cubic convolution (A = -0.75), 4 taps, indices clamped to the edges."""
    # torch computes the source coordinate in float32 (opmath of float): scale = (in-1)/(out-1) and
    # src = scale * i, both rounded to float32. At 256 -> 224 the rounding of src (~1e-5 px) moves
    # the result by ~4e-5, so it is reproduced here rather than done in float64.
    scale = np.float32(n_in - 1) / np.float32(n_out - 1) if n_out > 1 else np.float32(0.0)
    src = np.arange(n_out, dtype=np.float32) * scale
    base = np.floor(src)
    t = (src - base).astype(np.float64)  # exact in float32; the weights are then taken in float64

    def near(d):  # |d| <= 1
        return ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0

    def far(d):  # 1 < |d| < 2
        return ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a

    weights = (far(t + 1.0), near(t), near(1.0 - t), far((1.0 - t) + 1.0))
    m = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    for off, w in zip((-1, 0, 1, 2), weights):
        idx = np.clip(base.astype(np.int64) + off, 0, n_in - 1)
        np.add.at(m, (rows, idx), w)
    return m


def _antialiased_resize_matrices(in_hw, out_hw):
    """Per-axis (out, in) float32 matrices of kornia's antialiased bicubic resize (blur, then bicubic)."""
    factors = tuple(i / o for i, o in zip(in_hw, out_hw))
    sigmas = tuple(max((f - 1.0) / 2.0, 0.001) for f in factors)
    ks = []
    for s in sigmas:
        k = int(max(2.0 * 2 * s, 3))
        ks.append(k + 1 if k % 2 == 0 else k)
    # kornia blurs only when some axis shrinks; with sigma 0.001 the blur would be the identity anyway
    blur = max(factors) > 1
    mats = []
    for n_in, n_out, s, k in zip(in_hw, out_hw, sigmas, ks):
        m = _bicubic_matrix(n_out, n_in)
        if blur:
            m = m @ _gaussian_blur_matrix(n_in, s, k)
        mats.append(np.asarray(m, np.float32))
    return mats


def resize_antialiased(x, size):
    """Antialiased bicubic resize of NHWC ``x`` (n, H, W, C) to ``size`` = (S_h, S_w) -> float32
    (n, S_h, S_w, C).

    Same computation as ``kornia.geometry.resize(x_nchw, size, interpolation="bicubic",
    align_corners=True, antialias=True)`` (kornia 0.7): a separable gaussian blur (sigma
    ``max((factor - 1) / 2, 0.001)``, kernel ``max(4 sigma, 3)`` made odd, 'reflect' border) when
    downscaling, then torch's bicubic interpolation (A = -0.75, align_corners=True, clamped edges).
    Each axis is one (out, in) matrix built with numpy at trace time; ``size`` must be static.
    Jittable."""
    if x.ndim != 4:
        raise ValueError(f"x must be (n, H, W, C), got {x.shape}")
    s_h, s_w = (int(s) for s in size)
    if s_h < 1 or s_w < 1:
        raise ValueError(f"size must be positive, got {size}")
    h, w = int(x.shape[1]), int(x.shape[2])
    m_h, m_w = _antialiased_resize_matrices((h, w), (s_h, s_w))
    hi = jax.lax.Precision.HIGHEST  # no bf16/tf32 passes on accelerators
    x = jnp.asarray(x, jnp.float32)
    x = jnp.einsum("oh,nhwc->nowc", jnp.asarray(m_h), x, precision=hi)
    return jnp.einsum("pw,nowc->nopc", jnp.asarray(m_w), x, precision=hi)


def openclip_pixels(frames, image_size: int):
    """Frames (n, H, W, 3) NHWC floats in [-1, 1] -> normalized CLIP pixels float32
    (n, image_size, image_size, 3): ``resize_antialiased`` to (image_size, image_size), then
    ``(x + 1) / 2``, then ``(x - CLIP_MEAN) / CLIP_STD``.

    This is the reference's ``FrozenOpenCLIPImageEmbedder.preprocess`` (resize first, then shift,
    then normalize; no crop, so the aspect ratio is not kept) from StreamingT2V
    (Picsart-AI-Research/StreamingT2V, branch StreamingModelscope,
    ``t2v_enhanced/model/diffusers_conditional/models/controlnet/image_embedder.py``), in NHWC.
    Jittable (``image_size`` static)."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (n, H, W, 3), got {frames.shape}")
    x = resize_antialiased(frames, (image_size, image_size))
    x = (x + 1.0) / 2.0
    return (x - jnp.asarray(CLIP_MEAN, jnp.float32)) / jnp.asarray(CLIP_STD, jnp.float32)
