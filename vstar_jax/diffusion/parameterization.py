"""What the denoiser predicts: ``eps`` (noise; VideoCrafter2, ModelScope) or ``v``
(velocity, Salimans & Ho 2022; lvdm's ``parameterization: "v"``).

With x_t = sqrt(a) x0 + sqrt(1 - a) eps (a = alphas_cumprod[t]):
v = sqrt(a) eps - sqrt(1 - a) x0, so eps = sqrt(a) v + sqrt(1 - a) x_t (lvdm's
``predict_eps_from_z_and_v``). The samplers are written in eps; :func:`to_eps` converts a
model's output once per call, so every sampler (plain, windowed, sharded) serves both.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

PREDICTIONS = ("eps", "v")


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}")
    return prediction


def _alpha(alphas_cumprod, t, ndim: int):
    """alpha_cumprod[t] shaped to broadcast over (b, c, f, h, w): t (b,) or per frame (b, f)."""
    t = jnp.asarray(t)
    a = jnp.asarray(np.asarray(alphas_cumprod, np.float32))[t]
    if t.ndim == 2:
        return a[:, None, :, None, None]
    return a.reshape((-1,) + (1,) * (ndim - 1))


def to_eps(output, x_t, t, alphas_cumprod, prediction: str = "eps"):
    """The eps a model output stands for. ``t``: (b,) int timesteps of the rows of ``x_t``,
    or (b, f) one per frame."""
    if check_prediction(prediction) == "eps":
        return output
    a = _alpha(alphas_cumprod, t, x_t.ndim)
    out = output.astype(jnp.float32)
    return jnp.sqrt(a) * out + jnp.sqrt(1.0 - a) * x_t.astype(jnp.float32)


def clip_eps(eps, x, t, alphas_cumprod, lo: float = -1.0, hi: float = 1.0):
    """eps whose implied x0 = (x - sqrt(1 - a_t) eps) / sqrt(a_t) is clipped to [lo, hi] (pixel-space
    DDPM practice): eps' = (x - sqrt(a_t) clip(x0)) / sqrt(1 - a_t). ``t``: (b,) timesteps of the rows
    of ``x``, or (b, f) one per frame. The demo model's ``clip_x0`` option (a :class:`Denoiser` setting)."""
    a = _alpha(alphas_cumprod, t, x.ndim)
    x0 = jnp.clip((x - jnp.sqrt(1 - a) * eps) / jnp.sqrt(a), lo, hi)
    return (x - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)


def target(x0, noise, a, prediction: str = "eps"):
    """Training target for clean ``x0``, ``noise`` and alpha_cumprod ``a`` (broadcastable)."""
    if check_prediction(prediction) == "eps":
        return noise
    return jnp.sqrt(a) * noise - jnp.sqrt(1.0 - a) * x0


def min_snr_weight(a, gamma: float, prediction: str = "eps"):
    """Min-SNR-gamma loss weight (Hang et al. 2023) for an MSE on ``prediction``; ones when gamma <= 0.
    snr = a / (1 - a); eps: min(snr, gamma) / snr; v: min(snr, gamma) / (snr + 1)."""
    a = jnp.asarray(a, jnp.float32)
    if gamma is None or gamma <= 0:
        return jnp.ones_like(a)
    snr = a / (1.0 - a)
    clipped = jnp.minimum(snr, gamma)
    return clipped / (snr + 1.0) if check_prediction(prediction) == "v" else clipped / snr
