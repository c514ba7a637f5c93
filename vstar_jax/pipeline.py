"""Text-to-video generation: prompt -> text context -> one jitted DDIM loop -> VAE -> mp4 + sidecar.

:func:`generate_video` validates every input first (each bad input is a one-line
``ValueError`` before anything is computed), then encodes the prompt (or the VSP
synopsis states, interpolated per frame), draws x_T from ``jax.random.key(seed)``,
runs the whole guided DDIM loop inside one ``jax.jit`` (params are arguments; TAR is a
static :class:`~vstar_jax.vstar.tar.TARConfig`), decodes in frame batches and writes
the video, an optional GIF, an optional attention-map PNG (VSTAR Fig. 4) and a JSON
sidecar holding every setting, so :func:`regenerate` reproduces the frames bit for bit.

PRNG: ``key = jax.random.key(seed)``; ``k_x, k_steps = split(key)``; x_T =
``normal(k_x, (1, c, f, h, w))``; step i's DDIM noise = ``normal(split(k_steps, N)[i])``.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import json
import math
import os
import pathlib
import platform
import re
import sys
import time
import warnings
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vstar_jax.diffusion.parameterization import check_prediction, to_eps

SIDECAR_FORMAT = "vstar-jax-generation/1"
DEMO_SOURCE = "builtin:demo"
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".gif")
DEFAULTS = {"frames": 16, "steps": 25, "cfg": 12.0, "eta": 1.0, "fps": 28}  # VSTAR on VideoCrafter2
FLAVOR_DEFAULTS = {"diffusers": {"steps": 50, "cfg": 9.0, "eta": 0.0}}  # ModelScope's pipeline defaults
SAVE_FPS = 8.0  # VSTAR's savefps


# ------------------------------------------------------------------------------ logging
def _log(enabled: bool, msg: str) -> None:
    if enabled:
        print(f"[vstar-jax] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the model
def _frozen(cfg):
    import ml_collections  # noqa: PLC0415

    if isinstance(cfg, ml_collections.FrozenConfigDict):
        return cfg
    if isinstance(cfg, ml_collections.ConfigDict):
        return ml_collections.FrozenConfigDict(cfg)
    return ml_collections.FrozenConfigDict(dict(cfg))


def _plain(obj):
    """ConfigDicts / tuples -> plain dicts / lists (JSON-able), recursively."""
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def diffusion_settings(config: Mapping) -> dict:
    """The checkpoint's "diffusion" section with defaults filled in (VideoCrafter2 values)."""
    d = dict(config.get("diffusion") or {})
    unet = config.get("unet") or {}
    pixel = _is_pixel(config)
    out = {
        "flavor": d.get("flavor", "videocrafter2"),
        "linear_start": float(d.get("linear_start", 0.00085)),
        "linear_end": float(d.get("linear_end", 0.012)),
        "num_timesteps": int(d.get("num_timesteps", 1000)),
        "scale_factor": float(d.get("scale_factor", 1.0 if pixel else 0.18215)),
        "use_scale": bool(d.get("use_scale", False)),
        "scale_b": float(d.get("scale_b", 0.7)),
        "latent_channels": int(d.get("latent_channels", unet.get("in_channels", 4))),
        "default_fps": d.get("default_fps", DEFAULTS["fps"]),
        "prediction": check_prediction(str(d.get("prediction", "eps"))),
    }
    size = d.get("latent_size")
    if size is None and config.get("size") is not None:
        side = int(config["size"]) // _pixel_factor(config)
        size = [side, side]
    out["latent_size"] = [int(s) for s in (size if size is not None else [40, 64])]
    for key in ("steps_offset", "set_alpha_to_one", "timestep_spacing", "max_frames"):
        if key in d:
            out[key] = d[key]
    for key in ("steps", "cfg", "eta"):  # model-specific sampling defaults (demo model, ModelScope)
        if key in d:
            out["default_" + key] = d[key]
        elif key in FLAVOR_DEFAULTS.get(out["flavor"], {}):
            out["default_" + key] = FLAVOR_DEFAULTS[out["flavor"]][key]
    if "frames" in config:
        out["default_frames"] = int(config["frames"])
    return out


def _is_pixel(config: Mapping) -> bool:
    """No VAE: pixel space, or the demo model's fixed "patch" space (decoded by the model)."""
    return config.get("space") in ("pixel", "patch") or not config.get("vae")


def _pixel_factor(config: Mapping) -> int:
    """Pixels per latent cell: the VAE's downsampling, the demo model's patch, or 1."""
    if config.get("space") == "patch":
        return int(config.get("patch", 1))
    if _is_pixel(config):
        return 1
    return 2 ** (len(config["vae"]["ch_mult"]) - 1)


