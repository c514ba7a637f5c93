#!/usr/bin/env bash
# Issue 14's device check, prepared for a session that is lent a GPU (not run yet: no GPU so far).
# Runs in under 8 minutes on one H100/H200 (each step has its own timeout, so whatever finished is
# written even if a step runs long) and writes JSON lines to $OUT (default ./accelerator_out):
#   1. bf16 parity vs float32 (tiny config, cuDNN attention via backend auto)       bf16_parity.jsonl
#   2. ModelScope UNet, bf16, at the three anchor shapes of SPEC section 7, beside
#      torch eager fp16 in the same run                                            unet_anchor.jsonl
#   3. the 16-frame 256x256 shape again beside torch.compile (eager too)           unet_compile.jsonl
#   4. one full 25-step generation (tiny checkpoint), compile apart, cache reuse   generate.jsonl
# Usage (repo root):   bash benchmarks/accelerator_check.sh            # on the GPU machine
#                      bash benchmarks/accelerator_check.sh --smoke    # CPU: tiny shapes, checks the plumbing
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/accelerator_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SMOKE=0
[[ "${1:-}" == "--smoke" ]] && SMOKE=1
if [[ $SMOKE == 1 ]]; then
  CFG=tiny; DTYPE=float32; BACKEND=xla; PSHAPE=1,4,2,8,8; SHAPES=(--shape 1,4,2,8,8); SHAPE1=1,4,2,8,8; REPS=1; FRAMES=2; STEPS=2
  COMPILE=""; T1=600; T2=600; T3=600; T4=900
else
  CFG=modelscope; DTYPE=bfloat16; BACKEND=auto; PSHAPE=1,4,4,16,16
  SHAPES=(--shape 2,4,16,32,32 --shape 2,4,64,32,32 --shape 2,4,16,40,64); SHAPE1=2,4,16,32,32; REPS=8; FRAMES=16; STEPS=25
  COMPILE=--torch-compile; T1=40; T2=190; T3=150; T4=90
fi
"$PY" - <<'PYEOF' > "$OUT/env.json" 2>/dev/null || true
import json, jax
print(json.dumps({"jax": jax.__version__, "devices": [str(d) for d in jax.devices()], "backend": jax.default_backend()}))
PYEOF
echo "[1/4] bf16 parity" >&2
timeout "$T1" "$PY" benchmarks/bf16_parity.py --config tiny --shape "$PSHAPE" --backend "$BACKEND" \
  --json "$OUT/bf16_parity.jsonl" || echo "bf16 parity: rc $?" >&2
echo "[2/4] UNet at the anchor shapes beside torch eager" >&2
timeout "$T2" "$PY" benchmarks/unet_speed.py --config "$CFG" --dtype "$DTYPE" --backend "$BACKEND" "${SHAPES[@]}" \
  --reps "$REPS" --json "$OUT/unet_anchor.jsonl" || echo "unet anchor: rc $?" >&2
echo "[3/4] UNet beside torch.compile" >&2
timeout "$T3" "$PY" benchmarks/unet_speed.py --config "$CFG" --dtype "$DTYPE" --backend "$BACKEND" --shape "$SHAPE1" \
  --reps "$REPS" $COMPILE --json "$OUT/unet_compile.jsonl" || echo "unet compile: rc $?" >&2
echo "[4/4] one full generation" >&2
timeout "$T4" "$PY" benchmarks/generate_speed.py --frames "$FRAMES" --steps "$STEPS" --json "$OUT/generate.jsonl" \
  || echo "generate: rc $?" >&2
ls -l "$OUT" >&2
