"""Temporal attention analysis (VSTAR Fig. 4): band scores and heat-map grids.

Captured maps are (f, f) per layer and step (averaged over heads and pixels; rows =
query frame, columns = key frame). Real videos show a band-diagonal structure.
"""
from __future__ import annotations

import os
import pathlib
from typing import Mapping, Sequence

import numpy as np


def band_mask(frames: int, width: int) -> np.ndarray:
    """Boolean (f, f) mask of |i - j| <= width."""
    if width < 0:
        raise ValueError(f"band width must be >= 0, got {width}")
    i = np.arange(frames)
    return np.abs(i[:, None] - i[None, :]) <= width


def band_score(attn, width: int):
    """Fraction of attention mass within |i - j| <= width; attn (..., f, f) -> (...)."""
    a = np.asarray(attn, dtype=np.float64)
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"attention map must be (..., f, f), got shape {a.shape}")
    total = a.sum(axis=(-2, -1))
    inside = (a * band_mask(a.shape[-1], width)).sum(axis=(-2, -1))
    out = inside / np.where(total == 0, 1.0, total)
    return float(out) if out.ndim == 0 else out


def flatten_maps(tree, prefix: str = "") -> dict[str, np.ndarray]:
    """Flatten a captured pytree (e.g. flax ``intermediates``, stacked by the sampler) to
    ``{"path/to/layer": array (..., f, f)}``; one-element tuples/lists made by ``sow`` are
    unwrapped."""
    out: dict[str, np.ndarray] = {}

    def walk(node, path):
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, f"{path}/{k}" if path else str(k))
        elif isinstance(node, (tuple, list)):
            if len(node) == 1:
                walk(node[0], path)
            else:
                for i, v in enumerate(node):
                    walk(v, f"{path}/{i}" if path else str(i))
        elif node is not None:
            arr = np.asarray(node)
            if arr.ndim >= 2 and arr.shape[-1] == arr.shape[-2]:
                out[path or "map"] = arr

    walk(tree, prefix)
    return out


def plot_attention_grid(maps: Mapping[str, np.ndarray], path: str | os.PathLike, *,
                        steps: Sequence[int] | None = None, title: str | None = None,
                        cmap: str = "viridis", band_width: int | None = 1,
                        cell_inches: float = 1.8, dpi: int = 110) -> pathlib.Path:
    """Save a PNG grid of temporal attention maps: one row per layer, one column per step.

    ``maps``: {layer: (S, f, f) over sampling steps, or (f, f)} (see :func:`flatten_maps`;
    any extra leading axes, e.g. batch, are averaged). ``steps``: which step indices to
    show (default: up to 6 spread over S). Each cell shows the band score when
    ``band_width`` is set. Uses the Agg canvas directly (no global backend change).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    if not maps:
        raise ValueError("no attention maps to plot")
    layers = {}
    for name, m in maps.items():
        a = np.asarray(m, dtype=np.float32)
        if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
            raise ValueError(f"map {name!r} must be (..., f, f), got shape {a.shape}")
        if a.ndim == 2:
            a = a[None]
        elif a.ndim > 3:  # (S, extra..., f, f): average the extra axes
            a = a.reshape(a.shape[0], -1, *a.shape[-2:]).mean(axis=1)
        layers[name] = a
    n_steps = max(a.shape[0] for a in layers.values())
    if steps is None:
        steps = sorted(set(np.linspace(0, n_steps - 1, min(n_steps, 6)).round().astype(int).tolist()))
    steps = list(steps)
    for s in steps:
        if not 0 <= s < n_steps:
            raise ValueError(f"step {s} out of range [0, {n_steps})")
    rows, cols = len(layers), len(steps)
    fig = Figure(figsize=(cell_inches * cols + 1.5, cell_inches * rows + (0.6 if title else 0.2)), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, (name, a) in enumerate(layers.items()):
        for c, s in enumerate(steps):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if s >= a.shape[0]:
                ax.set_axis_off()
                continue
            ax.imshow(a[s], cmap=cmap, interpolation="nearest")
            if band_width is not None:
                ax.set_xlabel(f"band{band_width} {band_score(a[s], band_width):.2f}", fontsize=7)
            if r == 0:
                ax.set_title(f"step {s}", fontsize=8)
            if c == 0:
                ax.set_ylabel(name if len(name) <= 24 else "..." + name[-21:], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out
