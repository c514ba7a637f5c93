"""Whole ``vstar-jax generate`` runs: compile (or load) apart from run time, per program, and the persistent
compilation cache across processes.

    python benchmarks/generate_speed.py --frames 16 --frames 64 --steps 25 --json /tmp/gen.jsonl
    python benchmarks/generate_speed.py --programs single,long,batch-exact,batch-vmap,loop --items 8 --demo

Programs (``--programs``, comma-separated; default ``single``):

* ``single``: one video of F frames (the plain pass).
* ``long``: one video with ``--long-video genl:W:S`` (``--long``, default ``genl:8:4``) at F frames.
* ``batch-exact`` / ``batch-vmap``: ``--items`` videos (seeds 0..N-1) in one ``--seeds`` command, in the
  batch's ``exact`` (``lax.map``) or ``vmap`` mode.
* ``loop``: the same N videos as N single runs in one process (the baseline batching is measured against).

For every program and frame count, two fresh processes run the same command with one new, empty
compilation cache folder (``vstar_jax.compile_cache``): the first compiles and writes the cache, the second
should load it. Inside each process the command runs twice: the first call's "compiled in" or "loaded from
the compile cache in" (the sampling loop, from the pipeline's own log; tracing included) is the compile or
load time, the second call is the whole generation (text encoding, sampling, VAE decode, video write)
without any compile. One JSON line per (program, frame count), with ``videos_per_min`` of the warm call.
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
PROGRAMS = ("single", "long", "batch-exact", "batch-vmap", "loop")


def commands(a, workdir: str, tag: str) -> list:
    """The ``vstar-jax`` argument lists one timed call of ``a.program`` runs (several for ``loop``)."""
    base = ["--frames", str(a.frames_one), "--steps", str(a.steps)]  # not --quiet: its log has the compile time
    base += [] if a.checkpoint == "demo" else ["--checkpoint", a.checkpoint]
    if a.program in ("batch-exact", "batch-vmap"):
        return [["generate", PROMPT, "--seeds", ",".join(map(str, range(a.items))), "--batch-mode",
                 a.program.split("-")[1], "--out-dir", os.path.join(workdir, tag), "--overwrite"] + base]
    if a.program == "loop":
        return [["generate", PROMPT, "--seed", str(i), "--out", os.path.join(workdir, f"{tag}-{i}.mp4"),
                 "--overwrite"] + base for i in range(a.items)]
    extra = ["--long-video", a.long] if a.program == "long" else []
    return [["generate", PROMPT, "--seed", "0", "--out", os.path.join(workdir, f"{tag}.mp4"), "--overwrite"]
            + base + extra]


def child(a) -> int:
    """One process: enable the cache, run the program's commands twice, print one JSON line."""
    sys.path[:0] = [REPO, os.path.join(REPO, "tests")]
    t_start = time.perf_counter()
    from vstar_jax.compile_cache import enable_compile_cache

    os.environ["VSTAR_JAX_CACHE_DIR"] = a.cache_dir  # cli.main enables the cache again from the environment
    enable_compile_cache(a.cache_dir)
    from vstar_jax import cli

    walls = []
    for i in range(2):
        t0 = time.perf_counter()
        for argv in commands(a, a.workdir, f"call{i}"):
            rc = cli.main(argv)
            if rc != 0:
                return rc
        walls.append(time.perf_counter() - t0)
    print(json.dumps(dict(first_call_s=walls[0], second_call_s=walls[1],
                          process_s=time.perf_counter() - t_start)), flush=True)
    return 0


def run_process(a, frames: int, cache_dir: str, workdir: str, ckpt: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--frames-one", str(frames), "--steps", str(a.steps),
           "--cache-dir", cache_dir, "--workdir", workdir, "--checkpoint", ckpt, "--program", a.program,
           "--items", str(a.items), "--long", a.long]
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
    ap.add_argument("--programs", default="single", help=f"comma-separated, of {', '.join(PROGRAMS)}")
    ap.add_argument("--items", type=int, default=8, help="videos per batch / loop (default 8)")
    ap.add_argument("--long", default="genl:8:4", help="the long program's --long-video (default genl:8:4)")
    ap.add_argument("--demo", action="store_true", help="the embedded demo model (default: a tiny random checkpoint)")
    ap.add_argument("--json", help="also append the JSON lines here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--program", default="single", help=argparse.SUPPRESS)
    ap.add_argument("--frames-one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", help="checkpoint folder (default: a freshly written tiny random one)")
    a = ap.parse_args(argv)
    if a.child:
        return child(a)
    programs = [p.strip() for p in a.programs.split(",") if p.strip()]
    bad = [p for p in programs if p not in PROGRAMS]
    sizes = [("--items", a.items), ("--steps", a.steps)] + [("--frames", f) for f in (a.frames or [16])]
    wrong = [f"{k} {v}" for k, v in sizes if not 1 <= v <= 100_000]
    if bad or wrong:
        print(f"error: unknown program(s) {', '.join(bad)} (known: {', '.join(PROGRAMS)})" if bad
              else f"error: {', '.join(wrong)} out of range (1 to 100000)", file=sys.stderr)
        return 2
    sys.path[:0] = [REPO, os.path.join(REPO, "tests")]
    from benchmarks.rows import emit  # one JSON-row writer (the repository is on the path from here on)
    root = tempfile.mkdtemp(prefix="vstar-genspeed-")
    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    try:
        ckpt = "demo" if a.demo else a.checkpoint
        if ckpt is None:
            from tiny_checkpoint import write_tiny_checkpoint

            ckpt = write_tiny_checkpoint(os.path.join(root, "ckpt"))
        for program in programs:
            a.program = program
            for frames in a.frames or [16]:
                tag = f"{program}{frames}"
                cache = os.path.join(root, f"cache-{tag}")
                work = os.path.join(root, f"out-{tag}")
                os.makedirs(work, exist_ok=True)
                load0 = os.getloadavg()[0]
                first = run_process(a, frames, cache, work, ckpt)
                second = run_process(a, frames, cache, work, ckpt)
                videos = a.items if program in ("batch-exact", "batch-vmap", "loop") else 1
                warm = min(first["second_call_s"], second["second_call_s"])
                row = dict(kind="generate", program=program, frames=frames, steps=a.steps, videos=videos,
                           checkpoint="demo" if a.demo else (a.checkpoint or "tiny (configs/unet_tiny.py, 8x8 latent)"),
                           long_video=a.long if program == "long" else None, cpus=os.cpu_count(), commit=commit,
                           load_avg=[round(load0, 2), round(os.getloadavg()[0], 2)],
                           generate_s=warm, videos_per_min=round(60.0 * videos / warm, 2),
                           compile_s=first["sampler_compile_s"], cache_load_s=second["sampler_compile_s"],
                           loaded_from_cache=second["sampler_from_cache"], process1=first, process2=second)
                emit(row, a.json)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
