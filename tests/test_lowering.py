"""The device programs lower for TPU and for CUDA on this CPU-only machine (``jax.export``).

What lowering checks: every primitive has a lowering rule for the platform, backend ``auto`` puts the
UNet's spatial self- and text cross-attention on the Pallas TPU flash kernel when lowering for TPU
(``tpu_custom_call`` in the StableHLO text, none for CUDA) and its float32 self-attention on the Pallas
GPU (Triton) kernel when lowering for CUDA, the mesh program's shardings (2x2
AbstractMesh) are expressible with the kernel inside (Mosaic kernels need shard_map), and in bfloat16
no float32 matmul/convolution is left but the ones the UNet keeps in float32 on purpose. What it
cannot check: that Mosaic / XLA:GPU compile it, its speed, its memory (see benchmarks/tpu_check.sh).

Programs on the tiny config (configs/unet_tiny.py, 16x16 latents, 4 frames; widths 32 / 64): at
16x16 the level-0 transformer has 256 tokens, so its self-attention (256 keys) and cross-attention
(77 text keys padded to 128) take the kernel: 2 kernel calls per UNet trace. Level 1 (8x8 = 64
tokens) and the mid-block are under PALLAS_MIN_LEN (128) and stay on XLA, as does every temporal
attention (4 frames, TAR). The sampling loops trace the UNet once (inside the scan), so 2 as well.

The fp32 variants of the three whole programs add no check the fp32 UNet call does not make (the
kernel choice does not depend on the dtype) and are marked slow; CI time of the rest 29-47 s measured on
the shared 2-core machine under load (each (program, dtype) is traced once and lowered for both
platforms; the parameters are ``eval_shape``'d once).
"""
import pytest

from vstar_jax import lowering as L

# Level 0 spatial self-attention + cross-attention of the tiny UNet at 16x16 latents (see above).
KERNELS_TPU = 2
# CUDA, float32 only: the Pallas Triton kernel for self-attention without TAR (spatial and temporal);
# the module text holds one kernel function per distinct call shape, 5 in the tiny UNet call. In
# bfloat16 backend auto picks cuDNN, which JAX decides at trace time on a GPU host (none here): 0.
KERNELS_CUDA_F32_UNET = 5

CASES = [
    ("unet", "float32"), ("unet", "bfloat16"),
    ("sample_tar_vsp", "bfloat16"), pytest.param("sample_tar_vsp", "float32", marks=pytest.mark.slow),
    ("sample_genl", "bfloat16"), pytest.param("sample_genl", "float32", marks=pytest.mark.slow),
    ("unet_sharded", "bfloat16"), pytest.param("unet_sharded", "float32", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("program,dtype", CASES)
def test_program_lowers_for_tpu_and_cuda(program, dtype):
    lowered, params = L.lower(program, ("tpu", "cuda"), dtype)
    tpu, cuda = lowered["tpu"], lowered["cuda"]
    assert tpu.text and cuda.text
    # TPU: the spatial/cross attention is the Pallas kernel; CUDA (and the CPU host) never see it.
    assert tpu.kernel_calls() == KERNELS_TPU, (program, dtype, tpu.kernel_calls())
    assert "tpu_custom_call" not in cuda.text and L.TRITON_TARGET not in tpu.text
    if dtype == "bfloat16":
        assert cuda.kernel_calls() == 0, (program, cuda.kernel_calls())
    elif program == "unet":
        assert cuda.kernel_calls() == KERNELS_CUDA_F32_UNET, cuda.kernel_calls()
    else:
        assert cuda.kernel_calls() > 0, (program, dtype)
    assert tpu.sizes()["devices"] == (4 if program == "unet_sharded" else 1)
    if dtype == "bfloat16":
        # every dot/conv with a float32 operand is one the UNet keeps in float32 on purpose
        for lo in (tpu, cuda):
            assert dict(lo.f32_dots()) == L.F32_DOTS_BF16, (program, lo.platform, dict(lo.f32_dots()))
            assert any(k[1] == "bf16" for k in lo.dots())  # and the bulk is bf16 (not vacuous)
    assert L.param_bytes(params) > 0


def test_module_text_says_where_attention_logits_live():
    """What the XLA-vs-Triton table of RESULTS.md is read from (``benchmarks/lowering_check.py
    --gpu-attention``), on small CUDA exports: the fused XLA path names the whole (Lq, Lk) logits, the
    blockwise path only its (rows, block, block) tiles inside a loop, and JAX's Pallas GPU (Triton) flash
    kernel is one custom call whose module names no tensor larger than its operands. 4.5 s under load."""
    import jax
    import jax.numpy as jnp
    from jax.experimental.pallas.ops.gpu import attention as ga

    from vstar_jax.models.attention import attention

    q = jax.ShapeDtypeStruct((2, 256, 2, 16), jnp.float32)
    with L.accelerator_trace():
        fused = L.export("fused", jax.jit(lambda q, k, v: attention(q, k, v, backend="xla")), (q, q, q), "cuda",
                         "float32")
        tiled = L.export("blockwise", jax.jit(lambda q, k, v: attention(q, k, v, backend="xla", blockwise=True,
                                                                         block_q=64, block_k=64)),
                         (q, q, q), "cuda", "float32")
    triton = L.export("triton", jax.jit(lambda q, k, v: ga.mha(q, k, v, None, sm_scale=0.25)), (q, q, q), "cuda",
                      "float32", custom_calls=("__gpu$xla.gpu.triton",))
    assert fused.names_tensor(256, 256) and not fused.custom_calls()
    assert not tiled.names_tensor(256, 256) and tiled.names_tensor(64, 64) and tiled.ops()["while"] >= 1
    assert tiled.largest_tensor()[0][-2:] != (256, 256)
    assert dict(triton.custom_calls()) == {"__gpu$xla.gpu.triton": 1} and not triton.names_tensor(256, 256)
    assert triton.largest_tensor() == ((2, 256, 2, 16), "f32", 2 * 256 * 2 * 16 * 4)  # the operands / result
    assert fused.largest_tensor() == ((2, 2, 256, 256), "f32", 2 * 2 * 256 * 256 * 4)