@dataclasses.dataclass(eq=False)
class Pipeline:
    """UNet3D + text encoder + tokenizer + VAE (None in pixel space) + params + config."""

    unet: Any
    text_model: Any
    tokenizer: Any
    vae: Any
    params: dict
    config: dict
    source: str
    decoder: Optional[Callable] = None  # latents (b, c, F, h, w) -> uint8 (b, F, H, W, 3); else VAE / pixels

    @classmethod
    def from_params(cls, params: Mapping, config, source: str = "<memory>", *,
                    decoder: Optional[Callable] = None) -> "Pipeline":
        """Build the modules of ``config`` ({"unet", "text", "vae"?, "diffusion"}) around ``params``."""
        from vstar_jax.models.text import TextTransformer  # noqa: PLC0415
        from vstar_jax.models.tokenizer import get_tokenizer  # noqa: PLC0415
        from vstar_jax.models.unet3d import UNet3D  # noqa: PLC0415

        config = _plain(config)
        missing = [k for k in ("unet", "text") if k not in config or k not in params]
        if missing:
            raise ValueError(f"{source}: checkpoint lacks component(s) {missing} needed to generate")
        ucfg, tcfg = _frozen(config["unet"]), _frozen(config["text"])
        if int(tcfg.width) != int(ucfg.context_dim):
            raise ValueError(f"{source}: text width {tcfg.width} != UNet context_dim {ucfg.context_dim}")
        vae = None
        if config.get("space") == "patch" and decoder is None:
            raise ValueError(f"{source}: a 'patch' latent space needs the model's decoder")
        if not _is_pixel(config):
            from vstar_jax.models.vae import AutoencoderKL  # noqa: PLC0415

            if "vae" not in params:
                raise ValueError(f"{source}: checkpoint has no 'vae' params (convert with --components unet,vae,text)")
            vae = AutoencoderKL(_frozen(config["vae"]))
        tok = get_tokenizer(int(tcfg.get("pad_token_id", 0) or 0), int(tcfg.get("context_length", 77)))
        params = jax.device_put(dict(params))  # once, not at every call
        return cls(UNet3D(ucfg), TextTransformer(tcfg), tok, vae, params, config, source, decoder)

    @classmethod
    def from_checkpoint(cls, ckpt_dir: str | os.PathLike) -> "Pipeline":
        """Load a converted checkpoint directory (``vstar_jax.io.checkpoint`` layout)."""
        from vstar_jax.io.checkpoint import load_checkpoint, read_config  # noqa: PLC0415

        path = os.path.abspath(os.fspath(ckpt_dir))
        config = read_config(path)
        comps = [c for c in ("unet", "text", "vae") if c in config.get("components", [])]
        if _is_pixel(config):
            comps = [c for c in comps if c != "vae"]
        params, config = load_checkpoint(path, components=comps)
        return cls.from_params(params, config, path)

    # -- shapes -----------------------------------------------------------------------------
    @property
    def diffusion(self) -> dict:
        return diffusion_settings(self.config)

    @property
    def pixel_space(self) -> bool:
        return self.vae is None

    def describe(self) -> "ModelInfo":
        return ModelInfo.from_config(self.config, self.source)

    # -- text -------------------------------------------------------------------------------
    def encode(self, prompts: Sequence[str]) -> np.ndarray:
        """Text context (n, 77, C) float32 of prompts ("" is the unconditional embedding)."""
        from vstar_jax.models.text import encode_prompts  # noqa: PLC0415

        return np.asarray(encode_prompts(self.text_model, self.params["text"], self.tokenizer, list(prompts)),
                          np.float32)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What validation needs from a checkpoint's config (read without loading params)."""

    source: str
    diffusion: dict
    unet_levels: int
    vae_factor: int
    latent_channels: int

    @classmethod
    def from_config(cls, config: Mapping, source: str) -> "ModelInfo":
        config = _plain(config)
        if "unet" not in config:
            raise ValueError(f"{source}: checkpoint has no 'unet' component")
        vae_factor = _pixel_factor(config)
        from vstar_jax.models.unet3d import unet_num_levels  # noqa: PLC0415  (block_channels or channel_mult)
        return cls(source, diffusion_settings(config), unet_num_levels(config["unet"]), vae_factor,
                   int(config["unet"]["in_channels"]))

    def latent_hw(self, height: Optional[int], width: Optional[int]) -> tuple[int, int]:
        """Latent (h, w) of a video size; None = the checkpoint's default. Raises ValueError."""
        dh, dw = self.diffusion["latent_size"]
        unet_factor = 2 ** (self.unet_levels - 1)
        out = []
        for name, px, default in (("height", height, dh), ("width", width, dw)):
            if px is None:
                lat = default
            else:
                if int(px) != px or px < 1:
                    raise ValueError(f"{name} must be a positive integer, got {px}")
                if px % self.vae_factor:
                    raise ValueError(f"{name} {px} is not a multiple of the VAE factor {self.vae_factor}")
                lat = int(px) // self.vae_factor
            if lat % unet_factor:
                raise ValueError(f"{name} {lat * self.vae_factor} gives latent size {lat}, which the UNet "
                                 f"({self.unet_levels} levels) needs divisible by {unet_factor}; "
                                 f"use a multiple of {unet_factor * self.vae_factor}")
            out.append(int(lat))
        return out[0], out[1]


# ---------------------------------------------------------------- checkpoint resolution
_PIPELINES: dict = {}


