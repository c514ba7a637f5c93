"""The TPU Pallas flash-attention path, run on CPU in Pallas interpret mode, against the XLA path.

``backend="pallas"`` calls the same wrapper (padding to 128-multiples, segment-id key mask,
block choice) that ``backend="auto"`` lowers for TPU; ``force_tpu_interpret_mode`` runs the kernel's
body as ordinary JAX on the CPU, so the padding and masking arithmetic is checked here without a TPU.
Whether Mosaic compiles it for a given TPU is checked only on a TPU VM (benchmarks/tpu_check.sh).

Shapes are the tiny project's: head dim 8, text context of 77 keys (padded to 128, 51 masked keys),
query lengths that are and are not multiples of 128.

Bounds, relative to the reference output's largest magnitude (``rel_err``):
* float32 <= 1e-5: both paths compute float32 logits and a float32 softmax; they differ only in
  summation order (online softmax over 128-key blocks vs one row), ~1e-7 per element, measured
  <= 6e-7; 1e-5 leaves 15x room while a missing key mask (51 padding keys of 128 getting weight)
  or a wrong 1/sqrt(d) scale gives errors of 1e-1 and more.
* bfloat16 <= 2e-2 against the float32 answer on the same (bf16-rounded) inputs: the kernel rounds the
  unnormalised probabilities to bfloat16 before the P @ V product and rounds the output to bfloat16
  (unit roundoff 2^-9 = 2e-3 each); measured 3e-3 to 4e-3 -- the XLA bf16 path's own error is the
  same size. 2e-2 is ~5x that, still far below a masking or scale mistake.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from conftest import rel_err
from vstar_jax.models import attention as A
from vstar_jax.models.attention import attention

TOL = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}


def _qkv(b, lq, lk, h, d, dtype, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, lq, h, d)) * 1.5
    k = rng.standard_normal((b, lk, h, d)) * 1.5
    v = rng.standard_normal((b, lk, h, d))
    return tuple(jnp.asarray(t, dtype) for t in (q, k, v))


def _pallas(q, k, v):
    with pltpu.force_tpu_interpret_mode():
        return jax.jit(lambda q, k, v: attention(q, k, v, backend="pallas"))(q, k, v)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("lq,lk", [(64, 77), (256, 256)], ids=["cross77", "self256"])
def test_pallas_kernel_matches_xla(lq, lk, dtype, monkeypatch):
    """Text cross-attention (77 keys padded to 128, 64 queries padded to 128) and spatial
    self-attention (256 tokens in blocks of 128: two key blocks, so the online softmax rescales)."""
    monkeypatch.setattr(A, "PALLAS_MAX_BLOCK", 128)
    q, k, v = _qkv(2, lq, lk, 2, 8, dtype)
    got = _pallas(q, k, v)
    assert got.shape == q.shape and got.dtype == q.dtype
    f32 = [t.astype(jnp.float32) for t in (q, k, v)]
    want = attention(*f32, backend="xla", blockwise=False)
    err = rel_err(np.asarray(got, np.float32), np.asarray(want))
    assert err <= TOL[dtype], (lq, lk, dtype, err)


def test_pallas_blocks_and_refusals():
    assert A._pallas_block(128) == 128 and A._pallas_block(384) == 384 and A._pallas_block(2560) == 512
    assert A._pallas_block(640) == 128 and A._pallas_block(768) == 384
    q, k, v = _qkv(1, 16, 16, 1, 8, jnp.float32)
    with pytest.raises(ValueError, match="pallas"):
        attention(q, k, v, backend="pallas", logit_transform=lambda s: s)
    with pytest.raises(ValueError, match="pallas"):
        attention(q, k, v, backend="pallas", return_weights=True)


@pytest.mark.parametrize("lq,lk", [(128, 77), (160, 160)], ids=["cross77", "self160"])
def test_auto_on_cpu_runs_the_xla_path(lq, lk):
    """Backend auto with kernel-sized rows: on this CPU host lax.platform_dependent takes the default
    branch, the XLA path, bit for bit (the kernel branches are lowered only for TPU, and for CUDA)."""
    q, k, v = _qkv(1, lq, lk, 2, 8, jnp.float32)
    got = jax.jit(lambda q, k, v: attention(q, k, v, backend="auto"))(q, k, v)
    want = jax.jit(lambda q, k, v: attention(q, k, v, backend="xla"))(q, k, v)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    text = jax.jit(lambda q, k, v: attention(q, k, v, backend="auto")).lower(q, k, v).as_text()
    assert "tpu_custom_call" not in text and "triton" not in text


# ----------------------------------------------------------------------------- GPU: Pallas Triton
def _triton(q, k, v):
    return jax.jit(lambda q, k, v: A._triton(q, k, v, interpret=True))(q, k, v)


@pytest.mark.parametrize("length", [40, 160, 256], ids=["pad40to64", "pad160to256", "self256"])
def test_triton_kernel_matches_xla(length):
    """What backend ``auto`` runs for float32 self-attention on CUDA, in Pallas interpret mode: 40 tokens
    padded to 64 (the next power of two), 160 padded to 256 (two 128-key blocks: the online softmax
    rescales), 256 unpadded. Bound 1e-5 for the reason given above (float32, summation order only);
    a padding key left unmasked (24 or 96 keys of zeros getting weight) errs by 1e-1 and more."""
    q, k, v = _qkv(2, length, length, 2, 8, jnp.float32)
    got = _triton(q, k, v)
    assert got.shape == q.shape and got.dtype == q.dtype
    err = rel_err(np.asarray(got), np.asarray(attention(q, k, v, backend="xla", blockwise=False)))
    assert err <= TOL[jnp.float32], (length, err)


def test_triton_lengths():
    assert [A._triton_length(n) for n in (1, 16, 40, 64, 128, 129, 160, 256, 2560)] == \
        [1, 16, 64, 64, 128, 256, 256, 256, 2560]


def test_auto_lowers_triton_for_cuda_only_where_it_can():
    """Backend ``auto`` exported for CUDA from this CPU: float32 self-attention is one Triton call; what
    needs whole rows (a logit transform), a mask, cross-attention (77 keys: the padding could not be
    masked) and bfloat16 (cuDNN's on a GPU) are not, and neither the CPU nor the TPU lowering sees it."""
    from vstar_jax import lowering as L

    def calls(fn, shapes, platform="cuda", dtype=jnp.float32):
        args = tuple(jax.ShapeDtypeStruct(s, dtype) for s in shapes)
        lo = L.export("a", jax.jit(fn), args, platform, "float32", custom_calls=(L.TRITON_TARGET,))
        return lo.text.count(L.TRITON_TARGET)

    self_ = [(2, 160, 2, 16)] * 3
    cross = [(2, 160, 2, 16), (2, 77, 2, 16), (2, 77, 2, 16)]
    auto = lambda q, k, v: attention(q, k, v, backend="auto")  # noqa: E731
    assert calls(auto, self_) == 1
    assert calls(auto, self_, "cpu") == 0 and calls(auto, self_, "tpu") == 0
    assert calls(lambda q, k, v: attention(q, k, v, backend="auto", logit_transform=lambda s: s * 2), self_) == 0
    assert calls(lambda q, k, v: attention(q, k, v, backend="auto", mask=jnp.ones((160, 160), bool)), self_) == 0
    assert calls(auto, cross) == 0
    assert calls(auto, self_, dtype=jnp.bfloat16) == 0
    assert calls(lambda q, k, v: attention(q, k, v, backend="xla"), self_) == 0
