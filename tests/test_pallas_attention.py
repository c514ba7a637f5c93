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


def test_auto_on_cpu_runs_the_xla_path():
    """Backend auto with kernel-sized rows: on this CPU host lax.platform_dependent takes the default
    branch, the XLA path, bit for bit (the kernel branch is lowered only for TPU)."""
    q, k, v = _qkv(1, 128, 77, 2, 8, jnp.float32)
    got = jax.jit(lambda q, k, v: attention(q, k, v, backend="auto"))(q, k, v)
    want = jax.jit(lambda q, k, v: attention(q, k, v, backend="xla"))(q, k, v)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    text = jax.jit(lambda q, k, v: attention(q, k, v, backend="auto")).lower(q, k, v).as_text()
    assert "tpu_custom_call" not in text
