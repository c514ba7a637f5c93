"""The denoiser every sampler and strategy calls: the UNet as a :class:`~vstar_jax.diffusion.sampler.Denoiser`.

One place for what surrounds a UNet call in generation: the fps conditioning, the DDIM loop
index (TAR's step gate), the temporal-attention hooks (TAR, FreeNoise's windows), the model's
prediction converted to eps (v-prediction), attention-map capture, the layout of the rows on a
device mesh, and the progress tick.

    denoiser = make_denoiser(unet, params, DenoiserSpec(...), alphas_cumprod=ac, fps=fps)
    eps = denoiser(x (2b, c, F, h, w), t (2b,) or (2b, F), context, step_index)
    eps, aux = denoiser(...)   # with DenoiserSpec(capture=True): aux holds the attention maps
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from vstar_jax.diffusion.parameterization import to_eps
from vstar_jax.diffusion.sampler import Denoiser
from vstar_jax.parallel.sharding import DEFAULT_RULES, LATENT_AXES, activation_layout, named


@dataclasses.dataclass(frozen=True)
class DenoiserSpec:
    """Static (hashable) settings of the denoiser around one UNet."""

    prediction: str = "eps"  # what the UNet predicts (vstar_jax.diffusion.parameterization)
    hooks: tuple = ()  # temporal-attention hooks (TARConfig, FreeNoise, ...)
    capture: bool = False  # record temporal attention maps (cond rows, averaged over pixels)
    latent_sharding: Any = None  # NamedSharding the (2b, c, F, h, w) rows are constrained to, or None
    rules: Any = None  # logical-axis rules of the UNet's activations (None: sharding.DEFAULT_RULES)
    clip_x0: bool = False  # guided eps replaced so its implied x0 lies in [-1, 1] (the demo model's option)
    windows: int = 1  # D: independent long-video windows per call (Denoiser.windows; the mesh's windows axis)


def attention_rows(inter, batch: int):
    """Sown temporal weights (2b*h*w, f, f) per layer -> cond rows averaged over pixels (b, f, f)."""
    def reduce(w):
        f = w.shape[-1]
        return w.reshape(2 * batch, -1, f, f).mean(axis=1)[batch:]

    return jax.tree_util.tree_map(reduce, inter)


PROBE_FINITE = 1 << 20  # > any DDIM step index


def call_probe(eps, step_index):
    """(step, finite) of one UNet call for the host's progress callback, from ONE reduction: each element of
    ``eps`` (rows first) maps to its row's step, plus PROBE_FINITE where it is finite, and the minimum is
    taken. ``finite`` is whether every element is; ``step`` the smallest step of the call (FIFO's batched
    windows carry one step per row), or of the rows that went non-finite. On a mesh that is one all-reduce
    of one integer a call (two reductions were two all-reduces: the latency of small collectives dominates
    a FIFO iteration over processes)."""
    i = jnp.asarray(step_index, jnp.int32)
    rows = i.reshape(i.shape + (1,) * (eps.ndim - i.ndim)) if i.ndim else i
    low = jnp.min(jnp.where(jnp.isfinite(eps), rows + PROBE_FINITE, rows))
    return jnp.where(low >= PROBE_FINITE, low - PROBE_FINITE, low), low >= PROBE_FINITE

def make_denoiser(unet, params, spec: DenoiserSpec, *, alphas_cumprod, fps=None,
                  on_call: Optional[Callable] = None, cam_input: Optional[Callable] = None,
                  anchor_pair: Optional[Callable] = None) -> Denoiser:
    """A :class:`Denoiser` whose ``fn(x, t, ctx, i) -> eps`` runs the UNet on CFG rows, or ``(eps, aux)`` with
    the attention maps when ``spec.capture`` (the samplers' ``capture`` contract). ``on_call(step_index,
    finite)`` runs as a host callback once per call (the progress bar; ``finite``: whether the call's output
    is all finite); it is always in the graph when given. ``cam_input`` / ``anchor_pair``: StreamingT2V's
    inputs (:class:`~vstar_jax.models.streaming.StreamingMemory`'s, bound to its params)."""
    ac = np.asarray(alphas_cumprod, np.float32)

    def model_fn(x, t, ctx, i, **extra):
        layout, rows = None, spec.latent_sharding
        if rows is not None:  # keep the CFG rows' layout on the mesh, and lay the UNet's activations out
            layout = activation_layout(rows.mesh, x.shape[0], x.shape[2], spec.rules or DEFAULT_RULES)
            if layout is not None:  # the same devices re-gridded for the rows (see activation_layout)
                rows = named(layout.mesh, LATENT_AXES, layout.rules)
            x = jax.lax.with_sharding_constraint(x, rows)
        p = params
        if rows is not None and rows.mesh.shape.get("model", 1) > 1:
            # FSDP: weights are stored split over "model" and gathered whole for the call (ZeRO-3); left
            # to itself XLA splits the contractions instead and all-reduces every activation
            p = jax.lax.with_sharding_constraint(params, NamedSharding(rows.mesh, PartitionSpec()))
        # extra: StreamingT2V's conditioning (cam_frames, image_embed), CFG rows like x
        kw = dict(fps=fps, step_index=i, hooks=spec.hooks, capture_attention=spec.capture, **extra)
        if layout is not None:  # only on a mesh: a UNet without layouts still serves one device
            kw["layout"] = layout
        if spec.capture:
            raw, state = unet.apply({"params": p}, x, t, ctx, mutable=["intermediates"], **kw)
            aux = attention_rows(state["intermediates"], x.shape[0] // 2)
        else:
            raw, aux = unet.apply({"params": p}, x, t, ctx, **kw), None
        eps = to_eps(raw, x, t, ac, spec.prediction)
        if rows is not None:
            eps = jax.lax.with_sharding_constraint(eps, rows)
        if on_call is not None:
            # the probe: whether this call's output is finite, and its step (the first non-finite step is named)
            jax.debug.callback(on_call, *call_probe(eps, i))
        return (eps, aux) if spec.capture else eps

    return Denoiser(model_fn, cam_input, anchor_pair, ac if spec.clip_x0 else None, spec.windows,
                    ac if spec.prediction == "v" else None)
