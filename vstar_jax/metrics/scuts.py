"""SCuts: scene cuts found by PySceneDetect's AdaptiveDetector with its default parameters.

The frames are fed from memory through a ``VideoStream`` (converted to BGR, as OpenCV would
decode them) to a ``SceneManager`` with its default settings (auto downscale). Pinned to
scenedetect 0.7.2 (PyPI ``scenedetect-headless==0.7.2``): the detector's defaults
(adaptive_threshold 3, min_scene_len 15 frames, window_width 2, min_content_val 15) are
those of that version.
"""
from __future__ import annotations

import logging
from fractions import Fraction

import numpy as np

from vstar_jax.metrics.flow import check_video

SCENEDETECT_VERSION = "0.7.2"


def _array_stream_class():
    from scenedetect import FrameTimecode, VideoStream

    class ArrayVideoStream(VideoStream):
        """An in-memory video (uint8 (F, H, W, 3) RGB) as a scenedetect VideoStream."""

        BACKEND_NAME = "vstar_jax_array"

        def __init__(self, video: np.ndarray, fps: float):
            self._frames = video[..., ::-1]  # RGB -> BGR
            self._fps = Fraction(fps).limit_denominator(1001)
            self._next = 0

        path = property(lambda self: "<array>")
        name = property(lambda self: "array")
        is_seekable = property(lambda self: True)
        frame_rate = property(lambda self: self._fps)
        aspect_ratio = property(lambda self: 1.0)
        frame_number = property(lambda self: self._next)
        position_ms = property(lambda self: 1000.0 * max(self._next - 1, 0) / float(self._fps))

        @property
        def duration(self):
            return FrameTimecode(len(self._frames), fps=self._fps)

        @property
        def frame_size(self):
            return (self._frames.shape[2], self._frames.shape[1])

        @property
        def position(self):
            return FrameTimecode(max(self._next - 1, 0), fps=self._fps)

        def read(self, decode: bool = True):
            if self._next >= len(self._frames):
                return False
            frame = self._frames[self._next]
            self._next += 1
            return np.ascontiguousarray(frame) if decode else True

        def reset(self):
            self._next = 0

        def seek(self, target):
            frame = FrameTimecode(target, fps=self._fps).frame_num if not isinstance(target, int) else target
            self._next = min(max(int(frame), 0), len(self._frames))

    return ArrayVideoStream


def scene_cuts(video, fps: float = 8.0) -> list[int]:
    """Frame indices where AdaptiveDetector (default parameters) starts a new scene."""
    import scenedetect
    from scenedetect import AdaptiveDetector, SceneManager

    if scenedetect.__version__ != SCENEDETECT_VERSION:
        raise ValueError(
            f"scenedetect {scenedetect.__version__} installed; SCuts are pinned to {SCENEDETECT_VERSION}"
        )
    video = check_video(video)
    manager = SceneManager()
    manager.add_detector(AdaptiveDetector())
    log = logging.getLogger("pyscenedetect")
    level = log.level
    log.setLevel(max(level, logging.WARNING))  # no "Detecting scenes..." line per video
    try:
        manager.detect_scenes(video=_array_stream_class()(video, fps))
    finally:
        log.setLevel(level)
    scenes = manager.get_scene_list(start_in_scene=True)
    return [int(start.frame_num) for start, _ in scenes[1:]]


def scuts(video, fps: float = 8.0) -> int:
    """Number of scene cuts (SCuts) in ``video``."""
    return len(scene_cuts(video, fps))
