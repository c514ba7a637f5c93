"""A generation request: every setting of one video, validated once, frozen, == the sidecar schema.

:func:`make_request` checks everything that can be checked without the model's params (each bad
input is a one-line :class:`~vstar_jax.errors.VstarError`), fills the model's defaults in from
its :class:`~vstar_jax.generation.model.ModelInfo`, and returns a :class:`GenerationRequest`.
Writing a request into a sidecar and reading it back gives the same request, which is what
``--from-sidecar`` relies on.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Optional, Sequence

import jax

from vstar_jax.diffusion.schedules import make_schedule
from vstar_jax.errors import VstarError
from vstar_jax.generation.model import DEFAULTS, ModelInfo
from vstar_jax.longvideo import parse_strategy
from vstar_jax.models.attention import BACKENDS
from vstar_jax.tar_vsp.synopsis import user_synopsis
from vstar_jax.tar_vsp.tar import TARConfig, parse_tar
from vstar_jax.tar_vsp.vsp import MODES
from vstar_jax.validate import number  # noqa: F401  (the one number check; re-exported for callers)

SAVE_FPS = 8.0  # VSTAR's savefps
ATTENTION_BACKEND = "auto"  # a request's attention backend when none is given (the CLI's and the API's)


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    """One video's settings after validation (model defaults filled in)."""

    prompt: str
    frames: int
    steps: int
    ddim_steps: int
    cfg: float
    eta: float
    seed: int
    fps: Any
    save_fps: float
    latent_hw: tuple
    tar: Any  # TARConfig or None
    tar_spec: Optional[str]
    synopsis: Optional[tuple]  # the visual states (VSP), or None
    synopsis_source: Optional[Mapping]
    vsp_mode: str
    strategy: Any  # vstar_jax.longvideo.Strategy
    frame_batch: int
    capture: bool
    schedule_kwargs: tuple
    flavor: str
    prediction: str
    attention_backend: str = ATTENTION_BACKEND  # the UNet's (vstar_jax.models.attention.BACKENDS)

    @property
    def long_video(self):
        """The strategy when it is not a single pass (the sidecar's ``long_video``), else None."""
        return None if self.strategy.name == "single" else self.strategy


# The sensible range of each numeric generation setting (checked before any compute; see number()).
CFG_RANGE = (0.0, 100.0)  # classifier-free guidance scale (1 = no guidance; VSTAR uses 12)
ETA_RANGE = (0.0, 1.0)  # DDIM eta: 0 deterministic, 1 DDPM-like; above 1 the DDIM variance goes negative
FPS_RANGE = (1e-3, 1000.0)  # the UNet's fps conditioning
SAVE_FPS_RANGE = (0.1, 240.0)  # frame rate of the written video
MAX_FRAMES = 100_000
MAX_FRAME_BATCH = 4096


def schedule_kwargs(d: dict) -> tuple:
    """The DDIM schedule's keyword arguments for a checkpoint's diffusion settings (hashable)."""
    if d["flavor"] == "videocrafter2":
        kw = {"use_scale": d["use_scale"], "scale_b": d["scale_b"], "linear_start": d["linear_start"],
              "linear_end": d["linear_end"], "num_timesteps": d["num_timesteps"]}
    elif d["flavor"] in ("diffusers", "modelscope"):
        kw = {"beta_start": d["linear_start"], "beta_end": d["linear_end"],
              "num_train_timesteps": d["num_timesteps"]}
        for k in ("steps_offset", "set_alpha_to_one", "timestep_spacing", "beta_schedule"):
            if k in d:
                kw[k] = d[k]
    else:
        raise VstarError(f"checkpoint has an unknown diffusion flavor {d['flavor']!r}")
    return tuple(sorted(kw.items()))


def check_schedule(flavor: str, steps: int, eta: float, sched_kw: tuple) -> int:
    """Build the DDIM schedule once (numpy, cheap); returns its real number of steps."""
    try:
        return make_schedule(flavor, steps, eta, **dict(sched_kw)).num_steps
    except IndexError:
        # uniform timesteps range(0, T, T // steps) + 1 can reach T (as in the reference, e.g. 3 of 1000)
        n = dict(sched_kw).get("num_timesteps", 1000)
        raise VstarError(f"{steps} steps do not fit the {flavor} DDIM schedule (a timestep would pass {n - 1}); "
                         f"use e.g. a divisor of {n}") from None


def check_tar_levels(tar, info: ModelInfo) -> None:
    if tar is None:
        return
    bad = [lv for lv, _, _ in tar.levels if lv >= info.unet_levels]
    if bad:
        raise VstarError(f"TAR level(s) {bad} do not exist in this UNet (levels 0..{info.unet_levels - 1})")


UNET_WIDTH = 320  # base channels of VideoCrafter2's and ModelScope's UNets (the estimate's assumption)
ACTIVATION_COPIES = 16  # live level-0 activations of one UNet call (skip connections, resnet temporaries)