def load_pipeline(checkpoint: Optional[str | os.PathLike] = None) -> Pipeline:
    """The pipeline of a checkpoint directory (cached per path and config mtime), or the
    embedded demo model when ``checkpoint`` is None."""
    if checkpoint is None:
        return _demo_pipeline()
    path = os.path.abspath(os.fspath(checkpoint))
    cfg = os.path.join(path, "config.json")
    key = (path, os.path.getmtime(cfg) if os.path.exists(cfg) else None)
    if key not in _PIPELINES:
        _PIPELINES.clear()  # keep at most one model in memory
        _PIPELINES[key] = Pipeline.from_checkpoint(path)
    return _PIPELINES[key]


def _demo_module():
    try:
        from vstar_jax.demo import model as demo_model  # noqa: PLC0415
    except ImportError:
        return None
    return demo_model if hasattr(demo_model, "load_demo_model") else None


def _demo_pipeline() -> Pipeline:
    mod = _demo_module()
    if mod is None:
        raise ValueError("no embedded default model is available yet: a checkpoint is required (--checkpoint DIR)")
    if "demo" not in _PIPELINES:
        try:
            got = mod.load_demo_model()
        except (ValueError, FileNotFoundError, OSError) as e:
            raise ValueError(f"the embedded demo model cannot be loaded ({' '.join(str(e).split())}): "
                             "a checkpoint is required (--checkpoint DIR)") from None
        _PIPELINES["demo"] = pipeline_from_demo(got)
    return _PIPELINES["demo"]


def pipeline_from_demo(model) -> Pipeline:
    """A :class:`Pipeline` around ``vstar_jax.demo.model.DemoModel`` (its modules rebuilt with
    frozen, hashable configs; frames decoded by the model at its display scale)."""
    if isinstance(model, Pipeline):
        return model
    params = {"unet": model.unet_params, "text": model.text_params}
    return Pipeline.from_params(params, model.config, DEMO_SOURCE,
                                decoder=lambda z: np.asarray(model.decode(z)))


def _model_info(checkpoint, pipeline: Optional[Pipeline]) -> ModelInfo:
    """ModelInfo from a pipeline, a checkpoint's config.json (params not loaded), or the demo."""
    if pipeline is not None:
        return pipeline.describe()
    if checkpoint is None:
        return _demo_pipeline().describe()
    from vstar_jax.io.checkpoint import read_config  # noqa: PLC0415

    path = os.path.abspath(os.fspath(checkpoint))
    if not os.path.isdir(path):
        raise ValueError(f"checkpoint directory not found: {path}")
    try:
        return ModelInfo.from_config(read_config(path), path)
    except FileNotFoundError as e:
        raise ValueError(str(e)) from None


# --------------------------------------------------------------------------- validation
@dataclasses.dataclass(frozen=True)
class SamplePlan:
    """Static (hashable) description of one compiled sampling loop."""

    flavor: str
    steps: int
    eta: float
    schedule_kwargs: tuple
    latent_shape: tuple
    tar: Any
    capture: bool
    latent_sharding: Any = None  # NamedSharding over the frame axis (vstar_jax.parallel), or None
    long_video: Any = None  # vstar_jax.longvideo.config.LongVideoConfig (chunked sampling), or None
    prediction: str = "eps"  # what the UNet predicts (vstar_jax.diffusion.parameterization)

    def schedule(self):
        from vstar_jax.diffusion.schedules import make_schedule  # noqa: PLC0415

        return make_schedule(self.flavor, self.steps, self.eta, **dict(self.schedule_kwargs))


def _schedule_kwargs(d: dict) -> tuple:
    if d["flavor"] == "videocrafter2":
        kw = {"use_scale": d["use_scale"], "scale_b": d["scale_b"], "linear_start": d["linear_start"],
              "linear_end": d["linear_end"], "num_timesteps": d["num_timesteps"]}
    elif d["flavor"] in ("diffusers", "modelscope"):
        kw = {"beta_start": d["linear_start"], "beta_end": d["linear_end"],
              "num_train_timesteps": d["num_timesteps"]}
        for k in ("steps_offset", "set_alpha_to_one", "timestep_spacing"):
            if k in d:
                kw[k] = d[k]
    else:
        raise ValueError(f"checkpoint has an unknown diffusion flavor {d['flavor']!r}")
    return tuple(sorted(kw.items()))


def _check_schedule(flavor: str, steps: int, eta: float, sched_kw: tuple) -> int:
    """Build the DDIM schedule once (numpy, cheap); returns its real number of steps."""
    from vstar_jax.diffusion.schedules import make_schedule  # noqa: PLC0415

    try:
        return make_schedule(flavor, steps, eta, **dict(sched_kw)).num_steps
    except IndexError:
        # uniform timesteps range(0, T, T // steps) + 1 can reach T (as in the reference, e.g. 3 of 1000)
        n = dict(sched_kw).get("num_timesteps", 1000)
        raise ValueError(f"{steps} steps do not fit the {flavor} DDIM schedule (a timestep would pass {n - 1}); "
                         f"use e.g. a divisor of {n}") from None


def _number(name: str, value, *, integer: bool = False, minimum=None, maximum=None):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if integer:
        if v != int(v) or isinstance(value, bool):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        v = int(v)
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value!r}")
    return v


def _check_tar_levels(tar, info: ModelInfo) -> None:
    if tar is None:
        return
    bad = [lv for lv, _, _ in tar.levels if lv >= info.unet_levels]
    if bad:
        raise ValueError(f"TAR level(s) {bad} do not exist in this UNet (levels 0..{info.unet_levels - 1})")


