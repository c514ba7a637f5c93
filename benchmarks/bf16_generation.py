"""Whole generations in bfloat16 against float32 on the embedded demo model: frame PSNR and the pixel checker.

    python benchmarks/bf16_generation.py --n 25 --families move,size          # 50 prompts, ~5-10 min on 2 cores

The user path (``vstar_jax.pipeline.generate_batch``, the demo model's defaults: 8 frames, DDIM 25 steps,
eta 1, cfg 5), once with the model as shipped (float32) and once with its UNet config's ``dtype`` set to
``bfloat16`` the way the pipeline overrides UNet settings (``Pipeline.with_unet_settings``: bf16
activations and matmul operands, float32 parameters cast per use, float32 GroupNorm statistics and
softmax as ``UNet3D`` keeps them; the sampler's latents and DDIM arithmetic stay float32). Same prompts,
same seeds (prompt i gets seed ``--seed + i``), so the two runs start from the same noise and draw the
same DDIM noise; every item of a mode runs in the same compiled program.

Prompts: ``--n`` per family from ``benchmarks/demo_dynamics.family_specs`` (the prompts the README's
checker numbers use). Per video: PSNR of the bf16 frames against the float32 frames (uint8, the model's
12x12 pixels, all frames; identical frames count as inf), and ``vstar_jax.demo.checker.check`` on each
(colour, motion, all). Prints one JSON line per family and a markdown table.
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

from benchmarks.demo_dynamics import FAMILIES, family_specs  # noqa: E402


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of two uint8 videos; inf when identical."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)


def generate(pipe, prompts, seed: int):
    """uint8 videos (n, F, 12, 12, 3) at the model's pixels and the latents, one compiled program per mode."""
    from vstar_jax import pipeline as pl  # noqa: PLC0415
    from vstar_jax.demo import model as dm  # noqa: PLC0415

    items = [{"prompt": p, "seed": seed + i} for i, p in enumerate(prompts)]
    res = pl.generate_batch(items, pipeline=pipe, progress=False, keep_video=False)
    patch = int(pipe.config["patch"])
    return np.stack([dm.decode_latents(r.latents, patch, 1)[0] for r in res]), np.stack([r.latents for r in res])


def compare(pipe, specs, seed: int) -> dict:
    """Both modes over ``specs``: per-mode checker verdicts, per-video PSNR and timings."""
    from vstar_jax.demo import checker  # noqa: PLC0415

    prompts = [s["caption"] for s in specs]
    out = {"videos": {}, "latents": {}, "seconds": {}}
    for mode, p in (("float32", pipe), ("bfloat16", pipe.with_unet_settings(dtype="bfloat16"))):
        t0 = time.time()
        out["videos"][mode], out["latents"][mode] = generate(p, prompts, seed)
        out["seconds"][mode] = round(time.time() - t0, 1)
    out["checks"] = {m: [checker.check(v, s) for v, s in zip(vs, specs)] for m, vs in out["videos"].items()}
    out["psnr"] = [psnr(a, b) for a, b in zip(out["videos"]["float32"], out["videos"]["bfloat16"])]
    return out


def summarize(family: str, specs, res: dict) -> dict:
    c32, c16 = res["checks"]["float32"], res["checks"]["bfloat16"]
    count = lambda checks, k: int(sum(c[k] for c in checks))  # noqa: E731
    ps = np.asarray(res["psnr"])
    lat = np.abs(res["latents"]["bfloat16"] - res["latents"]["float32"]).max()
    return {"family": family, "n": len(specs),
            "psnr_median_db": float(np.median(ps)), "psnr_min_db": float(ps.min()),
            "identical_videos": int(np.isinf(ps).sum()), "latent_max_abs_diff": float(lat),
            **{f"{k}_{m}": count(res["checks"][m], f"{k}_ok") for m in ("float32", "bfloat16")
               for k in ("color", "motion")},
            "ok_float32": count(c32, "ok"), "ok_bfloat16": count(c16, "ok"),
            "verdicts_agree": int(sum(a["ok"] == b["ok"] for a, b in zip(c32, c16))),
            "seconds": res["seconds"]}


def table(rows) -> str:
    fmt = lambda v: "inf" if np.isinf(v) else f"{v:.1f}"  # noqa: E731
    head = ("| family | n | PSNR median (dB) | PSNR min (dB) | identical | colour fp32 / bf16 | motion fp32 / bf16 "
            "| all ok fp32 / bf16 | same verdict |\n|---|---|---|---|---|---|---|---|---|\n")
    return head + "".join(
        f"| {r['family']} | {r['n']} | {fmt(r['psnr_median_db'])} | {fmt(r['psnr_min_db'])} | {r['identical_videos']} | "
        f"{r['color_float32']} / {r['color_bfloat16']} | {r['motion_float32']} / {r['motion_bfloat16']} | "
        f"{r['ok_float32']} / {r['ok_bfloat16']} | {r['verdicts_agree']}/{r['n']} |\n" for r in rows)


def main(argv=None) -> int:
    from vstar_jax.generation.model import load_pipeline  # noqa: PLC0415

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=25, help="prompts per family")
    ap.add_argument("--families", default="move,size", help=f"of {','.join(FAMILIES)}")
    ap.add_argument("--seed", type=int, default=0, help="prompt i gets seed + i; the prompts are drawn with it too")
    ap.add_argument("--json", default=None, help="also write the rows here")
    a = ap.parse_args(argv)
    pipe = load_pipeline(None)
    rows, all_res = [], []
    for fam in a.families.split(","):
        specs = family_specs(FAMILIES[fam], a.n, a.seed)
        res = compare(pipe, specs, a.seed)
        rows.append(summarize(fam, specs, res))
        all_res.append((specs, res))
        print(json.dumps(rows[-1]), flush=True)
    if len(rows) > 1:  # every prompt together
        merged = {"checks": {m: sum((r["checks"][m] for _, r in all_res), []) for m in ("float32", "bfloat16")},
                  "psnr": sum((r["psnr"] for _, r in all_res), []),
                  "latents": {m: np.concatenate([r["latents"][m] for _, r in all_res]) for m in ("float32", "bfloat16")},
                  "seconds": {m: round(sum(r["seconds"][m] for _, r in all_res), 1) for m in ("float32", "bfloat16")}}
        rows.append(summarize("all", sum((s for s, _ in all_res), []), merged))
        print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
