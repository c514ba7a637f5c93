"""Temporal-attention band score (VSTAR's analysis) of captured attention maps.

Maps are the (f, f) temporal attention maps the UNet sows with ``capture_attention=True``
(averaged over heads and pixels), in any pytree (per layer, stacked over steps). The score of
one map is ``vstar_jax.tar_vsp.analysis.band_score``: the fraction of attention mass within
|i - j| <= width. Real videos give a band-diagonal structure (high score); long synthetic videos
without TAR do not.
"""
from __future__ import annotations

import numpy as np

from vstar_jax.tar_vsp.analysis import band_score, flatten_maps


def layer_band_scores(captured, width: int = 1) -> dict[str, float]:
    """{layer path: mean band score over every (f, f) map of that layer (steps, batch, ...)}."""
    maps = flatten_maps(captured)
    if not maps:
        raise ValueError("no (f, f) attention maps found in the captured tree")
    return {name: float(np.mean(band_score(m, width))) for name, m in maps.items()}


def attention_band_score(captured, width: int = 1) -> float:
    """Mean over layers of ``layer_band_scores``."""
    return float(np.mean(list(layer_band_scores(captured, width).values())))
