"""The model side of generation: the modules and params of a checkpoint, what validation needs
to know about it (:class:`ModelInfo`, read without loading params), and the one-model cache.

``load_pipeline(None)`` is the embedded demo model (the built-in registered in
:mod:`vstar_jax.generation.builtin`); ``load_pipeline(dir)`` a converted checkpoint (cached per path
and config mtime, one model in memory at a time, in the process's :class:`~vstar_jax.runtime.Runtime`).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import ml_collections
import numpy as np

from vstar_jax.diffusion.parameterization import check_prediction
from vstar_jax.errors import VstarError
from vstar_jax.generation import builtin
from vstar_jax.generation.builtin import DEMO_SOURCE  # noqa: F401  (re-exported: the demo model's source)
from vstar_jax.io.checkpoint import load_checkpoint, read_config
from vstar_jax.models.clip_vision import CLIPVisionTransformer
from vstar_jax.models.streaming import (StreamingMemory, apm_settings, build_unet, cam_settings, has_streaming_modules,
                                        memory_inputs)
from vstar_jax.models.text import TextTransformer, encode_prompts
from vstar_jax.models.tokenizer import get_tokenizer
from vstar_jax.models.unet3d import unet_num_levels
from vstar_jax.models.unet_config import UNetConfig
from vstar_jax.models.vae import AutoencoderKL
from vstar_jax.runtime import runtime
from vstar_jax.trees import plain
from vstar_jax.validate import number

DEFAULTS = {"frames": 16, "steps": 25, "cfg": 12.0, "eta": 1.0, "fps": 28}  # VSTAR on VideoCrafter2
FLAVOR_DEFAULTS = {"diffusers": {"steps": 50, "cfg": 9.0, "eta": 0.0}}  # ModelScope's pipeline defaults
MAX_PIXELS = 1_000_000  # a video side in pixels (beyond any screen; the memory check refuses far less)


def _frozen(cfg):
    if isinstance(cfg, ml_collections.FrozenConfigDict):
        return cfg
    if isinstance(cfg, ml_collections.ConfigDict):
        return ml_collections.FrozenConfigDict(cfg)
    return ml_collections.FrozenConfigDict(dict(cfg))


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
    for key in ("steps_offset", "set_alpha_to_one", "timestep_spacing", "beta_schedule", "max_frames"):
        if key in d:
            out[key] = d[key]
    for key in ("steps", "cfg", "eta", "sdedit_strength"):  # model-specific sampling defaults (demo model, ModelScope)
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


# what the UNet does when its config lacks the setting: UNetConfig's defaults (one place)
UNET_SETTING_DEFAULTS = {f.name: f.default for f in dataclasses.fields(UNetConfig)
                         if f.name in ("attention_backend", "dtype")}


def _unet_module(unet_config: Mapping):
    """The UNet module of a (plain dict) UNet config (UNet3D, or StreamingUNet with CAM / APM): the one
    place the pipeline builds it."""
    return build_unet(_frozen(unet_config))


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
        config = plain(config)
        missing = [k for k in ("unet", "text") if k not in config or k not in params]
        if missing:
            raise VstarError(f"{source}: checkpoint lacks component(s) {missing} needed to generate")
        ucfg, tcfg = _frozen(config["unet"]), _frozen(config["text"])
        if int(tcfg.width) != int(ucfg.context_dim):
            raise VstarError(f"{source}: text width {tcfg.width} != UNet context_dim {ucfg.context_dim}")
        vae = None
        if config.get("space") == "patch" and decoder is None:
            raise VstarError(f"{source}: a 'patch' latent space needs the model's decoder")
        if not _is_pixel(config):
            if "vae" not in params:
                raise VstarError(f"{source}: checkpoint has no 'vae' params (convert with --components unet,vae,text)")
            vae = AutoencoderKL(_frozen(config["vae"]))
        tok = get_tokenizer(int(tcfg.get("pad_token_id", 0) or 0), int(tcfg.get("context_length", 77)))
        # once, not at every call; arrays already placed (restored onto a mesh) stay where they are
        params = jax.tree_util.tree_map(lambda a: a if isinstance(a, jax.Array) else jax.device_put(a), dict(params))
        return cls(_unet_module(config["unet"]), TextTransformer(tcfg), tok, vae, params, config, source, decoder)

    @classmethod
    def from_checkpoint(cls, ckpt_dir: str | os.PathLike, unet_sharding=None) -> "Pipeline":
        """Load a converted checkpoint directory (``vstar_jax.io.checkpoint`` layout). ``unet_sharding``:
        ``(path, shape) -> Sharding`` (``vstar_jax.parallel.sharding.params_sharding_rule(mesh)``): the
        UNet's arrays are restored straight into their places on a mesh, never whole on one host."""
        path = os.path.abspath(os.fspath(ckpt_dir))
        config = read_config(path)
        comps = [c for c in ("unet", "text", "vae", "image_encoder") if c in config.get("components", [])]
        if _is_pixel(config):
            comps = [c for c in comps if c != "vae"]
        rule = None
        if unet_sharding is not None:
            rule = lambda p, shape: unet_sharding(p, shape) if p and p[0] == "unet" else None  # noqa: E731
        params, config = load_checkpoint(path, rule, components=comps)
        return cls.from_params(params, config, path)

    def with_unet_settings(self, **settings) -> "Pipeline":
        """This pipeline with its UNet config's ``settings`` replaced (``attention_backend="auto"``,
        ``dtype="bfloat16"``; a value None keeps the checkpoint's). The params are shared; only the
        UNet module is rebuilt (cheap), so the checkpoint's cached pipeline is untouched."""
        ucfg = self.config["unet"]
        settings = {k: v for k, v in settings.items()
                    if v is not None and ucfg.get(k, UNET_SETTING_DEFAULTS.get(k)) != v}
        if not settings:
            return self
        config = {**self.config, "unet": {**ucfg, **settings}}
        return dataclasses.replace(self, unet=_unet_module(config["unet"]), config=config)

    # -- shapes -----------------------------------------------------------------------------
    @property
    def diffusion(self) -> dict:
        return diffusion_settings(self.config)

    @property
    def pixel_space(self) -> bool:
        return self.vae is None

    def describe(self) -> "ModelInfo":
        return ModelInfo.from_config(self.config, self.source)

    def streaming_memory(self):
        """StreamingT2V's :class:`~vstar_jax.models.streaming.StreamingMemory` for this model (what its
        CAM and APM read inside the sampling loop). Raises VstarError when a part it needs is absent."""
        info = self.describe()
        if info.streaming_missing or info.streaming_unmet:
            raise VstarError(f"{self.source}: long_video streaming cannot run: "
                             f"{'; '.join(info.streaming_missing + info.streaming_unmet)}")
        pixels, enc = memory_inputs(self.config["unet"])
        vision = None
        if enc == "openclip":
            if "image_encoder" not in self.params:
                raise VstarError(f"{self.source}: no 'image_encoder' params (APM's OpenCLIP image tower)")

            vision = CLIPVisionTransformer(_frozen(self.config["image_encoder"]))
        memory = StreamingMemory(pixels, enc, None, vision, float(self.diffusion["scale_factor"]))
        return dataclasses.replace(memory, vae=self.vae) if memory.decodes else memory

    # -- text -------------------------------------------------------------------------------
    def encode(self, prompts: Sequence[str]) -> np.ndarray:
        """Text context (n, 77, C) float32 of prompts ("" is the unconditional embedding)."""
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
    streaming_missing: tuple = ("CAM (unet.cam)", "APM (unet.apm)")  # StreamingT2V modules it lacks
    cam_frames: int = 0  # CAM's conditioning frames (0: no CAM)
    streaming_unmet: tuple = ()  # what its CAM / APM need besides the UNet and this checkpoint lacks
    attention_backend: str = UNET_SETTING_DEFAULTS["attention_backend"]  # the UNet config's (the legacy default)
    unet_config: Optional[UNetConfig] = None  # its down / up geometry (UNetConfig.latent_fits); None: the usual

    @classmethod
    def from_config(cls, config: Mapping, source: str) -> "ModelInfo":
        config = plain(config)
        if "unet" not in config:
            raise VstarError(f"{source}: checkpoint has no 'unet' component")
        vae_factor = _pixel_factor(config)

        cam, apm = cam_settings(config["unet"]), apm_settings(config["unet"])
        return cls(source, diffusion_settings(config), unet_num_levels(config["unet"]), vae_factor,
                   int(config["unet"]["in_channels"]), tuple(has_streaming_modules(config["unet"])),
                   int(cam["frames"]) if cam else 0, _streaming_unmet(config, vae_factor),
                   str(config["unet"].get("attention_backend", UNET_SETTING_DEFAULTS["attention_backend"])),
                   UNetConfig.from_config(config["unet"], check=False)
                   if config["unet"].get("upsample_crop") else None)

    def latent_hw(self, height: Optional[int], width: Optional[int]) -> tuple[int, int]:
        """Latent (h, w) of a video size; None = the checkpoint's default. Raises VstarError."""

        dh, dw = self.diffusion["latent_size"]
        unet_factor = 2 ** (self.unet_levels - 1)
        out = []
        for name, px, default in (("height", height, dh), ("width", width, dw)):
            if px is None:
                lat = default
            else:
                px = number(name, px, integer=True, minimum=1, maximum=MAX_PIXELS)
                if px % self.vae_factor:
                    raise VstarError(f"{name} {px} is not a multiple of the VAE factor {self.vae_factor}")
                lat = int(px) // self.vae_factor
            geometry = self.unet_config
            if geometry is not None and geometry.upsample_crop:  # MS-Vid2Vid-XL: its own down / up sizes
                if not geometry.latent_fits(lat, 0 if name == "height" else 1):
                    fit = [n for n in range(max(1, lat - 16), lat + 17)
                           if geometry.latent_fits(n, 0 if name == "height" else 1)]
                    raise VstarError(f"{name} {lat * self.vae_factor} gives latent size {lat}, which this UNet's "
                                     f"downsampling (padding {list(geometry.downsample_padding)}) and cropped "
                                     f"upsampling cannot take back to itself; latent sizes near it that fit: "
                                     f"{fit[:6] or 'none'}")
            elif lat % unet_factor:
                raise VstarError(f"{name} {lat * self.vae_factor} gives latent size {lat}, which the UNet "
                                 f"({self.unet_levels} levels) needs divisible by {unet_factor}; "
                                 f"use a multiple of {unet_factor * self.vae_factor}")
            out.append(int(lat))
        return out[0], out[1]


