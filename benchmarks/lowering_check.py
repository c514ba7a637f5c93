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

    from configs import unet_videocrafter2  # noqa: PLC0415
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
        with L.accelerator_trace():
            m = fn.trace(*args).lower().compile().memory_analysis()
        out.update({"cpu_compile_s": round(time.time() - t0, 1), "cpu_temp_gib": round(m.temp_size_in_bytes / GIB, 2),
                    "cpu_argument_gib": round(m.argument_size_in_bytes / GIB, 2),
                    "cpu_output_gib": round(m.output_size_in_bytes / GIB, 3), "jax": jax.__version__})
        out["per_device_gib_estimate"] = round((pbytes + m.temp_size_in_bytes + m.output_size_in_bytes) / GIB, 2)
    print(json.dumps(out), flush=True)
    return out


def main(argv=None):
    from vstar_jax import lowering as L  # noqa: PLC0415

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--platforms", default="tpu,cuda")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--programs", default=",".join(L.PROGRAMS))
    ap.add_argument("--estimate", action="store_true", help="also the VideoCrafter2 64-frame per-device memory")
    ap.add_argument("--no-compile", action="store_true", help="estimate without the CPU compile (analytic only)")
    ap.add_argument("--json", default=None, help="also append the lines to this file")
    a = ap.parse_args(argv)
    rows = check(a.programs.split(","), a.platforms.split(","), a.dtypes.split(","))
    if a.estimate:
        rows.append(estimate(not a.no_compile))
    if a.json:
        with open(a.json, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    return 0 if all(r.get("ok", True) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
