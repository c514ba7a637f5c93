"""``vstar-jax metrics VIDEO... [--prompt P] [--clip CKPT]``: the metrics of video files as JSON.

Prints one JSON object: {video path: {metric: value}}. The prompt for the CLIP score comes from
``--prompt`` or else from the video's JSON sidecar (``prompt``), when a CLIP checkpoint is given.
"""
from __future__ import annotations

import argparse
import json
import math
import sys

from vstar_jax.errors import VstarError
from vstar_jax.io.video import read_sidecar, read_video
from vstar_jax.metrics import compute_metrics
from vstar_jax.metrics.clip_score import ClipScorer
from vstar_jax.validate import number


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


MAX_MAWE_SIZE = 4096  # pixels a side for the warp error (720 in the papers; 100000 would ask for TiBs)
FPS_RANGE = (1e-3, 1000.0)


def check_settings(mawe_size, fps=None, where: str = "--"):
    """(mawe_size, fps) checked before any video is read: finite, in range, else one-line VstarError."""

    size = None
    if mawe_size is not None and not (isinstance(mawe_size, (list, tuple)) and not mawe_size) and mawe_size != 0:
        sides = mawe_size if isinstance(mawe_size, (list, tuple)) else (mawe_size, mawe_size)
        if len(sides) != 2:
            raise VstarError(f"{where}mawe-size must be one size or [height, width], got {mawe_size!r}")
        size = tuple(number(f"{where}mawe-size", v, integer=True, minimum=1, maximum=MAX_MAWE_SIZE) for v in sides)
    if fps is not None:
        fps = number(f"{where}fps", fps, minimum=FPS_RANGE[0], maximum=FPS_RANGE[1])
    return size, fps


def _read(read_video, path: str):
    """(frames, fps) of a video file, or a one-line ValueError naming the file."""
    try:
        return read_video(path, return_fps=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - ffmpeg/imageio errors are many-lined and varied
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise ValueError(f"cannot read {path} as a video (mp4 or gif): {first.strip()[:200]}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vstar-jax metrics", description="Video metrics (OFS, MAWE, SCuts, CLIP).")
    parser.add_argument("videos", nargs="+", help="mp4 or gif files")
    parser.add_argument("--prompt", default=None, help="prompt for the CLIP score (default: the sidecar's)")
    parser.add_argument("--clip", default=None, help="CLIP checkpoint from vstar_jax.checkpoints_convert.clip")
    parser.add_argument("--flow", default="dis", help="flow model (dis, dis-fast, dis-ultrafast, ...)")
    parser.add_argument("--mawe-size", type=int, default=720,
                        help=f"square size for warp error/MAWE (0 = as is; at most {MAX_MAWE_SIZE})")
    parser.add_argument("--fps", type=float, default=None, help="fps for SCuts (default: the file's)")
    args = parser.parse_args(argv)
    size, _ = check_settings(args.mawe_size, args.fps)

    scorer = None
    if args.clip:
        scorer = ClipScorer.load(args.clip)
    results = {}
    for path in args.videos:
        frames, fps = _read(read_video, path)
        prompt = args.prompt
        if prompt is None and scorer is not None:
            try:
                prompt = read_sidecar(path).get("prompt")
            except (OSError, ValueError):
                prompt = None
            if prompt is None:
                raise ValueError(f"no --prompt and no sidecar prompt for {path}: needed for the CLIP score")
        m = compute_metrics(frames, prompt=prompt, clip_scorer=scorer, flow_model=args.flow,
                            mawe_size=size, fps=args.fps or fps or 8.0)
        results[path] = {k: _jsonable(v) for k, v in m.items()}
    json.dump(results, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
