"""A tensorflow-datasets builder of the project: a folder of the user's videos as clips of F frames.

    builder = video_folder_builder("my_videos/", frames=8, size=64, data_dir="~/tensorflow_datasets")
    builder.download_and_prepare()              # reads every video once, writes sharded, shuffled records
    clips = builder.as_data_source("train")     # random access: clips[i]["video"] is (F, size, size, 3) uint8

Each video (``.mp4 .mov .mkv .avi .webm .gif``, read with ffmpeg through :func:`vstar_jax.io.video.read_video`)
is cut into consecutive, non-overlapping clips of ``frames`` frames, taking every ``frame_step``-th frame;
each frame is centre-cropped to a square and resized to ``size`` x ``size`` (area interpolation). TFDS
writes them in ``array_record`` files (no TensorFlow needed to read them), sharded, in the order of
its key hash (shuffled). Every ``holdout_every``-th video (sorted by name; 0 = none) goes to the
``test`` split, whole, so held-out clips come from videos the training never saw.

Bad input fails before anything is written, in one line (:class:`vstar_jax.errors.VstarError`): a
folder that does not exist, a folder with no readable video, clips longer than every video.
Videos shorter than one clip are skipped (counted in the builder's description).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
from typing import Optional

import cv2
import imageio_ffmpeg
import numpy as np
import tensorflow_datasets as tfds

from vstar_jax.errors import VstarError
from vstar_jax.io.video import read_video

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".gif")


def _frame_count(path: pathlib.Path) -> Optional[int]:
    """Frames of a video, or None when ffmpeg cannot read it."""
    try:
        if path.suffix.lower() == ".gif":
            return int(read_video(path).shape[0])
        n, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
        return int(n) if n > 0 else None
    except Exception:  # noqa: BLE001 - any unreadable file (not a video, truncated, no permission)
        return None


def scan_videos(folder, frames: int, frame_step: int = 1) -> list[tuple[str, int]]:
    """[(path, frame count)] of the readable videos in ``folder`` long enough for one clip, sorted;
    one-line VstarError when there is none."""
    root = pathlib.Path(os.path.expanduser(os.fspath(folder)))
    if frames < 1 or frame_step < 1:
        raise VstarError(f"clips need frames >= 1 and frame_step >= 1, got {frames}, {frame_step}")
    if not root.is_dir():
        raise VstarError(f"video folder {root} does not exist or is not a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    counts = [(p, _frame_count(p)) for p in files]
    readable = [(str(p), n) for p, n in counts if n]
    if not readable:
        raise VstarError(f"video folder {root} has no readable video ({len(files)} file(s) with a video suffix "
                         f"{', '.join(VIDEO_SUFFIXES)}; none could be read by ffmpeg)")
    need = (frames - 1) * frame_step + 1
    usable = [(p, n) for p, n in readable if n >= need]
    if not usable:
        longest = max(n for _, n in readable)
        raise VstarError(f"clips of {frames} frames (every {frame_step}th: {need} source frames) are longer than "
                         f"every video in {root} (the longest has {longest} frames): ask for shorter clips")
    return usable


def resize_frames(video: np.ndarray, size: int) -> np.ndarray:
    """(F, H, W, 3) uint8 -> (F, size, size, 3) uint8: centre square crop, area resize."""
    f, h, w, _ = video.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = video[:, top:top + side, left:left + side]
    if side == size:
        return np.ascontiguousarray(crop)
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(fr, (size, size), interpolation=interp) for fr in crop])


def video_clips(path: str, frames: int, size: int, frame_step: int = 1):
    """(start frame, clip (frames, size, size, 3) uint8) of one video, consecutive, non-overlapping."""
    video = read_video(path)
    need = (frames - 1) * frame_step + 1
    for start in range(0, video.shape[0] - need + 1, need + frame_step - 1):
        yield start, resize_frames(video[start:start + need:frame_step], size)


class VideoFolderConfig(tfds.core.BuilderConfig):
    """Which folder, and the clips' shape."""

    def __init__(self, *, folder: str, frames: int, size: int, frame_step: int = 1, holdout_every: int = 0,
                 name: Optional[str] = None, **kw):
        folder = os.path.abspath(os.path.expanduser(os.fspath(folder)))
        key = hashlib.sha256(f"{folder}|{frames}|{size}|{frame_step}|{holdout_every}".encode()).hexdigest()[:10]
        super().__init__(name=name or f"f{frames}_s{size}_k{frame_step}_{key}",
                         description=f"clips of {frames} frames at {size}x{size} from {folder}", **kw)
        self.folder, self.frames, self.size = folder, int(frames), int(size)
        self.frame_step, self.holdout_every = int(frame_step), int(holdout_every)


