"""The attention cores that trail torch on CPU, under other tile sizes and paths (issue 30).

    python benchmarks/attention_tiles.py --threads 1 --reps 5
    python benchmarks/attention_tiles.py --threads 1 --core temporal --frames 64 --variants "default;blockwise=1"

The per-op table of ``unet_speed.py --ops`` has two attention cores behind torch's kernel on CPU: spatial
self-attention (the blockwise path, 1,024 keys) and temporal attention at 64 frames (the fused path). This
times them at that table's shapes (``--config small`` level 0: batch 2, 2 heads x 32, 32x32 latent) under
each ``--variants`` entry beside ``torch.nn.functional.scaled_dot_product_attention``, interleaved.

A variant is ``default`` or comma-separated ``name=value`` of :func:`vstar_jax.models.attention.attention`'s
keyword arguments (``block_q``, ``block_k``, ``blockwise``: 0/1) and ``tile`` (``TILE_ELEMS``, which sets
how many (batch, head) rows share one tile). Times are this process's CPU milliseconds per call (all
threads; ``--clock wall`` for wall time): at ``--threads 1`` they barely move with other jobs' load,
where wall times on a shared 2-core machine do. Medians of ``--reps``. One JSON line per variant; every
variant's output is checked against the default's (max abs difference in the row).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import jax  # noqa: E402  (XLA reads XLA_FLAGS when its CPU client starts, at the first computation)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.rows import emit  # noqa: E402  (one JSON-row writer)
from benchmarks.unet_speed import ONE_THREAD_XLA, _commit, interleaved, pin_to_cores  # noqa: E402  (one timing loop)
from vstar_jax.models import attention as A  # noqa: E402

DEFAULT_VARIANTS = {
    "spatial": "default;block_q=512;block_q=256;block_q=128;block_k=512;block_q=512,block_k=512;"
               "block_q=256,block_k=256;block_q=256,block_k=512,tile=262144",
    "temporal": "default;blockwise=1;blockwise=1,tile=262144;blockwise=1,tile=4194304",
}


def parse_variant(spec: str) -> dict:
    if spec == "default":
        return {}
    out = {}
    for item in spec.split(","):
        name, _, value = item.partition("=")
        if name not in ("block_q", "block_k", "blockwise", "tile") or not value.isdigit():
            raise ValueError(f"bad variant item {item!r} (block_q=N, block_k=N, blockwise=0/1, tile=N)")
        out[name] = bool(int(value)) if name == "blockwise" else int(value)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--core", choices=("spatial", "temporal", "both"), default="both")
    ap.add_argument("--frames", default="16,64", help="comma-separated frame counts (default 16,64)")
    ap.add_argument("--variants", help="';'-separated variants (default: a sweep per core)")
    ap.add_argument("--threads", default="1",
                    help="1 (one core for both: the process pinned to it, torch 1 thread) or all (default 1)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    ap.add_argument("--json", help="also append the JSON lines here")
    a = ap.parse_args(argv)
    try:
        frames = [int(f) for f in a.frames.split(",")]
        cores = ("spatial", "temporal") if a.core == "both" else (a.core,)
        variants = {c: [(v, parse_variant(v)) for v in (a.variants or DEFAULT_VARIANTS[c]).split(";")] for c in cores}
        if a.threads not in ("1", "all") or a.reps < 1 or not all(1 <= f <= 4096 for f in frames):
            raise ValueError("--threads is 1 or all, --reps >= 1, --frames 1..4096")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.threads == "1":  # before the first computation starts XLA's CPU client
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + ONE_THREAD_XLA).strip()
        pin_to_cores(1)
    import torch  # noqa: PLC0415  (the baseline; only this benchmark needs it)
    import torch.nn.functional as F  # noqa: PLC0415

    if a.threads == "1":
        torch.set_num_threads(1)
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    commit = _commit()
    for core in cores:
        for f in frames:
            rows, length = (2 * f, 32 * 32) if core == "spatial" else (2 * 32 * 32, f)
            rng = np.random.default_rng(0)
            q, k, v = (rng.standard_normal((rows, length, 2, 32), dtype=np.float32) for _ in range(3))
            jq, jk, jv = (jnp.asarray(t) for t in (q, k, v))
            tq, tk, tv = (torch.from_numpy(t).transpose(1, 2).contiguous() for t in (q, k, v))
            fns, diffs, ref = {}, {}, None
            for name, kw in variants[core]:
                tile = kw.get("tile")
                kwargs = {key: val for key, val in kw.items() if key != "tile"}

                def call(q_, k_, v_, kwargs=kwargs, tile=tile):
                    old = A.TILE_ELEMS
                    A.TILE_ELEMS = tile or old  # read at trace time
                    try:
                        return A.attention(q_, k_, v_, **kwargs)
                    finally:
                        A.TILE_ELEMS = old

                jitted = jax.jit(call)
                out = np.asarray(jitted(jq, jk, jv))
                ref = out if ref is None else ref
                diffs[name] = float(np.abs(out - ref).max())
                fns[name] = lambda j=jitted: j(jq, jk, jv).block_until_ready()

            def torch_call():
                with torch.no_grad():
                    F.scaled_dot_product_attention(tq, tk, tv)

            fns["torch"] = torch_call
            res = interleaved(fns, a.reps, 1, clock=clock)
            for name, r in res.items():
                row = dict(kind="attention_tiles", core=core, frames=f, shape=[rows, length, 2, 32], variant=name,
                           ms=round(r["ms"], 2), clock=a.clock, threads=a.threads,
                           torch_over_this=round(res["torch"]["ms"] / r["ms"], 3), max_abs_diff=diffs.get(name),
                           reps=a.reps, load_avg=round(os.getloadavg()[0], 2), commit=commit)
                emit(row, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
