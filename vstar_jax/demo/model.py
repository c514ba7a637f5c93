"""The embedded demo model: build, save/load (shipped in ``vstar_jax/assets/demo_model``), decode, sample.

The model (``configs/demo_tiny.py``) is the project's ``UNet3D`` and ``TextTransformer`` at a small
size with the real CLIP tokenizer, trained from scratch on the procedural world by
``launch/train_demo.py``. Its latent space is a fixed "patch" autoencoder: a video in [0, 1] maps to
``patchify(2 * video - 1)``, a lossless rearrangement of ``patch x patch`` tiles into channels.

Shipped files: ``config.json`` (model config + training record) and ``params.safetensors`` (float32,
flat keys ``unet/...`` and ``text/...``). The text encoder's token-embedding table keeps only the rows of
the ids the demo world's captions use (``text/token_embedding/embedding`` holds those rows, and
``text/token_embedding/ids`` their token ids); :func:`expand_embedding` rebuilds the full
(49408, width) table with zeros in every other row. Those rows never received a gradient in training,
so prompts within the world's vocabulary encode exactly as in training.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vstar_jax.demo import ASSET_DIR, DEMO_VC_DIR, world
from vstar_jax.demo.streaming import load_streaming, with_streaming
from vstar_jax.diffusion.parameterization import clip_eps  # noqa: F401  (re-exported: the demo's x0 clipping)
from vstar_jax.generation import builtin
from vstar_jax.generation.model import Pipeline, diffusion_settings
from vstar_jax.generation.request import schedule_kwargs
from vstar_jax.generation.sampling import SamplePlan, sample_jit
from vstar_jax.io.atomic import atomic_path, write_text
from vstar_jax.models.streaming import build_unet, merge_params
from vstar_jax.models.text import TextTransformer
from vstar_jax.models.tokenizer import get_tokenizer
from vstar_jax.longvideo.base import parse_strategy
from vstar_jax.tar_vsp.analysis import flatten_maps
from vstar_jax.tar_vsp.vsp import per_frame_embeddings
from vstar_jax.trees import flatten, json_default, unflatten

PARAMS_FILE = "params.safetensors"
CONFIG_FILE = "config.json"
EMBED_KEY = ("text", "token_embedding", "embedding")
IDS_KEY = "text/token_embedding/ids"


# ----------------------------------------------------------------------------- latent space

def patchify(video, patch: int) -> jax.Array:
    """Video (b, F, H, W, 3) in [0, 1] -> latent (b, 3 * patch**2, F, H / patch, W / patch) in [-1, 1]."""
    v = jnp.asarray(video, jnp.float32)
    if v.ndim != 5 or v.shape[-1] != 3:
        raise ValueError(f"video must be (b, F, H, W, 3), got shape {tuple(v.shape)}")
    b, f, h, w, _ = v.shape
    if h % patch or w % patch:
        raise ValueError(f"frame size {h}x{w} is not a multiple of patch {patch}")
    x = (2.0 * v - 1.0).reshape(b, f, h // patch, patch, w // patch, patch, 3)
    x = x.transpose(0, 3, 5, 6, 1, 2, 4)  # b, py, px, c, f, h', w'
    return x.reshape(b, patch * patch * 3, f, h // patch, w // patch)


def unpatchify(latents, patch: int) -> jax.Array:
    """Inverse of :func:`patchify`: (b, 3 * patch**2, F, h, w) -> video (b, F, h * patch, w * patch, 3)
    in [0, 1] (not clipped)."""
    z = jnp.asarray(latents, jnp.float32)
    if z.ndim != 5 or z.shape[1] != 3 * patch * patch:
        raise ValueError(f"latents must be (b, {3 * patch * patch}, F, h, w), got shape {tuple(z.shape)}")
    b, _, f, h, w = z.shape
    x = z.reshape(b, patch, patch, 3, f, h, w).transpose(0, 4, 5, 1, 6, 2, 3)
    return (x.reshape(b, f, h * patch, w * patch, 3) + 1.0) / 2.0


def decode_latents(latents, patch: int, display_scale: int = 1) -> np.ndarray:
    """Latents (b, C, F, h, w) or (C, F, h, w) -> uint8 video (b, F, H, W, 3) or (F, H, W, 3),
    upsampled ``display_scale`` times (nearest)."""
    z = jnp.asarray(latents)
    single = z.ndim == 4
    v = np.asarray(unpatchify(z[None] if single else z, patch))
    v = world.to_uint8(v)
    if display_scale > 1:
        v = v.repeat(display_scale, axis=2).repeat(display_scale, axis=3)
    return v[0] if single else v


# ----------------------------------------------------------------------------- modules

def build_modules(config):
    """(UNet3D, TextTransformer) modules of a demo config."""
    # frozen configs: the modules are hashable, so they can be static arguments of compiled samplers
    return build_unet(ml_collections.FrozenConfigDict(config.unet)), TextTransformer(ml_collections.FrozenConfigDict(config.text))


def latent_shape(config, frames: Optional[int] = None, batch: int = 1) -> tuple:
    p = config.patch
    return (batch, 3 * p * p, frames or config.frames, config.size // p, config.size // p)


def init_params(config, seed: int = 0) -> dict:
    """Random {'unet': ..., 'text': ...} params."""
    unet, text = build_modules(config)
    ku, kt = jax.random.split(jax.random.PRNGKey(seed))
    x = jnp.zeros(latent_shape(config, 2))
    ctx = jnp.zeros((1, config.text.context_length, config.unet.context_dim))
    pu = unet.init(ku, x, jnp.zeros((1,), jnp.int32), ctx)["params"]
    pt = text.init(kt, jnp.zeros((1, config.text.context_length), jnp.int32))["params"]
    return {"unet": pu, "text": pt}


def world_token_ids(tokenizer=None) -> np.ndarray:
    """Sorted token ids of every word the demo world's captions (and the caption parser) can use,
    plus the start, end and pad tokens."""
    tok = tokenizer or get_tokenizer()
    words = set(world.COLOR_NAMES) | set(world.SHAPES)
    for phrase in world.MOVE_PHRASES.values():
        words |= set(phrase.split())
    words |= {"a", "an", "grows", "shrinks", "turns", "into", "then", "and", ",", ".", "moves", "moving",
              "slides", "goes", "gets", "bigger", "smaller", "expands", "down", "becomes", "changes", "color",
              "to", "the", "left", "right", "up", "-"}
    ids = {tok.sot_token_id, tok.eot_token_id, tok.pad_token_id, 0}
    for w in sorted(words):
        ids.update(tok.encode(w))
    for seed in range(400):  # every template, as tokenized in context
        ids.update(tok.encode(world.sample_spec(seed)["caption"]))
    return np.array(sorted(ids), np.int32)


def compact_embedding(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Rows ``ids`` of a (vocab, width) table."""
    return np.asarray(table)[np.asarray(ids)]


