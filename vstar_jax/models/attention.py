"""The project's one attention function.

Every attention in the project (UNet spatial/temporal, VAE mid-block, text
encoder, CLIP) goes through :func:`attention`. Methods that act on attention
(TAR, attention-map capture) plug in as a ``logit_transform`` or by asking for
the weights; the backend choice (plain XLA or cuDNN fused) lives here only.

Layout: q (B, Lq, H, D), k/v (B, Lk, H, D) -> (B, Lq, H, D).
Logits and softmax are computed in float32 whatever the input dtype, as the
reference's ``softmax`` is numerically safe only in full precision.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

LogitTransform = Callable[[jax.Array], jax.Array]

BACKENDS = ("xla", "cudnn", "auto")


def _use_cudnn(backend: str, logit_transform, return_weights: bool, dtype, relative: bool = False) -> bool:
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    if logit_transform is not None or return_weights or relative:
        # A data-dependent logit transform (TAR) or weight capture needs the explicit logits.
        return False
    if backend == "xla":
        return False
    on_gpu = jax.default_backend() == "gpu"
    if backend == "cudnn" and not on_gpu:
        raise ValueError("attention backend 'cudnn' needs a GPU; use 'xla' or 'auto'")
    # cuDNN's fused kernel takes fp16/bf16 only.
    return on_gpu and dtype in (jnp.bfloat16, jnp.float16)


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: Optional[jax.Array] = None,
    logit_transform: Optional[LogitTransform] = None,
    backend: str = "xla",
    return_weights: bool = False,
    rel_k: Optional[jax.Array] = None,
    rel_v: Optional[jax.Array] = None,
):
    """Scaled dot-product attention with a pluggable transform of the logits.

    Args:
      q, k, v: (B, Lq, H, D), (B, Lk, H, D), (B, Lk, H, D).
      mask: optional bool array broadcastable to (B, H, Lq, Lk); True = attend.
      logit_transform: optional ``f(logits) -> logits`` on float32 (B, H, Lq, Lk)
        logits, applied after scaling and masking, before the softmax.
      backend: "xla" (explicit einsum + softmax), "cudnn" (fused, GPU only) or
        "auto" (cuDNN on GPU when the dtype and options allow, else XLA).
      return_weights: also return the softmax weights (B, H, Lq, Lk), float32.
      rel_k, rel_v: optional (Lq, Lk, D) relative-position embeddings shared over heads (lvdm's
        ``RelativePosition``, Shaw et al. 2018): logits += q . rel_k[i, j] (scaled like q . k) and
        out += sum_j weights[i, j] rel_v[i, j].
    """
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention expects (B, L, H, D) inputs, got {q.shape}, {k.shape}, {v.shape}")
    if _use_cudnn(backend, logit_transform, return_weights, q.dtype, rel_k is not None or rel_v is not None):
        return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")
    depth = q.shape[-1]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    if rel_k is not None:
        logits = logits + jnp.einsum("bqhd,qkd->bhqk", q, rel_k.astype(q.dtype), preferred_element_type=jnp.float32)
    logits = logits * (1.0 / float(depth) ** 0.5)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    if logit_transform is not None:
        logits = logit_transform(logits)
    weights = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v, preferred_element_type=jnp.float32)
    if rel_v is not None:
        out = out + jnp.einsum("bhqk,qkd->bqhd", weights.astype(v.dtype), rel_v.astype(v.dtype),
                               preferred_element_type=jnp.float32)
    out = out.astype(q.dtype)
    if return_weights:
        return out, weights
    return out
