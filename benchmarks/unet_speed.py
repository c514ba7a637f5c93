"""Time one UNet3D call in JAX beside the PyTorch baseline (diffusers UNet3DConditionModel), same run.

CPU (tiny config):   python benchmarks/unet_speed.py --config tiny --shape 2,4,8,16,16
GPU (anchor shapes): python benchmarks/unet_speed.py --config modelscope --dtype bfloat16 \
                         --backend auto --shape 2,4,16,32,32 --shape 2,4,64,32,32 --shape 2,4,16,40,64

Both models get random weights of the same architecture; the JAX side is one
jitted call (compile time reported apart), the torch side eager fp16/fp32 under
no_grad (the anchors' setting). Prints one JSON line per shape with medians and
the torch/JAX ratio; --json also writes them to a file.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

CONFIGS = {
    "tiny": dict(block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=8, cross_attention_dim=32,
                 down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                 up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), norm_num_groups=32),
    "small": dict(block_out_channels=(64, 128, 128), layers_per_block=1, attention_head_dim=32, cross_attention_dim=64,
                  down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
                  up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"), norm_num_groups=32),
    "modelscope": {},  # UNet3DConditionModel() defaults = the real ModelScope config
}


def _time(fn, reps, warm):
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts), min(ts)


def bench_jax(dcfg, shape, dtype, backend, reps, warm):
    from checkpoints_convert.unet import unet_config_from_diffusers
    from vstar_jax.models.unet3d import UNet3D

    cfg = unet_config_from_diffusers({**dcfg, "cross_attention_dim": dcfg.get("cross_attention_dim", 1024)})
    cfg.dtype = cfg.param_dtype = dtype
    cfg.attention_backend = backend
    model = UNet3D(cfg)
    b = shape[0]
    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.dtype(dtype))
    t = jnp.full((b,), 500)
    ctx = jnp.asarray(np.random.default_rng(1).standard_normal((b, 77, cfg.context_dim)), jnp.dtype(dtype))
    params = jax.jit(model.init)(jax.random.PRNGKey(0), x, t, ctx)["params"]
    fn = jax.jit(lambda p, x, t, c: model.apply({"params": p}, x, t, c))
    t0 = time.perf_counter()
    fn(params, x, t, ctx).block_until_ready()
    compile_s = time.perf_counter() - t0
    med, mn = _time(lambda: fn(params, x, t, ctx).block_until_ready(), reps, warm)
    return dict(jax_ms=med, jax_ms_min=mn, jax_compile_s=compile_s)


def bench_torch(dcfg, shape, dtype, reps, warm):
    import torch
    from diffusers import UNet3DConditionModel

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tdtype = torch.float16 if (dtype != "float32" and dev == "cuda") else torch.float32
    m = UNet3DConditionModel(**dcfg).to(dev, tdtype).eval()
    x = torch.randn(*shape, device=dev, dtype=tdtype)
    c = torch.randn(shape[0], 77, m.config.cross_attention_dim, device=dev, dtype=tdtype)
    t = torch.full((shape[0],), 500, device=dev)

    def call():
        with torch.no_grad():
            m(x, t, c)
        if dev == "cuda":
            torch.cuda.synchronize()

    med, mn = _time(call, reps, warm)
    return dict(torch_ms=med, torch_ms_min=mn, torch_dtype=str(tdtype), torch_device=dev)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    ap.add_argument("--shape", action="append", help="b,c,f,h,w (repeatable)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    ap.add_argument("--backend", choices=["xla", "cudnn", "auto"], default="xla")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warm", type=int, default=1)
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline")
    ap.add_argument("--json", help="also write results here")
    a = ap.parse_args(argv)
    shapes = [tuple(int(v) for v in s.split(",")) for s in (a.shape or ["2,4,8,16,16"])]
    dev = jax.devices()[0]
    out = []
    for shape in shapes:
        r = dict(config=a.config, shape=shape, dtype=a.dtype, backend=a.backend, device=f"{dev.platform}:{dev.device_kind}")
        r.update(bench_jax(CONFIGS[a.config], shape, a.dtype, a.backend, a.reps, a.warm))
        if not a.no_torch:
            try:
                r.update(bench_torch(CONFIGS[a.config], shape, a.dtype, a.reps, a.warm))
                r["torch_over_jax"] = r["torch_ms"] / r["jax_ms"]
            except ImportError as e:
                r["torch_error"] = str(e)
        print(json.dumps(r), flush=True)
        out.append(r)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
