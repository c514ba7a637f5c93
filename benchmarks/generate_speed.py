"""Whole ``vstar-jax generate`` runs on the tiny random checkpoint: compile apart from sampling, and
the persistent compilation cache across processes.

    python benchmarks/generate_speed.py --frames 16 --frames 64 --steps 25 --json /tmp/gen.jsonl

For every frame count, two fresh processes run the same command with one new, empty compilation
cache folder (``vstar_jax.compile_cache``): the first compiles and writes the cache, the second
should load it. Inside each process the generation runs twice: the first call's "compiled in" or
"loaded from the compile cache in" (the sampling loop, from the pipeline's own log; tracing included) is
the compile time, the second call is the whole
25-step generation (text encoding, sampling, VAE decode, video write) without any compile.
One JSON line per frame count.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = "a red ball rolls to the right"


def child(a) -> int:
    """One process: enable the cache, generate twice, print one JSON line."""
    sys.path[:0] = [REPO, os.path.join(REPO, "tests")]
    t_start = time.perf_counter()
    from vstar_jax.compile_cache import enable_compile_cache

    os.environ["VSTAR_JAX_CACHE_DIR"] = a.cache_dir  # cli.main enables the cache again from the environment
    enable_compile_cache(a.cache_dir)
    from vstar_jax import cli

    walls = []
    for i in range(2):
        out = os.path.join(a.workdir, f"clip{i}.mp4")
        t0 = time.perf_counter()
        rc = cli.main(["generate", PROMPT, "--checkpoint", a.checkpoint, "--frames", str(a.frames_one),
                       "--steps", str(a.steps), "--seed", "0", "--out", out, "--overwrite"])
        walls.append(time.perf_counter() - t0)
        if rc != 0:
            return rc
    print(json.dumps(dict(first_call_s=walls[0], second_call_s=walls[1],
                          process_s=time.perf_counter() - t_start)), flush=True)
    return 0


def run_process(a, frames: int, cache_dir: str, workdir: str, ckpt: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--frames-one", str(frames), "--steps", str(a.steps),
           "--cache-dir", cache_dir, "--workdir", workdir, "--checkpoint", ckpt]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"generate failed ({p.returncode}): {p.stderr[-2000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    # "compiled in Xs", or "loaded from the compile cache in Xs" (both include tracing the loop)
    compiled = re.findall(r"(compiled|loaded from the compile cache) in ([0-9.]+)s", p.stderr)
    res["sampler_compile_s"] = float(compiled[0][1]) if compiled else None
    res["sampler_from_cache"] = bool(compiled) and compiled[0][0] != "compiled"
    res["cache_entries"] = sum(len(files) for _, _, files in os.walk(cache_dir)) if os.path.isdir(cache_dir) else 0
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, action="append", help="frame counts (repeatable; default 16)")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--json", help="also append the JSON lines here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--frames-one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", help="checkpoint folder (default: a freshly written tiny random one)")
    a = ap.parse_args(argv)
    if a.child:
        return child(a)
    sys.path[:0] = [REPO, os.path.join(REPO, "tests")]
    root = tempfile.mkdtemp(prefix="vstar-genspeed-")
    try:
        ckpt = a.checkpoint
        if ckpt is None:
            from tiny_checkpoint import write_tiny_checkpoint

            ckpt = write_tiny_checkpoint(os.path.join(root, "ckpt"))
        for frames in a.frames or [16]:
            cache = os.path.join(root, f"cache{frames}")
            work = os.path.join(root, f"out{frames}")
            os.makedirs(work, exist_ok=True)
            first = run_process(a, frames, cache, work, ckpt)
            second = run_process(a, frames, cache, work, ckpt)
            row = dict(kind="generate", config="tiny (configs/unet_tiny.py, 8x8 latent)", frames=frames,
                       steps=a.steps, cpus=os.cpu_count(),
                       generate_s=min(first["second_call_s"], second["second_call_s"]),
                       process1=first, process2=second,
                       compile_s_process1=first["sampler_compile_s"], compile_s_process2=second["sampler_compile_s"])
            print(json.dumps(row), flush=True)
            if a.json:
                with open(a.json, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
