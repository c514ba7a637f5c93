"""RAFT (large) optical flow in JAX/Flax: torchvision's ``raft_large``, the model StreamingT2V's
``mawe.py`` uses, for weights converted from torchvision's state dict (``vstar_jax.checkpoints_convert.raft``).

Feature encoder (instance norm) on both frames, context encoder (frozen batch norm) on the first,
all-pairs correlation volume / sqrt(256) pooled into 4 levels, 12 updates of a separable ConvGRU
that look up a radius-4 window per level (bilinear, zero outside; torchvision's window order:
the first offset moves x), and convex 8x upsampling of the final flow with the predicted mask.
Images: uint8 (H, W, 3), H and W multiples of 8 and at least 128; mapped to [-1, 1].
Layout NHWC; flow (..., 2) is (dx, dy).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vstar_jax.compile_options import jit

HIDDEN = 128
CONTEXT = 128
LEVELS = 4
RADIUS = 4
ENCODER_LAYERS = (64, 64, 96, 128, 256)


def _pad(k):
    kh, kw = (k, k) if isinstance(k, int) else k
    return ((kh - 1) // 2, (kh - 1) // 2), ((kw - 1) // 2, (kw - 1) // 2)


class Conv(nn.Module):
    """torch-style Conv2d: symmetric padding (k - 1) // 2 unless given."""

    features: int
    kernel: Any = 3
    stride: int = 1
    padding: Any = None

    @nn.compact
    def __call__(self, x):
        k = (self.kernel, self.kernel) if isinstance(self.kernel, int) else tuple(self.kernel)
        return nn.Conv(self.features, k, strides=(self.stride, self.stride),
                       padding=self.padding or _pad(k), name="conv")(x)


class FrozenBatchNorm(nn.Module):
    """BatchNorm2d in eval mode: running statistics are parameters here."""

    eps: float = 1e-5

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        mean = self.param("mean", nn.initializers.zeros, (c,))
        var = self.param("var", nn.initializers.ones, (c,))
        return (x - mean) * (scale / jnp.sqrt(var + self.eps)) + bias


def instance_norm(x, eps: float = 1e-5):
    """InstanceNorm2d without affine parameters (biased variance over H, W)."""
    mean = x.mean(axis=(1, 2), keepdims=True)
    var = jnp.square(x - mean).mean(axis=(1, 2), keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps)


class ConvNorm(nn.Module):
    """Conv + norm (+ ReLU): torchvision's Conv2dNormActivation."""

    features: int
    kernel: int
    stride: int = 1
    norm: str = "instance"
    relu: bool = True

    @nn.compact
    def __call__(self, x):
        x = Conv(self.features, self.kernel, self.stride, name="conv")(x)
        x = instance_norm(x) if self.norm == "instance" else FrozenBatchNorm(name="norm")(x)
        return nn.relu(x) if self.relu else x


class ResBlock(nn.Module):
    features: int
    stride: int
    norm: str

    @nn.compact
    def __call__(self, x):
        y = ConvNorm(self.features, 3, self.stride, self.norm, name="convnormrelu1")(x)
        y = ConvNorm(self.features, 3, 1, self.norm, name="convnormrelu2")(y)
        if self.stride != 1:
            x = ConvNorm(self.features, 1, self.stride, self.norm, relu=False, name="downsample")(x)
        return nn.relu(x + y)


class FeatureEncoder(nn.Module):
    """Downsamples by 8: 7x7/2 conv, three pairs of residual blocks (strides 1, 2, 2), 1x1 conv."""

    norm: str

    @nn.compact
    def __call__(self, x):
        c = ENCODER_LAYERS
        x = ConvNorm(c[0], 7, 2, self.norm, name="convnormrelu")(x)
        for i, (features, stride) in enumerate(zip(c[1:4], (1, 2, 2)), start=1):
            x = ResBlock(features, stride, self.norm, name=f"layer{i}_0")(x)
            x = ResBlock(features, 1, self.norm, name=f"layer{i}_1")(x)
        return Conv(c[4], 1, name="conv")(x)


class ConvGRU(nn.Module):
    kernel: tuple
    padding: tuple

    @nn.compact
    def __call__(self, h, x):
        conv = lambda name: Conv(HIDDEN, self.kernel, padding=self.padding, name=name)  # noqa: E731
        hx = jnp.concatenate([h, x], axis=-1)
        z = jax.nn.sigmoid(conv("convz")(hx))
        r = jax.nn.sigmoid(conv("convr")(hx))
        q = jnp.tanh(conv("convq")(jnp.concatenate([r * h, x], axis=-1)))
        return (1 - z) * h + z * q