def available_memory() -> int:
    """Bytes the sampler may use: the accelerator's limit, else the host's available RAM."""
    try:
        dev = jax.devices()[0]
        if dev.platform != "cpu":
            stats = dev.memory_stats() or {}
            if stats.get("bytes_limit"):
                return int(stats["bytes_limit"])
    except Exception:  # noqa: BLE001 - no stats: fall back to host memory
        pass
    try:
        import psutil  # noqa: PLC0415

        return int(psutil.virtual_memory().available)
    except ImportError:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    return 0


def estimate_memory(unet_frames: int, latent_hw, heads: int = 8) -> int:
    """A rough peak-activation estimate (bytes) of one guided UNet call at full latent resolution:
    ``ACTIVATION_COPIES`` float32 copies of the (2 CFG rows, UNET_WIDTH, frames, h, w) activation
    plus the temporal attention scores (2 h w heads, frames, frames)."""
    h, w = (int(x) for x in latent_hw)
    f = int(unet_frames)
    act = 2 * UNET_WIDTH * f * h * w * 4
    temporal = 2 * h * w * heads * f * f * 4
    return ACTIVATION_COPIES * act + temporal


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_memory(unet_frames: int, latent_hw, max_memory=None) -> int:
    """Refuse (VstarError stating the estimate) a UNet call that cannot fit in ``max_memory`` bytes
    (None: :func:`available_memory`; 0 or a negative number: no check). Returns the estimate."""
    need = estimate_memory(unet_frames, latent_hw)
    limit = available_memory() if max_memory is None else number("max_memory", max_memory, minimum=0)
    if limit and limit > 0 and need > limit:
        h, w = latent_hw
        raise VstarError(f"not enough memory: one UNet call on {unet_frames} frames of {h}x{w} latents needs about "
                         f"{_gib(need)}, the limit is {_gib(limit)}; use fewer frames (or a long-video method), a "
                         f"smaller size, or raise the limit (--max-memory GiB, 0 = no check)")
    return need


def check_attention_backend(backend, info: ModelInfo, *, tar=None, capture: bool = False, hooks: bool = False) -> str:
    """The UNet's attention backend of a request (``vstar_jax.models.attention.BACKENDS``); None is the
    checkpoint config's (what a sidecar written before the setting existed ran with). Refused in one
    line: an unknown name, 'cudnn' off a GPU, 'pallas' off a TPU, and 'pallas' (every attention through
    the flash kernel) with TAR, attention maps or a long-video method's attention ``hooks``."""
    if backend is None:
        backend = info.attention_backend
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise VstarError(f"unknown attention backend {backend!r} (use one of {', '.join(BACKENDS)})")
    needs = {"cudnn": "gpu", "pallas": "tpu"}.get(backend)
    if needs is not None:
        if jax.default_backend() != needs:
            raise VstarError(f"attention backend {backend!r} needs a {needs.upper()}, and JAX runs on "
                             f"{jax.default_backend()} here; use 'auto' (cuDNN on a GPU, the Pallas kernel on a TPU, "
                             f"XLA elsewhere) or 'xla'")
    if backend == "pallas":
        whole = [name for name, on in (("TAR", tar is not None), ("attention maps", capture),
                                       ("the long-video method's temporal attention", hooks)) if on]
        if whole:
            raise VstarError(f"attention backend 'pallas' sends every attention through the flash kernel, which "
                             f"cannot take {' or '.join(whole)} (they need whole logit rows); use 'auto' (the kernel "
                             f"where it can run, XLA for those)")
    return backend


def check_states(states, frames: int) -> list[str]:
    states = [str(s).strip() for s in states]
    if any(not s for s in states):
        raise VstarError("synopsis has an empty visual state")
    if len(states) < 2:
        raise VstarError(f"a synopsis needs at least 2 visual states, got {len(states)}")
    if len(states) > frames:
        raise VstarError(f"a synopsis of {len(states)} states needs at least {len(states)} frames, got {frames}")
    return states


def resolve_synopsis(synopsis, prompt: str, frames: int):
    """User synopsis (list or file) -> (states, source dict); None -> (None, None)."""
    if synopsis is None:
        return None, None

    if isinstance(synopsis, (str, os.PathLike)):
        states = user_synopsis(synopsis, prompt)
        source = {"kind": "file", "path": os.path.abspath(os.fspath(synopsis))}
    else:
        if isinstance(synopsis, Mapping) or not isinstance(synopsis, Sequence):
            raise VstarError(f"synopsis must be a list of states or a file path, got {type(synopsis).__name__}")
        states = list(synopsis)
        source = {"kind": "user"}
    return check_states(states, frames), source


