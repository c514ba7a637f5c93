"""The UNet's demo-model options (``unet.frame_position``, ``unet.text_frame_cond``): not in VideoCrafter2
or ModelScope, off in their configs; the embedded demo model (configs/demo_tiny.py) turns
``text_frame_cond`` on. Both add a per-frame term to the ResBlocks' embedding
(``vstar_jax.models.unet3d.UNetEmbedding``).

They live in models/, not under vstar_jax/demo/: a checkpoint's saved config switches them on, and the
UNet is built from that config alone by loaders that know nothing of the demo (generation.model's
Pipeline, the converters' shape plans, lowering); models/ does not import demo/ (demo/ imports
models/ and sits in an import cycle with generation/).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vstar_jax.models.layers import timestep_embedding


FRAME_CLOCKS = ("normalised", "clipped", "none")


def frame_clock(frames: int, clock: str = "normalised", trained_frames: int = 0) -> jax.Array:
    """(frames,) each frame's place in [0, 1] as the demo options see it (``unet.frame_clock``):

    * ``normalised``: t = i / (frames - 1), so a longer video maps onto the trained range and replays one
      whole trained motion over any length (the default demo model);
    * ``clipped``: t = min(i, L - 1) / (L - 1) with L = ``trained_frames``: an absolute frame index that
      stops at the trained length (demo_vc). At ``frames == L`` it equals ``normalised``;
    * ``none``: t = 0 for every frame: no absolute clock.
    """
    if clock not in FRAME_CLOCKS:
        raise ValueError(f"unknown frame clock {clock!r}; expected one of {FRAME_CLOCKS}")
    if clock == "none" or frames < 2:
        return jnp.zeros((frames,))
    if clock == "normalised":
        return jnp.linspace(0.0, 1.0, frames)
    if trained_frames < 2:
        raise ValueError(f"the clipped frame clock needs trained_frames >= 2, got {trained_frames}")
    i = jnp.minimum(jnp.arange(frames, dtype=jnp.float32), trained_frames - 1)
    return i / (trained_frames - 1)


def frame_position_embedding(frames: int, dim: int, clock: str = "normalised", trained_frames: int = 0
                             ) -> jax.Array:
    """(frames, dim): each frame's place in the clip (:func:`frame_clock`) embedded like a timestep
    (x 1000) (demo-model options)."""
    return timestep_embedding(frame_clock(frames, clock, trained_frames) * 1000.0, dim)


def frame_embedding(f: int, dim: int, clock: str = "normalised", trained_frames: int = 0,
                    frame_times=None) -> jax.Array:
    """The frame-position embedding of one call: (f, dim), shared by the batch, or (b*f, dim), one row per
    (batch, frame), frame-major like the activations, when ``frame_times`` is (b, f). ``frame_times``: the
    clock values of this call's frames, (f,) or (b, f), in place of :func:`frame_clock` of the call's own
    length -- a chunk of a longer video given its frames' places in the whole video (the enhancer's
    ``--chunk-clock video``); None: the call's own clock (:func:`frame_position_embedding`)."""
    if frame_times is None:
        return frame_position_embedding(f, dim, clock, trained_frames)
    t = jnp.asarray(frame_times, jnp.float32)
    if t.ndim not in (1, 2) or t.shape[-1] != f:
        raise ValueError(f"frame_times must be ({f},) or (batch, {f}), got {tuple(t.shape)}")
    return timestep_embedding(t.reshape(-1) * 1000.0, dim)


def batch_rows(v: jax.Array, b: int, f: int) -> jax.Array:
    """(f, ...) shared by the batch -> (b*f, ...) (tiled); (b*f, ...) as it is."""
    if v.shape[0] == b * f:
        return v
    if v.shape[0] != f:
        raise ValueError(f"per-frame rows must number {f} or {b * f}, got {v.shape[0]}")
    return jnp.tile(v, (b,) + (1,) * (v.ndim - 1))


def frame_position_term(b: int, f: int, channels: int, param_dtype: Any, clock: str = "normalised",
                        trained_frames: int = 0, frame_times=None) -> jax.Array:
    """``unet.frame_position``: each frame's place in the clip (:func:`frame_embedding`) through a 2-layer
    MLP (``frame_embed_1``, ``frame_embed_2``, zero-initialised output), (b*f, 4 * channels). Called
    inside the module that owns the embedding: the Denses are its own parameters."""
    dense = lambda name, **kw: nn.Dense(channels * 4, dtype=jnp.float32, param_dtype=param_dtype, name=name, **kw)
    pemb = nn.silu(dense("frame_embed_1")(frame_embedding(f, channels, clock, trained_frames, frame_times)))
    pemb = dense("frame_embed_2", kernel_init=nn.initializers.zeros)(pemb)
    return batch_rows(pemb, b, f)


class TextFrameEmbed(nn.Module):
    """``unet.text_frame_cond``: an MLP of the frame's mean text feature and its place in the clip
    (:func:`frame_clock`, embedded like a timestep), added to the ResBlocks' embedding. A motion caption asks
    for (direction x time x place) at once: through cross-attention alone no lower-order part of that
    product lowers the loss (averaged over frames or over directions the object sits in the middle), and
    the tiny demo model never learned it; this MLP gives it a per-frame displacement code directly.
    Zero-initialised output: starts as the plain UNet. ``ctx`` is per frame, (b*f, L, C), so VSP's
    per-frame prompts reach it too."""

    channels: int
    param_dtype: Any = jnp.float32
    clock: str = "normalised"  # unet.frame_clock
    trained_frames: int = 0

    @nn.compact
    def __call__(self, ctx: jax.Array, b: int, f: int, frame_times=None) -> jax.Array:
        """``frame_times``: this call's frames' clock values (:func:`frame_embedding`; None: the call's own)."""
        pe = batch_rows(frame_embedding(f, self.channels, self.clock, self.trained_frames, frame_times), b, f)
        h = jnp.concatenate([ctx.astype(jnp.float32).mean(axis=1), pe], axis=-1)
        h = nn.silu(nn.Dense(4 * self.channels, param_dtype=self.param_dtype, name="fc_1")(h))
        return nn.Dense(4 * self.channels, param_dtype=self.param_dtype, kernel_init=nn.initializers.zeros,
                        name="fc_2")(h)