class UpdateBlock(nn.Module):
    """Motion encoder, separable ConvGRU, flow head: (hidden, context, corr, flow) -> (hidden, delta)."""

    @nn.compact
    def __call__(self, hidden, context, corr, flow):
        c = nn.relu(Conv(256, 1, name="convcorr1")(corr))
        c = nn.relu(Conv(192, 3, name="convcorr2")(c))
        f = nn.relu(Conv(128, 7, name="convflow1")(flow))
        f = nn.relu(Conv(64, 3, name="convflow2")(f))
        motion = nn.relu(Conv(126, 3, name="conv")(jnp.concatenate([c, f], axis=-1)))
        x = jnp.concatenate([context, motion, flow], axis=-1)
        hidden = ConvGRU((1, 5), ((0, 0), (2, 2)), name="convgru1")(hidden, x)
        hidden = ConvGRU((5, 1), ((2, 2), (0, 0)), name="convgru2")(hidden, x)
        delta = Conv(2, 3, name="flow_head2")(nn.relu(Conv(256, 3, name="flow_head1")(hidden)))
        return hidden, delta


class MaskPredictor(nn.Module):
    @nn.compact
    def __call__(self, hidden):
        x = nn.relu(Conv(256, 3, name="convrelu")(hidden))
        return 0.25 * Conv(8 * 8 * 9, 1, name="conv")(x)


# -- correlation ----------------------------------------------------------------------------

