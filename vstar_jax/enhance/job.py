"""``vstar-jax enhance``: a long video refined by a text-to-video model, StreamingT2V's enhancer.

    validate   make_enhance_request   every setting and the input video checked before any compute
    read       read_video_batches     frames resized (bilinear) to the refiner's size and encoded, a batch at
                                      a time (the latents are kept, the pixels are not)
    sample     enhance_loop           chunked SDEdit from T' (vstar_jax.enhance.sdedit), one jitted program
    write      decode_and_write       the generate pipeline's decode/write stage (frame batches + hash)
    sidecar    every setting + the input file's sha256; regenerate_enhanced reproduces it bit for bit

The chunk and trim rules are the reference's (``t2v_enhanced/model_func.py``, ``video2video_randomized``):
a video shorter than one chunk is refused; a length that does not tile into chunks is trimmed to the
longest one that does. Defaults are its inference settings (``video_to_video_model.py``): strength 0.6
(``total_noise_levels = 600``), chunks of 24 overlapping 8, guidance 7.5, the empty negative prompt, and
with an MS-Vid2Vid-XL refiner its sampler, 30 DPM++ 2M SDE steps from T' with guide rescale 0.2
(:data:`REFERENCE_SAMPLER`); other refiners (the demo model) keep DDIM, 50 steps over the whole schedule of
which the 30 at or below T' run, no rescale (:func:`sampler_defaults`). Frames are resized with bilinear
interpolation without antialiasing (half-pixel centres), which maps an integer-times nearest-upscaled
video (the demo model's display frames) back to its pixels exactly. The encoder's posterior mean is
used (the reference samples it).
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
import pathlib
import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from vstar_jax.compile_cache import compile_lowered
from vstar_jax.compile_options import jit, options_for, rerun_hint
from vstar_jax.demo.model import patchify
from vstar_jax.diffusion.sampler import SampleOutput, prepare_sampling
from vstar_jax.diffusion.dpm_solver import SOLVERS
from vstar_jax.enhance.sdedit import RNG_RULE, enhance_loop, solver_schedule
from vstar_jax.errors import VstarError
from vstar_jax.generation import builtin
from vstar_jax.generation.model import DEMO_SOURCE, load_pipeline, model_info
from vstar_jax.generation.outputs import (ENHANCE_SIDECAR_FORMAT, FramesDiffer, check_outputs, read_sidecar_file,
                                          versions)
from vstar_jax.generation.request import check_schedule, schedule_kwargs
from vstar_jax.generation.sampling import _progress_tick, check_finite, log, run_sampler
from vstar_jax.io.atomic import Staging
from vstar_jax.io.video import probe_video, read_video_batches, sidecar_path, sidecar_text
from vstar_jax.longvideo import windows as W
from vstar_jax.models.denoiser import DenoiserSpec, make_denoiser
from vstar_jax.models.unet_config import UNetConfig
from vstar_jax.models.vae import encode_to_latents
from vstar_jax.pipeline import decode_and_write
from vstar_jax.validate import number

DEFAULTS = {"strength": 0.6, "steps": 50, "cfg": 7.5, "chunk": 24, "overlap": 8, "seed": 0, "frame_batch": 16,
            "save_fps": 8.0, "solver": "ddim", "guide_rescale": 0.0, "negative_prompt": "", "chunk_clock": "video"}
#: ``--chunk-clock``: the frame clock a chunk's UNet calls see where the refiner has one (the demo models'
#: ``unet.frame_position`` / ``text_frame_cond``; ``UNetConfig.video_clock``): ``video``, its frames' places
#: in the whole video; ``chunk``, its own (every chunk a whole clip: the ablation, and what ran before the
#: setting existed). Refiners without a clock (MS-Vid2Vid-XL, zeroscope) run the same either way.
CHUNK_CLOCKS = ("video", "chunk")
#: The reference's sampler settings, the defaults where the refiner is MS-Vid2Vid-XL (its noise schedule,
#: ``beta_schedule: logsnr_cosine_interp``). StreamingT2V ``.../video_to_video/video_to_video_model.py``
#: ``forward`` lines 238-252: ``guide_scale=7.5, guide_rescale=0.2, solver='dpmpp_2m_sde', steps=30`` (the
#: ``fast`` solver mode, the only one its solver table holds: ``diffusion_sdedit.py`` lines 142-145), from
#: ``total_noise_levels - 1`` with 600 (``model_func.py`` line 181: strength 0.6), SDE eta 1
#: (``solvers_sdedit.py`` line 145). The negative prompt is the empty one: ``forward`` encodes
#: ``input['negative_prompt']`` (lines 196-198; the config's long text, ``utils/config.py`` line 163, is
#: overwritten), which ``video2video_randomized`` passes from ``--negative_prompt_enhancer``, default
#: ``--negative_prompt``, default "" (``model_func.py`` lines 139, 180; ``inference.py`` lines 38-40, 126).
REFERENCE_SAMPLER = {"solver": "dpmpp_2m_sde", "steps": 30, "cfg": 7.5, "guide_rescale": 0.2, "eta": 1.0,
                     "strength": 0.6, "negative_prompt": ""}
#: what a sidecar written before a setting existed ran with (not today's defaults)
SIDECAR_LEGACY = {"solver": "ddim", "guide_rescale": 0.0, "negative_prompt": "", "chunk_clock": "chunk"}
ASPECT_TOLERANCE = 0.01  # relative: frames are resized, never cropped or padded
SIDECAR_ARGS = ("prompt", "strength", "chunk", "overlap", "steps", "cfg", "eta", "seed", "fps", "save_fps",
                "frame_batch", "shared_noise", "blend") + tuple(SIDECAR_LEGACY)


def sampler_defaults(diffusion: dict) -> dict:
    """The enhancer's sampler defaults for a refiner (its ``diffusion`` settings): the reference's
    (:data:`REFERENCE_SAMPLER`) on MS-Vid2Vid-XL's schedule; otherwise DDIM, 50 steps over the schedule
    (30 run at strength 0.6), CFG 7.5 without rescale, the refiner's eta -- the settings the demo
    refiner's seam and verdict figures were measured with (benchmarks/RESULTS.md, issue 27). A refiner whose
    config sets ``diffusion.sdedit_strength`` starts from it instead of 0.6: the demo models (0.3), which refine
    at their own 12x12 and whose chunked SDEdit from t = 599 re-draws the motion (RESULTS, issue 27)."""
    if diffusion.get("beta_schedule") == "logsnr_cosine_interp":
        return dict(REFERENCE_SAMPLER)
    return {k: DEFAULTS[k] for k in ("solver", "steps", "cfg", "guide_rescale", "strength", "negative_prompt")} | {
        "eta": diffusion.get("default_eta", 1.0), "strength": diffusion.get("default_sdedit_strength",
                                                                           DEFAULTS["strength"])}


@dataclasses.dataclass(frozen=True)
class EnhanceRequest:
    """Every setting of one enhancement, checked (:func:`make_enhance_request`)."""

    input: str  # absolute path of the video to enhance
    input_sha256: str  # of the file's bytes
    input_frames: int
    input_size: tuple  # (H, W)
    prompt: str
    negative_prompt: str  # the unconditional text of CFG
    checkpoint: Optional[str]  # None: the embedded demo model
    frames: int  # after the reference's trim rule
    height: int
    width: int
    latent_hw: tuple
    strength: float
    chunk: int
    overlap: int
    solver: str  # "ddim" or "dpmpp_2m_sde"
    steps: int  # ddim: steps over the whole schedule; dpmpp_2m_sde: steps from T'
    sdedit_steps: int  # the steps that run (ddim: those at t <= T')
    cfg: float
    guide_rescale: float  # the reference's CFG std rescale, in [0, 1] (0: plain CFG)
    eta: float
    seed: int
    fps: float  # the UNet's fps conditioning
    save_fps: float
    frame_batch: int
    shared_noise: bool
    blend: bool
    flavor: str
    schedule_kwargs: tuple
    prediction: str
    chunk_clock: str = DEFAULTS["chunk_clock"]  # CHUNK_CLOCKS

    @property
    def chunks(self) -> int:
        return len(W.chunk_starts(self.frames, self.chunk, self.overlap))


@dataclasses.dataclass(frozen=True)
class EnhancePlan:
    """Static (hashable) settings of the compiled enhancer loop."""

    flavor: str
    steps: int
    eta: float
    schedule_kwargs: tuple
    strength: float
    prediction: str
    chunk: int
    overlap: int
    shared_noise: bool
    blend: bool
    solver: str = "ddim"
    rescale: bool = False  # guide rescale in the graph (its value is an argument)
    chunk_clock: str = "chunk"  # CHUNK_CLOCKS: "video" hands each chunk its slice of the video's clock

    def schedule(self):
        return solver_schedule(self.solver, self.flavor, self.steps, self.eta, self.schedule_kwargs, self.strength)


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _checkpoint_source(checkpoint) -> Optional[str]:
    """None for the embedded demo model, ``builtin:NAME`` for another built-in (demo_vc), else the folder's
    absolute path."""
    name = builtin.named(checkpoint)
    if name is not None:
        return None if name == builtin.DEFAULT else builtin.source(name)
    return os.path.abspath(os.fspath(checkpoint))


def parse_size(size) -> Optional[tuple]:
    """``"HxW"`` (or a (H, W) pair) -> (H, W); None stays None."""
    if size is None:
        return None
    if isinstance(size, str):
        parts = size.lower().split("x")
        if len(parts) != 2:
            raise VstarError(f"--size must be HxW (e.g. 576x1024), got {size!r}")
        size = parts
    h, w = size
    return (number("size height", h, integer=True, minimum=1, maximum=1_000_000),
            number("size width", w, integer=True, minimum=1, maximum=1_000_000))


def make_enhance_request(input_path, prompt: str, *, checkpoint=None, pipeline=None, strength=None, chunk=None,
                         overlap=None, size=None, steps=None, cfg=None, eta=None, seed=None, fps=None,
                         save_fps=None, frame_batch=None, shared_noise: bool = True, blend: bool = True,
                         solver=None, guide_rescale=None, negative_prompt=None, chunk_clock=None,
                         expect_input_sha256: Optional[str] = None) -> EnhanceRequest:
    """Check every setting and the input video (one-line :class:`VstarError` each, before any compute).
    Settings left None take the refiner's defaults (:func:`sampler_defaults`)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise VstarError("empty prompt: the enhancer is conditioned on the video's text (--prompt)")
    info = model_info(checkpoint, pipeline)
    d = info.diffusion
    sd = sampler_defaults(d)
    solver = sd["solver"] if solver is None else solver
    if solver not in SOLVERS:
        raise VstarError(f"--solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    if solver != sd["solver"] and solver == "ddim":  # the other solver's own step count and eta
        sd.update(steps=DEFAULTS["steps"], eta=d.get("default_eta", 1.0))
    elif solver != sd["solver"]:
        sd.update(steps=REFERENCE_SAMPLER["steps"], eta=REFERENCE_SAMPLER["eta"])
    chunk_clock = DEFAULTS["chunk_clock"] if chunk_clock is None else chunk_clock
    if chunk_clock not in CHUNK_CLOCKS:
        raise VstarError(f"--chunk-clock must be one of {', '.join(CHUNK_CLOCKS)}, got {chunk_clock!r}")
    if negative_prompt is None:
        negative_prompt = sd["negative_prompt"]
    if not isinstance(negative_prompt, str):
        raise VstarError(f"the negative prompt must be text, got {negative_prompt!r}")
    guide_rescale = number("--guide-rescale", sd["guide_rescale"] if guide_rescale is None else guide_rescale,
                           minimum=0, maximum=1)
    strength = number("strength", sd["strength"] if strength is None else strength)
    if not 0.0 < strength <= 1.0:
        raise VstarError(f"strength must be in (0, 1] (the fraction of the noise schedule SDEdit starts from), "
                         f"got {strength}")
    chunk = number("chunk", DEFAULTS["chunk"] if chunk is None else chunk, integer=True, minimum=2, maximum=100_000)
    overlap = number("overlap", DEFAULTS["overlap"] if overlap is None else overlap, integer=True, minimum=1,
                     maximum=100_000)
    if chunk <= overlap:
        raise VstarError(f"chunk {chunk} must be larger than the overlap {overlap}")
    steps = number("steps", sd["steps"] if steps is None else steps, integer=True, minimum=1, maximum=1000)
    cfg = number("cfg", sd["cfg"] if cfg is None else cfg, minimum=0, maximum=1000)
    seed = number("seed", DEFAULTS["seed"] if seed is None else seed, integer=True, minimum=0, maximum=2 ** 32 - 1)
    save_fps = number("save_fps", DEFAULTS["save_fps"] if save_fps is None else save_fps, minimum=0.1, maximum=1000)
    frame_batch = number("frame_batch", DEFAULTS["frame_batch"] if frame_batch is None else frame_batch,
                         integer=True, minimum=1, maximum=100_000)
    size = parse_size(size)
    eta = number("eta", sd["eta"] if eta is None else eta, minimum=0, maximum=100)
    fps = number("fps", d["default_fps"] if fps is None else fps, minimum=0, maximum=1000)
    sched_kw = schedule_kwargs(d)
    if solver == "ddim":
        check_schedule(d["flavor"], steps, eta, sched_kw)
    n_sdedit = solver_schedule(solver, d["flavor"], steps, eta, sched_kw, strength).num_steps

    # ---- the input video ----
    path = os.path.abspath(os.fspath(input_path))
    try:
        n, vh, vw, _ = probe_video(path)
    except FileNotFoundError as e:
        raise VstarError(str(e)) from None
    except ValueError as e:
        raise VstarError(str(e)) from None
    if n < chunk:
        raise VstarError(f"{path} has {n} frames, fewer than one chunk of {chunk}: use --chunk {n} or less "
                         f"(with --overlap below it)")
    starts = W.chunk_starts(n, chunk, overlap, trim=True)
    frames = int(starts[-1]) + chunk
    lat_default = d["latent_size"]
    height, width = size if size is not None else (lat_default[0] * info.vae_factor, lat_default[1] * info.vae_factor)
    refiner = "the demo refiner" if checkpoint is None else f"the refiner {checkpoint}"
    try:
        latent_hw = info.latent_hw(height, width)
    except VstarError as e:
        raise VstarError(f"{refiner} cannot run at {height}x{width}: {e}") from None
    if abs((vh / vw) / (height / width) - 1.0) > ASPECT_TOLERANCE:
        raise VstarError(f"the video is {vh}x{vw} and {refiner} runs at {height}x{width}: the aspect ratios differ "
                         f"(frames are resized, not cropped or padded); give --size HxW with the video's aspect ratio")
    sha = file_sha256(path)
    if expect_input_sha256 is not None and sha != expect_input_sha256:
        raise VstarError(f"{path} is not the video the sidecar recorded (sha256 {sha[:12]}... != "
                         f"{expect_input_sha256[:12]}...)")
    return EnhanceRequest(path, sha, int(n), (int(vh), int(vw)), prompt, negative_prompt,
                          _checkpoint_source(checkpoint), frames, int(height), int(width),
                          tuple(latent_hw), float(strength), int(chunk), int(overlap), solver, int(steps),
                          int(n_sdedit), float(cfg), float(guide_rescale), float(eta), int(seed), float(fps),
                          float(save_fps), int(frame_batch), bool(shared_noise), bool(blend), d["flavor"], sched_kw,
                          d["prediction"], chunk_clock)


# ------------------------------------------------------------------------------- encode
def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (k, H, W, 3) -> float32 (k, height, width, 3) in [0, 1]: bilinear, half-pixel centres, no
    antialiasing (the reference upsamples with PIL's bilinear resize)."""
    v = jnp.asarray(frames, jnp.float32) / 255.0
    if v.shape[1:3] == (height, width):
        return np.asarray(v)
    return np.asarray(jax.image.resize(v, (v.shape[0], height, width, 3), "linear", antialias=False))


@jit
def _to_unit(v):
    return 2.0 * v - 1.0


def encode_frames(pipe, frames01: np.ndarray) -> np.ndarray:
    """Frames (k, H, W, 3) in [0, 1] at the refiner's size -> its diffusion latents (1, c, k, h, w): the demo
    model's patch code, pixels in [-1, 1], or the VAE's scaled posterior mean."""
    v = jnp.asarray(frames01, jnp.float32)[None]
    if pipe.config.get("space") == "patch":
        return np.asarray(patchify(v, int(pipe.config["patch"])), np.float32)
    x = jnp.transpose(_to_unit(v), (0, 4, 1, 2, 3))  # (1, 3, k, H, W)
    if pipe.pixel_space:
        return np.asarray(x, np.float32)
    return np.asarray(_encode_jit(pipe.vae, pipe.params["vae"], x, jnp.float32(pipe.diffusion["scale_factor"])),
                      np.float32)


def _encode_impl(vae, params, x, scale_factor):
    return encode_to_latents(vae, params, x, frame_batch=x.shape[2], scale_factor=scale_factor)


_encode_jit = jit(_encode_impl, static_argnames=("vae",))


def read_latents(pipe, req: EnhanceRequest, progress: bool = False) -> np.ndarray:
    """The first ``req.frames`` frames of the input, resized and encoded ``frame_batch`` at a time:
    latents (1, c, frames, h, w) float32."""
    out, done = [], 0
    bar = tqdm(total=req.frames, desc="encoding", unit="frame", file=sys.stderr, leave=True) \
        if progress and req.frames > req.frame_batch else None
    try:
        for batch in read_video_batches(req.input, req.frame_batch):
            batch = batch[: req.frames - done]
            if not len(batch):
                break
            out.append(encode_frames(pipe, resize_frames(batch, req.height, req.width)))
            done += len(batch)
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
    if done != req.frames:
        raise VstarError(f"{req.input}: read {done} frames, expected {req.frames}")
    return np.concatenate(out, axis=2)


# ------------------------------------------------------------------------------- sample
def _enhance(unet, params, z0, cond, uncond, key, fps, cfg_scale, rescale, *, plan: EnhancePlan):
    schedule = plan.schedule()
    model_fn = make_denoiser(unet, params, DenoiserSpec(plan.prediction), alphas_cumprod=schedule.alphas_cumprod,
                             fps=fps, on_call=_progress_tick)
    _, _, context, coeffs, _, use_noise, guided = prepare_sampling(z0, cond, uncond, schedule, None, key, "enhance")
    # --chunk-clock video: the whole video's clock, each chunk its slice (None: no clock, or each its own)
    times = UNetConfig.from_config(unet.config).video_clock(z0.shape[2]) if plan.chunk_clock == "video" else None
    lat = enhance_loop(model_fn, z0, context, coeffs, cfg_scale, key, window=plan.chunk, overlap=plan.overlap,
                       shared_noise=plan.shared_noise, blend=plan.blend, guided=guided, use_noise=use_noise,
                       rescale=rescale if plan.rescale else None, frame_times=times)
    return SampleOutput(lat, None, None)


enhance_jit = jit(_enhance, static_argnames=("unet", "plan"))


_COMPILED: dict = {}


def compiled_enhancer(unet, plan: EnhancePlan, args: tuple, progress: bool):
    """The compiled enhancer loop for these settings and shapes: cached in the process, and on disk through
    the compile cache (``compile_lowered``: the loop holds the progress callback), as the sampling stage's."""
    leaves, treedef = jax.tree_util.tree_flatten(args)
    key = (unet, plan, treedef, tuple((tuple(x.shape), str(x.dtype)) for x in leaves))
    if key not in _COMPILED:
        log(progress, "compiling the enhancer loop (once per model, shape and setting)")
        t0 = time.time()
        if len(_COMPILED) >= 8:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key], loaded = compile_lowered(enhance_jit.lower(unet, *args, plan=plan))
        log(progress, f"{'loaded from the compile cache' if loaded else 'compiled'} in {time.time() - t0:.1f}s")
    return _COMPILED[key]


def plan_of(req: EnhanceRequest) -> EnhancePlan:
    return EnhancePlan(req.flavor, req.steps, req.eta, req.schedule_kwargs, req.strength, req.prediction, req.chunk,
                       req.overlap, req.shared_noise, req.blend, req.solver, req.guide_rescale != 0.0, req.chunk_clock)


def enhance_latents(pipe, req: EnhanceRequest, z0, *, progress: bool = False):
    """The sampling stage: refined latents (1, c, frames, h, w) float32 and the seconds it took."""
    cond, uncond = pipe.encode([req.prompt]), pipe.encode([req.negative_prompt])
    args = (pipe.params["unet"], jnp.asarray(z0), jnp.asarray(cond), jnp.asarray(uncond), jax.random.key(req.seed),
            jnp.float32(req.fps), jnp.float32(req.cfg), jnp.float32(req.guide_rescale))
    run = compiled_enhancer(pipe.unet, plan_of(req), args, progress)
    lat, _, seconds = run_sampler(run, args, total_calls=req.chunks * req.sdedit_steps, progress=progress,
                                  unit="call")
    check_finite(lat, req.sdedit_steps, "enhancing")
    return np.asarray(lat, np.float32), seconds


# ------------------------------------------------------------------------------- the job
@dataclasses.dataclass
class EnhanceResult:
    path: Optional[str]
    sidecar: dict
    sidecar_path: Optional[str]
    latents: np.ndarray  # (1, c, frames, h, w) refined
    input_latents: np.ndarray  # (1, c, frames, h, w) the encoded input


def default_enhanced_output(input_path) -> str:
    p = pathlib.Path(input_path)
    return str(p.with_name(p.stem + "-enhanced.mp4"))


def enhance_video(input_path, prompt: str, *, out=None, checkpoint=None, pipeline=None, progress: bool = True,
                  overwrite: bool = False, expect_sha256: Optional[str] = None, expect_input_sha256=None,
                  **settings) -> EnhanceResult:
    """Enhance a video file (see the module docstring); ``settings`` are :func:`make_enhance_request`'s."""
    t0 = time.time()
    req = make_enhance_request(input_path, prompt, checkpoint=checkpoint, pipeline=pipeline,
                               expect_input_sha256=expect_input_sha256, **settings)
    out = default_enhanced_output(req.input) if out is None else out
    if os.path.abspath(os.fspath(out)) == req.input:
        raise VstarError(f"--out {out} is the input video: choose another output path")
    paths = check_outputs(out, False, None, overwrite, save_fps=req.save_fps)
    pipe = pipeline
    if pipe is None:
        log(progress, f"loading {'the embedded demo model' if checkpoint is None else checkpoint}")
        pipe = load_pipeline(checkpoint)
    if req.frames < req.input_frames:
        log(progress, f"{req.input_frames} frames do not split into chunks of {req.chunk} overlapping {req.overlap}: "
                      f"enhancing the first {req.frames} (the reference's trim rule)")
    log(progress, f"encoding {req.frames} frames at {req.height}x{req.width}")
    z0 = read_latents(pipe, req, progress)
    steps = (f"{req.sdedit_steps} of {req.steps} DDIM steps" if req.solver == "ddim"
             else f"{req.sdedit_steps} DPM++ 2M SDE steps")
    log(progress, f"enhancing: {req.chunks} chunks of {req.chunk} (overlap {req.overlap}), strength {req.strength} "
                  f"({steps}), cfg {req.cfg}{f' rescaled {req.guide_rescale}' if req.guide_rescale else ''}, "
                  f"seed {req.seed}"
                  f"{'' if req.shared_noise else ', no shared noise'}{'' if req.blend else ', no blending'}"
                  f"{', each chunk on its own clock' if req.chunk_clock == 'chunk' else ''}")
    lat, t_sample = enhance_latents(pipe, req, z0, progress=progress)
    with Staging() as stage:
        _, digest, size, t_decode = decode_and_write(pipe, lat, req, paths, keep_video=False, progress=progress,
                                                     expect_sha256=expect_sha256, stage=stage)
        sc = build_enhance_sidecar(req, pipe.source, digest, size, paths,
                                   {"sample": round(t_sample, 3), "decode": round(t_decode, 3),
                                    "total": round(time.time() - t0, 3)})
        scp = sidecar_path(paths["video"])
        stage.write_text(scp, sidecar_text(sc))
        stage.commit()
    log(progress, f"wrote {paths['video']} and {scp}")
    return EnhanceResult(str(paths["video"]), sc, str(scp), lat, z0)


def build_enhance_sidecar(req: EnhanceRequest, checkpoint: str, digest: str, size, paths: dict, timing: dict) -> dict:
    return {
        "format": ENHANCE_SIDECAR_FORMAT,
        "input": req.input, "input_sha256": req.input_sha256, "input_frames": req.input_frames,
        "input_size": list(req.input_size),
        "prompt": req.prompt, "negative_prompt": req.negative_prompt, "checkpoint": checkpoint,
        "frames": req.frames, "height": req.height, "width": req.width, "latent_hw": list(req.latent_hw),
        "strength": req.strength, "chunk": req.chunk, "overlap": req.overlap, "solver": req.solver,
        "steps": req.steps, "sdedit_steps": req.sdedit_steps, "cfg": req.cfg, "guide_rescale": req.guide_rescale,
        "eta": req.eta, "seed": req.seed, "fps": req.fps,
        "save_fps": req.save_fps, "frame_batch": req.frame_batch, "shared_noise": req.shared_noise,
        "blend": req.blend, "chunk_clock": req.chunk_clock, "schedule": {"flavor": req.flavor, **dict(req.schedule_kwargs)},
        "prediction": req.prediction,
        "rng": {"impl": str(jax.config.jax_default_prng_impl), "rule": RNG_RULE},
        "frames_sha256": digest, "video_size": [int(s) for s in size],
        "outputs": {k: (str(v) if v is not None else None) for k, v in paths.items()},
        "versions": versions(), "backend": jax.default_backend(), "xla_options": options_for(jax.default_backend()),
        "device": str(jax.devices()[0].device_kind),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "timing_s": timing,
    }


def load_enhance_sidecar(path) -> dict:
    p, data = read_sidecar_file(path)
    if not isinstance(data, dict) or data.get("format") != ENHANCE_SIDECAR_FORMAT:
        raise VstarError(f"{p} is not a vstar-jax enhancer sidecar (format {ENHANCE_SIDECAR_FORMAT})")
    missing = [k for k in SIDECAR_ARGS + ("input", "input_sha256", "height", "width")
               if k not in data and k not in SIDECAR_LEGACY]
    if missing:
        raise VstarError(f"{p}: missing field(s) {missing}")
    return data


def regenerate_enhanced(sidecar, *, out=None, checkpoint=None, pipeline=None, progress: bool = True,
                        overwrite: bool = False, verify: bool = True) -> EnhanceResult:
    """The enhanced video a sidecar describes, again, from the same input file (its sha256 checked); with
    ``verify`` frames that hash differently are not kept (:class:`FramesDiffer`)."""
    sc = load_enhance_sidecar(sidecar)
    kw = {k: sc.get(k, SIDECAR_LEGACY.get(k)) for k in SIDECAR_ARGS if k != "prompt"}
    ck = checkpoint if checkpoint is not None else sc.get("checkpoint")
    ck = None if ck in (None, DEMO_SOURCE) else ck  # builtin:demo_vc stays a name (load_pipeline resolves it)
    try:
        return enhance_video(sc["input"], sc["prompt"], out=out, checkpoint=ck, pipeline=pipeline, progress=progress,
                             overwrite=overwrite, size=(sc["height"], sc["width"]),
                             expect_sha256=sc.get("frames_sha256") if verify else None,
                             expect_input_sha256=sc["input_sha256"], **kw)
    except FramesDiffer as e:  # CPU convolutions compiled otherwise round otherwise
        raise FramesDiffer(f"{e}{rerun_hint(sc.get('xla_options'))}") from None


__all__ = ["EnhanceRequest", "EnhanceResult", "make_enhance_request", "enhance_video", "regenerate_enhanced",
           "encode_frames", "resize_frames", "FramesDiffer", "DEFAULTS", "REFERENCE_SAMPLER", "sampler_defaults"]
