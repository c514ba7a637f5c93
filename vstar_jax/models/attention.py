"""The project's one attention function.

Every attention in the project (UNet spatial/temporal, VAE mid-block, text
encoder, CLIP) goes through :func:`attention`. Methods that act on attention
(TAR, attention-map capture) plug in as a ``logit_transform`` or by asking for
the weights; the backend choice (plain XLA, blockwise XLA, cuDNN fused on GPU,
JAX's Pallas flash-attention kernel on TPU) lives here only.

Layout: q (B, Lq, H, D), k/v (B, Lk, H, D) -> (B, Lq, H, D).
Logits and softmax are computed in float32 whatever the input dtype, as the
reference's ``softmax`` is numerically safe only in full precision.

Three XLA code paths, all the same function of q, k, v (to float32 rounding):

* ``_plain``: explicit (B, H, Lq, Lk) logits and softmax weights. Used when a
  logit transform (TAR), weight capture or relative position needs whole rows;
  those run on temporal attention, whose rows are only F long.
* ``_fused``: the same logits, but the softmax is left unnormalised
  (``exp(s - max)``) and the output is divided by the row sums after the
  weights @ V product. On CPU this is about 3x faster than ``jax.nn.softmax``
  followed by the product (one pass less over the logits, no normalised copy).
* ``_blockwise``: online softmax over tiles of (batch*head, query block, key
  block), float32 running max / sum / accumulator. The full (L, L) logits never
  exist: at most one tile of about ``TILE_ELEMS`` float32 logits at a time,
  which stays in cache on CPU (4x faster than the plain path for 1,024-token
  spatial attention on the 2-core developer machine) and bounds memory for long
  sequences everywhere. Used automatically when ``Lk >= block_threshold``.

TPU (backend ``auto``): attention that needs no whole rows (no logit transform, weight capture,
relative position or mask) and has at least ``PALLAS_MIN_LEN`` (128) query rows goes through the
Pallas TPU flash-attention kernel that ships with JAX
(``jax.experimental.pallas.ops.tpu.flash_attention``): UNet spatial self-attention and text
cross-attention at every level with >= 128 pixels (VideoCrafter2 at 320x512: 2,560, 640 and 160
tokens; its 40-token mid-block stays on XLA, where padding to one 128 block would be 10x the
work). Sequences are padded to multiples of 128 (the kernel's lane width) and padded keys are
masked by segment ids (77 text keys -> 128, keys 77.. in segment 0, every query in segment 1), so
they get weight exactly 0. The choice is made by the platform being lowered for
(``jax.lax.platform_dependent``), not the host: ``jax.export`` for ``tpu`` from a CPU machine
gives the kernel, CPU/GPU lowering the XLA (or cuDNN) path. One module cannot be lowered for
``("tpu", "cuda")`` together (the Pallas call's TPU compiler params refuse a GPU lowering);
export per platform. ``backend="pallas"`` forces the kernel (TPU, or any host inside
``jax.experimental.pallas.tpu.force_tpu_interpret_mode()``, which is how CI checks its numbers).
On a device mesh a Mosaic kernel cannot be partitioned by XLA; inside :func:`rows_on_mesh` (the
UNet enters it when given an activation layout) the kernel runs per device under ``shard_map`` over
the leading (rows) axis, which attention never mixes; rows that do not divide stay on XLA.

GPU (backend ``auto``): bfloat16 / float16 attention that needs no whole rows goes to cuDNN's fused
kernel. cuDNN refuses float32, so float32 self-attention (Lq == Lk: UNet spatial self-attention at
every level, and temporal attention without TAR or hooks) that needs no whole rows or mask goes
through JAX's Pallas GPU (Triton) flash attention (``jax.experimental.pallas.ops.gpu.attention.mha``),
chosen by what the exported CUDA modules show (``benchmarks/RESULTS.md``, "XLA blockwise vs Pallas
GPU (Triton)"): the Triton module holds nothing but its operands, where the XLA path writes
223-250 MiB float32 logit tiles per VideoCrafter2 call. Sequences are padded to a multiple of 128
(below 128: the next power of two, as Triton blocks must be powers of two) with segment ids, so
padded keys get weight exactly 0 and padded query rows are dropped. Text cross-attention (77 keys)
stays on XLA: mha's segment ids are one array for queries and keys, so padded keys cannot be masked
when Lq != Lk. Chosen by the lowered platform (``cuda``), like the TPU kernel; ``backend="xla"`` is
the escape hatch if a GPU's Triton compile fails. Its numbers are checked in Pallas interpret mode
on CPU (``tests/test_attention_backends.py``); no GPU has compiled or run it yet.

Temporal attention stays on the XLA path on TPU: its rows are F frames long, F < 128 in every
program here (16 frames per pass; long-video windows of 16), and TAR / attention hooks need the
whole (F, F) logits. The plain path holds (batch * pixels * heads, F, F) float32 logits (and
their exp): at VideoCrafter2's 40x64 latents, 5 heads and batch 2 (CFG) that is 25 MiB at F = 16,
400 MiB at F = 64 and 1.6 GiB at F = 128 per temporal attention call, so whole-row temporal
attention is comfortable on a 16+ GiB accelerator up to F = 128 (6.4 GiB at F = 256 is not).
Without TAR/hooks, temporal rows of >= 128 frames go to the kernel like spatial ones.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp

LogitTransform = Callable[[jax.Array], jax.Array]

BACKENDS = ("xla", "cudnn", "auto", "pallas")

# TPU Pallas flash attention (backend "auto" on TPU, or "pallas"). Read at call time.
PALLAS_MIN_LEN = 128  # query rows from which "auto" uses the kernel on TPU
PALLAS_LANE = 128  # sequences are padded to a multiple of this (the kernel's key block must be)
TRITON_BLOCK = 128  # Pallas GPU mha's default block: longer sequences are padded to a multiple of it
PALLAS_MAX_BLOCK = 512  # largest query / key block (a multiple of 128 dividing the padded length)

# Keys per row from which the XLA path goes blockwise (spatial self-attention at 32x32 latents and up;
# text cross-attention (77 keys) and temporal attention (F keys) stay on the fused path).
BLOCK_THRESHOLD = 512
BLOCK_Q = 1024
BLOCK_K = 1024
TILE_ELEMS = 1 << 20  # CPU: float32 logits per tile (4 MiB), fits a CPU L2/L3 slice
TILE_ELEMS_ACCEL = 1 << 26  # GPU/TPU: 256 MiB tiles, so the sequential tile loop stays short


_ROWS: contextvars.ContextVar = contextvars.ContextVar("vstar_attention_rows", default=None)


@contextlib.contextmanager
def rows_on_mesh(mesh, axes):
    """While tracing inside: attention's leading (batch / rows) axis is split over mesh axis or axes
    ``axes`` of ``mesh`` (a Mesh or AbstractMesh), so the Pallas kernel runs under shard_map."""
    token = _ROWS.set(None if axes is None else (mesh, axes))
    try:
        yield
    finally:
        _ROWS.reset(token)


def _rows_split(batch: int, batch_k: int):
    """(mesh, axes) to shard_map the kernel over, None for no mesh, False when the rows cannot split."""
    rows = _ROWS.get()
    if rows is None:
        return None
    mesh, axes = rows
    n = math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
    if n == 1:
        return None
    return rows if batch % n == 0 and batch_k == batch else False


def _tile_elems() -> int:
    return TILE_ELEMS if jax.default_backend() == "cpu" else TILE_ELEMS_ACCEL


def _use_cudnn(backend: str, logit_transform, return_weights: bool, dtype, relative: bool = False) -> bool:
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    if logit_transform is not None or return_weights or relative:
        # A data-dependent logit transform (TAR) or weight capture needs the explicit logits.
        return False
    if backend in ("xla", "pallas"):
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
    blockwise: Optional[bool] = None,
    block_threshold: Optional[int] = None,
    block_q: int = BLOCK_Q,
    block_k: int = BLOCK_K,
    _no_pallas: bool = False,
):
    """Scaled dot-product attention with a pluggable transform of the logits.

    Args:
      q, k, v: (B, Lq, H, D), (B, Lk, H, D), (B, Lk, H, D).
      mask: optional bool array broadcastable to (B, H, Lq, Lk); True = attend.
      logit_transform: optional ``f(logits) -> logits`` on float32 (B, H, Lq, Lk)
        logits, applied after scaling and masking, before the softmax.
      backend: "xla" (explicit einsum + softmax), "cudnn" (fused, GPU only), "auto" (cuDNN on GPU
        when the dtype and options allow, the Pallas GPU (Triton) kernel for float32 self-attention
        that needs no whole rows or mask; on TPU the Pallas flash kernel when nothing needs whole
        rows and Lq >= PALLAS_MIN_LEN; else XLA) or "pallas" (the TPU kernel, always; TPU only, or
        CPU in Pallas interpret mode).
      return_weights: also return the softmax weights (B, H, Lq, Lk), float32.
      rel_k, rel_v: optional (Lq, Lk, D) relative-position embeddings shared over heads (lvdm's
        ``RelativePosition``, Shaw et al. 2018): logits += q . rel_k[i, j] (scaled like q . k) and
        out += sum_j weights[i, j] rel_v[i, j].
      blockwise: XLA path only. None (default): blockwise online softmax when ``Lk >= block_threshold``
        (default: the module's ``BLOCK_THRESHOLD``, read at call time)
        and nothing needs whole rows (no logit_transform, weights or relative position); True: force
        it (an error if one of those is asked for); False: never.
      block_q, block_k: largest query / key block of the blockwise path (sequences are split into
        near-equal blocks, the last padded).
    """
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention expects (B, L, H, D) inputs, got {q.shape}, {k.shape}, {v.shape}")
    relative = rel_k is not None or rel_v is not None
    if backend in ("auto", "pallas") and not _no_pallas:
        simple = logit_transform is None and not return_weights and not relative and mask is None
        if backend == "pallas":
            if not simple:
                raise ValueError("attention backend 'pallas' takes no logit_transform, weights, relative position "
                                 "or mask; use 'auto'")
            if not _pallas_shapes_ok(q, k, v) or _rows_split(q.shape[0], k.shape[0]) is False:
                raise ValueError(f"the Pallas flash kernel does not take shapes {q.shape}, {k.shape}, {v.shape}"
                                 " (on this mesh)")
            return _pallas_on_rows(q, k, v)
        kernels = {}
        if simple and blockwise is not True and _rows_split(q.shape[0], k.shape[0]) is not False:
            if _pallas_shapes_ok(q, k, v) and q.shape[1] >= PALLAS_MIN_LEN:
                kernels["tpu"] = _pallas_on_rows
            if _triton_shapes_ok(q, k, v):
                kernels["cuda"] = _triton_on_rows
        if kernels:
            rest = lambda q_, k_, v_: attention(q_, k_, v_, backend="auto", blockwise=blockwise,  # noqa: E731
                                                block_threshold=block_threshold, block_q=block_q, block_k=block_k,
                                                _no_pallas=True)
            return jax.lax.platform_dependent(q, k, v, default=rest, **kernels)
    if _use_cudnn(backend, logit_transform, return_weights, q.dtype, relative):
        return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")
    whole_rows = logit_transform is not None or return_weights or relative
    if blockwise and whole_rows:
        raise ValueError("blockwise attention cannot apply a logit_transform, return weights or use relative "
                         "positions (they need whole logit rows); leave blockwise=None")
    if blockwise is None:
        threshold = BLOCK_THRESHOLD if block_threshold is None else block_threshold
        blockwise = not whole_rows and k.shape[1] >= threshold
    if blockwise:
        return _blockwise(q, k, v, mask, block_q, block_k)
    if not whole_rows:
        return _fused(q, k, v, mask)
    return _plain(q, k, v, mask, logit_transform, return_weights, rel_k, rel_v)


def _pallas_shapes_ok(q, k, v) -> bool:
    """Whether the Pallas TPU flash kernel takes these shapes/dtypes (head dim <= 128 or a multiple of
    128, equal q/k/v head dims, float32 or bfloat16)."""
    d = q.shape[-1]
    return (k.shape[-1] == d and v.shape[-1] == d and (d <= 128 or d % 128 == 0)
            and q.dtype in (jnp.float32, jnp.bfloat16) and q.dtype == k.dtype == v.dtype)


def _pallas_block(length: int) -> int:
    """Largest multiple of PALLAS_LANE that divides ``length`` (itself such a multiple), <= PALLAS_MAX_BLOCK."""
    best = PALLAS_LANE
    for b in range(PALLAS_LANE, min(length, PALLAS_MAX_BLOCK) + 1, PALLAS_LANE):
        if length % b == 0:
            best = b
    return best


def _on_rows(kernel, q, k, v):
    """``kernel(q, k, v)``, per device under shard_map when inside :func:`rows_on_mesh` (XLA cannot
    partition a Pallas call)."""
    rows = _rows_split(q.shape[0], k.shape[0])
    if not rows:
        return kernel(q, k, v)
    from jax.sharding import PartitionSpec as P  # noqa: PLC0415

    mesh, axes = rows
    spec = P(axes)
    return jax.shard_map(kernel, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(q, k, v)


def _pallas_on_rows(q, k, v):
    """:func:`_pallas`, per device under shard_map when inside :func:`rows_on_mesh`."""
    return _on_rows(_pallas, q, k, v)


def _triton_on_rows(q, k, v):
    """:func:`_triton`, per device under shard_map when inside :func:`rows_on_mesh`."""
    return _on_rows(_triton, q, k, v)


def _triton_shapes_ok(q, k, v) -> bool:
    """Whether ``auto`` sends this call to the Pallas GPU kernel on CUDA: float32 (lower precisions go to
    cuDNN) self-attention (Lq == Lk: mha masks padding with one segment-id array for queries and keys),
    equal head dims."""
    d = q.shape[-1]
    return (q.shape[1] == k.shape[1] == v.shape[1] and k.shape[-1] == d and v.shape[-1] == d
            and q.dtype == k.dtype == v.dtype == jnp.float32)


def _triton_length(length: int) -> int:
    """The sequence length the Triton kernel runs at: a multiple of TRITON_BLOCK, or below it the next
    power of two (Triton block shapes are powers of two)."""
    if length > TRITON_BLOCK:
        return -(-length // TRITON_BLOCK) * TRITON_BLOCK
    return 1 << (length - 1).bit_length()


def _triton(q, k, v, interpret: bool = False):
    """Self-attention through JAX's Pallas GPU (Triton) flash-attention kernel: (B, L, H, D) in and out.

    The sequence is padded to :func:`_triton_length`; padding is masked with segment ids (real tokens
    1, padding 0), so real queries give padded keys weight exactly 0, and padded query rows (which
    attend only padding) are dropped. ``interpret``: Pallas interpret mode (any host; tests)."""
    from jax.experimental.pallas.ops.gpu import attention as gpu_attention  # noqa: PLC0415

    b, length, _, d = q.shape
    padded = _triton_length(length)
    segment_ids = None
    if padded != length:
        q, k, v = (jnp.pad(t, ((0, 0), (0, padded - length), (0, 0), (0, 0))) for t in (q, k, v))
        segment_ids = jnp.broadcast_to((jnp.arange(padded) < length).astype(jnp.int32), (b, padded))
    out = gpu_attention.mha(q, k, v, segment_ids, sm_scale=_scale(d), interpret=interpret)
    return out[:, :length]


def _pallas(q, k, v):
    """Attention through JAX's Pallas TPU flash-attention kernel: (B, L, H, D) in and out.

    Both sequences are padded to multiples of PALLAS_LANE; padded keys are masked with segment ids
    (queries segment 1, real keys 1, padding 0), padded query rows are computed and dropped."""
    from jax.experimental.pallas.ops.tpu import flash_attention as fa  # noqa: PLC0415

    b, lq, h, d = q.shape
    lk = k.shape[1]
    lq_p, lk_p = (-(-n // PALLAS_LANE) * PALLAS_LANE for n in (lq, lk))

    def heads_first(t, length, padded):
        t = t.transpose(0, 2, 1, 3)  # (B, H, L, D)
        return jnp.pad(t, ((0, 0), (0, 0), (0, padded - length), (0, 0))) if padded != length else t

    qt, kt, vt = heads_first(q, lq, lq_p), heads_first(k, lk, lk_p), heads_first(v, lk, lk_p)
    segment_ids = None
    if lk_p != lk:
        kv_ids = jnp.broadcast_to((jnp.arange(lk_p) < lk).astype(jnp.int32), (b, lk_p))
        segment_ids = fa.SegmentIds(q=jnp.ones((b, lq_p), jnp.int32), kv=kv_ids)
    bq, bk = _pallas_block(lq_p), _pallas_block(lk_p)
    blocks = fa.BlockSizes(block_q=bq, block_k_major=bk, block_k=bk, block_b=1,
                           block_q_major_dkv=bq, block_k_major_dkv=bk, block_k_dkv=bk, block_q_dkv=bq,
                           block_k_major_dq=bk, block_k_dq=bk, block_q_dq=bq)
    out = fa.flash_attention(qt, kt, vt, segment_ids=segment_ids, sm_scale=_scale(d), block_sizes=blocks)
    return out[:, :, :lq].transpose(0, 2, 1, 3)


def _scale(depth: int) -> float:
    return 1.0 / float(depth) ** 0.5


def _heads_first(*ts):
    """(B, L, H, D) -> (B, H, L, D): the einsums below then have their batch dimensions leading, which XLA's
    CPU dots want; with (B, L, H, D) operands they ran 1.5-2.2x slower (benchmarks/RESULTS.md, issue 30)."""
    return tuple(t.transpose(0, 2, 1, 3) for t in ts)


def _plain(q, k, v, mask, logit_transform, return_weights, rel_k, rel_v):
    qh, kh, vh = _heads_first(q, k, v)
    logits = jnp.einsum("bhqd,bhkd->bhqk", qh, kh, preferred_element_type=jnp.float32)
    if rel_k is not None:
        logits = logits + jnp.einsum("bhqd,qkd->bhqk", qh, rel_k.astype(q.dtype), preferred_element_type=jnp.float32)
    logits = logits * _scale(q.shape[-1])
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    if logit_transform is not None:
        logits = logit_transform(logits)
    if not return_weights:
        # Normalise after the products (the fused path's arithmetic: with zero relative tables or an
        # identity transform this path gives bit-for-bit the fused path's answer).
        p = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
        out = jnp.einsum("bhqk,bhkd->bhqd", p.astype(v.dtype), vh, preferred_element_type=jnp.float32)
        if rel_v is not None:
            out = out + jnp.einsum("bhqk,qkd->bhqd", p.astype(v.dtype), rel_v.astype(v.dtype),
                                   preferred_element_type=jnp.float32)
        return (out / p.sum(axis=-1)[..., None]).transpose(0, 2, 1, 3).astype(q.dtype)
    weights = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(v.dtype), vh, preferred_element_type=jnp.float32)
    if rel_v is not None:
        out = out + jnp.einsum("bhqk,qkd->bhqd", weights.astype(v.dtype), rel_v.astype(v.dtype),
                               preferred_element_type=jnp.float32)
    return out.transpose(0, 2, 1, 3).astype(q.dtype), weights


def _fused(q, k, v, mask):
    """Softmax attention with the normalisation after the weights @ V product (same value as _plain)."""
    qh, kh, vh = _heads_first(q, k, v)
    logits = jnp.einsum("bhqd,bhkd->bhqk", qh, kh, preferred_element_type=jnp.float32) * _scale(q.shape[-1])
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    p = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
    denom = p.sum(axis=-1)  # (B, H, Lq)
    out = jnp.einsum("bhqk,bhkd->bhqd", p.astype(v.dtype), vh, preferred_element_type=jnp.float32)
    return (out / denom[..., None]).transpose(0, 2, 1, 3).astype(q.dtype)


def _split(length: int, block: int):
    """(number of blocks, block size) covering ``length`` with near-equal blocks of at most ``block``."""
    n = max(1, math.ceil(length / max(1, block)))
    size = math.ceil(length / n)
    return n, size


def _largest_divisor_at_most(n: int, cap: int) -> int:
    cap = max(1, min(n, cap))
    for d in range(cap, 0, -1):
        if n % d == 0:
            return d
    return 1


def _blockwise(q, k, v, mask, block_q: int, block_k: int):
    """Online-softmax attention over (batch*head group, query block) tiles, scanning key blocks."""
    b, lq, h, d = q.shape
    lk = k.shape[1]
    n = b * h
    nq, bq = _split(lq, block_q)
    nk, bk = _split(lk, block_k)
    g = _largest_divisor_at_most(n, _tile_elems() // (bq * bk))  # (batch, head) rows per tile
    scale = _scale(d)
    neg = jnp.finfo(jnp.float32).min

    def heads_first(t, length, padded):
        t = t.transpose(0, 2, 1, 3).reshape(n, length, t.shape[-1])
        if padded != length:
            t = jnp.pad(t, ((0, 0), (0, padded - length), (0, 0)))
        return t

    qf = heads_first(q, lq, nq * bq).reshape(n // g, g, nq * bq, d)
    kf = heads_first(k, lk, nk * bk).reshape(n // g, g, nk, bk, d)
    vf = heads_first(v, lk, nk * bk).reshape(n // g, g, nk, bk, v.shape[-1])
    key_valid = (jnp.arange(nk * bk) < lk).reshape(nk, bk)
    if mask is not None:
        m = jnp.broadcast_to(mask, (b, h, lq, lk)).reshape(n, lq, lk)
        m = jnp.pad(m, ((0, 0), (0, nq * bq - lq), (0, nk * bk - lk)))
        m = m.reshape(n // g, g, nq * bq, nk, bk)

    def tile(index):
        gi, qi = index // nq, index % nq
        qt = jax.lax.dynamic_slice_in_dim(qf[gi], qi * bq, bq, axis=1)  # (g, bq, d)
        kt, vt = kf[gi], vf[gi]  # (g, nk, bk, d)
        mt = jax.lax.dynamic_slice_in_dim(m[gi], qi * bq, bq, axis=1) if mask is not None else None

        def logits_of(j):
            s = jnp.einsum("gqd,gkd->gqk", qt, kt[:, j], preferred_element_type=jnp.float32) * scale
            if mt is not None:
                s = jnp.where(mt[:, :, j], s, neg)  # masked: as the plain path (uniform if a whole row is)
            if nk * bk != lk:
                s = jnp.where(key_valid[j][None, None, :], s, -jnp.inf)  # padding: weight exactly 0
            return s

        if nk == 1:
            s = logits_of(0)
            p = jnp.exp(s - jax.lax.stop_gradient(s.max(axis=-1, keepdims=True)))
            acc = jnp.einsum("gqk,gkd->gqd", p.astype(vt.dtype), vt[:, 0], preferred_element_type=jnp.float32)
            return acc / p.sum(axis=-1)[..., None]

        def step(carry, j):
            m_run, l_run, acc = carry
            s = logits_of(j)
            m_new = jax.lax.stop_gradient(jnp.maximum(m_run, s.max(axis=-1)))
            alpha = jnp.exp(m_run - m_new)
            p = jnp.exp(s - m_new[..., None])
            acc = acc * alpha[..., None] + jnp.einsum("gqk,gkd->gqd", p.astype(vt.dtype), vt[:, j],
                                                      preferred_element_type=jnp.float32)
            return (m_new, l_run * alpha + p.sum(axis=-1), acc), None

        init = (jnp.full((g, bq), neg, jnp.float32), jnp.zeros((g, bq), jnp.float32),
                jnp.zeros((g, bq, vt.shape[-1]), jnp.float32))
        (_, l_run, acc), _ = jax.lax.scan(step, init, jnp.arange(nk))
        return acc / l_run[..., None]

    out = jax.lax.map(tile, jnp.arange((n // g) * nq))  # (n//g * nq, g, bq, dv)
    dv = v.shape[-1]
    out = out.reshape(n // g, nq, g, bq, dv).transpose(0, 2, 1, 3, 4).reshape(n, nq * bq, dv)[:, :lq]
    return out.reshape(b, h, lq, dv).transpose(0, 2, 1, 3).astype(q.dtype)