class VideoFolder(tfds.core.GeneratorBasedBuilder):
    """Clips of F frames at size x size from a folder of the user's videos (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version."}
    BUILDER_CONFIG_CLASS = VideoFolderConfig
    # TFDS looks for a checksums file beside a builder's code (for downloads; this one downloads nothing),
    # and finding that code path for a builder inside a package needs importlib_resources, which some
    # installs lack: there is no code path to find.
    code_path = None

    def _info(self) -> tfds.core.DatasetInfo:
        c = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=c.description,
            features=tfds.features.FeaturesDict({
                "video": tfds.features.Tensor(shape=(c.frames, c.size, c.size, 3), dtype=np.uint8),
                "source": tfds.features.Text(),
                "start": tfds.features.Scalar(dtype=np.int32),
            }),
        )

    def _split_generators(self, dl_manager):
        c = self.builder_config
        videos = [p for p, _ in scan_videos(c.folder, c.frames, c.frame_step)]
        if c.holdout_every > 0:
            test = [p for i, p in enumerate(videos) if i % c.holdout_every == c.holdout_every - 1]
            train = [p for p in videos if p not in test]
            if not train or not test:
                raise VstarError(f"holdout_every {c.holdout_every} leaves an empty split of the {len(videos)} "
                                 f"usable video(s) in {c.folder}")
            return {"train": self._generate_examples(train), "test": self._generate_examples(test)}
        return {"train": self._generate_examples(videos)}

    def _generate_examples(self, videos):
        c = self.builder_config
        for path in videos:
            rel = os.path.relpath(path, c.folder)
            for start, clip in video_clips(path, c.frames, c.size, c.frame_step):
                yield f"{rel}#{start}", {"video": clip, "source": rel, "start": np.int32(start)}


def video_folder_builder(folder, frames: int, size: int, *, frame_step: int = 1, holdout_every: int = 0,
                         data_dir: Optional[str] = None) -> VideoFolder:
    """The builder of ``folder``'s clips (checked now: one-line VstarError on bad input, before any
    writing). ``download_and_prepare()`` it once; the prepared dataset is reused while its config
    (folder, frames, size, frame_step, holdout_every) is the same."""
    if int(size) < 8:
        raise VstarError(f"clip size must be >= 8 pixels, got {size}")
    cfg = VideoFolderConfig(folder=folder, frames=frames, size=size, frame_step=frame_step,
                            holdout_every=holdout_every)
    scan_videos(cfg.folder, cfg.frames, cfg.frame_step)
    return VideoFolder(config=cfg, data_dir=data_dir, file_format="array_record")


@dataclasses.dataclass
class ClipSource:
    """Random access to prepared clips: ``len``, ``[i]`` -> (frames, size, size, 3) uint8."""

    source: object
    key: str = "video"

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.source[int(i)][self.key])


def prepared_clips(folder=None, *, frames: int, size: int, split: str = "train", frame_step: int = 1,
                   holdout_every: int = 0, data_dir: Optional[str] = None, tfds_name: Optional[str] = None,
                   key: str = "video") -> ClipSource:
    """Clips of a video folder (prepared on first use) or of a prepared catalog dataset ``tfds_name``
    (e.g. ``ucf101`` in the user's TFDS data dir; never downloaded: its ``key`` feature is cut to
    ``frames`` frames and resized to ``size`` when read)."""
    if tfds_name:
        try:
            builder = tfds.builder(tfds_name, data_dir=data_dir)
        except Exception as e:  # noqa: BLE001 - unknown name
            raise VstarError(f"tfds dataset {tfds_name!r} unknown: {' '.join(str(e).split())[:200]}") from None
        if not builder.is_prepared():
            raise VstarError(f"tfds dataset {tfds_name!r} is not prepared in {builder.data_dir}; prepare it first "
                             f"(tfds build {tfds_name}); training never downloads")
        try:
            src = builder.as_data_source(split=split)
        except NotImplementedError:
            raise VstarError(f"tfds dataset {tfds_name!r} is stored as tfrecord (reading it needs tensorflow); "
                             f"convert it to array_record (tfds build --file_format=array_record)") from None
        return _CatalogClips(src, key, frames, size, frame_step)
    builder = video_folder_builder(folder, frames, size, frame_step=frame_step, holdout_every=holdout_every,
                                   data_dir=data_dir)
    builder.download_and_prepare()
    return ClipSource(builder.as_data_source(split=split))


@dataclasses.dataclass
class _CatalogClips(ClipSource):
    frames: int = 8
    size: int = 64
    frame_step: int = 1

    def __getitem__(self, i: int) -> np.ndarray:
        video = np.asarray(self.source[int(i)][self.key])
        need = (self.frames - 1) * self.frame_step + 1
        if video.shape[0] < need:
            raise VstarError(f"example {i} has {video.shape[0]} frames, fewer than a clip's {need}")
        return resize_frames(video[:need:self.frame_step], self.size)
