"""Video files: mp4 (imageio-ffmpeg, libx264 yuv420p), gif, JSON sidecars, float -> uint8."""
from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import tempfile
import threading
import warnings
from fractions import Fraction

import numpy as np

from vstar_jax.errors import VstarError
from vstar_jax.io.atomic import atomic_path, write_error, write_text
from vstar_jax.trees import json_default


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


class FfmpegWriter:
    """H.264 mp4 (yuv420p) from uint8 RGB frames through an ffmpeg subprocess whose exit status is
    checked: :meth:`close` raises :class:`~vstar_jax.io.atomic.WriteError` (with ffmpeg's last
    message) when ffmpeg failed or wrote nothing, e.g. on a full disk. Write to a temporary path
    (:func:`vstar_jax.io.atomic.atomic_path`); ``abort()`` stops ffmpeg without waiting."""

    def __init__(self, path, size, fps: float, *, crf: int = 10):
        import imageio_ffmpeg  # noqa: PLC0415

        self.path = pathlib.Path(path)
        w, h = int(size[0]), int(size[1])
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-f", "rawvideo", "-vcodec", "rawvideo", "-s", f"{w}x{h}",
               "-pix_fmt", "rgb24", "-r", str(Fraction(float(fps)).limit_denominator()), "-i", "-", "-an",
               "-vcodec", "libx264", "-pix_fmt", "yuv420p", "-v", "error", "-crf", str(int(crf)),
               "-movflags", "+faststart", str(self.path)]
        # its own session: Ctrl-C reaches Python (which aborts the write), not ffmpeg
        with warnings.catch_warnings():  # JAX warns about fork() in a threaded process; ffmpeg execs at once
            warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, start_new_session=True)
        self._err = []
        self._reader = threading.Thread(target=lambda: self._err.append(self.proc.stderr.read()), daemon=True)
        self._reader.start()
        self.frames = 0

    def message(self) -> str:
        self._reader.join(timeout=5)
        text = b"".join(self._err).decode("utf-8", "replace")
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        return lines[-1] if lines else ""

    def send(self, frame) -> None:
        try:
            self.proc.stdin.write(memoryview(np.ascontiguousarray(frame, np.uint8)).cast("B"))
        except OSError as e:  # ffmpeg exited (a full disk, a bad path): its own message says why
            self.abort()
            raise write_error(self.path, OSError(e.errno, self.message() or e.strerror)) from None
        self.frames += 1

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        rc = self.proc.wait()
        msg = self.message()
        if rc != 0:
            raise write_error(self.path, OSError(None, msg or f"ffmpeg exited with status {rc}"))
        if self.frames == 0 or not self.path.is_file() or self.path.stat().st_size == 0:
            raise write_error(self.path, OSError(None, msg or "ffmpeg wrote no video"))

    def abort(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait()


def write_video(path: str | os.PathLike, frames, fps: float = 8, *, crf: int = 10) -> pathlib.Path:
    """Write uint8 frames (F, H, W, 3) as H.264 mp4 (yuv420p; odd sizes edge-padded to even).

    A ``.gif`` path is written with :func:`write_gif`. Atomic: a temporary file, ffmpeg's exit
    status checked, then renamed (:mod:`vstar_jax.io.atomic`); on failure the old file stays.
    """
    p = pathlib.Path(path)
    if p.suffix.lower() == ".gif":
        return write_gif(p, frames, fps)
    f = pad_to_multiple(_check_frames(frames), 2)
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    with atomic_path(p, suffix=p.suffix or ".mp4") as tmp:  # ffmpeg picks the container from the suffix
        writer = FfmpegWriter(tmp, (f.shape[2], f.shape[1]), fps, crf=crf)
        try:
            for frame in f:
                writer.send(frame)
            writer.close()
        except BaseException:
            writer.abort()
            raise
    return p


GIF_FPS = (1000.0 / 655350.0, 100.0)  # a GIF frame lasts 1 to 65535 hundredths of a second


def check_gif_fps(fps: float, what: str = "fps") -> None:
    """A GIF stores each frame's delay as 1..65535 hundredths of a second."""
    lo, hi = GIF_FPS
    if not lo <= float(fps) <= hi:
        raise VstarError(f"{what} {fps:g} cannot be written as a GIF (a GIF frame lasts 0.01 s to 655.35 s): "
                         f"use {what} between {math.ceil(lo * 1e4) / 1e4:g} and {hi:g}")


def encode_gif(path, frames, fps: float) -> None:
    """The GIF encoder (imageio/Pillow) writing ``path`` in place: callers give it a temporary path."""
    import imageio.v3 as iio  # noqa: PLC0415

    iio.imwrite(path, frames, extension=".gif", duration=1000.0 / fps, loop=0)


def write_gif(path: str | os.PathLike, frames, fps: float = 8) -> pathlib.Path:
    """Write uint8 frames (F, H, W, 3) as a looping GIF, atomically (an existing GIF stays on failure)."""
    f = _check_frames(frames)
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    check_gif_fps(fps)
    p = pathlib.Path(path)
    with atomic_path(p, suffix=".gif") as tmp:
        encode_gif(tmp, f, fps)
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


def probe_video(path: str | os.PathLike) -> tuple[int, int, int, float | None]:
    """(frames, height, width, fps) of a video file without decoding it whole (ffmpeg counts the
    frames); a ValueError naming the file when it is not a readable video."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"video not found: {p}")
    try:
        if p.suffix.lower() == ".gif":
            import imageio.v3 as iio  # noqa: PLC0415

            props = iio.improps(p, index=None)
            n, h, w = int(props.shape[0]), int(props.shape[1]), int(props.shape[2])
            meta = iio.immeta(p, index=0)
            return n, h, w, (1000.0 / meta["duration"] if meta.get("duration") else None)
        import imageio_ffmpeg  # noqa: PLC0415

        gen = imageio_ffmpeg.read_frames(str(p))
        meta = next(gen)
        gen.close()
        w, h = meta["size"]
        n, _ = imageio_ffmpeg.count_frames_and_secs(str(p))
    except Exception as e:  # noqa: BLE001 - ffmpeg/imageio raise many kinds for a file that is not a video
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        raise ValueError(f"{p} is not a video that can be read ({reason})") from None
    if n < 1:
        raise ValueError(f"video {p} has no frames")
    return int(n), int(h), int(w), meta.get("fps")


def read_video_batches(path: str | os.PathLike, batch: int):
    """uint8 frames (k, H, W, 3) of a video, ``batch`` at a time (the last batch may be shorter), so a
    long video is never held whole (a GIF is read whole: GIFs are small)."""
    p = pathlib.Path(path)
    if p.suffix.lower() == ".gif":
        frames = read_video(p)
        for s in range(0, len(frames), batch):
            yield frames[s:s + batch]
        return
    import imageio_ffmpeg  # noqa: PLC0415

    gen = imageio_ffmpeg.read_frames(str(p))
    w, h = next(gen)["size"]
    buf = []
    try:
        for b in gen:
            buf.append(np.frombuffer(b, np.uint8).reshape(h, w, 3))
            if len(buf) == batch:
                yield np.stack(buf)
                buf = []
        if buf:
            yield np.stack(buf)
    finally:
        gen.close()


def sidecar_path(video_path: str | os.PathLike) -> pathlib.Path:
    """``out/clip.mp4`` -> ``out/clip.json``."""
    return pathlib.Path(video_path).with_suffix(".json")


def write_sidecar(video_path: str | os.PathLike, data: dict) -> pathlib.Path:
    """Write ``data`` as JSON next to the video (same stem, ``.json``), atomically."""
    p = sidecar_path(video_path)
    return write_text(p, sidecar_text(data))


def sidecar_text(data: dict) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=json_default) + "\n"


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
