"""bf16 fast path vs float32 on one UNet call (same weights): bf16 activations and weights, float32
GroupNorm statistics and softmax, attention backend as given (``auto``: cuDNN fused attention on a GPU).

    python benchmarks/bf16_parity.py --config small --shape 2,4,16,32,32 --backend auto

Prints one JSON line: max error of the bf16 output relative to the float32 output's largest
magnitude (the test suite's rel_err), and whether it is within --tol (default 5e-2, the bound
tests/test_unet.py::test_bfloat16_config_runs_close_to_float32 uses on the golden tiny UNet).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
    from unet_speed import CONFIGS  # noqa: PLC0415

    from vstar_jax.checkpoints_convert.unet import unet_config_from_diffusers  # noqa: PLC0415
    from vstar_jax.models.unet3d import UNet3D  # noqa: PLC0415

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    ap.add_argument("--shape", default="1,4,4,16,16")
    ap.add_argument("--backend", choices=["xla", "cudnn", "auto"], default="auto")
    ap.add_argument("--tol", type=float, default=5e-2)
    ap.add_argument("--json", help="also write the line here")
    a = ap.parse_args(argv)
    shape = tuple(int(v) for v in a.shape.split(","))
    dcfg = CONFIGS[a.config]
    cfg = unet_config_from_diffusers({**dcfg, "cross_attention_dim": dcfg.get("cross_attention_dim", 1024)})
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape).astype(np.float32))
    t = jnp.full((shape[0],), 500)
    ctx = jnp.asarray(rng.standard_normal((shape[0], 77, cfg.context_dim)).astype(np.float32))
    params = jax.jit(UNet3D(cfg).init)(jax.random.PRNGKey(0), x, t, ctx)["params"]
    # every weight matters (no zero-initialised output layers)
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    params = jax.tree_util.tree_unflatten(tree, [p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    y32 = jax.jit(lambda p: UNet3D(cfg).apply({"params": p}, x, t, ctx))(params)
    cfg16 = unet_config_from_diffusers({**dcfg, "cross_attention_dim": dcfg.get("cross_attention_dim", 1024)})
    cfg16.dtype = cfg16.param_dtype = "bfloat16"
    cfg16.attention_backend = a.backend
    p16 = jax.tree_util.tree_map(lambda p: p.astype(jnp.bfloat16), params)
    y16 = jax.jit(lambda p: UNet3D(cfg16).apply({"params": p}, x.astype(jnp.bfloat16), t,
                                                 ctx.astype(jnp.bfloat16)))(p16)
    err = float(jnp.abs(y16.astype(jnp.float32) - y32).max() / jnp.abs(y32).max())
    dev = jax.devices()[0]
    row = dict(kind="bf16_parity", config=a.config, shape=list(shape), backend=a.backend,
               device=f"{dev.platform}:{dev.device_kind}", out_dtype=str(y16.dtype), rel_err=err, tol=a.tol,
               ok=bool(1e-5 < err < a.tol))
    print(json.dumps(row), flush=True)
    if a.json:
        with open(a.json, "a") as fh:
            fh.write(json.dumps(row) + "\n")
    return 0 if row["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
