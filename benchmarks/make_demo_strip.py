"""The README's picture: strips of frames from the embedded demo model's output.

    python benchmarks/make_demo_strip.py                       # writes docs/demo_strip.png
    python benchmarks/make_demo_strip.py --out strip.png       # anywhere else

One row per entry of ``ROWS`` (a prompt and the ``generate_video`` settings of the matching
``vstar-jax generate`` command, on the embedded demo model, no checkpoint), frames left to right:
``STRIP_FRAMES`` evenly spaced frames of the video (all 8 of the demo model's default length). The frames are
the model's own pixels (12x12, shown at 96x96 by nearest-neighbour scaling, as in the written mp4),
not read back from a compressed video. Deterministic: same code and model, same PNG.
Written with the project's one atomic writer (``vstar_jax/io/atomic.py``).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "docs", "demo_strip.png")
STRIP_FRAMES = 8
GAP = 2  # white pixels between frames
ROW_GAP = 6  # white pixels between rows

# (prompt, generate_video settings) of `vstar-jax generate "PROMPT"` with the CLI's defaults (8 frames,
# seed 0); the README names these commands under the picture
ROWS = (
    ("a red circle moves to the right", {"seed": 0}),  # the README's first command
    ("a green triangle moves down", {"seed": 0}),
    ("a yellow square shrinks", {"seed": 0}),
)


def strip(videos, *, frames: int = STRIP_FRAMES, gap: int = GAP, row_gap: int = ROW_GAP) -> np.ndarray:
    """One uint8 image: each (F, H, W, 3) video a row of ``frames`` evenly picked frames, on white."""
    rows = []
    for v in videos:
        v = np.asarray(v)
        idx = np.linspace(0, len(v) - 1, frames).round().astype(int)
        h, w = v.shape[1:3]
        row = np.full((h, frames * w + (frames - 1) * gap, 3), 255, np.uint8)
        for j, i in enumerate(idx):
            row[:, j * (w + gap): j * (w + gap) + w] = v[i]
        rows.append(row)
    width = max(r.shape[1] for r in rows)
    out = np.full((sum(r.shape[0] for r in rows) + (len(rows) - 1) * row_gap, width, 3), 255, np.uint8)
    y = 0
    for r in rows:
        out[y: y + r.shape[0], : r.shape[1]] = r
        y += r.shape[0] + row_gap
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=DEFAULT_OUT, help="PNG to write (default docs/demo_strip.png)")
    a = p.parse_args(argv)
    sys.path.insert(0, REPO)
    from PIL import Image

    from vstar_jax.errors import VstarError
    from vstar_jax.io.atomic import atomic_path
    from vstar_jax.pipeline import generate_video

    try:
        videos = [generate_video(prompt, progress=False, **kw).video for prompt, kw in ROWS]
        image = strip(videos)
        with atomic_path(a.out, what="strip") as tmp:
            Image.fromarray(image).save(tmp, format="PNG", optimize=True)
    except VstarError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.out} ({image.shape[1]}x{image.shape[0]}, {os.path.getsize(a.out)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