def _check_states(states, frames: int) -> list[str]:
    states = [str(s).strip() for s in states]
    if any(not s for s in states):
        raise ValueError("synopsis has an empty visual state")
    if len(states) < 2:
        raise ValueError(f"a synopsis needs at least 2 visual states, got {len(states)}")
    if len(states) > frames:
        raise ValueError(f"a synopsis of {len(states)} states needs at least {len(states)} frames, got {frames}")
    return states


def _resolve_synopsis_arg(synopsis, prompt: str, frames: int):
    """User synopsis (list or file) -> (states, source dict); None -> (None, None)."""
    if synopsis is None:
        return None, None
    from vstar_jax.vstar.synopsis import user_synopsis  # noqa: PLC0415

    if isinstance(synopsis, (str, os.PathLike)):
        states = user_synopsis(synopsis, prompt)
        source = {"kind": "file", "path": os.path.abspath(os.fspath(synopsis))}
    else:
        if isinstance(synopsis, Mapping) or not isinstance(synopsis, Sequence):
            raise ValueError(f"synopsis must be a list of states or a file path, got {type(synopsis).__name__}")
        states = list(synopsis)
        source = {"kind": "user"}
    return _check_states(states, frames), source


def _check_output(out, gif: bool, attention_png) -> dict:
    from vstar_jax.io.video import check_writable, sidecar_path  # noqa: PLC0415

    paths = {"video": None, "gif": None, "sidecar": None, "attention_png": None, "attention_npz": None}
    if out is not None:
        p = pathlib.Path(out)
        if p.suffix.lower() not in VIDEO_SUFFIXES:
            raise ValueError(f"output {p} must end in one of {', '.join(VIDEO_SUFFIXES)}")
        paths["video"] = check_writable(p)
        paths["sidecar"] = check_writable(sidecar_path(paths["video"]))
        if gif and p.suffix.lower() != ".gif":
            paths["gif"] = check_writable(paths["video"].with_suffix(".gif"))
    elif gif:
        raise ValueError("gif=True needs an output path (out=...)")
    if attention_png is not None:
        a = pathlib.Path(attention_png)
        if a.suffix.lower() != ".png":
            raise ValueError(f"attention plot path {a} must end in .png")
        paths["attention_png"] = check_writable(a)
        paths["attention_npz"] = check_writable(paths["attention_png"].with_suffix(".npz"))
    return paths


# ------------------------------------------------------------------------------ sampling
_PROGRESS: dict = {"bar": None}


def _progress_tick(step, _probe) -> None:
    bar = _PROGRESS.get("bar")
    if bar is not None:
        bar.update(1)


def _attention_rows(inter, batch: int):
    """Sown temporal weights (2b*h*w, f, f) per layer -> cond rows averaged over pixels (b, f, f)."""
    def reduce(w):
        f = w.shape[-1]
        return w.reshape(2 * batch, -1, f, f).mean(axis=1)[batch:]

    return jax.tree_util.tree_map(reduce, inter)


@functools.partial(jax.jit, static_argnames=("unet", "plan"))
def _sample_jit(unet, params, cond, uncond, key, fps, cfg_scale, *, plan: SamplePlan):
    """The whole guided DDIM loop (one ``lax.scan``) from the seed's x_T; returns SampleOutput."""
    from vstar_jax.diffusion.sampler import ddim_sample  # noqa: PLC0415

    k_x, k_steps = jax.random.split(key)
    x_T = jax.random.normal(k_x, plan.latent_shape, jnp.float32)
    batch = plan.latent_shape[0]
    if plan.latent_sharding is not None:
        x_T = jax.lax.with_sharding_constraint(x_T, plan.latent_sharding)

    schedule = plan.schedule()

    def model_fn(x, t, ctx, i):
        if plan.latent_sharding is not None:  # keep the CFG rows split over frames on the mesh
            x = jax.lax.with_sharding_constraint(x, plan.latent_sharding)
        kw = dict(fps=fps, step_index=i, tar=plan.tar, capture_attention=plan.capture)
        if plan.capture:
            raw, state = unet.apply({"params": params}, x, t, ctx, mutable=["intermediates"], **kw)
            aux = _attention_rows(state["intermediates"], batch)
        else:
            raw, aux = unet.apply({"params": params}, x, t, ctx, **kw), None
        eps = to_eps(raw, x, t, schedule.alphas_cumprod, plan.prediction)
        # always in the graph (progress on or off compiles the same program)
        jax.debug.callback(_progress_tick, i, eps.reshape(-1)[0])
        return eps, aux

    if plan.long_video is not None:  # windows of the long latent (vstar_jax.longvideo)
        return plan.long_video.sample(model_fn, x_T, cond, uncond, schedule, cfg_scale=cfg_scale,
                                      key=k_steps, capture=True, jit=False)
    return ddim_sample(model_fn, x_T, cond, uncond, schedule, cfg_scale=cfg_scale, key=k_steps,
                       capture=True, jit=False)


_COMPILED: dict = {}


