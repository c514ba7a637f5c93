"""Every long-video method at 64, 256 and 1,024 frames: time, peak memory, seams and drift.

    python benchmarks/long_video.py perf --frames 64,256,1024            # time + memory table
    python benchmarks/long_video.py quality --n 10 --lengths 4,16        # seams + checker table

``perf``: for each model (the embedded demo model; a tiny random checkpoint with a VAE, so decoding
is part of the run) and method, one fresh subprocess per point runs ``generate_video`` exactly as
the CLI does (frames streamed into an mp4 under ``benchmarks/out/``, ``keep_video=False``) and
reports the sampling wall time (compile apart), the decode+write time, the peak resident memory of
the process (``ru_maxrss``) and XLA's temp bytes of the compiled sampler. ``quality``: on the demo
model, move prompts at k times the trained length; the seam ratio (mean absolute frame-to-frame
change across window boundaries / inside windows, on decoded pixels) and the demo checker's colour
and direction verdicts over the whole video. JSON lines to stdout and ``benchmarks/out/``; markdown
tables at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
for p in (str(ROOT), str(ROOT / "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)
OUT = ROOT / "benchmarks" / "out"

# per model: the window methods at the model's trained window (demo: 8 frames; tiny: 8)
METHODS = {
    "single": None,
    "genl": "genl:8:4",
    "blend": "blend:8:4",
    "freenoise": "freenoise:8:4",
    "fifo": "fifo:8:1",
    "vidrd": "vidrd:8:4",
    "streaming": "streaming:8:4",  # StreamingT2V CAM + APM (needs the shipped streaming.safetensors)
}


def _valid_frames(spec, frames: int) -> int:
    """The nearest length <= frames that the method takes (blend/vidrd need O + k (F - O))."""
    from vstar_jax.longvideo import parse_strategy

    st = parse_strategy(spec)
    for n in range(frames, 0, -1):
        try:
            st.check(n, st.steps_for(None) or 8)
            return n
        except ValueError:
            continue
    raise ValueError(f"no valid length <= {frames} for {spec}")


def _model(name: str):
    """(checkpoint, pipeline) for a model name."""
    if name == "demo":
        return None, None
    from tiny_checkpoint import shared_tiny_checkpoint

    return shared_tiny_checkpoint(), None


def point(args) -> dict:
    """One (model, method, frames) run in this process; prints its JSON line."""
    from vstar_jax import pipeline as pl
    from vstar_jax.runtime import runtime

    spec = METHODS[args.method]
    frames = _valid_frames(spec, args.frames)
    ckpt, _ = _model(args.model)
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f"{args.model}-{args.method}-{frames}.mp4"
    t0 = time.time()
    res = pl.generate_video("a red circle moves to the right", checkpoint=ckpt, frames=frames, steps=args.steps,
                            long_video=spec, out=out, progress=False, keep_video=False, seed=0)
    wall = time.time() - t0
    compiled = list(runtime().compiled.values())[-1]
    mem = compiled.memory_analysis()
    row = {"model": args.model, "method": args.method, "spec": spec or "single", "frames": frames,
           "steps": res.sidecar["steps"], "sample_s": res.sidecar["timing_s"]["sample"],
           "decode_write_s": res.sidecar["timing_s"]["decode"], "total_s": round(wall, 2),
           "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "xla_temp_mib": round(mem.temp_size_in_bytes / 2**20, 2) if mem is not None else None}
    print(json.dumps(row), flush=True)
    return row


def perf(args) -> list[dict]:
    rows = []
    for model in args.models.split(","):
        for method in args.methods.split(","):
            for frames in [int(f) for f in args.frames.split(",")]:
                cmd = [sys.executable, __file__, "point", "--model", model, "--method", method, "--frames",
                       str(frames), "--steps", str(args.steps)]
                env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
                p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
                line = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
                if p.returncode or not line:
                    row = {"model": model, "method": method, "frames": frames,
                           "error": (p.stderr.strip().splitlines() or ["?"])[-1][:200]}
                else:
                    row = json.loads(line[-1])
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def perf_table(rows) -> str:
    head = ("| model | method | frames | sample s | s / frame | decode+write s | peak RSS MiB | XLA temp MiB |\n"
            "|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['method']} | {r['frames']} | error: {r['error']} | | | | |\n")
            continue
        lines.append(f"| {r['model']} | {r['spec']} | {r['frames']} | {r['sample_s']:.1f} | "
                     f"{r['sample_s'] / r['frames']:.3f} | {r['decode_write_s']:.1f} | {r['peak_rss_mib']:.0f} | "
                     f"{r['xla_temp_mib']} |\n")
    return head + "".join(lines)


# ------------------------------------------------------------------------------ quality
def boundaries(spec, frames: int) -> list[int]:
    """Frame indices b where frames b-1 -> b cross from one window/chunk/clip to the next."""
    from vstar_jax.longvideo import parse_strategy
    from vstar_jax.longvideo import windows as W

    st = parse_strategy(spec)
    if st.name in ("genl", "freenoise"):
        step = st.stride
        return list(range(step, frames, step))
    if st.name in ("blend", "vidrd"):
        starts = W.chunk_starts(frames, st.window, st.overlap)
        return [int(s) + st.overlap for s in starts[1:]]
    if st.name == "streaming":  # chunk k's own frames start after its C conditioning (overlap) frames
        from vstar_jax.longvideo.streaming import chunk_starts

        return [s + st.cond for s in chunk_starts(frames, st.window, st.cond)[1:]]
    if st.name == "fifo":  # frames leave the queue one by one; windows of F
        return list(range(st.window, frames, st.window))
    return list(range(8, frames, 8))  # single pass: the trained window's multiples, for comparison


def seam_ratio(video, bnds) -> float:
    import numpy as np

    v = video.astype(np.float32)
    d = np.abs(np.diff(v, axis=0)).mean(axis=(1, 2, 3))  # d[i] = change from frame i to i + 1
    at = [d[b - 1] for b in bnds if 0 < b < len(v)]
    inside = [d[i] for i in range(len(d)) if (i + 1) not in set(bnds)]
    return float(np.mean(at) / max(np.mean(inside), 1e-6)) if at and inside else float("nan")


_DIR_VEC = {"right": (1, 0), "up-right": (1, -1), "up": (0, -1), "up-left": (-1, -1), "left": (-1, 0),
            "down-left": (-1, 1), "down": (0, 1), "down-right": (1, 1)}


def boundary_direction(meas, bnds, direction: str, reach: int = 2, slack: float = 0.02) -> float:
    """Share of chunk boundaries b across which the object does not go against the caption's direction:
    the centroid's move from frame b - reach to b + reach - 1 (fractions of the frame) projected on the
    caption's direction is >= -slack (a jump back at a seam fails). NaN without boundaries."""
    import numpy as np

    v = np.asarray(_DIR_VEC[direction], np.float32)
    v = v / np.linalg.norm(v)
    oks = []
    for b in bnds:
        lo, hi = b - reach, b + reach - 1
        if lo < 0 or hi >= len(meas):
            continue
        a, c = meas[lo], meas[hi]
        if not (a["found"] and c["found"]):
            oks.append(False)
            continue
        d = np.asarray(c["xy"], np.float32) - np.asarray(a["xy"], np.float32)
        oks.append(bool(float(d @ v) >= -slack))
    return float(np.mean(oks)) if oks else float("nan")


