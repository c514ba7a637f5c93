"""VidRD's temporal-aware VAE decoder: temporal layers injected into the image decoder.

VidRD ("Reuse and Diffuse", Gu et al. 2023; no official code: ``shared/seeds/``, SPEC "VidRD") injects
temporal layers into the decoder of the image autoencoder and fine-tunes only them on videos, so that
frames decoded from a video latent no longer flicker. The paper describes the idea, not the layers; every
choice below is the project's, and why:

* **Where.** One temporal layer after every ResNet block of the decoder (``mid_block_1``, ``mid_block_2``
  and every ``up_{i}_block_{j}``), named ``mid_temporal_{1,2}`` and ``up_{i}_temporal_{j}`` beside the
  block it follows. "After the ResNet blocks" is what VidRD says; every block (rather than one per level)
  lets the layers correct flicker at each resolution, and is what ModelScope/VideoLDM do in their UNets.
* **What.** A temporal convolution (kernel 3 x 1 x 1 over frames, VidRD's "Temp-Conv") and/or a temporal
  self-attention over the frames of each pixel (VidRD's "Temp-Attn"), each a residual branch
  ``x + f(GroupNorm(x))``: ``conv`` is GroupNorm -> SiLU -> Conv3d(3x1x1); ``attention`` is GroupNorm ->
  q/k/v -> attention over frames (heads of ``head_dim`` channels) -> ``proj_out``.
* **Zero initialisation.** The temporal conv's kernel and bias and the attention's ``proj_out`` start at
  zero, so each branch adds exactly 0.0 and the decoder is the image decoder bit for bit until trained
  (tests/test_temporal_decoder.py checks it).
* **Per-frame normalisation.** The branches' GroupNorm normalises each frame alone (over H, W), as the
  image decoder's norms do: statistics over the whole clip would make a frame's output depend on every
  other frame, and windowed decoding could then never equal one pass.
* **Local attention.** The temporal attention attends to frames within ``attention_window`` of the query
  (a band mask; default 2), not to the whole clip. Full attention would give the decoder an unbounded
  temporal receptive field, so a long video could only be decoded in one pass (memory growing with its
  length). With the band, each layer sees ``conv_radius + attention_window`` frames either side, the
  decoder ``receptive_field(cfg)`` = that times the number of layers, and :func:`decode_windows` decodes
  windows of ``frame_batch + 2 * receptive_field`` frames whose cores tile the video: equal to one pass
  (the zero padding at a window's edge reaches at most ``receptive_field`` frames in). No positional
  encoding: the conv branch sees frame order; attention weights pixels by content.

Config (the VAE config's optional ``temporal`` entry; absent or None = the image decoder, so existing
configs, param trees, golden vectors and converted checkpoints are unchanged)::

    vae.temporal = {"conv": True, "attention": True, "attention_window": 2, "head_dim": 64}

This module holds the layers, the settings, the receptive field, the window plan and the param-tree
helpers; ``vstar_jax.models.vae`` builds the layers into its Decoder. It imports nothing of ``vae``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from vstar_jax.compile_options import jit
from vstar_jax.models.attention import attention
from vstar_jax.models.layers import GroupNorm32

TEMPORAL_KEY = "temporal"  # the VAE config entry
CONV_RADIUS = 1  # kernel 3 over frames
DEFAULTS = {"conv": True, "attention": True, "attention_window": 2, "head_dim": 64}


@dataclasses.dataclass(frozen=True)
class TemporalSettings:
    conv: bool = True
    attention: bool = True
    attention_window: int = 2
    head_dim: int = 64

    @property
    def radius(self) -> int:
        """Frames either side one temporal layer reads."""
        return (CONV_RADIUS if self.conv else 0) + (self.attention_window if self.attention else 0)


def temporal_settings(cfg) -> Optional[TemporalSettings]:
    """The VAE config's temporal layers, or None for the image decoder (entry absent, None or empty)."""
    if cfg is None:
        return None
    raw = cfg.get(TEMPORAL_KEY) if hasattr(cfg, "get") else None
    if not raw:
        return None
    raw = dict(raw.items()) if hasattr(raw, "items") else raw
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"vae.temporal has unknown keys {unknown}; known: {sorted(DEFAULTS)}")
    s = TemporalSettings(**{**DEFAULTS, **raw})
    if not (s.conv or s.attention):
        raise ValueError("vae.temporal needs conv or attention (or remove the entry for the image decoder)")
    if int(s.attention_window) < 1 or int(s.head_dim) < 1:
        raise ValueError(f"vae.temporal: attention_window and head_dim must be >= 1, got {s}")
    return TemporalSettings(bool(s.conv), bool(s.attention), int(s.attention_window), int(s.head_dim))