def _compiled_sampler(unet, plan: SamplePlan, args: tuple, progress: bool):
    """The AOT-compiled :func:`_sample_jit` for these static settings and argument shapes
    (cached; compiling is announced so the progress bar counts steps only)."""
    leaves, treedef = jax.tree_util.tree_flatten(args)
    key = (unet, plan, treedef, tuple((tuple(x.shape), str(x.dtype)) for x in leaves))
    if key not in _COMPILED:
        _log(progress, "compiling the sampling loop (once per model, shape and setting)")
        t0 = time.time()
        lowered = _sample_jit.lower(unet, *args, plan=plan)
        if len(_COMPILED) >= 8:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = lowered.compile()
        _log(progress, f"compiled in {time.time() - t0:.1f}s")
    return _COMPILED[key]


@functools.partial(jax.jit, static_argnames=("vae", "frame_batch"))
def _decode_jit(vae, params, latents, scale_factor, *, frame_batch: int):
    from vstar_jax.models.vae import decode_video  # noqa: PLC0415

    return decode_video(vae, params, latents / scale_factor, frame_batch)


def decode(pipe: Pipeline, latents, frame_batch: int = 16) -> np.ndarray:
    """Latents (b, c, f, h, w) -> video (b, 3, f, H, W) float32 in about [-1, 1]."""
    if pipe.pixel_space:
        return np.asarray(latents, np.float32)
    sf = jnp.float32(pipe.diffusion["scale_factor"])
    return np.asarray(_decode_jit(pipe.vae, pipe.params["vae"], jnp.asarray(latents), sf,
                                  frame_batch=int(frame_batch)), np.float32)


# ------------------------------------------------------------------------------- results
@dataclasses.dataclass
class GenerationResult:
    video: np.ndarray  # (F, H, W, 3) uint8
    sidecar: dict
    path: Optional[str]  # the video file, or None when nothing was written
    latents: Optional[np.ndarray] = None  # (1, c, F, h, w) float32 final x_0
    attention: Optional[dict] = None  # {layer: (steps, F, F)} when recorded
    sidecar_path: Optional[str] = None
    gif_path: Optional[str] = None
    attention_png: Optional[str] = None


def frames_digest(video: np.ndarray) -> str:
    """sha256 of the uint8 frames (shape and bytes)."""
    v = np.ascontiguousarray(video)
    h = hashlib.sha256(repr((v.shape, str(v.dtype))).encode())
    h.update(v.tobytes())
    return h.hexdigest()


def _versions() -> dict:
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


def _layer_label(path: str) -> str:
    """Flax path of a sown map -> a short label: ``down_0_0_temporal/block_0/attn1/weights`` ->
    ``down_0_0.attn1``; ``init_attn/block_0/attn2/weights`` -> ``init_attn.attn2``."""
    parts = [p for p in path.split("/") if p != "weights"]
    if parts and parts[0].endswith("_temporal"):
        parts[0] = parts[0][: -len("_temporal")]
    parts = [p for p in parts if p != "block_0"]
    return ".".join(parts)


def _unet_order(label: str):
    """Sort key: init_attn, down blocks, mid, up blocks (deepest first), as the UNet runs them."""
    head, _, tail = label.partition(".")
    m = re.fullmatch(r"(down|up)_(\d+)_(\d+)", head)
    if head == "init_attn":
        key = (0, 0, 0)
    elif m and m.group(1) == "down":
        key = (1, int(m.group(2)), int(m.group(3)))
    elif head == "mid":
        key = (2, 0, 0)
    elif m:
        key = (3, -int(m.group(2)), int(m.group(3)))
    else:
        key = (4, 0, 0)
    return key + (tail,)


