"""StreamingT2V's enhancer on the demo model: seams and checker verdicts before and after (issue 27).

    nice -n 15 python benchmarks/enhance_seams.py --n 30 --lengths 32,64 --out benchmarks/out/enhance.jsonl

For ``--n`` move prompts of the demo world (seeded as ``benchmarks/long_video.py quality``), each length:
the demo model generates the input video in one pass (``generate_video``, written as the mp4 a user would
enhance), then the demo model refines it as its own refiner (SDEdit at its resolution, chunks of
``--chunk`` overlapping ``--overlap``) three ways: naive chunking (``--no-shared-noise --no-blend``), shared
noise alone (``--no-blend``) and shared noise with randomized blending (the default). Reported per setting:
the seam ratio at the chunk starts (mean absolute frame-to-frame change into frame s_k, k >= 1, over the
mean of every other change, ``long_video.seam_ratio``, on the model's 12x12 pixels), the same ratio of the
input, and the demo checker's verdicts (object shape, colour, direction) before and after, with the share
of videos where enhancement changed any of them; and, for the moves whose direction verdict held, how far
enhancement turned them in degrees (the 8-way call flips at a sector edge for a turn of 1 degree as for 40:
the shares that stopped or turned past 22.5 and 45 degrees, and the median turn). JSON lines to stdout
(and ``--out``), a table at the end.
``--solver dpmpp_2m_sde`` (with ``--steps`` then the solver's steps from T') and ``--guide-rescale`` run the
reference's sampler settings instead of DDIM; ``--settings`` picks some of the three; ``--chunk-clock chunk``
shows every chunk its own frame clock (the enhancer's ablation; default ``video``, its places in the whole
video).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from benchmarks.long_video import seam_ratio  # noqa: E402
from vstar_jax import pipeline as pl  # noqa: E402
from vstar_jax.demo import checker, world  # noqa: E402
from vstar_jax.demo import model as dm  # noqa: E402
from vstar_jax.enhance.job import enhance_video  # noqa: E402
from vstar_jax.io.atomic import write_text  # noqa: E402
from vstar_jax.longvideo import windows as W  # noqa: E402

SETTINGS = {"naive": (False, False), "shared noise": (True, False), "shared noise + blend": (True, True)}
VERDICTS = {"object": "shape_ok", "colour": "color_ok", "direction": "motion_ok"}


def verdicts(video, spec) -> dict:
    """The three verdicts, and the move's displacement (dx, dy) (the first state's: these are move prompts)."""
    c = checker.check(video, spec)
    seg = c["segments"][0]
    return {**{k: bool(c[v]) for k, v in VERDICTS.items()}, "move": (seg["dx"], seg["dy"])}


def turns(before: list[dict], after: list[dict]) -> dict:
    """How far enhancement turned the moves whose direction verdict held: per video the turn in degrees
    (``checker.turn_degrees``; None: it stopped), and the shares of all videos (the verdicts' denominator)
    that held and then stopped or turned by more than half a sector (22.5 degrees: from the sector's centre
    out of it) or a whole one (45: out of it from anywhere in it)."""
    held = [(b["move"], a["move"]) for b, a in zip(before, after) if b["direction"]]
    deg = [checker.turn_degrees(b, a) for b, a in held]
    n = len(before)
    moved = [d for d in deg if d is not None]
    return {"direction_turn_deg": [None if d is None else round(d, 1) for d in deg],
            "direction_stopped": sum(d is None for d in deg) / n,
            "direction_turned_22": sum(d is None or d > 22.5 for d in deg) / n,
            "direction_turned_45": sum(d is None or d > 45.0 for d in deg) / n,
            "direction_turn_median": round(float(np.median(moved)), 1) if moved else None}


def run(args) -> list[dict]:
    pipe = pl.load_pipeline(None)
    patch = int(pipe.config["patch"])
    specs = [world.sample_spec(args.seed * 100_003 + s, "move") for s in range(args.n)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="vstar-enhance-bench-") as tmp:
        for frames in [int(x) for x in args.lengths.split(",")]:
            bnds = [int(s) for s in W.chunk_starts(frames, args.chunk, args.overlap)[1:]]
            settings = {k: SETTINGS[k] for k in args.settings.split(",")}
            acc = {name: {"ratio": [], "after": []} for name in settings}
            before, ratio_in = [], []
            t0 = time.time()
            for i, spec in enumerate(tqdm(specs, desc=f"{frames} frames", file=sys.stderr)):
                src = pathlib.Path(tmp) / f"in-{frames}-{i}.mp4"
                res = pl.generate_video(spec["caption"], pipeline=pipe, frames=frames, seed=i, steps=args.gen_steps,
                                        out=str(src), progress=False, overwrite=True, keep_video=False)
                video = dm.decode_latents(res.latents, patch, 1)[0]
                before.append(verdicts(video, spec))
                ratio_in.append(seam_ratio(video, bnds))
                for name, (shared, blend) in settings.items():
                    out = pathlib.Path(tmp) / f"out-{frames}-{i}.mp4"
                    er = enhance_video(src, spec["caption"], pipeline=pipe, out=str(out), overwrite=True,
                                       progress=False, chunk=args.chunk, overlap=args.overlap, strength=args.strength,
                                       steps=args.steps, cfg=args.cfg, seed=i, shared_noise=shared, blend=blend,
                                       solver=args.solver, guide_rescale=args.guide_rescale,
                                       chunk_clock=args.chunk_clock)
                    enhanced = dm.decode_latents(er.latents, patch, 1)[0]
                    acc[name]["ratio"].append(seam_ratio(enhanced, bnds))
                    acc[name]["after"].append(verdicts(enhanced, spec))
            for name, a in acc.items():
                changed = [any(b[k] != x[k] for k in VERDICTS) for b, x in zip(before, a["after"])]
                broken = [any(b[k] and not x[k] for k in VERDICTS) for b, x in zip(before, a["after"])]
                row = {"setting": name, "frames": frames, "n": len(specs), "chunk": args.chunk,
                       "overlap": args.overlap, "strength": args.strength, "steps": args.steps, "cfg": args.cfg,
                       "solver": args.solver, "guide_rescale": args.guide_rescale, "chunk_clock": args.chunk_clock,
                       "seam_ratio": round(float(np.nanmean(a["ratio"])), 3),
                       "seam_ratio_input": round(float(np.nanmean(ratio_in)), 3),
                       **{f"{k}_before": float(np.mean([b[k] for b in before])) for k in VERDICTS},
                       **{f"{k}_after": float(np.mean([x[k] for x in a["after"]])) for k in VERDICTS},
                       "changed": float(np.mean(changed)), "broken": float(np.mean(broken)),
                       **turns(before, a["after"]),
                       **{f"{k}_broken": float(np.mean([b[k] and not x[k] for b, x in zip(before, a["after"])]))
                          for k in VERDICTS},
                       "seconds_all_settings": round(time.time() - t0, 1)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def solver_name(row) -> str:
    rescale = row.get("guide_rescale") or 0
    clock = row.get("chunk_clock", "chunk")
    return (row.get("solver", "ddim") + (f" (rescale {rescale})" if rescale else "")
            + (", chunk clock" if clock == "chunk" else ""))


def table(rows) -> str:
    head = ("| solver | setting | frames | n | seam ratio (input) | seam ratio | object before / after "
            "| colour before / after | direction before / after | verdict changed | pass -> fail "
            "| pass -> fail object / colour / direction | held, then stopped / turned > 22.5 / > 45 degrees "
            "| median turn |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    pct = lambda x: f"{100 * x:.0f}%"  # noqa: E731
    return head + "".join(
        f"| {solver_name(r)} | {r['setting']} | {r['frames']} | {r['n']} | {r['seam_ratio_input']:.2f} | "
        f"{r['seam_ratio']:.2f} | "
        f"{pct(r['object_before'])} / {pct(r['object_after'])} | {pct(r['colour_before'])} / {pct(r['colour_after'])} | "
        f"{pct(r['direction_before'])} / {pct(r['direction_after'])} | {pct(r['changed'])} | {pct(r['broken'])} | "
        f"{' / '.join(pct(r[f'{k}_broken']) if f'{k}_broken' in r else '-' for k in VERDICTS)} | "
        f"{' / '.join(pct(r[k]) if k in r else '-' for k in ('direction_stopped', 'direction_turned_22', 'direction_turned_45'))}"
        f" | {r.get('direction_turn_median') if r.get('direction_turn_median') is not None else '-'} |\n"
        for r in rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=30, help="move prompts per length")
    ap.add_argument("--lengths", default="32,64", help="video lengths in frames")
    ap.add_argument("--seed", type=int, default=0, help="prompt-draw seed")
    ap.add_argument("--gen-steps", type=int, default=25, help="DDIM steps of the input videos")
    ap.add_argument("--chunk", type=int, default=8, help="enhancer chunk (the demo model's trained length)")
    ap.add_argument("--overlap", type=int, default=4)
    ap.add_argument("--strength", type=float, default=0.6)
    ap.add_argument("--steps", type=int, default=50, help="enhancer DDIM steps over the schedule (30 run at 0.6); "
                                                          "with --solver dpmpp_2m_sde its steps from T'")
    ap.add_argument("--cfg", type=float, default=7.5)
    ap.add_argument("--solver", default="ddim", choices=("ddim", "dpmpp_2m_sde"), help="the enhancer's solver")
    ap.add_argument("--guide-rescale", type=float, default=0.0, help="the reference's CFG std rescale in [0, 1]")
    ap.add_argument("--chunk-clock", default="video", choices=("video", "chunk"),
                    help="the frame clock each chunk sees: its places in the whole video, or its own (ablation)")
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"some of: {', '.join(SETTINGS)} (comma-separated)")
    ap.add_argument("--out", help="also write the JSON lines here")
    args = ap.parse_args(argv)
    rows = run(args)
    if args.out:
        write_text(args.out, "".join(json.dumps(r) + "\n" for r in rows))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