def with_temporal(cfg, **settings):
    """A copy of VAE config ``cfg`` with temporal layers (``settings`` over :data:`DEFAULTS`)."""
    c = ml_collections.ConfigDict(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg))
    c[TEMPORAL_KEY] = {**DEFAULTS, **settings}
    temporal_settings(c)  # validated now, not at the first decode
    return c


def without_temporal(cfg):
    """A copy of VAE config ``cfg`` without temporal layers (the image decoder it was built on)."""
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    d.pop(TEMPORAL_KEY, None)
    return ml_collections.ConfigDict(d)


def num_temporal_layers(cfg) -> int:
    """Temporal layers of the decoder: one per ResNet block (2 mid + (num_res_blocks + 1) per level)."""
    if temporal_settings(cfg) is None:
        return 0
    return 2 + len(tuple(cfg.ch_mult)) * (int(cfg.num_res_blocks) + 1)


def receptive_field(cfg) -> int:
    """Frames either side of a frame that its decoded pixels depend on (0 for the image decoder)."""
    s = temporal_settings(cfg)
    return 0 if s is None else num_temporal_layers(cfg) * s.radius


def is_temporal_path(path) -> bool:
    """Whether a param path (tuple of names, or 'a/b/c') lies in a temporal layer."""
    parts = path.split("/") if isinstance(path, str) else [getattr(p, "key", p) for p in path]
    return any("_temporal_" in str(p) or str(p).startswith("mid_temporal") for p in parts)


def temporal_mask(params):
    """Pytree of bools like ``params``: True on the temporal layers' arrays (what fine-tuning trains)."""
    return jax.tree_util.tree_map_with_path(lambda kp, _: is_temporal_path(kp), params)


def split_temporal(params) -> tuple[dict, dict]:
    """(image params, temporal params) of VAE params, as flat {'a/b/c': array} dicts."""
    flat = flatten_dict(params, sep="/")
    return ({k: v for k, v in flat.items() if not is_temporal_path(k)},
            {k: v for k, v in flat.items() if is_temporal_path(k)})


# ----------------------------------------------------------------------------------------- layers