# ------------------------------------------------------------------------------ the job
def generate_video(prompt: str, *, checkpoint=None, pipeline: Optional[Pipeline] = None,
                   frames: Optional[int] = None, steps: Optional[int] = None, cfg: Optional[float] = None,
                   eta: Optional[float] = None, seed: int = 0, fps: Optional[float] = None,
                   save_fps: float = SAVE_FPS, tar=None, synopsis=None, vsp_mode: str = "linear",
                   llm: Optional[Mapping] = None, height: Optional[int] = None, width: Optional[int] = None,
                   out=None, gif: bool = False, attention_png=None, record_attention: bool = False,
                   frame_batch: int = 16, progress: bool = True, synopsis_source: Optional[Mapping] = None,
                   mesh=None, long_video=None, _sampler: Optional[Callable] = None) -> GenerationResult:
    """Generate one video; see the module docstring.

    ``frames``/``steps``/``cfg``/``eta``/``fps`` None: the model's defaults (16 / 25 / 12.0 /
    1.0 / 28 for VideoCrafter2 as VSTAR runs it; 50 steps, cfg 9, eta 0 for ModelScope). ``tar``: None, a preset name, a spec string or dict, or a
    TARConfig. ``synopsis``: None, a list of >= 2 state prompts, or a file path; ``llm``:
    ``{"url", "model", "api_key", "num_states", "timeout"}`` (HTTP) or ``{"local_path",
    "num_states"}`` asks a language model for the synopsis (after every other check).
    ``out``: the video path (.mp4/.gif/...; None writes nothing); ``gif`` adds a GIF beside
    it; ``attention_png`` records the temporal attention maps (``result.attention``:
    {layer: (steps, F, F)}, cond rows, averaged over heads and pixels) and plots them
    (plus a .npz of the maps); ``record_attention`` records without plotting.
    ``synopsis_source`` is recorded in the sidecar as where a given synopsis came from.
    ``mesh``: a ``jax.sharding.Mesh`` (or ``{"frames": n, "model": m}``) to spread the frames
    over devices (``vstar_jax.parallel.sharding``); results then match the single-device
    run to float tolerance, not bit for bit.
    ``long_video``: None, ``{"method": "genl", "window": F, "stride": S}`` (Gen-L-Video) or
    ``{"method": "blend", "window": F, "overlap": O}`` (StreamingT2V), or "genl:16:8": the UNet
    sees F-frame windows of the ``frames``-frame latent (``vstar_jax.longvideo``).
    """
    t_start = time.time()
    # ---- validation: cheap checks only, each a one-line ValueError --------------------------
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("empty prompt: give a text description of the video")
    prompt = prompt.strip()
    from vstar_jax.vstar.tar import TARConfig, parse_tar  # noqa: PLC0415
    from vstar_jax.vstar.vsp import MODES  # noqa: PLC0415

    if frames is not None:
        frames = _number("frames", frames, integer=True)
        if frames < 2:
            raise ValueError(f"frames must be >= 2, got {frames}")
    seed = _number("seed", seed, integer=True, minimum=0, maximum=2**32 - 1)
    tar_cfg = tar if isinstance(tar, TARConfig) else parse_tar(tar)
    from vstar_jax.longvideo.config import parse_long_video  # noqa: PLC0415

    long_cfg = parse_long_video(long_video)
    if long_cfg is not None and mesh is not None:
        raise ValueError("long_video cannot be combined with a device mesh yet")
    if long_cfg is not None and (attention_png is not None or record_attention):
        raise ValueError("attention maps are not recorded with long_video (the UNet sees windows)")
    if vsp_mode not in MODES:
        raise ValueError(f"unknown VSP mode {vsp_mode!r} (use one of {', '.join(MODES)})")
    if synopsis is not None and llm is not None:
        raise ValueError("give either a synopsis or an LLM to write one, not both")
    save_fps = _number("save_fps", save_fps, minimum=1e-3)
    frame_batch = _number("frame_batch", frame_batch, integer=True, minimum=1)
    info = _model_info(checkpoint, pipeline)
    d = info.diffusion
    frames = frames if frames is not None else int(d.get("default_frames", DEFAULTS["frames"]))
    if frames < 2:
        raise ValueError(f"frames must be >= 2, got {frames}")
    n_windows = long_cfg.check(frames) if long_cfg is not None else 1  # ValueError naming valid lengths
    unet_frames = long_cfg.window if long_cfg is not None else frames
    if d.get("max_frames") and unet_frames > int(d["max_frames"]):
        raise ValueError(f"this model takes at most {d['max_frames']} frames"
                         f"{' per window' if long_cfg is not None else ''}, got {unet_frames}")
    steps = _number("steps", steps if steps is not None else d.get("default_steps", DEFAULTS["steps"]),
                    integer=True, minimum=1, maximum=d["num_timesteps"])
    cfg = _number("cfg", cfg if cfg is not None else d.get("default_cfg", DEFAULTS["cfg"]))
    eta = _number("eta", eta if eta is not None else d.get("default_eta", DEFAULTS["eta"]), minimum=0.0)
    fps = _number("fps", fps if fps is not None else d.get("default_fps", DEFAULTS["fps"]))
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    fps = int(fps) if float(fps).is_integer() else fps
    _check_tar_levels(tar_cfg, info)
    lat_h, lat_w = info.latent_hw(height, width)
    sched_kw = _schedule_kwargs(d)
    ddim_steps = _check_schedule(d["flavor"], int(steps), float(eta), sched_kw)
    states, syn_source = _resolve_synopsis_arg(synopsis, prompt, frames)
    if states is not None and synopsis_source is not None:
        syn_source = dict(synopsis_source)
    latent_sharding = _latent_sharding(mesh, frames)
    paths = _check_output(out, gif, attention_png)  # creates the output folder: after the other checks
    if llm is not None:
        states, syn_source = _llm_synopsis(prompt, frames, dict(llm), progress)

    # ---- model -----------------------------------------------------------------------------
    if pipeline is None:
        _log(progress, f"loading {'the embedded demo model' if checkpoint is None else checkpoint}")
        pipeline = load_pipeline(checkpoint)
    pipe = pipeline
    shape = (1, info.latent_channels, frames, lat_h, lat_w)
    plan = SamplePlan(d["flavor"], int(steps), float(eta), sched_kw, shape, tar_cfg,
                      attention_png is not None or bool(record_attention), latent_sharding, long_cfg,
                      d["prediction"])

    _log(progress, "encoding the prompt" + (f" and {len(states)} synopsis states" if states else ""))
    uncond = pipe.encode([""])
    if states:
        from vstar_jax.vstar.vsp import per_frame_embeddings  # noqa: PLC0415

        cond = per_frame_embeddings(pipe.encode(states), frames, vsp_mode)  # (F, 77, C)
    else:
        cond = pipe.encode([prompt])  # (1, 77, C)

    # ---- sampling: one jit -----------------------------------------------------------------
    unet_params = pipe.params["unet"]
    if latent_sharding is not None:
        from vstar_jax.parallel.sharding import shard_params  # noqa: PLC0415

        unet_params = shard_params(unet_params, latent_sharding.mesh)
    args = (unet_params, jnp.asarray(cond), jnp.asarray(uncond), jax.random.key(seed),
            jnp.float32(fps), jnp.float32(cfg))
    if _sampler is not None:
        sampler = functools.partial(_sampler, pipe.unet, plan=plan)
    else:
        sampler = _compiled_sampler(pipe.unet, plan, args, progress)
    _log(progress, f"sampling {frames} frames at {lat_h}x{lat_w} latents, {steps} DDIM steps "
                   f"(cfg {cfg}, eta {eta}, seed {seed}{', TAR' if tar_cfg else ''}{', VSP' if states else ''}"
                   f"{f', {long_cfg.method} over {n_windows} windows of {long_cfg.window}' if long_cfg else ''})")
    t0 = time.time()
    bar = None
    if progress:
        from tqdm.auto import tqdm  # noqa: PLC0415

        bar = tqdm(total=int(ddim_steps) * n_windows, desc="denoising", unit="window" if n_windows > 1 else "step",
                   file=sys.stderr, leave=True)
    _PROGRESS["bar"] = bar
    try:
        res = sampler(*args)
        latents = np.asarray(jax.block_until_ready(res.latents), np.float32)
    finally:
        _PROGRESS["bar"] = None
        if bar is not None:
            bar.close()
    t_sample = time.time() - t0

    # ---- decoding ----------------------------------------------------------------------------
    from vstar_jax.io.video import video_to_uint8  # noqa: PLC0415

    _log(progress and not pipe.pixel_space, f"decoding {frames} frames (batches of {frame_batch})")
    t0 = time.time()
    if pipe.decoder is not None:
        video = np.asarray(pipe.decoder(latents), np.uint8)[0]
    else:
        video = video_to_uint8(decode(pipe, latents, frame_batch))[0]
    t_decode = time.time() - t0

    attention = None
    if plan.capture:
        from vstar_jax.vstar.analysis import flatten_maps  # noqa: PLC0415

        maps = {_layer_label(k): np.asarray(v, np.float32)[:, 0]
                for k, v in flatten_maps(jax.device_get(res.aux)).items()}
        attention = {k: maps[k] for k in sorted(maps, key=_unet_order)}

    sidecar = {
        "format": SIDECAR_FORMAT,
        "prompt": prompt,
        "checkpoint": pipe.source,
        "frames": int(frames),
        "steps": int(steps),
        "ddim_steps": int(ddim_steps),
        "cfg": float(cfg),
        "eta": float(eta),
        "seed": int(seed),
        "fps": fps,
        "save_fps": float(save_fps),
        "height": int(lat_h * info.vae_factor),
        "width": int(lat_w * info.vae_factor),
        "video_size": [int(video.shape[1]), int(video.shape[2])],
        "latent_shape": list(shape),
        "tar": tar_cfg.to_dict() if tar_cfg is not None else None,
        "tar_spec": tar if isinstance(tar, (str, type(None))) else None,
        "synopsis": states,
        "synopsis_source": syn_source,
        "vsp_mode": vsp_mode,
        "attention": plan.capture,
        "frame_batch": int(frame_batch),
        "schedule": {"flavor": d["flavor"], **dict(sched_kw)},
        "prediction": d["prediction"],
        "scale_factor": d["scale_factor"],
        "rng": {"impl": str(jax.config.jax_default_prng_impl),
                "rule": "key=jax.random.key(seed); k_x,k_steps=split(key); x_T=normal(k_x); "
                        "noise_i=normal(split(k_steps,N)[i])"},
        "frames_sha256": frames_digest(video),
        "mesh": dict(latent_sharding.mesh.shape) if latent_sharding is not None else None,
        "long_video": long_cfg.to_dict() if long_cfg is not None else None,
        "outputs": {k: (str(v) if v is not None else None) for k, v in paths.items()},
        "versions": _versions(),
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "timing_s": {"sample": round(t_sample, 3), "decode": round(t_decode, 3),
                     "total": round(time.time() - t_start, 3)},
    }

    result = GenerationResult(video, sidecar, None, latents, attention)
    _write_outputs(result, paths, save_fps, progress)
    return result


