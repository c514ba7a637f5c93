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


def init_vision(config, rng=None, *, dtype=jnp.float32):
    """(module, params) with random params."""
    model = CLIPVisionTransformer(config, dtype=dtype)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    pixels = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    return model, model.init(rng, pixels)["params"]


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
