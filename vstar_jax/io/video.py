"""Video files: mp4 (imageio-ffmpeg, libx264 yuv420p), gif, JSON sidecars, float -> uint8."""
from __future__ import annotations

import json
import os
import pathlib
import tempfile

import numpy as np


class NotWritableError(ValueError):
    """The output location cannot be written."""


def check_writable(path: str | os.PathLike, *, create: bool = True) -> pathlib.Path:
    """Fail fast (one-line error) unless a file can be written at ``path``.

    ``path`` is the output file; its directory is created when ``create``. Call this
    before any long computation. Returns the resolved path.
    """
    p = pathlib.Path(path).expanduser()
    if p.is_dir():
        raise NotWritableError(f"output path {p} is a directory; give a file name such as {p / 'video.mp4'}")
    parent = p.parent if str(p.parent) else pathlib.Path(".")
    try:
        if create:
            parent.mkdir(parents=True, exist_ok=True)
        if not parent.is_dir():
            raise NotWritableError(f"output directory {parent} does not exist")
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except NotWritableError:
        raise
    except OSError as e:
        raise NotWritableError(f"output directory {parent} is not writable: {e.strerror or e}") from None
    if p.exists() and not os.access(p, os.W_OK):
        raise NotWritableError(f"output file {p} exists and is not writable")
    return p.resolve()


def _check_frames(frames) -> np.ndarray:
    f = np.asarray(frames)
    if f.ndim != 4 or f.shape[-1] != 3 or f.shape[0] < 1:
        raise ValueError(f"frames must be (F, H, W, 3), got shape {f.shape}")
    if f.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {f.dtype} (convert with video_to_uint8)")
    return np.ascontiguousarray(f)


def pad_to_multiple(frames: np.ndarray, multiple: int = 2) -> np.ndarray:
    """Edge-pad H and W (bottom/right) up to a multiple (yuv420p needs even sizes)."""
    _, h, w, _ = frames.shape
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")


def write_video(path: str | os.PathLike, frames, fps: float = 8, *, crf: int = 10) -> pathlib.Path:
    """Write uint8 frames (F, H, W, 3) as H.264 mp4 (yuv420p; odd sizes edge-padded to even).

    A ``.gif`` path is written with :func:`write_gif`. Written to a temp file, then renamed.
    """
    p = pathlib.Path(path)
    if p.suffix.lower() == ".gif":
        return write_gif(p, frames, fps)
    f = pad_to_multiple(_check_frames(frames), 2)
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    import imageio_ffmpeg  # noqa: PLC0415

    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.stem}.tmp{os.getpid()}{p.suffix or '.mp4'}")
    writer = imageio_ffmpeg.write_frames(
        str(tmp), (f.shape[2], f.shape[1]), fps=fps, codec="libx264", pix_fmt_in="rgb24",
        pix_fmt_out="yuv420p", quality=None, macro_block_size=1,
        output_params=["-crf", str(int(crf)), "-movflags", "+faststart"])
    try:
        writer.send(None)  # start ffmpeg
        for frame in f:
            writer.send(frame)
        writer.close()
        os.replace(tmp, p)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return p


def write_gif(path: str | os.PathLike, frames, fps: float = 8) -> pathlib.Path:
    """Write uint8 frames (F, H, W, 3) as a looping GIF."""
    import imageio.v3 as iio  # noqa: PLC0415

    f = _check_frames(frames)
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(p, f, extension=".gif", duration=1000.0 / fps, loop=0)
    return p


def read_video(path: str | os.PathLike, *, return_fps: bool = False):
    """Read a video (mp4 or gif) as uint8 (F, H, W, 3); ``return_fps`` adds its fps."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"video not found: {p}")
    if p.suffix.lower() == ".gif":
        import imageio.v3 as iio  # noqa: PLC0415

        frames = np.asarray(iio.imread(p, index=None))[..., :3]
        if frames.ndim == 3:
            frames = frames[None]
        meta = iio.immeta(p, index=0)
        fps = 1000.0 / meta["duration"] if meta.get("duration") else None
    else:
        import imageio_ffmpeg  # noqa: PLC0415

        gen = imageio_ffmpeg.read_frames(str(p))
        meta = next(gen)
        w, h = meta["size"]
        frames = [np.frombuffer(b, np.uint8).reshape(h, w, 3) for b in gen]
        if not frames:
            raise ValueError(f"video {p} has no frames")
        frames = np.stack(frames)
        fps = meta.get("fps")
    return (frames, fps) if return_fps else frames


def sidecar_path(video_path: str | os.PathLike) -> pathlib.Path:
    """``out/clip.mp4`` -> ``out/clip.json``."""
    return pathlib.Path(video_path).with_suffix(".json")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if hasattr(o, "tolist"):  # numpy / jax arrays
        return np.asarray(o).tolist()
    if isinstance(o, (pathlib.Path, os.PathLike)):
        return os.fspath(o)
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    raise TypeError(f"sidecar value of type {type(o).__name__} is not JSON serialisable")


def write_sidecar(video_path: str | os.PathLike, data: dict) -> pathlib.Path:
    """Write ``data`` as JSON next to the video (same stem, ``.json``), atomically."""
    p = sidecar_path(video_path)
    p.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, sort_keys=False, default=_json_default)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, p)
    return p


def read_sidecar(video_path: str | os.PathLike) -> dict:
    return json.loads(sidecar_path(video_path).read_text(encoding="utf-8"))


def video_to_uint8(video) -> np.ndarray:
    """[-1, 1] float video to uint8 frames, as VideoCrafter's ``save_videos``.

    (b, 3, f, H, W) -> (b, f, H, W, 3); (3, f, H, W) -> (f, H, W, 3).
    clamp(-1, 1), (x + 1) / 2, * 255, truncate to uint8.
    """
    v = np.asarray(video, dtype=np.float32)
    if v.ndim not in (4, 5) or v.shape[-4] != 3:
        raise ValueError(f"video must be (b, 3, f, H, W) or (3, f, H, W), got shape {v.shape}")
    v = np.clip(v, -1.0, 1.0)
    v = ((v + np.float32(1.0)) / np.float32(2.0) * np.float32(255.0)).astype(np.uint8)
    return np.moveaxis(v, -4, -1)