def _latent_sharding(mesh, frames: int):
    """The frame-axis sharding of the (2b, c, f, h, w) CFG latents on ``mesh``; checks divisibility."""
    if mesh is None:
        return None
    from vstar_jax.parallel.sharding import check_divisible, make_mesh, named  # noqa: PLC0415

    if isinstance(mesh, Mapping):
        mesh = make_mesh(mesh)
    sharding = named(mesh, (None, None, "frames", None, None))
    check_divisible((1, 1, frames, 1, 1), sharding, "frames")
    return sharding


def _llm_synopsis(prompt: str, frames: int, llm: dict, progress: bool):
    from vstar_jax.vstar import synopsis as syn  # noqa: PLC0415

    num = _number("num_states", llm.get("num_states") or min(5, frames), integer=True, minimum=2)
    if num > frames:
        raise ValueError(f"asked the LLM for {num} states but there are only {frames} frames")
    if llm.get("local_path"):
        _log(progress, f"asking the local LM {llm['local_path']} for {num} visual states")
        states = syn.local_lm_synopsis(prompt, num, model_path=llm["local_path"])
        source = {"kind": "local", "path": os.path.abspath(str(llm["local_path"])), "num_states": num}
    else:
        url = llm.get("url") or os.environ.get(syn.ENV_URL)
        model = llm.get("model") or os.environ.get(syn.ENV_MODEL)
        _log(progress, f"asking the LLM at {url} for {num} visual states")
        states = syn.llm_synopsis(prompt, num, url=llm.get("url"), model=llm.get("model"),
                                  api_key=llm.get("api_key"), timeout=float(llm.get("timeout", 60.0)))
        source = {"kind": "llm", "url": url, "model": model, "num_states": num}  # never the key
    return _check_states(states, frames), source


