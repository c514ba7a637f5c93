"""Does the demo model use the motion words of its captions? Two probes that need no sampling.

    python benchmarks/demo_probe.py [--checkpoint DIR] [--n 32]

1. Caption sensitivity: ``--n`` ground-truth single-state "move" clips of the world are noised at
   several t; the model's mean training loss (its own parameterization) is printed with the true
   caption, with the opposite direction, and with no caption. A model that uses direction words has a
   lower loss with the true caption than with the opposite one.
2. High-noise layout: for "a red circle moves to the right / left / up", the predicted x0 at t = 950
   averaged over 64 pure-noise inputs, as the red object's centroid per frame; beside it the same
   centroid of the world's mean clip (what an ideal model predicts there).
"""
from __future__ import annotations

import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from vstar_jax.demo import model as dm  # noqa: E402
from vstar_jax.demo import world  # noqa: E402
from vstar_jax.diffusion.parameterization import target  # noqa: E402
from vstar_jax.diffusion.schedules import make_alphas_cumprod  # noqa: E402

OPPOSITE = {"right": "left", "left": "right", "up": "down", "down": "up", "up-right": "down-left",
            "down-left": "up-right", "up-left": "down-right", "down-right": "up-left"}


def red_centroids(video: np.ndarray) -> tuple[list, list]:
    """Per-frame (x, y) centroid of the red excess of a float video (F, H, W, 3)."""
    red = np.clip(video[..., 0] - 0.5 * (video[..., 1] + video[..., 2]), 0, None)
    pos = (np.arange(video.shape[1]) + 0.5) / video.shape[1]
    mass = red.sum(axis=(1, 2)) + 1e-9
    return (list((red.sum(1) * pos).sum(-1) / mass), list((red.sum(2) * pos).sum(-1) / mass))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=None, help="demo model folder (default: the shipped one)")
    ap.add_argument("--n", type=int, default=32)
    args = ap.parse_args(argv)
    m = dm.load_demo_model(args.checkpoint)
    d = m.config.diffusion
    pred = str(d.get("prediction", "eps"))
    ac = make_alphas_cumprod(d.linear_start, d.linear_end, d.num_timesteps).astype(np.float32)
    frames, size, patch = m.frames, int(m.config.size), int(m.config.patch)
    apply = jax.jit(lambda x, t, ctx: m.unet.apply({"params": m.unet_params}, x, t, ctx))

    specs = [world.sample_spec(5000 + s, "move") for s in range(args.n)]
    x0 = dm.patchify(np.stack([world.render(s, frames, size) for s in specs]), patch)
    true = [s["caption"] for s in specs]
    opposite = [world.make_caption(s["shape"], s["color"], [{"action": "move", "direction":
                                                                 OPPOSITE[s["states"][0]["direction"]]}])
                for s in specs]
    ctxs = [m.encode_prompts(c) for c in (true, opposite, [""] * len(specs))]
    print("| t | true caption | opposite direction | no caption |\n|---|---|---|---|")
    for t in (100, 300, 500, 700, 900):
        noise = jax.random.normal(jax.random.PRNGKey(t), x0.shape)
        a = float(ac[t])
        xt = np.sqrt(a) * x0 + np.sqrt(1 - a) * noise
        tt = jnp.full((len(specs),), t)
        tgt = target(x0, noise, a, pred)
        losses = [float(jnp.mean((apply(xt, tt, c) - tgt) ** 2)) for c in ctxs]
        print(f"| {t} | " + " | ".join(f"{v:.4f}" for v in losses) + " |")

    t, n = 950, 64
    a = float(ac[t])
    print(f"\nred centroid x per frame of the predicted x0 at t={t} (mean of {n} noises) vs the world's mean clip")
    for direction in ("right", "left", "up"):
        cap = f"a red circle {world.MOVE_PHRASES[direction]}"
        x = jax.random.normal(jax.random.PRNGKey(1), (n,) + tuple(x0.shape[1:]))
        out = apply(x, jnp.full((n,), t), m.encode_prompts([cap] * n))
        x0_hat = np.sqrt(a) * x - np.sqrt(1 - a) * out if pred == "v" else (x - np.sqrt(1 - a) * out) / np.sqrt(a)
        model_cx, model_cy = red_centroids(np.asarray(dm.unpatchify(x0_hat, patch)).mean(0))
        mean_clip = np.stack([world.render(world.spec_from_caption(cap, seed=s), frames, size) for s in range(n)])
        data_cx, data_cy = red_centroids(mean_clip.mean(0))
        print(f"{direction:>6}: model x {np.round(model_cx, 2).tolist()} y {np.round(model_cy, 2).tolist()}")
        print(f"{'':>6}  data  x {np.round(data_cx, 2).tolist()} y {np.round(data_cy, 2).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
