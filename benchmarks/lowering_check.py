"""The device programs lowered for TPU / CUDA without the hardware, and what their modules say.

    python benchmarks/lowering_check.py --platforms tpu,cuda            # tiny programs, fp32 + bf16
    python benchmarks/lowering_check.py --platforms tpu --estimate      # + VideoCrafter2 memory estimate

One JSON line per (program, platform, dtype) (programs: ``vstar_jax.lowering.PROGRAMS``, the tiny
config): ``ok`` (it lowered; else ``error``), ``attention_kernel`` (fused-attention custom calls in
the module: ``tpu_custom_call`` = the Pallas flash kernel on TPU, cuDNN's on CUDA), ``f32_dots``
(dots / convolutions with a float32 operand, by layer), ``param_bytes``, ``argument_bytes`` /
``output_bytes`` / ``devices`` (from the exported module's avals). Temporary (activation) memory is
not in an exported module: it is decided by the target's compiler, so ``temp_bytes`` is null here.

``--estimate``: per-device memory of the 64-frame 320x512 VideoCrafter2 UNet call (CFG batch 2, bf16
compute, float32 parameters) on an 8-device mesh (data 2 x frames 4, as ``activation_layout`` regrids
it): parameters replicated (and FSDP-sharded over 8 for comparison), plus activations. Activations come
from compiling, on this CPU, the program one device of that mesh runs in its spatial layers: the same
UNet on 64 / 8 = 8 frames per CFG row-pair (the (b*f) rows are split evenly; temporal layers move the
pixels instead, the same element count). XLA:CPU's buffer assignment is not the TPU's, and the CPU
program uses the XLA attention (the TPU one the Pallas kernel, which holds less), so this is an
estimate of the order, not a TPU measurement; ``--no-compile`` gives the analytic part only.

``--gpu-attention``: the attention calls cuDNN refuses (``attention._use_cudnn``: float32 operands, TAR's
logit transform, returned weights, relative position), at VideoCrafter2's 320x512 shapes (16 frames, CFG
batch 2), exported for ``cuda`` two ways: (a) the XLA path they take today (``backend="xla"``: blockwise
online softmax from 512 keys, else the fused path, whole rows for TAR), traced with the accelerator's
tile size; (b) JAX's Pallas GPU (Triton) flash attention, ``jax.experimental.pallas.ops.gpu.attention.mha``
(sequences padded to 128-multiples with segment ids where it can mask them). One JSON line per (call,
dtype, path): ``ok`` (else ``refused``: the reason the path cannot compute that call), custom calls, op counts, ``while`` loops, the
largest tensor the module names and whether it names whole (Lq, Lk) logits. No GPU is used or timed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

GIB = 2 ** 30


def check(programs, platforms, dtypes):
    from vstar_jax import lowering as L  # noqa: PLC0415

    rows = []
    for program in programs:
        for dtype in dtypes:
            t0 = time.time()
            try:
                lowered, params = L.lower(program, tuple(platforms), dtype)
            except Exception as e:  # noqa: BLE001 - a report line, not a crash
                for p in platforms:
                    rows.append({"program": program, "platform": p, "dtype": dtype, "ok": False,
                                 "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"})
                    print(json.dumps(rows[-1]), flush=True)
                continue
            secs = round(time.time() - t0, 1)
            for p, lo in lowered.items():
                rows.append({"program": program, "platform": p, "dtype": dtype, "ok": True,
                             "attention_kernel": lo.kernel_calls(), "f32_dots": dict(lo.f32_dots()),
                             "param_bytes": L.param_bytes(params), **lo.sizes(), "temp_bytes": None,
                             "trace_and_lower_s": secs})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def estimate(compile_it: bool = True, frames: int = 64, h: int = 40, w: int = 64, devices: int = 8):
    """Per-device memory of the VideoCrafter2 UNet call at ``frames`` x (8h x 8w) on ``devices``."""
    import ml_collections  # noqa: PLC0415

    from vstar_jax.configs import unet_videocrafter2  # noqa: PLC0415
    from vstar_jax import lowering as L  # noqa: PLC0415

    cfg = unet_videocrafter2.get_config()
    per_dev_frames = frames // devices  # the (2 x frames) CFG rows over `devices`: 2 x frames/devices each
    unet, c = L.unet_model("bfloat16", config=cfg)
    params = L.abstract_params(unet, c, 4, 8, 8)
    pbytes = L.param_bytes(params)
    mc = int(cfg.model_channels)
    rows = 2 * frames // devices
    out = {"program": "videocrafter2_unet_call", "frames": frames, "latent_hw": [h, w], "video_hw": [8 * h, 8 * w],
           "devices": devices, "rows_per_device": rows, "param_bytes": pbytes,
           "param_gib_replicated": round(pbytes / GIB, 2), "param_gib_fsdp": round(pbytes / devices / GIB, 2),
           # one level-0 activation (bf16) and the GEGLU hidden layer (8x wide), per device
           "level0_activation_mib": round(rows * h * w * mc * 2 / 2 ** 20, 1),
           "level0_geglu_hidden_mib": round(rows * h * w * mc * 8 * 2 / 2 ** 20, 1),
           # XLA attention without the kernel: one (rows, heads, hw, hw) float32 logits tensor at level 0
           "level0_xla_logits_gib": round(rows * (mc // int(cfg.num_head_channels)) * (h * w) ** 2 * 4 / GIB, 2)}
    if compile_it:
        import jax  # noqa: PLC0415

        fn, args, _ = L.unet_program("bfloat16", frames=per_dev_frames, h=h, w=w, config=ml_collections.ConfigDict(cfg))
        t0 = time.time()
        from vstar_jax.models.attention import TILE_ELEMS  # noqa: PLC0415

        # the CPU's 4 MiB blockwise tiles stand in for the TPU's Pallas kernel (one block at a time); the
        # accelerator's XLA tiles (256 MiB) are what a GPU running the XLA path would hold instead
        with L.accelerator_trace(tile_elems=TILE_ELEMS):
            m = fn.trace(*args).lower().compile().memory_analysis()
        out.update({"cpu_compile_s": round(time.time() - t0, 1), "cpu_temp_gib": round(m.temp_size_in_bytes / GIB, 2),
                    "cpu_argument_gib": round(m.argument_size_in_bytes / GIB, 2),
                    "cpu_output_gib": round(m.output_size_in_bytes / GIB, 3), "jax": jax.__version__})
        out["per_device_gib_estimate"] = round((pbytes + m.temp_size_in_bytes + m.output_size_in_bytes) / GIB, 2)
    print(json.dumps(out), flush=True)
    return out


# (name, q shape (B, Lq, H, D), Lk, what the call needs): VideoCrafter2 at 320x512 (40x64 latents), 16 frames,
# CFG batch 2 -> 32 spatial rows; temporal rows are the 2 x 40 x 64 pixels
GPU_CALLS = (
    ("spatial_self_l0", (32, 2560, 5, 64), 2560, None),
    ("spatial_self_l1", (32, 640, 10, 64), 640, None),
    ("spatial_self_l2", (32, 160, 20, 64), 160, None),
    ("cross_text_l0", (32, 2560, 5, 64), 77, None),
    ("temporal_l0", (5120, 16, 5, 64), 16, None),
    ("temporal_l0_tar", (5120, 16, 5, 64), 16, "tar"),
)
def _triton_fn(lq: int, lk: int, d: int, needs, interpret: bool = False):
    """(the project's Triton route, ``attention._triton``, None), or (None, the reason it cannot compute this
    call). ``interpret``: run the kernel in Pallas interpret mode (any host; for its numbers)."""
    import functools  # noqa: PLC0415

    from vstar_jax.models import attention as A  # noqa: PLC0415

    if needs == "tar":
        return None, ("mha has no bias or logit hook: TAR adds scale * rowmax * G to each whole logit row "
                      "before the softmax (as would returned weights or relative position)")
    if lq != lk:
        return None, (f"{lk} keys: Triton blocks must be powers of 2, and padding the keys to "
                      f"{A._triton_length(lk)} cannot be masked (mha's segment ids are one array for queries and "
                      f"keys, so need Lq == Lk)")
    return functools.partial(A._triton, interpret=interpret), None


def gpu_attention(dtypes=("float32", "bfloat16"), calls=GPU_CALLS):
    """The comparison above: one row per (call, dtype, path)."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from vstar_jax import lowering as L  # noqa: PLC0415
    from vstar_jax.models.attention import attention  # noqa: PLC0415
    from vstar_jax.tar_vsp.tar import tar_logits  # noqa: PLC0415

    rows = []
    for name, qshape, lk, needs in calls:
        b, lq, h, d = qshape
        for dtype in dtypes:
            if dtype == "bfloat16" and needs is None:
                continue  # cuDNN takes these in bf16 (backend auto); only its refusals are compared
            dt = jnp.dtype(dtype)
            args = (jax.ShapeDtypeStruct(qshape, dt), jax.ShapeDtypeStruct((b, lk, h, d), dt),
                    jax.ShapeDtypeStruct((b, lk, h, d), dt))
            transform = (lambda s: tar_logits(s, 4.0, 1.0)) if needs == "tar" else None  # noqa: E731
            tri, why = _triton_fn(lq, lk, d, needs)
            paths = (("xla", lambda q, k, v: attention(q, k, v, backend="xla", logit_transform=transform), None),
                     ("triton", tri, why))
            for path, fn, reason in paths:
                row = {"call": name, "q": list(qshape), "keys": lk, "dtype": dtype, "path": path}
                if fn is None:
                    rows.append({**row, "ok": False, "refused": reason})
                    print(json.dumps(rows[-1]), flush=True)
                    continue
                try:
                    with L.accelerator_trace():
                        lo = L.export(name, jax.jit(fn), args, "cuda", dtype, custom_calls=(L.TRITON_TARGET,))
                except Exception as e:  # noqa: BLE001 - a report line
                    rows.append({**row, "ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"})
                    print(json.dumps(rows[-1]), flush=True)
                    continue
                shape, elem, nbytes = lo.largest_tensor()
                ops = lo.ops()
                rows.append({**row, "ok": True, "custom_calls": dict(lo.custom_calls()), "ops": sum(ops.values()),
                             "dot_general": ops.get("dot_general", 0), "while": ops.get("while", 0),
                             "largest_tensor": f"{'x'.join(map(str, shape))}x{elem}",
                             "largest_tensor_mib": round(nbytes / 2 ** 20, 1),
                             "whole_logits": lo.names_tensor(lq, lk),
                             "io_mib": round((lo.sizes()["argument_bytes"] + lo.sizes()["output_bytes"]) / 2 ** 20, 1)})
                print(json.dumps(rows[-1]), flush=True)
    rows += triton_numerics()
    return rows


