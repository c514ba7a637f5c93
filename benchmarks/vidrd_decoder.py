"""VidRD's temporal decoder on the demo world: training videos, and flicker / PSNR on held-out clips.

    python benchmarks/vidrd_decoder.py videos --out /work/demo_videos --n 240          # mp4s to train on
    python benchmarks/vidrd_decoder.py measure --image /work/demo_vae --temporal /work/demo_vae_t \
        --n 32 [--json out.json]                                                        # the table

``videos`` writes ``--n`` demo-world clips (32 x 32, ``--frames`` frames; half moving objects, half
static scenes: one frame held) as mp4 files, the folder ``launch/train_temporal_decoder.py --videos``
reads. ``measure`` renders ``--n`` held-out static and ``--n`` held-out moving clips (world seeds from
10**7 on, which neither trainer draws), encodes each frame with the VAE's encoder (posterior mean) and
decodes the latents with the image decoder (``--image``: frame by frame) and with the temporal decoder
(``--temporal``: the clip as one video), and reports, per decoder and clip kind:

* flicker: mean |x[t+1] - x[t]| of the decoded clip minus that of the source clip (0..255 scale): what
  decoding adds to the frame-to-frame change (0 = none; on a static clip any change is flicker);
* PSNR (dB) of the decoded uint8 clip against the source.

Each at ``--latent-noise`` levels: 0 (the encoder's latents; a static clip's frames then have equal
latents, so the image decoder cannot flicker on it) and > 0: independent Gaussian noise on every
frame's latent (x the clip's latent std, the same draws for both decoders), standing in for the
frame-to-frame jitter of generated latents that makes frame-by-frame decoding flicker.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.bf16_generation import psnr  # noqa: E402
from launch.train_temporal_decoder import load_vae, reconstruct, to_model_input  # noqa: E402
from vstar_jax.demo import world  # noqa: E402
from vstar_jax.io.atomic import write_text  # noqa: E402
from vstar_jax.io.video import write_video  # noqa: E402
from vstar_jax.models.vae import AutoencoderKL  # noqa: E402

HELD_OUT = 10 ** 7


def demo_clip(seed: int, frames: int, size: int, static: bool) -> np.ndarray:
    """uint8 (frames, size, size, 3): a moving-object clip, or its first frame held (static)."""
    video, _, _ = world.sample_clip(seed, frames, size, "move")
    clip = world.to_uint8(video)
    return np.repeat(clip[:1], frames, axis=0) if static else clip


def write_videos(out, n: int, frames: int, size: int) -> None:
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_video(out / f"demo_{i:04d}.mp4", demo_clip(i, frames, size, static=i % 2 == 1), fps=8)


def flicker(decoded: np.ndarray, source: np.ndarray) -> float:
    """Mean absolute frame-to-frame change of ``decoded`` minus that of ``source`` (uint8 clips)."""
    d = lambda v: float(np.mean(np.abs(np.diff(v.astype(np.float64), axis=0))))  # noqa: E731
    return d(decoded) - d(source)


def decode_clips(checkpoint, clips: np.ndarray, noise: float = 0.0, batch: int = 8) -> np.ndarray:
    """uint8 reconstructions (n, F, H, W, 3) of uint8 clips through the checkpoint's VAE; ``noise``: per-frame
    latent noise (x the clip's latent std), the same draws for every checkpoint (keys from the batch index)."""
    cfg, params = load_vae(checkpoint)
    vae = AutoencoderKL(ml_collections.FrozenConfigDict(cfg))
    run = jax.jit(lambda p, c, k: reconstruct(vae, p, to_model_input(c), noise, k))
    out = []
    for s in range(0, len(clips), batch):
        key = jax.random.PRNGKey(1000 + s)
        rec = np.asarray(run(params, clips[s:s + batch], key), np.float32)  # (b, F, 3, H, W) in [-1, 1]
        out.append(np.clip(np.round((rec + 1.0) * 127.5), 0, 255).astype(np.uint8).transpose(0, 1, 3, 4, 2))
    return np.concatenate(out)


def measure(image, temporal, n: int, frames: int, size: int, noises=(0.0,)) -> list[dict]:
    rows = []
    for noise in noises:
        for kind in ("static", "moving"):
            clips = np.stack([demo_clip(HELD_OUT + i, frames, size, kind == "static") for i in range(n)])
            for name, ckpt in (("image decoder", image), ("temporal decoder", temporal)):
                rec = decode_clips(ckpt, clips, noise)
                rows.append({"decoder": name, "clips": kind, "latent_noise": noise, "n": n,
                             "flicker": round(float(np.mean([flicker(r, c) for r, c in zip(rec, clips)])), 3),
                             "psnr_db": round(float(np.mean([psnr(r, c) for r, c in zip(rec, clips)])), 2)})
    return rows


def table(rows) -> str:
    head = ("| latents | clips | decoder | n | flicker (0..255, decoded - source) | PSNR (dB) |\n"
            "|---|---|---|---|---|---|\n")
    return head + "".join(f"| {'clean' if not r['latent_noise'] else 'noise ' + format(r['latent_noise'], 'g')} | "
                          f"{r['clips']} | {r['decoder']} | {r['n']} | {r['flicker']:+.3f} | {r['psnr_db']:.2f} |\n"
                          for r in rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("videos")
    v.add_argument("--out", required=True)
    v.add_argument("--n", type=int, default=240)
    m = sub.add_parser("measure")
    m.add_argument("--image", required=True, help="checkpoint with the image VAE (train_demo_vae --export)")
    m.add_argument("--temporal", required=True, help="checkpoint with the temporal decoder (--export)")
    m.add_argument("--n", type=int, default=32)
    m.add_argument("--latent-noise", default="0,0.1",
                   help="per-frame latent noise levels, x the clip's latent std (default 0,0.1)")
    m.add_argument("--json", default=None)
    for p in (v, m):
        p.add_argument("--frames", type=int, default=8)
        p.add_argument("--size", type=int, default=32)
    a = ap.parse_args(argv)
    if a.cmd == "videos":
        write_videos(a.out, a.n, a.frames, a.size)
        return 0
    rows = measure(a.image, a.temporal, a.n, a.frames, a.size, tuple(float(x) for x in a.latent_noise.split(",")))
    print(table(rows))
    if a.json:
        write_text(a.json, json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
