"""Video Synopsis Prompting: K visual-state embeddings -> one text context per frame.

As VSTAR's ``utils/utils.py: encode_attribute_multiple``: anchors
``a = trunc(linspace(0, F-1, K))`` (the reference casts to int8; a wider integer here, so
more than 127 frames work), then for each pair k a segment of ``L = a[k+1] - a[k] + 1``
rows ``(1 - beta) e_k + beta e_{k+1}`` with ``beta = linspace(0, 1, L)`` ("linear") or
``e_k`` ("same"); every segment but the last drops its final row.
"""
from __future__ import annotations

import numpy as np

from vstar_jax.diffusion.schedules import torch_linspace_f32

MODES = ("linear", "same")


def frame_anchors(num_states: int, frames: int) -> np.ndarray:
    """Frame index of each state: torch's integer ``linspace(0, frames-1, num_states)``.

    torch fills the first half from the start and the second half from the end, in
    float64, then truncates toward zero.
    """
    _validate(num_states, frames)
    step = (frames - 1) / (num_states - 1)
    i = np.arange(num_states)
    vals = np.where(i < num_states // 2, step * i, (frames - 1) - step * (num_states - 1 - i))
    return np.trunc(vals).astype(np.int64)


def _validate(num_states: int, frames: int) -> None:
    if num_states < 2:
        raise ValueError(f"VSP needs at least 2 visual states, got {num_states}")
    if frames < num_states:
        raise ValueError(f"VSP needs frames >= number of states, got {frames} frames for {num_states} states")


def per_frame_embeddings(state_embs, frames: int, mode: str = "linear"):
    """(K, L, C) state embeddings -> (frames, L, C) per-frame context.

    numpy in, numpy out (bit-exact with the reference in float32); a jax array in gives a
    jax array out. Interpolation weights are float32 as torch's ``linspace``.
    """
    if mode not in MODES:
        raise ValueError(f"unknown VSP mode {mode!r} (use one of {MODES})")
    if isinstance(state_embs, np.ndarray) or not hasattr(state_embs, "at"):
        xp = np
        embs = np.asarray(state_embs)
    else:
        import jax.numpy as xp  # noqa: PLC0415 - only when given a jax array
        embs = state_embs
    if embs.ndim != 3:
        raise ValueError(f"state embeddings must be (K, tokens, C), got shape {tuple(embs.shape)}")
    k = embs.shape[0]
    anchors = frame_anchors(k, frames)
    segments = []
    for j in range(k - 1):
        length = int(anchors[j + 1] - anchors[j] + 1)
        e0, e1 = embs[j:j + 1], embs[j + 1:j + 2]
        if mode == "linear":
            beta = xp.asarray(torch_linspace_f32(0.0, 1.0, length)).reshape(length, 1, 1)
            seg = (e0 * (1.0 - beta) + e1 * beta).astype(embs.dtype)
        else:
            seg = xp.broadcast_to(e0, (length,) + e0.shape[1:])
        segments.append(seg if j == k - 2 else seg[:-1])
    out = xp.concatenate(segments, axis=0)
    assert out.shape[0] == frames, (out.shape, frames)
    return out
