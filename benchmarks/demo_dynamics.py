"""Prompt-following of a demo model with and without VSTAR, verified by the pixel checker (ground truth).

    python benchmarks/demo_dynamics.py --checkpoint demo_vc --n 40 --json out.jsonl --out table.md

For each prompt kind (``--families``: single-state moves, grow/shrink, colour changes = a move then a
recolour, and two-state prompts of any kind) it draws ``--n`` prompts from the demo world (seeded by
``--seed``), generates one video per prompt at 1x, 2x and 4x the model's trained length (``--lengths``), in
each setting (``--settings``):

* ``base``: one pass over all frames;
* ``tar=PRESET``: VSTAR's temporal attention regularization (``vstar_jax.tar_vsp.tar``);
* ``vsp``, ``tar=PRESET+vsp``: video synopsis prompting, one prompt per state spread over the frames
  (``world.synopsis``); on one-state prompts VSP is the prompt itself and is not run;
* ``genl``, ``blend``, ``freenoise``, ``fifo``: the long-video methods with windows of the trained length
  (stride / overlap half of it); at 1x they are the base run and are not repeated.

and checks each video with ``vstar_jax.demo.checker.check``: colour right, motion right (direction of
moves, grow/shrink), states in order (two-state kinds), all of them (``ok``), and, for moves, whether the
object keeps moving the prompted way in every trained-length stretch of the video (``sustained``:
:func:`sustained_move`), the quasi-static failure VSTAR describes. Every setting uses the same prompts and
seeds as ``base`` (paired noise), and each cell's verdicts are compared with base at the same length, and
base's with base at 1x, by an exact McNemar test (:func:`mcnemar`, p-values in the table).

Next to the verdicts, one-pass settings record VSTAR's band score of the temporal attention maps per
layer (``vstar_jax.metrics.band``: the share of attention within |i - j| <= 1, averaged over steps and
videos) and its uniform-attention baseline at that length; ``band_excess`` = (score - uniform) / (1 -
uniform) is comparable across lengths (0: no band; 1: all mass on the band).
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
from scipy.stats import binomtest  # noqa: E402

from vstar_jax.demo import checker, world  # noqa: E402
from vstar_jax.demo import model as dm  # noqa: E402
from vstar_jax.errors import VstarError  # noqa: E402
from vstar_jax.io.atomic import append_text, write_text  # noqa: E402
from vstar_jax.metrics.band import layer_band_scores  # noqa: E402
from vstar_jax.tar_vsp.analysis import band_mask  # noqa: E402
from vstar_jax.tar_vsp.tar import parse_tar  # noqa: E402

FAMILIES = ("move", "size", "color", "multi")
TWO_STATE = ("color", "multi")
METHODS = ("genl", "blend", "freenoise", "fifo")
DEFAULT_SETTINGS = "base,tar=64D1_32D8,tar=64D4,vsp,tar=64D1_32D8+vsp," + ",".join(METHODS)
BAND_WIDTH = 1


def family_specs(family: str, n: int, seed: int) -> list[dict]:
    """n specs of a family: ``move`` / ``size`` single-state; ``color`` two states, the second a recolour
    (the world's first state is always a motion, so the first stretch shows the initial colour); ``multi``
    two states of any kind (so a VSP batch shares K = 2)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    out, s = [], 0
    kind = "multi" if family in TWO_STATE else family
    while len(out) < n:
        spec = world.sample_spec(seed * 100_003 + s, kind)
        s += 1
        if family in TWO_STATE and len(spec["states"]) != 2:
            continue
        if family == "color" and spec["states"][1]["action"] != "recolor":
            continue
        out.append(spec)
    return out


def parse_setting(name: str, tar: str = "64D4") -> dict:
    """``base`` | ``vsp`` | ``tar=PRESET`` | ``tar=PRESET+vsp`` | a long-video method -> its parts; a bare
    ``tar`` (``tar+vsp``) takes the preset ``tar`` (``--tar``, as this script's earlier ``--methods``)."""
    parts = ["tar=" + tar if p == "tar" else p for p in name.split("+")]
    out = {"name": "+".join(parts), "tar": None, "vsp": False, "method": None}
    for p in parts:
        if p == "base" and len(parts) == 1:
            continue
        if p == "vsp":
            out["vsp"] = True
        elif p.startswith("tar="):
            out["tar"] = p[4:]
            parse_tar(out["tar"])  # a bad preset fails here, before any compute
        elif p in METHODS and len(parts) == 1:
            out["method"] = p
        else:
            raise ValueError(f"bad setting {name!r}: use base, vsp, tar=PRESET, tar=PRESET+vsp or one of "
                             f"{', '.join(METHODS)}")
    return out


def method_spec(method: str, window: int) -> str:
    """The long-video method with windows of the trained length and half of it as stride / overlap."""
    half = max(window // 2, 1)
    return {"genl": f"genl:{window}:{half}", "blend": f"blend:{window}:{half}",
            "freenoise": f"freenoise:{window}:{half}", "fifo": f"fifo:{window}:4"}[method]


def sustained_move(video, spec: dict, stretch: int) -> bool:
    """For a single-state move: in every consecutive stretch of ``stretch`` frames (the trained length;
    the last one may be shorter) the object moves along the prompted direction by at least
    ``checker.MOVE_MIN / k`` of the frame, k = the number of stretches (a trained-length video needs the
    checker's own threshold; a k-times longer one that keeps moving covers 1/k of it per stretch). A
    video that moves for the first stretch and then stands still fails: VSTAR's quasi-static failure."""
    state = spec["states"][0]
    if state["action"] != "move":
        raise ValueError("sustained_move is for move states")
    ang = np.radians(checker._DIR_ANGLES[state["direction"]])
    unit = np.array([np.cos(ang), -np.sin(ang)])  # (dx, dy) with y down
    meas = checker.measure(video)
    f = len(meas)
    k = max(1, int(np.ceil(f / stretch)))
    for j in range(k):
        lo, hi = j * stretch, min((j + 1) * stretch, f - 1) if j < k - 1 else f - 1
        if hi <= lo:
            continue
        summ = checker.segment_summary(meas, lo, hi)
        if summ["found"] < 2 or float(np.dot([summ["dx"], summ["dy"]], unit)) < checker.MOVE_MIN / k:
            return False
    return True


def mcnemar(a: list[bool], b: list[bool]) -> dict:
    """Exact McNemar test of paired verdicts: {'a_only', 'b_only', 'p'} (two-sided binomial on the
    discordant pairs; p = 1 without any)."""
    if len(a) != len(b):
        raise ValueError(f"paired verdicts of unequal length: {len(a)} and {len(b)}")
    a_only = sum(1 for x, y in zip(a, b) if x and not y)
    b_only = sum(1 for x, y in zip(a, b) if y and not x)
    n = a_only + b_only
    p = 1.0 if n == 0 else float(binomtest(min(a_only, b_only), n, 0.5).pvalue)
    return {"a_only": a_only, "b_only": b_only, "p": p}


def uniform_band(frames: int, width: int = BAND_WIDTH) -> float:
    """The band score of uniform attention over ``frames`` frames (each row's share of the band)."""
    return float(band_mask(frames, width).sum() / frames ** 2)


def band_summary(maps: dict, frames: int) -> dict:
    per_layer = layer_band_scores(maps, BAND_WIDTH)
    u = uniform_band(frames)
    mean = float(np.mean(list(per_layer.values())))
    return {"band": mean, "band_uniform": u, "band_excess": (mean - u) / (1 - u),
            "band_layers": {k.replace("/block_0", "").replace("/weights", "").replace("_temporal", ""): round(v, 4)
                            for k, v in per_layer.items()}}


def run_cell(model, specs, frames, setting, *, steps, cfg, seed, batch, stretch):
    """Generate and check one cell; returns (per-video verdict dicts, band summary or None)."""
    results, maps_all = [], []
    tar = parse_tar(setting["tar"]) if setting["tar"] else None
    strategy = method_spec(setting["method"], stretch) if setting["method"] else None
    capture = strategy is None
    for lo in range(0, len(specs), batch):
        chunk = specs[lo:lo + batch]
        prompts = [s["caption"] for s in chunk]
        synopses = [world.synopsis(s) for s in chunk] if setting["vsp"] else None
        got = dm.sample_batch(model, prompts, frames=frames, seed=seed + lo, steps=steps, cfg=cfg, tar=tar,
                              synopses=synopses, strategy=strategy, capture=capture)
        videos, maps = got if capture else (got, None)
        if maps is not None:
            maps_all.append(maps)
        for spec, video in zip(chunk, videos):
            r = checker.check(video, spec)
            v = {"color": r["color_ok"], "motion": r["motion_ok"], "order": r["order_ok"], "ok": r["ok"]}
            if len(spec["states"]) == 1 and spec["states"][0]["action"] == "move":
                v["sustained"] = sustained_move(video, spec, stretch)
            results.append(v)
    band = None
    if maps_all:
        merged = {k: np.concatenate([m[k] for m in maps_all], axis=1) for k in maps_all[0]}
        band = band_summary(merged, frames)
    return results, band


KEYS = ("color", "motion", "order", "ok", "sustained")


def summarize(results) -> dict:
    out = {"n": len(results)}
    for k in KEYS:
        vals = [r[k] for r in results if k in r]
        out[k] = float(np.mean(vals)) if vals else None
    return out


def compare(results, reference) -> dict:
    """McNemar p-values of each verdict against the paired reference cell."""
    out = {}
    for k in ("motion", "order", "ok", "sustained"):
        a = [r.get(k) for r in reference]
        b = [r.get(k) for r in results]
        if None in a or None in b:
            continue
        out[k] = mcnemar(a, b)
    return out


def table(rows) -> str:
    head = ("| family | frames | setting | n | colour | motion | order | all | sustained | McNemar p (paired with) | band excess |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    pct = lambda v: "-" if v is None else f"{100 * v:.0f}%"  # noqa: E731

    def pv(r):
        c = r.get("vs")
        if not c:
            return "-"
        keys = {"move": ("motion", "sustained"), "size": ("motion",)}.get(r["family"], ("motion", "order"))
        got = [f"{k} {c['tests'][k]['p']:.2g}" for k in keys if k in c["tests"]]
        return (", ".join(got) + f" (vs {c['against']})") if got else "-"

    return head + "".join(
        f"| {r['family']} | {r['frames']} | {r['setting']} | {r['n']} | {pct(r['color'])} | {pct(r['motion'])} | "
        f"{pct(r['order']) if r['family'] in TWO_STATE else '-'} | {pct(r['ok'])} | {pct(r['sustained'])} | {pv(r)} | "
        f"{'-' if r.get('band_excess') is None else format(r['band_excess'], '.3f')} |\n" for r in rows)


def layer_table(rows) -> str:
    """Band excess over uniform attention per layer, (score - uniform) / (1 - uniform), of the base runs at
    each length (the mechanism beside the outcome; 0 = no band, < 0 = less mass near the diagonal than
    uniform attention)."""
    base = [r for r in rows if r["setting"] == "base" and r.get("band_layers")]
    if not base:
        return ""
    layers = list(base[0]["band_layers"])
    head = "| family | frames | uniform | " + " | ".join(layers) + " |\n|" + "---|" * (len(layers) + 3) + "\n"
    ex = lambda r, k: (r["band_layers"][k] - r["band_uniform"]) / (1 - r["band_uniform"])  # noqa: E731
    return head + "".join(f"| {r['family']} | {r['frames']} | {r['band_uniform']:.3f} | "
                          + " | ".join(f"{ex(r, k):+.3f}" for k in layers) + " |\n" for r in base)


def check_args(args, ap) -> list[dict]:
    if not (1 <= args.n <= 10_000 and 1 <= args.batch <= 1_000 and 1 <= args.steps <= 1_000):
        ap.error("--n (1-10000), --batch (1-1000) and --steps (1-1000) out of range")
    fams = args.families.split(",")
    bad = [f for f in fams if f not in FAMILIES]
    if bad:
        ap.error(f"unknown families {bad}; choose from {', '.join(FAMILIES)}")
    try:
        lengths = [int(x) for x in args.lengths.split(",")]
        settings = [parse_setting(s, args.tar) for s in args.settings.split(",")]
    except ValueError as e:
        ap.error(str(e))
    if any(not 1 <= m <= 64 for m in lengths):
        ap.error("--lengths are multiples of the trained length, 1-64")
    if args.cfg is not None and not (np.isfinite(args.cfg) and 0 <= args.cfg <= 100):
        ap.error("--cfg must be finite, in [0, 100]")
    return settings


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="demo",
                    help="demo (the default demo model), demo_vc (the trained-length one) or an exported folder")
    ap.add_argument("--n", type=int, default=50, help="prompts per family")
    ap.add_argument("--families", default=",".join(FAMILIES), help=f"from {', '.join(FAMILIES)}")
    ap.add_argument("--lengths", default="1,2,4", help="multiples of the trained length")
    ap.add_argument("--settings", "--methods", default=DEFAULT_SETTINGS,
                    help="base, tar=PRESET, vsp, tar=PRESET+vsp and long-video methods (genl, blend, freenoise, fifo); "
                         "a bare tar / tar+vsp takes --tar")
    ap.add_argument("--tar", default="64D4", help="the preset of a bare 'tar' setting")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--cfg", type=float, default=None, help="guidance (default: the model's config)")
    ap.add_argument("--seed", type=int, default=0, help="prompt and noise seed")
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--out", default=None, help="write the markdown tables here")
    ap.add_argument("--json", default=None, help="append one JSON line per cell here")
    args = ap.parse_args(argv)
    settings = check_args(args, ap)
    try:
        model = dm.load_demo_model(args.checkpoint)
    except (ValueError, VstarError) as e:
        ap.error(str(e))
    stretch = model.frames
    rows, t0 = [], time.time()
    for fam in args.families.split(","):
        specs = family_specs(fam, args.n, args.seed)
        base_at = {}
        for mult in [int(x) for x in args.lengths.split(",")]:
            frames = stretch * mult
            for st in settings:
                if st["vsp"] and fam not in TWO_STATE:
                    continue  # one state: VSP's per-frame prompt is the prompt itself
                if st["method"] and mult == 1:
                    continue  # one window: the base run
                tc = time.time()
                res, band = run_cell(model, specs, frames, st, steps=args.steps, cfg=args.cfg, seed=args.seed,
                                     batch=args.batch, stretch=stretch)
                row = {"checkpoint": args.checkpoint, "seed": args.seed, "family": fam, "frames": frames,
                       "setting": st["name"], **summarize(res), **(band or {})}
                if st["name"] == "base":
                    base_at[frames] = res
                    if frames != stretch and stretch in base_at:
                        row["vs"] = {"against": f"base {stretch}f", "tests": compare(res, base_at[stretch])}
                elif frames in base_at:
                    row["vs"] = {"against": "base", "tests": compare(res, base_at[frames])}
                row["seconds"] = round(time.time() - tc, 1)
                rows.append(row)
                line = json.dumps(row)
                print(line, flush=True)
                if args.json:
                    append_text(args.json, line + "\n")
    elapsed = time.time() - t0
    cmd = "python benchmarks/demo_dynamics.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = table(rows)
    layers = layer_table(rows)
    print(md)
    print(layers)
    if args.out:
        rec = model.record
        runs = rec.get("lineage", [])  # a chain of --init-from runs (demo_vc: the default's run, exported)
        steps = sum(r.get("step") or 0 for r in runs) + int(rec.get("steps", 0) or 0)
        text = (f"Command: `{cmd}`\n\nModel: {args.checkpoint} ({model.path}; trained {steps} steps"
                f"{f' in {len(runs) + 1} runs' if runs else ''}); DDIM {args.steps} steps, eta 1, cfg {args.cfg or model.config.diffusion.cfg}; "
                f"{elapsed:.0f} s on this machine.\n\n" + md + ("\nBand excess per layer (base runs):\n\n" + layers
                                                                 if layers else ""))
        write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
