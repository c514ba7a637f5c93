"""Warp error and MAWE as StreamingT2V's ``mawe.py`` defines them.

Frames are resized to 720x720 (bilinear, no antialiasing). For each consecutive pair the flow
(computed at that size) moves every pixel of frame n to the rounded target position; where
several pixels land on one target the last in row-major order wins; targets outside the frame
are dropped. W_n is the mean squared error (0..255 scale, over the three channels) between the
splatted frame n and frame n+1 on the targets that were hit (all pixels if none was hit).
MAWE = mean_n W_n / (c * m_n), where m_n is the mean flow magnitude of the pair and c = 9.5.
"""
from __future__ import annotations

import numpy as np

from vstar_jax.metrics.flow import (
    DEFAULT_FLOW_MODEL,
    FlowModel,
    check_video,
    flow_magnitudes,
    get_flow_model,
    resize_frames,
    video_flows,
)

MAWE_COEFF = 9.5
MAWE_SIZE = (720, 720)


def forward_splat(image: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Splat ``image`` (H, W, C) along rounded ``flow`` (H, W, 2).

    Returns (warped float32 (H, W, C) with zeros where nothing landed, hit mask bool (H, W)).
    """
    h, w = image.shape[:2]
    if flow.shape != (h, w, 2):
        raise ValueError(f"flow must be {(h, w, 2)}, got {flow.shape}")
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    tx = np.rint(xs + flow[..., 0].astype(np.float32))
    ty = np.rint(ys + flow[..., 1].astype(np.float32))
    inside = (tx >= 0) & (ty >= 0) & (tx < w) & (ty < h)
    src = np.flatnonzero(inside)  # row-major order: later sources win on collisions
    dst = ty.ravel()[src].astype(np.int64) * w + tx.ravel()[src].astype(np.int64)
    winner = np.full(h * w, -1, np.int64)
    np.maximum.at(winner, dst, src)
    hit = winner >= 0
    warped = np.zeros((h * w, image.shape[2]), np.float32)
    warped[hit] = image.reshape(h * w, -1)[winner[hit]].astype(np.float32)
    return warped.reshape(image.shape), hit.reshape(h, w)


def pair_warp_error(frame_a: np.ndarray, frame_b: np.ndarray, flow: np.ndarray) -> float:
    """W_n: masked mean squared error between splatted ``frame_a`` and ``frame_b``."""
    warped, hit = forward_splat(frame_a, flow)
    diff = (frame_b.astype(np.float32) - warped) * hit[..., None]
    n = float(hit.sum()) * frame_a.shape[2]
    if n == 0:
        n = float(diff.size)
    return float(np.square(diff, dtype=np.float64).sum() / n)


def warp_errors(video, flows: np.ndarray) -> np.ndarray:
    """W_n for every consecutive pair of ``video`` given its flows (F-1, H, W, 2)."""
    video = check_video(video)
    if flows.shape[0] != video.shape[0] - 1 or flows.shape[1:3] != video.shape[1:3]:
        raise ValueError(f"flows {flows.shape} do not match video {video.shape}")
    return np.array([pair_warp_error(video[i], video[i + 1], flows[i]) for i in range(len(flows))])


def mawe_from(errors: np.ndarray, motions: np.ndarray, coeff: float = MAWE_COEFF) -> float:
    """MAWE from per-pair warp errors and motions: the mean of per-pair ratios.

    A pair with zero motion gives inf (or nan for 0/0), as in the reference.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.mean(np.asarray(errors, np.float64) / (coeff * np.asarray(motions, np.float64))))


def warp_stats(
    video,
    model: str | FlowModel = DEFAULT_FLOW_MODEL,
    size: tuple[int, int] | None = MAWE_SIZE,
    coeff: float = MAWE_COEFF,
) -> dict:
    """Warp error and MAWE of ``video`` (uint8 (F, H, W, 3)); frames resized to ``size`` first.

    Returns {"warp_error": mean W_n, "mawe": ..., "motion": mean m_n (pixels at ``size``),
    "warp_errors": [W_n], "motions": [m_n], "flow_model": name}.
    """
    video = check_video(video)
    if size is not None:
        video = resize_frames(video, tuple(size))
    fm = get_flow_model(model)
    flows = video_flows(video, fm)
    errors = warp_errors(video, flows)
    motions = flow_magnitudes(flows)
    return {
        "warp_error": float(errors.mean()),
        "mawe": mawe_from(errors, motions, coeff),
        "motion": float(motions.mean()),
        "warp_errors": errors.tolist(),
        "motions": motions.tolist(),
        "flow_model": fm.name,
    }


def mawe(video, model: str | FlowModel = DEFAULT_FLOW_MODEL, size=MAWE_SIZE, coeff: float = MAWE_COEFF) -> float:
    """MAWE of ``video`` (see ``warp_stats``)."""
    return warp_stats(video, model, size, coeff)["mawe"]