def _write_outputs(result: GenerationResult, paths: dict, save_fps: float, progress: bool) -> None:
    from vstar_jax.io.video import write_gif, write_sidecar, write_video  # noqa: PLC0415

    if result.attention is not None and paths["attention_png"] is not None:
        from vstar_jax.vstar.analysis import plot_attention_grid  # noqa: PLC0415

        n_layers = len(result.attention)
        plot_attention_grid(result.attention, paths["attention_png"], cell_inches=1.8 if n_layers <= 8 else 1.2)
        np.savez(paths["attention_npz"], **result.attention)
        result.attention_png = str(paths["attention_png"])
        _log(progress, f"wrote {paths['attention_png']} ({n_layers} layers)")
    if paths["video"] is None:
        return
    with warnings.catch_warnings():  # ffmpeg runs as a subprocess; JAX warns about fork()
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
        write_video(paths["video"], result.video, fps=save_fps)
    result.path = str(paths["video"])
    if paths["gif"] is not None:
        write_gif(paths["gif"], result.video, fps=save_fps)
        result.gif_path = str(paths["gif"])
    result.sidecar_path = str(write_sidecar(paths["video"], result.sidecar))
    _log(progress, f"wrote {result.path}" + (f", {result.gif_path}" if result.gif_path else "")
         + f" and {result.sidecar_path}")


# --------------------------------------------------------------------------- regenerate
SIDECAR_ARGS = ("frames", "steps", "cfg", "eta", "seed", "fps", "save_fps", "synopsis", "vsp_mode",
                "frame_batch", "long_video")


def load_sidecar(path: str | os.PathLike) -> dict:
    """Read a generation sidecar (the .json, or the video path beside it)."""
    p = pathlib.Path(path)
    if p.suffix.lower() != ".json":
        p = p.with_suffix(".json")
    if not p.is_file():
        raise ValueError(f"sidecar not found: {p}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"sidecar {p} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise ValueError(f"{p} is not a vstar-jax generation sidecar (format {SIDECAR_FORMAT})")
    return data


def sidecar_kwargs(sidecar: Mapping) -> dict:
    """generate_video keyword arguments that reproduce a sidecar's video."""
    kw = {k: sidecar[k] for k in SIDECAR_ARGS if k in sidecar}
    kw["tar"] = sidecar.get("tar")
    kw["height"], kw["width"] = sidecar.get("height"), sidecar.get("width")
    ck = sidecar.get("checkpoint")
    kw["checkpoint"] = None if ck in (None, DEMO_SOURCE) else ck
    return kw


def regenerate(sidecar_path: str | os.PathLike, *, out=None, checkpoint=None, pipeline=None,
               gif: bool = False, attention_png=None, progress: bool = True,
               verify: bool = True) -> GenerationResult:
    """Reproduce a video from its sidecar (its synopsis is reused, no LLM is asked).

    ``checkpoint`` overrides the recorded path. With ``verify``, a frame hash different
    from the recorded one raises ValueError (another backend or version may differ).
    """
    sc = load_sidecar(sidecar_path)
    kw = sidecar_kwargs(sc)
    if checkpoint is not None:
        kw["checkpoint"] = checkpoint
    # a run that recorded attention is recomputed the same way (the same compiled graph)
    res = generate_video(sc["prompt"], pipeline=pipeline, out=out, gif=gif, attention_png=attention_png,
                         record_attention=bool(sc.get("attention")), progress=progress,
                         synopsis_source=sc.get("synopsis_source"), **kw)
    if verify and sc.get("frames_sha256") and res.sidecar["frames_sha256"] != sc["frames_sha256"]:
        raise ValueError(f"regenerated frames differ from {sidecar_path} (recorded on "
                         f"{sc.get('backend')}/jax {sc.get('versions', {}).get('jax')}, now "
                         f"{res.sidecar['backend']}/jax {res.sidecar['versions']['jax']})")
    return res


# ------------------------------------------------------------------------------- naming
def default_output(prompt: str, seed: int, directory: str = "outputs") -> str:
    """``outputs/<slug>-<seed>.mp4``."""
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:48].strip("-") or "video"
    return os.path.join(directory, f"{slug}-{seed}.mp4")