def expand_embedding(rows: np.ndarray, ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """Inverse of :func:`compact_embedding`: a (vocab_size, width) table, zeros outside ``ids``."""
    ids = np.asarray(ids)
    if rows.shape[0] != ids.shape[0]:
        raise ValueError(f"{rows.shape[0]} embedding rows for {ids.shape[0]} ids")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"token ids outside [0, {vocab_size})")
    out = np.zeros((vocab_size, rows.shape[1]), rows.dtype)
    out[ids] = rows
    return out


# ----------------------------------------------------------------------------- save / load

def save_demo_model(out_dir, params: dict, config, record: Optional[dict] = None, dtype: str = "float32"
                    ) -> pathlib.Path:
    """Write the shipped form of ``params`` ({'unet', 'text'}) + config + training record. ``dtype``:
    the stored weights' type, float32 or float16 (half the bytes: demo_vc ships so, to keep the package
    within 30 MB; the loader turns them back into float32, so the model is the rounded weights)."""
    if dtype not in ("float32", "float16"):
        raise ValueError(f"demo model weights are stored as float32 or float16, not {dtype!r}")
    from safetensors.numpy import save_file

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    flat = {k: np.asarray(v) for k, v in flatten(jax.device_get(params)).items()}
    ids = world_token_ids()
    flat[EMBED_KEY] = compact_embedding(flat[EMBED_KEY], ids)
    tensors = {"/".join(k): np.ascontiguousarray(v, dtype) for k, v in flat.items()}
    tensors[IDS_KEY] = ids
    with atomic_path(out / PARAMS_FILE) as tmp:
        save_file(tensors, str(tmp))
        tmp.chmod(0o644)
    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    meta = {"config": cfg, "record": record or {}, "stored_dtype": dtype,
            "embedding": {"kept_ids": int(ids.size), "vocab_size": int(config.text.vocab_size),
                          "other_rows": "zero"}}
    write_text(out / CONFIG_FILE, json.dumps(meta, indent=1, default=json_default))
    return out


def _tuplify(d):
    """JSON lists back to tuples (ConfigDict fields like channel_mult are tuples)."""
    if isinstance(d, dict):
        return {k: _tuplify(v) for k, v in d.items()}
    if isinstance(d, list):
        return tuple(_tuplify(v) for v in d)
    return d


