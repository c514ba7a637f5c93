"""Prompt-following of the embedded demo model, verified by the pixel checker (ground-truth benchmark).

    python benchmarks/demo_dynamics.py --n 50 --out benchmarks/RESULTS.md

For each prompt family (single-state moves, single-state size changes, two-state prompts) it draws
``--n`` prompts from the demo world (seeded), generates one video per prompt with the shipped demo
model (``vstar_jax.demo.model.sample``: the project's UNet3D + DDIM sampler) at the trained length and
at 2x and 4x, without and with TAR and VSP, and reports with ``vstar_jax.demo.checker.check``:
colour right, motion right (direction of moves, grow/shrink), states in the right order (multi-state),
and all of them (``ok``). VSP gives each state its own prompt (``world.synopsis``); on one-state
prompts it equals the base run and is not repeated.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from vstar_jax.demo import checker, world  # noqa: E402
from vstar_jax.demo import model as dm  # noqa: E402
from vstar_jax.tar_vsp.tar import parse_tar  # noqa: E402

FAMILIES = {"move": "move", "size": "size", "multi": "multi2"}
METHODS = ("base", "tar", "vsp", "tar+vsp")


def family_specs(family: str, n: int, seed: int) -> list[dict]:
    """n specs of a family; 'multi2' keeps two-state prompts only (so a VSP batch shares K = 2)."""
    out, s = [], 0
    kind = "multi" if family == "multi2" else family
    while len(out) < n:
        spec = world.sample_spec(seed * 100_003 + s, kind)
        s += 1
        if family == "multi2" and len(spec["states"]) != 2:
            continue
        out.append(spec)
    return out


def run_cell(model, specs, frames, method, tar, *, steps, cfg, seed, batch, clip_x0=None):
    """Generate and check; returns per-video check dicts."""
    results = []
    use_tar = tar if "tar" in method else None
    use_vsp = "vsp" in method
    for lo in range(0, len(specs), batch):
        chunk = specs[lo:lo + batch]
        prompts = [s["caption"] for s in chunk]
        synopses = [world.synopsis(s) for s in chunk] if use_vsp else None
        videos = dm.sample_batch(model, prompts, frames=frames, seed=seed + lo, steps=steps, cfg=cfg,
                                 tar=use_tar, synopses=synopses, clip_x0=clip_x0)
        for spec, video in zip(chunk, videos):
            results.append(checker.check(video, spec))
    return results


def summarize(results, multi: bool) -> dict:
    n = len(results)
    mean = lambda k: float(np.mean([r[k] for r in results])) if n else float("nan")  # noqa: E731
    return {"n": n, "color": mean("color_ok"), "motion": mean("motion_ok"),
            "order": mean("order_ok") if multi else None, "ok": mean("ok")}


def table(rows) -> str:
    head = "| family | frames | method | n | colour | motion | order | all |\n|---|---|---|---|---|---|---|---|\n"
    fmt = lambda v: "-" if v is None else f"{100 * v:.0f}%"  # noqa: E731
    return head + "".join(
        f"| {r['family']} | {r['frames']} | {r['method']} | {r['n']} | {fmt(r['color'])} | {fmt(r['motion'])} | "
        f"{fmt(r['order'])} | {fmt(r['ok'])} |\n" for r in rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50, help="prompts per family")
    ap.add_argument("--families", default="move,size,multi")
    ap.add_argument("--lengths", default="1,2,4", help="multiples of the trained length")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--tar", default="64D4", help="TAR preset (parse_tar)")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--cfg", type=float, default=None, help="guidance (default: the model's config)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--clip-x0", choices=("auto", "on", "off"), default="auto",
                    help="clip predicted x0 to [-1, 1] (auto: the model config's diffusion.clip_x0)")
    ap.add_argument("--checkpoint", default=None, help="demo model folder (default: the shipped one)")
    ap.add_argument("--out", default=None, help="write the markdown table here")
    ap.add_argument("--json", default=None, help="write raw summaries here")
    args = ap.parse_args(argv)

    model = dm.load_demo_model(args.checkpoint)
    tar = parse_tar(args.tar)
    clip_x0 = {"auto": None, "on": True, "off": False}[args.clip_x0]
    rows = []
    t0 = time.time()
    for fam in args.families.split(","):
        specs = family_specs(FAMILIES[fam], args.n, args.seed)
        multi = fam == "multi"
        for mult in [int(x) for x in args.lengths.split(",")]:
            frames = model.frames * mult
            for method in args.methods.split(","):
                if "vsp" in method and not multi:
                    continue  # one state: VSP's per-frame prompt is the prompt itself
                res = run_cell(model, specs, frames, method, tar, steps=args.steps, cfg=args.cfg, seed=args.seed,
                               batch=args.batch, clip_x0=clip_x0)
                row = {"family": fam, "frames": frames, "method": method, **summarize(res, multi)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    elapsed = time.time() - t0
    cmd = "python benchmarks/demo_dynamics.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = table(rows)
    print(md)
    if args.out:
        rec = model.record
        runs = rec.get("lineage", [])
        if runs:  # a chain of --init-from runs: report the whole training
            rec = {"steps": f"{sum(r.get('step') or 0 for r in runs) + rec.get('steps', 0)} (in {len(runs) + 1} runs; "
                            f"last run {rec.get('steps', '?')})", "wall_s": rec.get("total_wall_s", rec.get("wall_s", "?"))}
        text = (f"## Demo model prompt-following (checker-verified)\n\nCommand: `{cmd}`\n\n"
                f"Model: {dm.ASSET_DIR if args.checkpoint is None else args.checkpoint} "
                f"(trained {rec.get('steps', '?')} steps, {rec.get('wall_s', '?')} s); "
                f"DDIM {args.steps} steps, eta 1, cfg {args.cfg or model.config.diffusion.cfg}, clip_x0 {args.clip_x0}, "
                f"TAR preset "
                f"{args.tar}; {elapsed:.0f} s on this machine.\n\n" + md)
        pathlib.Path(args.out).write_text(text)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