def correlation_pyramid(fmap1, fmap2, levels: int = LEVELS):
    """[(B*h*w, h_l, w_l)]: all-pairs dot products / sqrt(C), average-pooled 2x2 per level."""
    b, h, w, c = fmap1.shape
    corr = jnp.einsum("bic,bjc->bij", fmap1.reshape(b, h * w, c), fmap2.reshape(b, h * w, c),
                      precision=jax.lax.Precision.HIGHEST) / jnp.sqrt(jnp.float32(c))
    corr = corr.reshape(b * h * w, h, w)
    pyramid = [corr]
    for _ in range(levels - 1):
        n, hh, ww = corr.shape
        corr = corr[:, : hh // 2 * 2, : ww // 2 * 2].reshape(n, hh // 2, 2, ww // 2, 2).mean(axis=(2, 4))
        pyramid.append(corr)
    return pyramid


def _bilinear_zeros(volume, x, y):
    """Sample (N, H, W) at pixel coords x, y (N, K): bilinear, zero outside (align_corners=True)."""
    n, hh, ww = volume.shape
    flat = volume.reshape(n, hh * ww)
    x0, y0 = jnp.floor(x), jnp.floor(y)
    out = 0.0
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        xi, yi = x0 + dx, y0 + dy
        wgt = (1 - jnp.abs(x - xi)) * (1 - jnp.abs(y - yi))
        valid = (xi >= 0) & (xi <= ww - 1) & (yi >= 0) & (yi <= hh - 1)
        idx = (jnp.clip(yi, 0, hh - 1) * ww + jnp.clip(xi, 0, ww - 1)).astype(jnp.int32)
        out = out + jnp.where(valid, wgt * jnp.take_along_axis(flat, idx, axis=1), 0.0)
    return out


def lookup(pyramid, coords, radius: int = RADIUS):
    """Correlation features (B, h, w, levels * (2r+1)^2) around ``coords`` (B, h, w, 2)."""
    b, h, w, _ = coords.shape
    d = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    # torchvision stacks meshgrid(di, dj, "ij") as (x, y): x offset = first index, y = second
    dx = jnp.repeat(d, 2 * radius + 1)
    dy = jnp.tile(d, 2 * radius + 1)
    centre = coords.reshape(b * h * w, 1, 2)
    feats = []
    for level, volume in enumerate(pyramid):
        c = centre / (2 ** level)
        feats.append(_bilinear_zeros(volume, c[..., 0] + dx, c[..., 1] + dy))
    return jnp.concatenate(feats, axis=-1).reshape(b, h, w, -1)


def convex_upsample(flow, mask):
    """8x upsampling of flow (B, h, w, 2) as a softmax-weighted mix of its 3x3 neighbours * 8."""
    b, h, w, _ = flow.shape
    m = jax.nn.softmax(mask.reshape(b, h, w, 9, 8, 8), axis=3)  # channel = k*64 + a*8 + c
    f = jnp.pad(8.0 * flow, ((0, 0), (1, 1), (1, 1), (0, 0)))
    neigh = jnp.stack([f[:, ky:ky + h, kx:kx + w] for ky in range(3) for kx in range(3)], axis=3)  # (b,h,w,9,2)
    up = jnp.einsum("bhwkac,bhwkd->bhawcd", m, neigh)
    return up.reshape(b, h * 8, w * 8, 2)


# -- the model ------------------------------------------------------------------------------

def _modules():
    return (FeatureEncoder("instance"), FeatureEncoder("batch"), UpdateBlock(), MaskPredictor())


def init_raft(rng=None, size: int = 128):
    """Random RAFT-large params (for tests): {"feature_encoder", "context_encoder", "update_block",
    "mask_predictor"}."""
    rng = jax.random.PRNGKey(0) if rng is None else rng
    fe, ce, ub, mp = _modules()
    k = jax.random.split(rng, 4)
    img = jnp.zeros((1, size, size, 3))
    s = size // 8
    hid = jnp.zeros((1, s, s, HIDDEN))
    return {
        "feature_encoder": fe.init(k[0], img)["params"],
        "context_encoder": ce.init(k[1], img)["params"],
        "update_block": ub.init(k[2], hid, jnp.zeros((1, s, s, CONTEXT)),
                                jnp.zeros((1, s, s, LEVELS * (2 * RADIUS + 1) ** 2)), jnp.zeros((1, s, s, 2)))["params"],
        "mask_predictor": mp.init(k[3], hid)["params"],
    }


def raft_param_shapes():
    """ShapeDtypeStruct tree of the params (for the converter)."""
    return jax.eval_shape(lambda: init_raft())


def preprocess(frames) -> jnp.ndarray:
    """uint8 (..., H, W, 3) -> float32 in [-1, 1] (torchvision's OpticalFlow transform)."""
    return jnp.asarray(frames, jnp.float32) / 127.5 - 1.0


def raft_forward(params, image1, image2, iters: int = 12):
    """Flow (B, H, W, 2) from image1 to image2, both float (B, H, W, 3) in [-1, 1]."""
    b, h, w, _ = image1.shape
    if h % 8 or w % 8 or h < 128 or w < 128:
        raise ValueError(f"RAFT needs H and W multiples of 8 and >= 128, got {h}x{w}")
    fe, ce, ub, mp = _modules()
    fmaps = fe.apply({"params": params["feature_encoder"]}, jnp.concatenate([image1, image2], axis=0))
    pyramid = correlation_pyramid(fmaps[:b], fmaps[b:])
    ctx = ce.apply({"params": params["context_encoder"]}, image1)
    hidden, context = jnp.tanh(ctx[..., :HIDDEN]), nn.relu(ctx[..., HIDDEN:])
    ys, xs = jnp.meshgrid(jnp.arange(h // 8, dtype=jnp.float32), jnp.arange(w // 8, dtype=jnp.float32), indexing="ij")
    coords0 = jnp.broadcast_to(jnp.stack([xs, ys], axis=-1), (b, h // 8, w // 8, 2))

    def step(_, carry):
        hidden, coords1 = carry
        corr = lookup(pyramid, coords1)
        hidden, delta = ub.apply({"params": params["update_block"]}, hidden, context, corr, coords1 - coords0)
        return hidden, coords1 + delta

    hidden, coords1 = jax.lax.fori_loop(0, iters, step, (hidden, coords0))
    mask = mp.apply({"params": params["mask_predictor"]}, hidden)
    return convex_upsample(coords1 - coords0, mask)


_jit_forward = jit(raft_forward, static_argnames=("iters",))


def raft_flow_fn(params, iters: int = 12):
    """A ``FlowFn`` for ``vstar_jax.metrics.flow``: (uint8 frame_a, frame_b) -> (H, W, 2) numpy."""
    def fn(frame_a, frame_b):
        a, b = preprocess(np.asarray(frame_a)[None]), preprocess(np.asarray(frame_b)[None])
        return np.asarray(_jit_forward(params, a, b, iters=iters))[0]

    return fn