def quality(args) -> list[dict]:
    import numpy as np

    from vstar_jax import pipeline as pl
    from vstar_jax.demo import checker, world
    from vstar_jax.demo import model as dm

    model = dm.load_demo_model(args.demo_dir)  # None: the shipped one (with its CAM/APM when shipped)
    pipe = pl.load_pipeline(None) if args.demo_dir is None else dm.pipeline_from_demo(model)
    rows = []
    specs = [world.sample_spec(args.seed * 100_003 + s, "move") for s in range(args.n)]
    for mult in [int(x) for x in args.lengths.split(",")]:
        for method in args.methods.split(","):
            spec = METHODS[method]
            frames = _valid_frames(spec, model.frames * mult)
            ratios, color, direction, found, across = [], [], [], [], []
            t0 = time.time()
            for i, s in enumerate(specs):
                res = pl.generate_video(s["caption"], pipeline=pipe, frames=frames, long_video=spec, seed=i,
                                        progress=False, steps=args.steps)
                video = dm.decode_latents(res.latents, model.config.patch, 1)[0]
                ratios.append(seam_ratio(video, boundaries(spec, frames)))
                c = checker.check(video, s)
                color.append(bool(c["color_ok"]))
                direction.append(bool(c["motion_ok"]))
                meas = checker.measure(video)
                found.append(all(m["found"] for m in meas) and
                             all(m["color"] == s["color"] for m in meas if m["found"]))
                across.append(boundary_direction(meas, boundaries(spec, frames), s["states"][0]["direction"]))
            row = {"method": method, "spec": spec or "single", "frames": frames, "x_trained": mult, "n": len(specs),
                   "seam_ratio": round(float(np.nanmean(ratios)), 3), "colour": float(np.mean(color)),
                   "direction": float(np.mean(direction)), "object_kept": float(np.mean(found)),
                   "direction_across_boundaries": round(float(np.nanmean(across)), 3),
                   "seconds": round(time.time() - t0, 1),
                   "items": {"direction": [int(x) for x in direction], "object_kept": [int(x) for x in found]}}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def quality_table(rows) -> str:
    head = ("| method | frames (x trained) | n | seam ratio | colour | direction | object + colour in every frame "
            "| direction across boundaries |\n|---|---|---|---|---|---|---|---|\n")
    return head + "".join(f"| {r['spec']} | {r['frames']} ({r['x_trained']}x) | {r['n']} | {r['seam_ratio']:.2f} | "
                          f"{100 * r['colour']:.0f}% | {100 * r['direction']:.0f}% | "
                          f"{100 * r.get('object_kept', float('nan')):.0f}% | "
                          f"{100 * r.get('direction_across_boundaries', float('nan')):.0f}% |\n" for r in rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("point")
    p.add_argument("--model", default="demo")
    p.add_argument("--method", default="genl", choices=sorted(METHODS))
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--steps", type=int, default=8)
    q = sub.add_parser("perf")
    q.add_argument("--models", default="demo,tiny")
    q.add_argument("--methods", default=",".join(METHODS))
    q.add_argument("--frames", default="64,256,1024")
    q.add_argument("--steps", type=int, default=8, help="DDIM steps (fifo:8:1 always runs 8)")
    q.add_argument("--timeout", type=int, default=1800)
    r = sub.add_parser("quality")
    r.add_argument("--n", type=int, default=10)
    r.add_argument("--lengths", default="4,16")
    r.add_argument("--methods", default=",".join(METHODS))
    r.add_argument("--steps", type=int, default=8)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--demo-dir", default=None, help="a demo model folder (default: the shipped one)")
    args = ap.parse_args(argv)
    if args.mode == "point":
        point(args)
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rows = perf(args) if args.mode == "perf" else quality(args)
    md = perf_table(rows) if args.mode == "perf" else quality_table(rows)
    (OUT / f"long_video_{args.mode}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    print(f"\nCommand: python benchmarks/long_video.py {' '.join(argv if argv is not None else sys.argv[1:])} "
          f"({time.time() - t0:.0f} s)\n\n{md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
