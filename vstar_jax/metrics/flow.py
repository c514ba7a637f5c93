"""Optical flow between consecutive frames, and the optical-flow score (OFS).

The papers use RAFT (torchvision ``raft_large``); its weights cannot be fetched here, so the
default model is OpenCV's DIS (no weights). ``raft:PATH`` selects the JAX RAFT port
(``vstar_jax.metrics.raft``) with torchvision's weights. Every result names the model that
produced it (``FlowModel.name``); other models plug in with ``register_flow_model``.
A flow field is float32 (H, W, 2) holding (dx, dy) in pixels: frame_a[y, x] moves to
frame_b[y + dy, x + dx].
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from vstar_jax.checkpoints_convert.common import load_state_dict
from vstar_jax.io.checkpoint import load_checkpoint
from vstar_jax.metrics.raft import raft_flow_fn
from vstar_jax.runtime import runtime

FlowFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

_DIS_PRESETS = ("ultrafast", "fast", "medium")


@dataclasses.dataclass(frozen=True)
class FlowModel:
    """A named flow estimator: ``fn(frame_a, frame_b)`` on uint8 (H, W, 3) RGB -> (H, W, 2)."""

    name: str
    fn: FlowFn


def check_video(video) -> np.ndarray:
    """Return ``video`` as a uint8 (F, H, W, 3) array, or raise ValueError."""
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"video must be (F, H, W, 3), got shape {video.shape}")
    if video.dtype != np.uint8:
        raise ValueError(f"video must be uint8, got dtype {video.dtype}")
    return video


def resize_frames(video: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize (half-pixel centres, no antialiasing) of uint8 frames to (H, W), rounded.

    The same as torchvision's ``resize(..., antialias=False)`` on a uint8 tensor.
    """
    import cv2

    h, w = size
    video = check_video(video)
    if video.shape[1:3] == (h, w):
        return video
    out = np.empty((video.shape[0], h, w, 3), np.uint8)
    for i, frame in enumerate(video):
        resized = cv2.resize(frame.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        out[i] = np.clip(np.rint(resized), 0, 255).astype(np.uint8)
    return out


def _dis_fn(preset: str) -> FlowFn:
    def fn(frame_a: np.ndarray, frame_b: np.ndarray) -> np.ndarray:
        import cv2

        code = getattr(cv2, f"DISOPTICAL_FLOW_PRESET_{preset.upper()}")
        dis = cv2.DISOpticalFlow_create(code)
        gray_a = cv2.cvtColor(frame_a, cv2.COLOR_RGB2GRAY)
        gray_b = cv2.cvtColor(frame_b, cv2.COLOR_RGB2GRAY)
        return dis.calc(gray_a, gray_b, None).astype(np.float32)

    return fn


def _opencv_version() -> str:
    import cv2

    return cv2.__version__


_REGISTRY: dict[str, Callable[[], FlowModel]] = {}


def register_flow_model(name: str, factory: Callable[[], FlowModel]) -> None:
    """Register a flow model under ``name``; ``factory()`` builds it on first use."""
    _REGISTRY[name] = factory


for _preset in _DIS_PRESETS:
    register_flow_model(
        f"dis-{_preset}",
        lambda p=_preset: FlowModel(f"dis-{p} (opencv {_opencv_version()})", _dis_fn(p)),
    )
register_flow_model("dis", _REGISTRY["dis-medium"])

DEFAULT_FLOW_MODEL = "dis"


def raft_flow_model(path: str, iters: int = 12) -> FlowModel:
    """RAFT-large from a checkpoint folder written by ``vstar_jax.checkpoints_convert.raft`` or from
    torchvision's ``raft_large`` state dict file (.pth / .safetensors, converted on the fly)."""
    import os

    key = ("raft", f"{os.path.abspath(path)}#{iters}")
    cache = runtime().models
    if key not in cache:
        if os.path.isdir(path):
            params = load_checkpoint(path, components=["raft"])[0]["raft"]
        elif os.path.isfile(path):  # torchvision's file (torch for a .pth), converted on the fly
            # deferred: vstar_jax.checkpoints_convert.raft imports vstar_jax.metrics.raft, and so this package, whose
            # __init__ imports this module (the cycle goes once the RAFT model moves to vstar_jax.models)
            from vstar_jax.checkpoints_convert.raft import convert_raft  # noqa: PLC0415

            params = convert_raft(load_state_dict(path))
        else:
            raise ValueError(f"RAFT weights not found: {path} (torchvision raft_large .pth or a converted folder)")
        name = f"raft-large {iters} iters ({os.path.basename(os.path.normpath(path))})"
        cache[key] = FlowModel(name, raft_flow_fn(params, iters))
    return cache[key]


def get_flow_model(model: str | FlowModel = DEFAULT_FLOW_MODEL) -> FlowModel:
    """Resolve a registered name (``dis``, ``dis-fast``, ...), ``raft:PATH`` (RAFT-large weights),
    or pass a ``FlowModel`` through."""
    if isinstance(model, FlowModel):
        return model
    if isinstance(model, str) and model.startswith("raft:"):
        return raft_flow_model(model[len("raft:"):])
    if model not in _REGISTRY:
        raise ValueError(f"unknown flow model {model!r}; known: {sorted(_REGISTRY)} or raft:PATH")
    return _REGISTRY[model]()


def video_flows(video, model: str | FlowModel = DEFAULT_FLOW_MODEL) -> np.ndarray:
    """Flow from each frame to the next: float32 (F-1, H, W, 2)."""
    video = check_video(video)
    if video.shape[0] < 2:
        raise ValueError(f"video needs at least 2 frames, got {video.shape[0]}")
    fm = get_flow_model(model)
    return np.stack([fm.fn(video[i], video[i + 1]) for i in range(video.shape[0] - 1)])


def flow_magnitudes(flows: np.ndarray) -> np.ndarray:
    """Mean per-pixel flow magnitude of each pair: (F-1,)."""
    return np.linalg.norm(flows.astype(np.float32), axis=-1).mean(axis=(1, 2))


def ofs(video, model: str | FlowModel = DEFAULT_FLOW_MODEL, size: tuple[int, int] | None = None) -> float:
    """Optical-flow score: mean per-pixel flow magnitude between consecutive frames (pixels of
    the video as given, or of frames resized to ``size`` = (H, W))."""
    video = check_video(video)
    if size is not None:
        video = resize_frames(video, size)
    return float(flow_magnitudes(video_flows(video, model)).mean())
