"""Video metrics of the papers: OFS, warp error / MAWE, SCuts, CLIP score, attention band score.

``compute_metrics(video, ...)`` returns them all as one flat dict for a uint8 (F, H, W, 3) video;
the submodules hold the single metrics.
"""
from __future__ import annotations

from vstar_jax.metrics.flow import DEFAULT_FLOW_MODEL, check_video, get_flow_model, ofs
from vstar_jax.metrics.scuts import scuts
from vstar_jax.metrics.warp import MAWE_COEFF, MAWE_SIZE, warp_stats


def compute_metrics(
    video,
    *,
    prompt: str | None = None,
    clip_scorer=None,
    flow_model=DEFAULT_FLOW_MODEL,
    mawe_size: tuple[int, int] | None = MAWE_SIZE,
    mawe_coeff: float = MAWE_COEFF,
    fps: float = 8.0,
) -> dict:
    """All video metrics as a flat dict.

    OFS is in pixels of the video as given; warp error, MAWE and ``motion`` at ``mawe_size``
    (720x720 as in StreamingT2V; None = as given). ``clip_score`` is added when a
    ``clip_scorer`` (``vstar_jax.metrics.clip_score.ClipScorer``) and a ``prompt`` are given.
    """
    video = check_video(video)
    fm = get_flow_model(flow_model)
    ws = warp_stats(video, fm, mawe_size, mawe_coeff)
    out = {
        "num_frames": int(video.shape[0]),
        "ofs": ofs(video, fm),
        "warp_error": ws["warp_error"],
        "mawe": ws["mawe"],
        "motion": ws["motion"],
        "scuts": scuts(video, fps),
        "flow_model": fm.name,
    }
    if clip_scorer is not None and prompt is not None:
        out["clip_score"] = float(clip_scorer.score(video, prompt))
    return out


__all__ = ["compute_metrics", "ofs", "scuts", "warp_stats", "get_flow_model"]