def _streaming_unmet(config: Mapping, vae_factor: int) -> tuple:
    """What a StreamingT2V UNet's CAM / APM read that the checkpoint does not have (one phrase each)."""
    cam, apm = cam_settings(config["unet"]), apm_settings(config["unet"])
    if not cam and not apm:
        return ()
    pixels, enc = memory_inputs(config["unet"])
    out = []
    if (pixels or enc == "openclip") and _is_pixel(config):
        out.append("no VAE (its CAM / APM read decoded frames)")
    if enc == "openclip" and "image_encoder" not in config:
        out.append("no OpenCLIP image encoder for APM (component 'image_encoder': "
                   "vstar_jax.checkpoints_convert.streamingt2v takes it from the checkpoint's image_encoder.* "
                   "or --openclip FILE)")
    if pixels and not _is_pixel(config):
        cam_factor = 2 ** (len(cam["embed_channels"]) - 1)
        if cam_factor != vae_factor:
            out.append(f"its CAM frame encoder downsamples by {cam_factor} but the VAE by {vae_factor}")
    return tuple(out)


# ---------------------------------------------------------------- checkpoint resolution
def load_pipeline(checkpoint: Optional[str | os.PathLike] = None) -> Pipeline:
    """The pipeline of a checkpoint directory (cached per path and config mtime), or of a built-in model
    (:func:`vstar_jax.generation.builtin.named`: None is the embedded demo model, ``demo_vc`` its
    trained-length sibling)."""
    name = builtin.named(checkpoint)
    if name is not None:
        return _builtin_pipeline(name)
    path = os.path.abspath(os.fspath(checkpoint))
    cfg = os.path.join(path, "config.json")
    key = (path, os.path.getmtime(cfg) if os.path.exists(cfg) else None)
    cache = runtime().pipelines
    if key not in cache:
        for k in [k for k in cache if isinstance(k, tuple)]:
            del cache[k]  # keep at most one checkpoint in memory (built-ins are small and stay)
        cache[key] = Pipeline.from_checkpoint(path)
    return cache[key]


