"""The one attention function's three XLA paths (plain, fused, blockwise) are one function.

Random q/k/v (never constant inputs: with equal keys every softmax is uniform and a dropped
1/sqrt(d) scale or a wrong key block would still pass), odd lengths so the blockwise path pads
its last query and key block, several key blocks so the online softmax really rescales.
Tolerance 2e-6 relative to the output's largest magnitude: float32 summation order only.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import rel_err
from vstar_jax.models import attention as A
from vstar_jax.models.attention import attention

TOL = 2e-6


def _qkv(b=2, lq=37, lk=53, h=3, d=8, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, lq, h, d)) * 1.5
    k = rng.standard_normal((b, lk, h, d)) * 1.5
    v = rng.standard_normal((b, lk, h, d))
    return tuple(jnp.asarray(t.astype(dtype)) for t in (q, k, v))


def _numpy_attention(q, k, v, mask=None):
    """softmax(q k^T / sqrt(d)) v written out in float64 numpy, (B, L, H, D) layout."""
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    if mask is not None:
        s = np.where(np.asarray(mask), s, -1e30)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", w, v)


@pytest.mark.parametrize("bq,bk", [(8, 16), (16, 1024), (1024, 7), (37, 53)])
def test_blockwise_equals_plain_and_numpy(bq, bk):
    q, k, v = _qkv()
    ref = _numpy_attention(q, k, v)
    plain = attention(q, k, v, blockwise=False)
    block = attention(q, k, v, blockwise=True, block_q=bq, block_k=bk)
    assert rel_err(plain, ref) < TOL
    assert rel_err(block, ref) < TOL
    # The scale matters: without 1/sqrt(d) the answer is far off (so the reference really checks it).
    unscaled = _numpy_attention(q * np.sqrt(q.shape[-1]), k, v)
    assert rel_err(block, unscaled) > 1e-2


@pytest.mark.parametrize("mask_shape", [(2, 1, 37, 53), (1, 3, 1, 53), (37, 53)])
def test_blockwise_with_masks(mask_shape):
    q, k, v = _qkv(seed=1)
    mask = np.random.default_rng(2).random(mask_shape) > 0.4
    mask[..., 0] = True  # every row attends somewhere
    mask = jnp.asarray(mask)
    ref = _numpy_attention(q, k, v, np.broadcast_to(mask, (2, 3, 37, 53)))
    for kw in (dict(blockwise=False), dict(blockwise=True, block_q=8, block_k=16), dict(blockwise=True)):
        assert rel_err(attention(q, k, v, mask=mask, **kw), ref) < TOL, kw


def test_causal_mask_blockwise_matches_plain():
    q, k, v = _qkv(lq=40, lk=40, seed=3)
    causal = jnp.tril(jnp.ones((40, 40), bool))
    want = attention(q, k, v, mask=causal, blockwise=False)
    got = attention(q, k, v, mask=causal, blockwise=True, block_q=8, block_k=8)
    assert rel_err(got, want) < TOL
    assert rel_err(got, _numpy_attention(q, k, v, np.broadcast_to(causal, (2, 3, 40, 40)))) < TOL


def test_fused_path_equals_plain_softmax_path():
    """The default short-sequence path (normalise after weights @ V) equals explicit softmax weights."""
    q, k, v = _qkv(lq=16, lk=16, seed=4)
    fused = attention(q, k, v)
    out, w = attention(q, k, v, return_weights=True)  # the plain path (whole rows asked for)
    assert rel_err(fused, out) < TOL
    assert rel_err(fused, _numpy_attention(q, k, v)) < TOL
    np.testing.assert_allclose(np.asarray(w).sum(-1), 1.0, atol=1e-6)


def test_automatic_choice_and_whole_row_transforms():
    """Long key sequences go blockwise by themselves; TAR-like transforms, weights and relative position
    keep whole rows (and forcing blockwise with them is an error, not a silent fallback)."""
    q, k, v = _qkv(lq=20, lk=600, seed=5)
    calls = []
    orig = A._blockwise
    try:
        A._blockwise = lambda *a, **kw: calls.append(1) or orig(*a, **kw)
        auto = attention(q, k, v)
        assert calls, "600 keys >= BLOCK_THRESHOLD should take the blockwise path"
        calls.clear()
        attention(q, k, v, block_threshold=10_000)
        assert not calls
        transform = lambda s: s + 0.3 * s.max(axis=-1, keepdims=True)  # noqa: E731 (TAR-shaped)
        attention(q, k, v, logit_transform=transform)
        assert not calls
    finally:
        A._blockwise = orig
    assert rel_err(auto, _numpy_attention(q, k, v)) < TOL
    with pytest.raises(ValueError, match="whole logit rows"):
        attention(q, k, v, blockwise=True, logit_transform=transform)
    with pytest.raises(ValueError, match="whole logit rows"):
        attention(q, k, v, blockwise=True, return_weights=True)


def test_blockwise_under_jit_and_grad_matches_plain():
    q, k, v = _qkv(lq=24, lk=24, seed=6)
    loss = lambda blk: (lambda q, k, v: jnp.sum(jnp.sin(attention(q, k, v, blockwise=blk, block_q=8, block_k=8))))  # noqa: E731
    g_plain = jax.grad(loss(False), argnums=(0, 1, 2))(q, k, v)
    g_block = jax.jit(jax.grad(loss(True), argnums=(0, 1, 2)))(q, k, v)
    for a, b in zip(g_plain, g_block):
        assert rel_err(b, a) < 1e-5


def test_bfloat16_inputs_close_to_float32():
    """bf16 q/k/v (logits and softmax still float32): within 2e-2 of the float32 answer on every path."""
    q, k, v = _qkv(lq=64, lk=64, seed=7)
    ref = attention(q, k, v, blockwise=False)
    q16, k16, v16 = (t.astype(jnp.bfloat16) for t in (q, k, v))
    for kw in (dict(blockwise=False), dict(blockwise=True, block_q=16, block_k=16)):
        out = attention(q16, k16, v16, **kw)
        assert out.dtype == jnp.bfloat16
        err = rel_err(out.astype(jnp.float32), ref)
        assert 1e-5 < err < 2e-2, (kw, err)
