#!/usr/bin/env bash
# Issue 23's device check, prepared for a TPU VM (not run yet: no TPU so far). Writes JSON lines to
# $OUT (default ./tpu_out); each step has its own timeout, so whatever finished is written:
#   0. the lowering check on the TPU itself (the same programs CI lowers from CPU)     lowering.jsonl
#   1. the Pallas flash kernel COMPILED by Mosaic vs the XLA path at VideoCrafter2's
#      shapes (head dim 64; 2,560 and 640 tokens; 77 text keys), fp32 and bf16        kernel.jsonl
#   2. bf16 parity vs float32 (tiny config, backend auto = the Pallas kernel)         bf16_parity.jsonl
#   3. ModelScope UNet, bf16, backend auto, at the three anchor shapes, TFLOP/s        unet_anchor.jsonl
#   4. one full 25-step generation (tiny checkpoint, 16x16 latents, backend auto):
#      compile, cached-load and run times                                            generate.jsonl
# Usage (repo root):   bash benchmarks/tpu_check.sh           # on the TPU VM (pip install -e . first)
#                      bash benchmarks/tpu_check.sh --smoke   # CPU: tiny shapes, kernel in interpret mode
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/tpu_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SMOKE=0
[[ "${1:-}" == "--smoke" ]] && SMOKE=1
if [[ $SMOKE == 1 ]]; then
  CFG=tiny; KSHAPES="1,256,2,8;1,64,2,8"; DTYPE=float32; PSHAPE=1,4,2,8,8; SHAPES=(--shape 1,4,2,8,8); REPS=1; FRAMES=2; STEPS=2
  T0=300; T1=300; T2=600; T3=600; T4=900; LPLAT=tpu
else
  CFG=modelscope; KSHAPES="32,2560,5,64;32,640,10,64;32,160,20,64"; DTYPE=bfloat16; PSHAPE=1,4,4,16,16
  SHAPES=(--shape 2,4,16,32,32 --shape 2,4,64,32,32 --shape 2,4,16,40,64); REPS=8; FRAMES=16; STEPS=25
  T0=120; T1=120; T2=60; T3=240; T4=150; LPLAT=tpu
fi
"$PY" - <<'PYEOF' > "$OUT/env.json" 2>/dev/null || true
import json, jax
print(json.dumps({"jax": jax.__version__, "devices": [str(d) for d in jax.devices()], "backend": jax.default_backend()}))
PYEOF
echo "[0/4] lowering check" >&2
timeout "$T0" "$PY" benchmarks/lowering_check.py --platforms "$LPLAT" --json "$OUT/lowering.jsonl" \
  || echo "lowering: rc $?" >&2
echo "[1/4] Pallas kernel vs XLA attention" >&2
SMOKE=$SMOKE KSHAPES="$KSHAPES" timeout "$T1" "$PY" - <<'PYEOF' >> "$OUT/kernel.jsonl" || echo "kernel: rc $?" >&2
import contextlib, json, os, time
import jax, jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu
from vstar_jax.models.attention import attention
interp = pltpu.force_tpu_interpret_mode if os.environ["SMOKE"] == "1" else contextlib.nullcontext
for spec in os.environ["KSHAPES"].split(";"):
    b, l, h, d = map(int, spec.split(","))
    for lk in (l, 77):  # self-attention, text cross-attention (77 keys -> 128, masked)
        for dt in (jnp.float32, jnp.bfloat16):
            ks = jax.random.split(jax.random.key(0), 3)
            q = jax.random.normal(ks[0], (b, l, h, d), dt)
            k, v = (jax.random.normal(kk, (b, lk, h, d), dt) for kk in ks[1:])
            ref = attention(*(t.astype(jnp.float32) for t in (q, k, v)), backend="xla")
            with interp():
                f = jax.jit(lambda q, k, v: attention(q, k, v, backend="pallas"))
                t0 = time.time(); out = f(q, k, v).block_until_ready(); compile_s = time.time() - t0
                t0 = time.time()
                for _ in range(10): out = f(q, k, v)
                out.block_until_ready(); ms = (time.time() - t0) * 100
            g = jax.jit(lambda q, k, v: attention(q, k, v, backend="xla"))
            g(q, k, v).block_until_ready(); t0 = time.time()
            for _ in range(10): o2 = g(q, k, v)
            o2.block_until_ready(); xla_ms = (time.time() - t0) * 100
            err = float(jnp.abs(out.astype(jnp.float32) - ref).max() / jnp.abs(ref).max())
            print(json.dumps({"shape": [b, l, h, d], "keys": lk, "dtype": jnp.dtype(dt).name, "rel_err": err,
                              "tol": 1e-5 if dt == jnp.float32 else 2e-2, "pallas_ms": round(ms, 3),
                              "xla_ms": round(xla_ms, 3), "first_call_s": round(compile_s, 2),
                              "backend": jax.default_backend()}), flush=True)
PYEOF
echo "[2/4] bf16 parity" >&2
timeout "$T2" "$PY" benchmarks/bf16_parity.py --config tiny --shape "$PSHAPE" --backend auto \
  --json "$OUT/bf16_parity.jsonl" || echo "bf16 parity: rc $?" >&2
echo "[3/4] UNet at the anchor shapes (backend auto = Pallas on TPU)" >&2
timeout "$T3" "$PY" benchmarks/unet_speed.py --config "$CFG" --dtype "$DTYPE" --backend auto "${SHAPES[@]}" \
  --reps "$REPS" --no-torch --json "$OUT/unet_anchor.jsonl" || echo "unet anchor: rc $?" >&2
echo "[4/4] one full generation" >&2
# The tiny checkpoint at 16x16 latents with attention_backend auto, so the level-0 spatial and cross
# attention (256 tokens) take the Pallas kernel on TPU (the shipped configs say xla; 8x8 would be < 128).
CKPT="$OUT/tiny_auto_ckpt"
rm -rf "$CKPT"
CKPT="$CKPT" "$PY" - <<'PYEOF' || echo "tiny auto checkpoint: rc $?" >&2
import os, sys
sys.path.insert(0, "tests")
from tiny_checkpoint import save_checkpoint, tiny_configs, tiny_params
configs = tiny_configs(16)
configs["unet"]["attention_backend"] = "auto"
save_checkpoint(os.environ["CKPT"], tiny_params(configs, 0), dict(configs, source={"layout": "tiny-random", "seed": 0}))
PYEOF
timeout "$T4" "$PY" benchmarks/generate_speed.py --frames "$FRAMES" --steps "$STEPS" --checkpoint "$CKPT" \
  --json "$OUT/generate.jsonl" || echo "generate: rc $?" >&2
ls -l "$OUT" >&2