def triton_numerics(shapes=((2, 160, 2, 16), (2, 256, 2, 64))):
    """The Triton wrapper above (padding, segment ids) run in Pallas interpret mode on this CPU against the
    XLA path: max error relative to the largest output, float32 (the kernel's arithmetic, not the GPU's)."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from vstar_jax.models.attention import attention  # noqa: PLC0415

    rows = []
    for shape in shapes:
        q, k, v = (jax.random.normal(key, shape, jnp.float32) for key in jax.random.split(jax.random.key(0), 3))
        fn, _ = _triton_fn(shape[1], shape[1], shape[3], None, interpret=True)
        want = attention(q, k, v, backend="xla")
        err = float(jnp.abs(fn(q, k, v) - want).max() / jnp.abs(want).max())
        rows.append({"call": "triton_interpret_vs_xla", "q": list(shape), "dtype": "float32", "rel_err": err})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None):
    from vstar_jax import lowering as L  # noqa: PLC0415

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--platforms", default="tpu,cuda")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--programs", default=",".join(L.PROGRAMS))
    ap.add_argument("--estimate", action="store_true", help="also the VideoCrafter2 64-frame per-device memory")
    ap.add_argument("--no-compile", action="store_true", help="estimate without the CPU compile (analytic only)")
    ap.add_argument("--gpu-attention", action="store_true",
                    help="only the XLA-vs-Triton comparison of the attention calls cuDNN refuses (CUDA export)")
    ap.add_argument("--json", default=None, help="also append the lines to this file")
    a = ap.parse_args(argv)
    if a.gpu_attention:
        rows = gpu_attention(tuple(a.dtypes.split(",")))
    else:
        rows = check(a.programs.split(","), a.platforms.split(","), a.dtypes.split(","))
    if a.estimate:
        rows.append(estimate(not a.no_compile))
    if a.json:
        with open(a.json, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    return 1 if any("error" in r for r in rows) else 0  # a refusal (--gpu-attention) is a finding, not a failure


if __name__ == "__main__":
    sys.exit(main())