def _builtin_pipeline(name: str = builtin.DEFAULT) -> Pipeline:
    load = builtin.loader(name)
    if load is None:
        if name == builtin.DEFAULT:
            raise VstarError("no embedded default model is available: a checkpoint is required (--checkpoint DIR)")
        raise VstarError(f"no built-in model named {name!r} (built-ins: {', '.join(builtin.NAMES)}); "
                         "give a checkpoint directory")
    cache = runtime().pipelines
    key = builtin.source(name)
    if key not in cache:
        try:
            cache[key] = load()
        except (ValueError, FileNotFoundError, OSError) as e:
            what = "the embedded demo model" if name == builtin.DEFAULT else f"the built-in model {name!r}"
            raise VstarError(f"{what} cannot be loaded ({' '.join(str(e).split())}): "
                             "a checkpoint is required (--checkpoint DIR)") from None
    return cache[key]


def model_info(checkpoint, pipeline: Optional[Pipeline] = None) -> ModelInfo:
    """ModelInfo from a pipeline, a checkpoint's config.json (params not loaded), or the demo."""
    if pipeline is not None:
        return pipeline.describe()
    name = builtin.named(checkpoint)
    if name is not None:
        return _builtin_pipeline(name).describe()

    path = os.path.abspath(os.fspath(checkpoint))
    if not os.path.isdir(path):
        raise VstarError(f"checkpoint directory not found: {path}")
    try:
        return ModelInfo.from_config(read_config(path), path)
    except FileNotFoundError as e:
        raise VstarError(str(e)) from None