@dataclasses.dataclass
class DemoModel:
    """What a pipeline needs to run the demo model."""

    unet: Any
    unet_params: Any
    text: Any
    text_params: Any
    tokenizer: Any
    config: ml_collections.ConfigDict
    record: dict
    path: Optional[str] = None
    name: str = builtin.DEFAULT  # the built-in it is (its sidecars' source), or the default for a folder

    @property
    def frames(self) -> int:
        return int(self.config.frames)

    def latent_shape(self, frames: Optional[int] = None, batch: int = 1) -> tuple:
        return latent_shape(self.config, frames, batch)

    def decode(self, latents, display_scale: Optional[int] = None) -> np.ndarray:
        """Latents (b, C, F, h, w) or (C, F, h, w) -> uint8 video; upsampled by config.display_scale."""
        scale = self.config.get("display_scale", 1) if display_scale is None else display_scale
        return decode_latents(latents, self.config.patch, scale)

    def encode_prompts(self, prompts: Sequence[str] | str) -> jax.Array:
        """Context (n, 77, C) of prompts (``""`` is the unconditional prompt)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        tokens = jnp.asarray(self.tokenizer(prompts))
        return self.text.apply({"params": self.text_params}, tokens)


def asset_folder(path=None) -> tuple[pathlib.Path, Optional[str]]:
    """(folder, built-in name) of a demo model argument: None / ``demo`` the shipped default
    (``vstar_jax/assets/demo_model``), ``demo_vc`` (or ``builtin:demo_vc``) its trained-length sibling,
    anything else a folder (name None)."""
    name = builtin.named(path)
    if name is None:
        return pathlib.Path(path), None
    folders = {builtin.DEFAULT: ASSET_DIR, "demo_vc": DEMO_VC_DIR}
    if name not in folders:
        raise ValueError(f"no built-in demo model named {name!r} (built-ins: {', '.join(folders)})")
    return folders[name], name


def load_demo_model(path=None, streaming: bool = True) -> DemoModel:
    """Load a shipped demo model (None / ``demo``: ``vstar_jax/assets/demo_model``; ``demo_vc``) or one
    exported elsewhere (a folder).

    ``streaming``: also load StreamingT2V's CAM / APM (``streaming.safetensors`` next to the model, from
    ``launch/train_streaming.py``) when present: the UNet config gains ``cam`` / ``apm`` and the params
    their tensors; the base model's outputs are unchanged (the modules act only when fed). Weights stored
    in float16 (``save_demo_model(..., dtype="float16")``, demo_vc) load as float32."""
    from safetensors.numpy import load_file

    folder, name = asset_folder(path)
    pf, cf = folder / PARAMS_FILE, folder / CONFIG_FILE
    if not pf.exists() or not cf.exists():
        raise ValueError(f"no demo model at {folder} (needs {PARAMS_FILE} and {CONFIG_FILE})")
    meta = json.loads(cf.read_text())
    config = ml_collections.ConfigDict(_tuplify(meta["config"]))
    tensors = load_file(str(pf))
    ids = tensors.pop(IDS_KEY)
    tensors = {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in tensors.items()}
    flat = {tuple(k.split("/")): v for k, v in tensors.items()}
    flat[EMBED_KEY] = expand_embedding(flat[EMBED_KEY], ids, config.text.vocab_size)
    params = jax.tree_util.tree_map(jnp.asarray, unflatten(flat))
    extra = None
    if streaming:
        extra = load_streaming(folder)
    if extra is not None:
        config = with_streaming(config, extra[1])
        params["unet"] = merge_params(params["unet"], {k: jnp.asarray(v) for k, v in extra[0].items()})
    unet, text = build_modules(config)
    tok = get_tokenizer(int(config.text.get("pad_token_id", 0)), int(config.text.context_length))
    return DemoModel(unet, params["unet"], text, params["text"], tok, config, meta.get("record", {}),
                     str(folder), name or builtin.DEFAULT)


def pipeline_from_demo(model) -> Pipeline:
    """A :class:`~vstar_jax.generation.model.Pipeline` around a :class:`DemoModel` (its modules rebuilt
    with frozen, hashable configs; frames decoded by the model at its display scale)."""
    if isinstance(model, Pipeline):
        return model
    params = {"unet": model.unet_params, "text": model.text_params}
    return Pipeline.from_params(params, model.config, builtin.source(model.name),
                                decoder=lambda z: np.asarray(model.decode(z)))


def load_demo_pipeline(name: str = builtin.DEFAULT) -> Pipeline:
    """A shipped demo model as a generation pipeline: the loader of the built-ins ``demo`` and ``demo_vc``."""
    return pipeline_from_demo(load_demo_model(name))


builtin.register(builtin.DEFAULT, load_demo_pipeline)
builtin.register("demo_vc", lambda: load_demo_pipeline("demo_vc"))


# ----------------------------------------------------------------------------- sampling

def vsp_context(embeddings: jax.Array, frames: int, mode: str = "linear") -> jax.Array:
    """Per-frame context (frames, L, C) from K state embeddings (K, L, C): the project's VSP
    (``vstar_jax.tar_vsp.vsp.per_frame_embeddings``); one state is repeated over the frames."""
    if embeddings.shape[0] == 1:
        return jnp.broadcast_to(embeddings, (frames,) + tuple(embeddings.shape[1:]))
    return jnp.asarray(per_frame_embeddings(jnp.asarray(embeddings), frames, mode))


def sample(model: DemoModel, prompt: str, *, frames: Optional[int] = None, seed: int = 0, steps: int = 25,
           cfg: Optional[float] = None, eta: float = 1.0, tar=None, synopsis: Optional[Sequence[str]] = None,
           vsp_mode: str = "linear", batch: int = 1, clip_x0: Optional[bool] = None) -> np.ndarray:
    """Generate ``batch`` videos for one prompt: uint8 (batch, F, H, W, 3) at the model's pixel size
    (no display upsampling). ``synopsis``: per-state prompts for VSP; ``tar``: a TARConfig."""
    return sample_batch(model, [prompt] * batch, frames=frames, seed=seed, steps=steps, cfg=cfg, eta=eta, tar=tar,
                        synopses=[list(synopsis)] * batch if synopsis else None, vsp_mode=vsp_mode,
                        clip_x0=clip_x0)


def sample_batch(model: DemoModel, prompts: Sequence[str], *, frames: Optional[int] = None, seed: int = 0,
                 steps: int = 25, cfg: Optional[float] = None, eta: float = 1.0, tar=None,
                 synopses: Optional[Sequence[Sequence[str]]] = None, vsp_mode: str = "linear",
                 clip_x0: Optional[bool] = None, strategy=None, capture: bool = False):
    """One video per prompt, in one batch: uint8 (len(prompts), F, H, W, 3). ``synopses``: one list of
    state prompts per prompt (all of the same length), fed per frame (VSP). ``clip_x0``: clip the
    predicted x0 to [-1, 1] at every step (default: the config's ``diffusion.clip_x0``). ``strategy``: a
    long-video method (``"genl:8:4"``, :func:`vstar_jax.longvideo.base.parse_strategy`; default one pass).
    ``capture``: also return the temporal attention maps, ``(videos, maps)`` with maps ``{layer: (steps,
    rows, F, F)}`` (:func:`vstar_jax.tar_vsp.analysis.flatten_maps` of the sampler's record; one pass only).
    A method that fixes its step count (FIFO: window x partitions) runs that many steps, not ``steps``."""
    if not prompts:
        raise ValueError("sample_batch needs at least one prompt")
    frames = frames or model.frames
    batch = len(prompts)
    d = model.config.diffusion
    cfg = float(d.cfg if cfg is None else cfg)
    uncond = model.encode_prompts([""])
    if synopses:
        if len(synopses) != batch or len({len(s) for s in synopses}) != 1:
            raise ValueError("synopses must give one list per prompt, all of the same length")
        k = len(synopses[0])
        emb = model.encode_prompts([p for syn in synopses for p in syn])
        emb = emb.reshape(batch, k, *emb.shape[1:])
        cond = jnp.stack([vsp_context(e, frames, vsp_mode) for e in emb])  # (b, F, L, C)
    else:
        cond = model.encode_prompts(list(prompts))
    clip = bool(d.get("clip_x0", False)) if clip_x0 is None else bool(clip_x0)
    # the CLI's sampling stage (vstar_jax.generation.sampling): what users run; clip_x0 is a denoiser option
    ds = diffusion_settings(model.config.to_dict())
    strategy = parse_strategy(strategy)
    steps = strategy.steps_for(None) or steps
    sched_kw = strategy.schedule_kwargs(ds["flavor"], schedule_kwargs(ds))  # FIFO: its reference's timesteps
    plan = SamplePlan(ds["flavor"], int(steps), float(eta), sched_kw, model.latent_shape(frames, batch),
                      tar, bool(capture), strategy=strategy, prediction=ds["prediction"],
                      clip_x0=clip)
    out = sample_jit(model.unet, model.unet_params, cond, uncond, jax.random.key(seed), jnp.float32(28),
                     jnp.float32(cfg), plan=plan)
    videos = decode_latents(out.latents, model.config.patch, 1)
    return (videos, flatten_maps(jax.device_get(out.aux))) if capture else videos