def make_request(prompt: str, info: ModelInfo, *, frames=None, steps=None, cfg=None, eta=None, seed=0, fps=None,
                 save_fps=SAVE_FPS, tar=None, synopsis=None, vsp_mode="linear", height=None, width=None,
                 frame_batch=16, capture=False, long_video=None, synopsis_source=None,
                 llm_asked: bool = False, max_memory=None, attention_backend=ATTENTION_BACKEND) -> GenerationRequest:
    """Validate every setting (cheap checks only) and fill in the model's defaults.

    ``synopsis`` may be a list of states or a file; an LLM-written synopsis is resolved later
    (``llm_asked``) and put in with :func:`dataclasses.replace`. ``max_memory``: bytes one UNet
    call may use (None: what the machine has; 0: no check), see :func:`check_memory`.
    ``attention_backend``: see :func:`check_attention_backend` (None: the checkpoint config's).
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise VstarError("empty prompt: give a text description of the video")
    prompt = prompt.strip()
    if frames is not None:
        frames = number("frames", frames, integer=True, minimum=2, maximum=MAX_FRAMES)
    seed = number("seed", seed, integer=True, minimum=0, maximum=2**32 - 1)
    tar_cfg = tar if isinstance(tar, TARConfig) else parse_tar(tar)
    strategy = parse_strategy(long_video)
    if capture and strategy.name != "single":
        raise VstarError(f"attention maps are not recorded with long_video {strategy.name} (the UNet sees windows)")
    if vsp_mode not in MODES:
        raise VstarError(f"unknown VSP mode {vsp_mode!r} (use one of {', '.join(MODES)})")
    if synopsis is not None and llm_asked:
        raise VstarError("give either a synopsis or an LLM to write one, not both")
    save_fps = number("save_fps", save_fps, minimum=SAVE_FPS_RANGE[0], maximum=SAVE_FPS_RANGE[1])
    frame_batch = number("frame_batch", frame_batch, integer=True, minimum=1, maximum=MAX_FRAME_BATCH)
    d = info.diffusion
    frames = frames if frames is not None else int(d.get("default_frames", DEFAULTS["frames"]))
    if frames < 2:
        raise VstarError(f"frames must be >= 2, got {frames}")
    steps = strategy.steps_for(steps)
    steps = number("steps", steps if steps is not None else d.get("default_steps", DEFAULTS["steps"]),
                   integer=True, minimum=1, maximum=d["num_timesteps"])
    cfg = number("cfg", cfg if cfg is not None else d.get("default_cfg", DEFAULTS["cfg"]),
                 minimum=CFG_RANGE[0], maximum=CFG_RANGE[1])
    eta = number("eta", eta if eta is not None else d.get("default_eta", DEFAULTS["eta"]),
                 minimum=ETA_RANGE[0], maximum=ETA_RANGE[1])
    sched_kw = strategy.schedule_kwargs(d["flavor"], schedule_kwargs(d))
    ddim_steps = check_schedule(d["flavor"], int(steps), float(eta), sched_kw)
    plan = strategy.check(frames, ddim_steps)  # VstarError naming valid lengths
    strategy.check_model(info)  # e.g. streaming without CAM/APM: one line naming what is missing
    if d.get("max_frames") and plan.unet_frames > int(d["max_frames"]):
        raise VstarError(f"this model takes at most {d['max_frames']} frames"
                         f"{' per window' if strategy.name != 'single' else ''}, got {plan.unet_frames}")
    fps = number("fps", fps if fps is not None else d.get("default_fps", DEFAULTS["fps"]),
                 minimum=FPS_RANGE[0], maximum=FPS_RANGE[1])
    fps = int(fps) if float(fps).is_integer() else fps
    check_tar_levels(tar_cfg, info)
    attention_backend = check_attention_backend(attention_backend, info, tar=tar_cfg, capture=capture,
                                                hooks=bool(strategy.attention_hooks(frames)))
    lat_hw = info.latent_hw(height, width)
    check_memory(plan.unet_frames, lat_hw, max_memory)
    states, source = resolve_synopsis(synopsis, prompt, frames)
    if states is not None and synopsis_source is not None:
        source = dict(synopsis_source)
    return GenerationRequest(
        prompt=prompt, frames=int(frames), steps=int(steps), ddim_steps=int(ddim_steps), cfg=float(cfg),
        eta=float(eta), seed=int(seed), fps=fps, save_fps=float(save_fps), latent_hw=tuple(lat_hw), tar=tar_cfg,
        tar_spec=tar if isinstance(tar, (str, type(None))) else None,
        synopsis=tuple(states) if states is not None else None, synopsis_source=source, vsp_mode=vsp_mode,
        strategy=strategy, frame_batch=int(frame_batch), capture=bool(capture), schedule_kwargs=sched_kw,
        flavor=d["flavor"], prediction=d["prediction"], attention_backend=attention_backend)
