"""The decode and write stages: latents -> frame batches -> mp4 (streamed) + sidecar.

Frames are decoded ``frame_batch`` at a time and each batch goes straight into the mp4 writer and
the frame hash, so peak host memory does not grow with the number of frames (a 1,024-frame video
never exists as one array unless the caller asks to keep it). The hash equals
:func:`frames_digest` of the whole video; files appear only when complete (temporary names,
renamed at the end; removed on failure).
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import pathlib
import platform
import re
from typing import Iterator, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vstar_jax.compile_options import jit, options_for
from vstar_jax.errors import VstarError
from vstar_jax.generation.model import DEMO_SOURCE
from vstar_jax.io.atomic import Staging, write_error
from vstar_jax.io.video import (FfmpegWriter, check_gif_fps, check_writable, encode_gif, pad_to_multiple, sidecar_path,
                                video_to_uint8)
from vstar_jax.longvideo.base import sidecar_settings
from vstar_jax.models.temporal_decoder import decode_windows, temporal_settings
from vstar_jax.models.vae import decode_latents
from vstar_jax.tar_vsp.analysis import plot_attention_grid
from vstar_jax.tar_vsp.tar import parse_tar

SIDECAR_FORMAT = "vstar-jax-generation/1"
ENHANCE_SIDECAR_FORMAT = "vstar-jax-enhance/1"  # vstar_jax.enhance's sidecars (its outputs, replaceable too)
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".gif")


# ------------------------------------------------------------------------------- results
@dataclasses.dataclass
class GenerationResult:
    video: Optional[np.ndarray]  # (F, H, W, 3) uint8 (None when not kept: streamed to the file only)
    sidecar: dict
    path: Optional[str]  # the video file, or None when nothing was written
    latents: Optional[np.ndarray] = None  # (1, c, F, h, w) float32 final x_0
    attention: Optional[dict] = None  # {layer: (steps, F, F)} when recorded
    sidecar_path: Optional[str] = None
    gif_path: Optional[str] = None
    attention_png: Optional[str] = None


class FrameHasher:
    """sha256 of uint8 frames fed in batches; equals :func:`frames_digest` of the whole video."""

    def __init__(self, total_frames: int):
        self.total = int(total_frames)
        self.h = None
        self.seen = 0

    def update(self, batch: np.ndarray) -> None:
        b = np.ascontiguousarray(batch)
        if self.h is None:
            self.h = hashlib.sha256(repr(((self.total,) + b.shape[1:], str(b.dtype))).encode())
        self.h.update(b.tobytes())
        self.seen += b.shape[0]

    def hexdigest(self) -> str:
        if self.seen != self.total:
            raise RuntimeError(f"hashed {self.seen} of {self.total} frames")
        return self.h.hexdigest()


def frames_digest(video: np.ndarray) -> str:
    """sha256 of the uint8 frames (shape and bytes)."""
    h = FrameHasher(len(video))
    h.update(np.asarray(video))
    return h.hexdigest()


# ------------------------------------------------------------------------------- decoding
# the VAE's one decoder (latents / scale_factor, frame batches), jitted once per VAE module
_vae_decode_jit = jit(decode_latents, static_argnames=("vae", "frame_batch"))


def decode_frames(pipe, latents) -> np.ndarray:
    """The pipeline's decoder: latents (1, c, k, h, w) float32 -> uint8 frames (k, H, W, 3): the model's own
    (the demo model's patch space), pixel space as it is, or the VAE's :func:`~vstar_jax.models.vae.decode_latents`."""
    if pipe.decoder is not None:
        return np.asarray(pipe.decoder(latents), np.uint8)[0]
    if pipe.pixel_space:
        return video_to_uint8(np.asarray(latents, np.float32))[0]
    z = jnp.asarray(latents)
    px = _vae_decode_jit(pipe.vae, pipe.params["vae"], z, frame_batch=int(z.shape[2]),
                         scale_factor=jnp.float32(pipe.diffusion["scale_factor"]))
    return video_to_uint8(np.asarray(px, np.float32))[0]


def decode_batches(pipe, latents, frame_batch: int = 16) -> Iterator[np.ndarray]:
    """Latents (1, c, N, h, w) -> uint8 frame batches (k, H, W, 3), ``frame_batch`` frames at a
    time (the last batch padded to the same shape, so one compiled decoder serves every batch)."""
    z = np.asarray(latents, np.float32)
    n, fb = z.shape[2], int(frame_batch)
    if pipe.decoder is None and not pipe.pixel_space and temporal_settings(pipe.vae.config) is not None:
        # VidRD's temporal decoder: windows with the layers' receptive field as context (equal to one pass)
        sf = np.float32(pipe.diffusion["scale_factor"])
        for px in decode_windows(pipe.vae, pipe.params["vae"], z / sf, frame_batch=fb):
            yield video_to_uint8(px)[0]
        return
    for s in range(0, n, fb):
        chunk = z[:, :, s:s + fb]
        k = chunk.shape[2]
        if k < fb and n > fb:
            chunk = np.concatenate([chunk, np.repeat(chunk[:, :, -1:], fb - k, axis=2)], axis=2)
        yield decode_frames(pipe, chunk)[:k]


class FramesDiffer(VstarError):
    """Regenerated frames are not the ones a sidecar recorded (nothing was kept)."""


# ------------------------------------------------------------------------------- writing
def _our_sidecar(p: pathlib.Path) -> Optional[dict]:
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") in (SIDECAR_FORMAT, ENHANCE_SIDECAR_FORMAT) else None


def _is_our_sidecar(p: pathlib.Path) -> bool:
    return _our_sidecar(p) is not None


def _our_names(sc: pathlib.Path) -> set:
    """The file names a vstar-jax sidecar says vstar-jax wrote (itself included); empty when ``sc`` is
    not one. By name: a folder moved or copied as a whole keeps its outputs recognisable."""
    data = _our_sidecar(sc)
    if data is None:
        return set()
    outputs = data.get("outputs") if isinstance(data.get("outputs"), dict) else {}
    return {sc.name} | {pathlib.Path(v).name for v in outputs.values() if isinstance(v, str) and v}


def _check_free(p: pathlib.Path, overwrite: bool, what: str, ours: set = frozenset()) -> None:
    """An existing file is replaced only with ``overwrite`` and only when it is vstar-jax's own output
    (named by the vstar-jax sidecar beside the video): never someone else's file or a folder."""
    if not os.path.lexists(p):
        return
    if not overwrite:
        raise VstarError(f"{what} {p} exists; pass --overwrite (overwrite=True) to replace it")
    if not p.is_file() or p.is_symlink():
        raise VstarError(f"{what} {p} exists and is not a file; it is never replaced: choose another output path")
    if p.name not in ours:
        raise VstarError(f"{what} {p} exists and is not a vstar-jax output (no vstar-jax sidecar beside it names it); "
                         f"--overwrite replaces only vstar-jax's own outputs: choose another output path or move it away")


def check_outputs(out, gif: bool, attention_png, overwrite: bool = True, *, save_fps: Optional[float] = None) -> dict:
    """Output paths, checked writable (one-line errors) before any compute.

    Without ``overwrite`` an existing output file is refused; with it, an existing file is replaced
    only when the vstar-jax sidecar beside the video names it (a previous run's output): a video,
    GIF, plot or ``.json`` that vstar-jax did not write is never replaced. ``save_fps``: the frame
    rate the video is written at, checked against what a GIF can store when one is written."""
    paths = {"video": None, "gif": None, "sidecar": None, "attention_png": None, "attention_npz": None}
    ours: set = set()
    if out is not None:
        p = pathlib.Path(out)
        if p.suffix.lower() not in VIDEO_SUFFIXES:
            raise VstarError(f"output {p} must end in one of {', '.join(VIDEO_SUFFIXES)}")
        sc = sidecar_path(p)
        if os.path.lexists(sc) and not (sc.is_file() and _is_our_sidecar(sc)):
            raise VstarError(f"{sc} exists and is not a vstar-jax sidecar; it is never overwritten: "
                             f"choose another --out")
        ours = _our_names(sc)
        writes_gif = p.suffix.lower() == ".gif" or gif
        if writes_gif and save_fps is not None:
            check_gif_fps(save_fps, "--save-fps")
        _check_free(p, overwrite, "output video", ours)
        _check_free(sc, overwrite, "sidecar", ours)
        if gif and p.suffix.lower() != ".gif":
            _check_free(p.with_suffix(".gif"), overwrite, "GIF", ours)
        paths["video"] = check_writable(p)
        paths["sidecar"] = check_writable(sidecar_path(paths["video"]))
        if gif and p.suffix.lower() != ".gif":
            paths["gif"] = check_writable(paths["video"].with_suffix(".gif"))
    elif gif:
        raise VstarError("gif=True needs an output path (out=...)")
    if attention_png is not None:
        a = pathlib.Path(attention_png)
        if a.suffix.lower() != ".png":
            raise VstarError(f"attention plot path {a} must end in .png")
        _check_free(a, overwrite, "attention plot", ours)
        _check_free(a.with_suffix(".npz"), overwrite, "attention maps", ours)
        paths["attention_png"] = check_writable(a)
        paths["attention_npz"] = check_writable(paths["attention_png"].with_suffix(".npz"))
    return paths


class VideoSink:
    """Streams uint8 frame batches into an mp4 (or collects them for a GIF / the caller) and hashes
    them. Every file goes to a temporary name in ``stage`` (a :class:`vstar_jax.io.atomic.Staging`);
    ``finish()`` closes them (ffmpeg's exit status checked) and, when the sink owns its stage (none
    given), renames them into place; ``abort()`` removes them."""

    def __init__(self, path: Optional[pathlib.Path], total_frames: int, fps: float, *, gif: Optional[pathlib.Path] = None,
                 keep: bool = False, crf: int = 10, stage=None):
        self.path, self.gif, self.fps, self.crf = path, gif, float(fps), crf
        self.total = int(total_frames)
        self.hasher = FrameHasher(total_frames)
        self.keep = keep or gif is not None or (path is not None and path.suffix.lower() == ".gif")
        self.kept: list = []
        self.writer = None
        self.own_stage = stage is None
        self.stage = Staging() if stage is None else stage

    @property
    def tmp(self):
        return self.writer.path if self.writer is not None else None

    def _open(self, h: int, w: int) -> None:
        tmp = self.stage.path(self.path, suffix=self.path.suffix or ".mp4")
        self.writer = FfmpegWriter(tmp, (w + w % 2, h + h % 2), self.fps, crf=self.crf)

    def write(self, batch: np.ndarray) -> None:
        batch = np.ascontiguousarray(batch, np.uint8)
        self.hasher.update(batch)
        if self.keep:
            self.kept.append(batch)
        if self.path is not None and self.path.suffix.lower() != ".gif":
            if self.writer is None:
                self._open(batch.shape[1], batch.shape[2])
            for frame in pad_to_multiple(batch, 2):
                self.writer.send(frame)

    def video(self) -> Optional[np.ndarray]:
        return np.concatenate(self.kept) if self.kept else None

    def finish(self, expect_sha256: Optional[str] = None) -> str:
        """Close the files; returns the frame hash. With ``expect_sha256``, frames hashing differently
        are not kept (the temporary files are removed, FramesDiffer)."""
        digest = self.hasher.hexdigest()
        if expect_sha256 is not None and digest != expect_sha256:
            self.abort()
            raise FramesDiffer(f"the regenerated frames differ from the sidecar's (frames_sha256 {digest[:12]}... "
                               f"!= {str(expect_sha256)[:12]}...): nothing was written")
        if self.writer is not None:
            self.writer.close()  # raises (WriteError) when ffmpeg failed: the caller aborts
        for gif in ([self.path] if self.path is not None and self.path.suffix.lower() == ".gif" else []) + \
                ([self.gif] if self.gif is not None else []):
            tmp = self.stage.path(gif, suffix=".gif")
            try:
                encode_gif(tmp, self.video(), self.fps)
            except OSError as e:
                raise write_error(gif, e) from None
        if self.own_stage:
            self.stage.commit()
        self.writer = None
        return digest

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None
        self.stage.abort()


def write_attention(attention: dict, paths: dict, stage=None) -> Optional[str]:
    """The attention plot and its ``.npz`` (into ``stage`` when given, else each atomically)."""
    if attention is None or paths["attention_png"] is None:
        return None

    own = stage is None
    st = Staging() if own else stage
    try:
        try:
            plot_attention_grid(attention, st.path(paths["attention_png"], suffix=".png"),
                                cell_inches=1.8 if len(attention) <= 8 else 1.2)
        except OSError as e:
            raise write_error(paths["attention_png"], e) from None
        try:
            np.savez(st.path(paths["attention_npz"], suffix=".npz"), **attention)
        except OSError as e:
            raise write_error(paths["attention_npz"], e) from None
        if own:
            st.commit()
    except BaseException:
        if own:
            st.abort()
        raise
    return str(paths["attention_png"])


# ------------------------------------------------------------------------------- sidecar
def versions() -> dict:
    import flax  # noqa: PLC0415
    try:
        from importlib.metadata import version  # noqa: PLC0415

        vj = version("vstar-jax")
    except Exception:  # noqa: BLE001 - not installed
        vj = "unknown"
    try:
        import jaxlib  # noqa: PLC0415

        vjl = jaxlib.__version__
    except Exception:  # noqa: BLE001
        vjl = "unknown"
    return {"vstar_jax": vj, "jax": jax.__version__, "jaxlib": vjl, "flax": flax.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


RNG_RULE = "key=jax.random.key(seed); k_x,k_steps=split(key); x_T=normal(k_x); noise_i=normal(split(k_steps,N)[i])"


def build_sidecar(request, *, checkpoint: str, video_size, latent_shape, vae_factor: int, frames_sha256: str,
                  mesh, paths: dict, timing: dict, scale_factor, device_plan=None) -> dict:
    """The sidecar of one video: every setting of the request, what ran it, and the frame hash."""
    strategy = request.strategy
    rule = RNG_RULE + ("; " + strategy.rng_rule() if strategy.rng_rule() else "")
    return {
        "format": SIDECAR_FORMAT,
        "prompt": request.prompt,
        "checkpoint": checkpoint,
        "frames": request.frames,
        "steps": request.steps,
        "ddim_steps": request.ddim_steps,
        "cfg": request.cfg,
        "eta": request.eta,
        "seed": request.seed,
        "fps": request.fps,
        "save_fps": request.save_fps,
        "height": int(request.latent_hw[0] * vae_factor),
        "width": int(request.latent_hw[1] * vae_factor),
        "video_size": [int(s) for s in video_size],
        "latent_shape": list(latent_shape),
        "tar": request.tar.to_dict() if request.tar is not None else None,
        "tar_spec": request.tar_spec,
        "synopsis": list(request.synopsis) if request.synopsis is not None else None,
        "synopsis_source": request.synopsis_source,
        "vsp_mode": request.vsp_mode,
        "attention": request.capture,
        "frame_batch": request.frame_batch,
        "schedule": {"flavor": request.flavor, **dict(request.schedule_kwargs)},
        "prediction": request.prediction,
        "attention_backend": request.attention_backend,
        "scale_factor": scale_factor,
        "rng": {"impl": str(jax.config.jax_default_prng_impl), "rule": rule},
        "frames_sha256": frames_sha256,
        "mesh": mesh,
        "device_plan": device_plan,  # how the mesh's devices split a step (generation.sampling.device_plan)
        "long_video": request.long_video.to_dict() if request.long_video is not None else None,
        "outputs": {k: (str(v) if v is not None else None) for k, v in paths.items()},
        "versions": versions(),
        "backend": jax.default_backend(),
        "xla_options": options_for(jax.default_backend()),  # vstar_jax.compile_options: they change CPU rounding
        "device": str(jax.devices()[0].device_kind),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "timing_s": timing,
    }


SIDECAR_ARGS = ("frames", "steps", "cfg", "eta", "seed", "fps", "save_fps", "synopsis", "vsp_mode",
                "frame_batch", "long_video", "attention_backend")
# settings a sidecar written before the field existed ran with (sidecar_kwargs fills them in):
# attention_backend None = the checkpoint config's, which the UNet used before it was a setting
SIDECAR_LEGACY = {"attention_backend": None}


def read_sidecar_file(path) -> tuple:
    """(path, parsed JSON) of a sidecar (the .json, or the video path beside it); one-line errors."""
    p = pathlib.Path(path)
    if p.suffix.lower() != ".json":
        p = p.with_suffix(".json")
    if not p.is_file():
        raise VstarError(f"sidecar not found: {p}")
    try:
        return p, json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise VstarError(f"sidecar {p} is not valid JSON: {e}") from None


def load_sidecar(path) -> dict:
    """Read a generation sidecar (the .json, or the video path beside it)."""
    p, data = read_sidecar_file(path)
    if isinstance(data, dict) and data.get("format") == ENHANCE_SIDECAR_FORMAT:
        raise VstarError(f"{p} is an enhancer's sidecar: regenerate it with vstar-jax enhance --from-sidecar {p}")
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise VstarError(f"{p} is not a vstar-jax generation sidecar (format {SIDECAR_FORMAT})")
    validate_sidecar(data, p)
    return data


_NUM = (int, float)
# field -> (types, required); bool is rejected where a number is expected
SIDECAR_SCHEMA = {
    "prompt": ((str,), True), "frames": ((int,), True), "steps": ((int,), True), "cfg": (_NUM, True),
    "eta": (_NUM, True), "seed": ((int,), True), "fps": (_NUM, True), "save_fps": (_NUM, False),
    "height": ((int,), True), "width": ((int,), True), "tar": ((dict, type(None)), False),
    "synopsis": ((list, type(None)), False), "synopsis_source": ((dict, type(None)), False),
    "vsp_mode": ((str,), False), "frame_batch": ((int,), False), "long_video": ((dict, type(None)), False),
    "checkpoint": ((str, type(None)), False), "frames_sha256": ((str, type(None)), False),
    "attention": ((bool,), False), "outputs": ((dict, type(None)), False), "attention_backend": ((str,), False),
    "batch_mode": ((str,), False),
}


def validate_sidecar(data: Mapping, where="sidecar") -> None:
    """Check a sidecar's fields (types, a hex frame hash, string states) before any compute;
    the values themselves are then validated as any request's."""
    for key, (types, required) in SIDECAR_SCHEMA.items():
        if key not in data:
            if required:
                raise VstarError(f"{where}: missing field {key!r}")
            continue
        v = data[key]
        if (isinstance(v, bool) and bool not in types) or not isinstance(v, types):
            want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise VstarError(f"{where}: field {key!r} must be {want}, got {v!r}")
    sha = data.get("frames_sha256")
    if sha is not None and not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise VstarError(f"{where}: frames_sha256 must be 64 hex digits, got {sha!r}")
    syn = data.get("synopsis")
    if syn is not None and not all(isinstance(x, str) for x in syn):
        raise VstarError(f"{where}: synopsis must be a list of strings")


def sidecar_kwargs(sidecar: Mapping) -> dict:
    """generate_video keyword arguments that reproduce a sidecar's video."""
    kw = {**SIDECAR_LEGACY, **{k: sidecar[k] for k in SIDECAR_ARGS if k in sidecar}}
    if "long_video" in kw:
        kw["long_video"] = sidecar_settings(kw["long_video"])
    kw["tar"] = sidecar.get("tar")
    spec = sidecar.get("tar_spec")
    if isinstance(spec, str) and kw["tar"] is not None:
        try:  # the spec as typed, when it still means the recorded settings (else the settings win)
            if parse_tar(spec).to_dict() == kw["tar"]:
                kw["tar"] = spec
        except ValueError:
            pass
    kw["height"], kw["width"] = sidecar.get("height"), sidecar.get("width")
    ck = sidecar.get("checkpoint")
    kw["checkpoint"] = None if ck in (None, DEMO_SOURCE) else ck
    return kw


def default_output(prompt: str, seed: int, directory: str = "outputs") -> str:
    """``outputs/<slug>-<seed>.mp4``."""
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:48].strip("-") or "video"
    return os.path.join(directory, f"{slug}-{seed}.mp4")