class TemporalLayer(nn.Module):
    """Residual temporal conv and/or band-limited temporal attention on frames (n = b * f, H, W, C)."""

    settings: TemporalSettings
    num_groups: int = 32
    eps: float = 1e-6
    dtype: Any = jnp.float32
    backend: str = "xla"

    @nn.compact
    def __call__(self, x, num_frames: int):
        s = self.settings
        n, hh, ww, c = x.shape
        if n % num_frames:
            raise ValueError(f"temporal layer: {n} frames are not a whole number of {num_frames}-frame videos")
        b, f = n // num_frames, num_frames
        if s.conv:
            h = nn.swish(GroupNorm32(self.num_groups, self.eps, name="conv_norm")(x))
            h = nn.Conv(c, (3, 1, 1), padding=((1, 1), (0, 0), (0, 0)), dtype=self.dtype, name="conv",
                        kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros)(
                h.reshape(b, f, hh, ww, c))
            x = x + h.reshape(n, hh, ww, c)
        if s.attention:
            heads = max(1, c // s.head_dim)
            h = GroupNorm32(self.num_groups, self.eps, name="attn_norm")(x)
            h = jnp.transpose(h.reshape(b, f, hh, ww, c), (0, 2, 3, 1, 4)).reshape(b * hh * ww, f, c)
            q, k, v = (nn.Dense(c, dtype=self.dtype, name=m)(h).reshape(b * hh * ww, f, heads, c // heads)
                       for m in ("q", "k", "v"))
            t = jnp.arange(f)
            band = (jnp.abs(t[:, None] - t[None, :]) <= s.attention_window)[None, None]
            o = attention(q, k, v, mask=band, backend=self.backend).reshape(b * hh * ww, f, c)
            o = nn.Dense(c, dtype=self.dtype, name="proj_out", kernel_init=nn.initializers.zeros,
                         bias_init=nn.initializers.zeros)(o)
            o = jnp.transpose(o.reshape(b, hh, ww, f, c), (0, 3, 1, 2, 4)).reshape(n, hh, ww, c)
            x = x + o
        return x


# ------------------------------------------------------------------------------- windowed decoding

def window_plan(n: int, core: int, halo: int) -> list[tuple[int, int, int, int]]:
    """Windows decoding ``n`` frames ``core`` at a time with ``halo`` frames of context either side.

    Returns [(lo, hi, s, e)]: decode frames [lo, hi) and keep [s, e). Every window has the same length
    ``min(n, core + 2 * halo)`` (one compiled shape); the kept cores tile [0, n); each kept frame is at
    least ``halo`` frames from a window edge that is not the video's own edge, so with ``halo`` = the
    receptive field its pixels equal the one-pass decode."""
    if n < 1 or core < 1 or halo < 0:
        raise ValueError(f"window_plan needs n >= 1, core >= 1, halo >= 0; got {n}, {core}, {halo}")
    length = min(n, core + 2 * halo)
    out = []
    for s in range(0, n, core):
        e = min(s + core, n)
        lo = min(max(s - halo, 0), n - length)
        out.append((lo, lo + length, s, e))
    return out


def decode_windows(vae, params, z, *, frame_batch: int = 16, jit: bool = True) -> Iterator[np.ndarray]:
    """Unscaled latents ``z`` (b, c, N, h, w) -> pixel frames (b, 3, k, H, W) float32, window by window
    (:func:`window_plan` with the config's receptive field as halo): host memory and device memory
    are flat in N. ``vae``: the AutoencoderKL module; ``params``: its params."""
    halo = receptive_field(vae.config)
    z = np.asarray(z, np.float32)
    n = z.shape[2]
    fn = _decode_window
    if jit:
        try:  # one compiled program per (module, shape) across calls; a module with an unhashable
            hash(vae)  # (mutable) config gets its own for this video
            fn = _decode_window_jit
        except TypeError:
            jitted = jit(lambda p, zz: _decode_window(vae, p, zz))
            fn = lambda _, p, zz: jitted(p, zz)  # noqa: E731
    for lo, hi, s, e in window_plan(n, int(frame_batch), halo):
        px = np.asarray(fn(vae, params, jnp.asarray(z[:, :, lo:hi])), np.float32)
        yield px[:, :, s - lo:e - lo]


def _decode_window(vae, params, z):
    b, c, f, h, w = z.shape
    flat = jnp.transpose(z, (0, 2, 1, 3, 4)).reshape(b * f, c, h, w)
    px = vae.apply({"params": params}, flat, num_frames=f, method="decode")
    return jnp.transpose(px.reshape((b, f) + px.shape[1:]), (0, 2, 1, 3, 4))


_decode_window_jit = jit(_decode_window, static_argnames=("vae",))


def decode_video_windowed(vae, params, latents, frame_batch: int = 16):
    """The whole video (b, 3, N, H, W) of unscaled latents through the temporal decoder, traced (usable
    under jit): the same windows as :func:`decode_windows`, concatenated."""
    n = latents.shape[2]
    parts = []
    for lo, hi, s, e in window_plan(n, int(frame_batch), receptive_field(vae.config)):
        parts.append(_decode_window(vae, params, latents[:, :, lo:hi])[:, :, s - lo:e - lo])
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=2)


def merge_params(flat: Mapping[str, Any]) -> dict:
    """Nested params of a flat {'a/b/c': array} dict."""
    return unflatten_dict(dict(flat), sep="/")
