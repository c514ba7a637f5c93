"""Text encoder weights -> Flax params of :class:`vstar_jax.models.text.TextTransformer`.

* OpenCLIP (``cond_stage_model.model.*`` of VideoCrafter2's ``model.ckpt``, prefix stripped):
  the fused ``attn.in_proj_weight`` / ``in_proj_bias`` are split into q, k, v.
* transformers ``CLIPTextModel`` / ``CLIPTextModelWithProjection`` (ModelScope's ``text_encoder/``).

The key plan is built from the config; every missing, unexpected or wrongly shaped key is
reported by its checkpoint name in one ConversionError.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import ml_collections
import numpy as np

from vstar_jax.checkpoints_convert.common import ConversionError, flatten, linear_kernel, unflatten
from vstar_jax.models.text import text_param_shapes

FlaxPath = Tuple[str, ...]
Target = Tuple[FlaxPath, Callable[[np.ndarray], np.ndarray]]
MultiPlan = Dict[str, List[Target]]

#: OpenCLIP keys that are not part of the text tower (the image tower, CLIP's logit scale).
OPENCLIP_IGNORE = ("visual.", "logit_scale", "logit_bias")
#: transformers buffers that older versions saved in the state dict.
HF_IGNORE = ("text_model.embeddings.position_ids", "embeddings.position_ids")


# -- configs ------------------------------------------------------------------------------------

def openclip_text_config(*, vocab_size=49408, context_length=77, width=1024, heads=16, layers=24,
                         mlp_ratio=4.0, output_dim=1024, act="gelu", layer="penultimate"):
    """ConfigDict of an OpenCLIP text tower (defaults: ViT-H-14, VideoCrafter2's 'penultimate')."""
    c = ml_collections.ConfigDict()
    c.vocab_size = int(vocab_size)
    c.context_length = int(context_length)
    c.width = int(width)
    c.heads = int(heads)
    c.layers = int(layers)
    c.mlp_dim = int(round(width * mlp_ratio))
    c.act = act
    c.layer_norm_eps = 1e-5
    c.output_dim = int(output_dim or 0)
    c.layer = layer
    c.eot_token_id = None
    c.pad_token_id = 0
    return c


def openclip_text_config_from_state_dict(sd: Mapping[str, np.ndarray], *, head_dim: int = 64,
                                         heads: Optional[int] = None, act="gelu", layer="penultimate"):
    """Infer an OpenCLIP text config from the shapes of a text-tower state dict.

    Heads cannot be read from shapes: ``heads`` if given, else width // ``head_dim``."""
    try:
        vocab, width = np.shape(sd["token_embedding.weight"])
        context = np.shape(sd["positional_embedding"])[0]
        mlp = np.shape(sd["transformer.resblocks.0.mlp.c_fc.weight"])[0]
    except KeyError as e:
        raise ValueError(f"not an OpenCLIP text state dict: no {e.args[0]!r}") from None
    layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("transformer.resblocks."))
    if "text_projection" in sd:
        out = np.shape(sd["text_projection"])[1]
    elif "text_projection.weight" in sd:
        out = np.shape(sd["text_projection.weight"])[0]
    else:
        out = 0
    c = openclip_text_config(vocab_size=vocab, context_length=context, width=width,
                             heads=heads or width // head_dim, layers=layers, mlp_ratio=mlp / width,
                             output_dim=out, act=act, layer=layer)
    return c


def hf_clip_text_config(config: Mapping, *, layer: str = "last", pad_token_id: Optional[int] = None,
                        with_projection: Optional[bool] = None):
    """ConfigDict from a transformers ``CLIPTextConfig`` dict (``text_encoder/config.json``).

    ``projection_dim`` is used only ``with_projection`` (``CLIPTextModelWithProjection``; when None,
    read from ``architectures``); a bare ``CLIPTextModel`` (ModelScope) has no projection.
    ``pad_token_id`` is the tokenizer's pad id (default: the end token, 49407); for a real
    pipeline folder read it with ``vstar_jax.models.tokenizer.pad_token_id_from_hf(dir/"tokenizer")``
    (Stable-Diffusion-2-style folders name "!" = id 0)."""
    cfg = dict(config)
    if "text_config" in cfg:  # a full CLIPConfig
        cfg = dict(cfg["text_config"])
    act = cfg.get("hidden_act", "quick_gelu")
    if act not in ("gelu", "quick_gelu", "gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"unsupported CLIP text hidden_act {act!r}")
    c = ml_collections.ConfigDict()
    c.vocab_size = int(cfg.get("vocab_size", 49408))
    c.context_length = int(cfg.get("max_position_embeddings", 77))
    c.width = int(cfg.get("hidden_size", 512))
    c.heads = int(cfg.get("num_attention_heads", 8))
    c.layers = int(cfg.get("num_hidden_layers", 12))
    c.mlp_dim = int(cfg.get("intermediate_size", 2048))
    c.act = "gelu_tanh" if act in ("gelu_new", "gelu_pytorch_tanh") else act
    c.layer_norm_eps = float(cfg.get("layer_norm_eps", 1e-5))
    if with_projection is None:
        with_projection = any("WithProjection" in a for a in cfg.get("architectures") or [])
    c.output_dim = int(cfg.get("projection_dim", 512)) if with_projection else 0
    c.layer = layer
    eos = int(cfg.get("eos_token_id", 2))
    # transformers: eos_token_id == 2 is the legacy config -> argmax over ids.
    c.eot_token_id = None if eos == 2 else eos
    c.pad_token_id = int(pad_token_id) if pad_token_id is not None else 49407
    return c


# -- plans --------------------------------------------------------------------------------------

def _ident(w):
    return np.asarray(w)


def _split(part: int, fn=_ident):
    """Take the ``part``-th third along axis 0 (fused q/k/v), then ``fn``."""
    def take(w):
        w = np.asarray(w)
        if w.shape[0] % 3:
            raise ValueError(f"fused in_proj of shape {w.shape} is not 3 x width")
        n = w.shape[0] // 3
        return fn(w[part * n:(part + 1) * n])
    return take


def _dense(plan: MultiPlan, src: str, dst: FlaxPath, bias: bool = True):
    plan[f"{src}.weight"] = [(dst + ("kernel",), linear_kernel)]
    if bias:
        plan[f"{src}.bias"] = [(dst + ("bias",), _ident)]


def _norm(plan: MultiPlan, src: str, dst: FlaxPath):
    plan[f"{src}.weight"] = [(dst + ("scale",), _ident)]
    plan[f"{src}.bias"] = [(dst + ("bias",), _ident)]


def openclip_resblocks_plan(plan: MultiPlan, src: str, layers: int):
    """OpenCLIP ``resblocks`` (fused in_proj split into q/k/v) -> ``resblocks_{i}``; text and image towers."""
    for i in range(layers):
        s, d = f"{src}.{i}", (f"resblocks_{i}",)
        _norm(plan, f"{s}.ln_1", d + ("ln_1",))
        _norm(plan, f"{s}.ln_2", d + ("ln_2",))
        plan[f"{s}.attn.in_proj_weight"] = [
            (d + ("attn", n, "kernel"), _split(j, linear_kernel)) for j, n in enumerate("qkv")]
        plan[f"{s}.attn.in_proj_bias"] = [(d + ("attn", n, "bias"), _split(j)) for j, n in enumerate("qkv")]
        _dense(plan, f"{s}.attn.out_proj", d + ("attn", "out"))
        _dense(plan, f"{s}.mlp.c_fc", d + ("mlp", "c_fc"))
        _dense(plan, f"{s}.mlp.c_proj", d + ("mlp", "c_proj"))


def hf_encoder_layers_plan(plan: MultiPlan, src: str, layers: int):
    """transformers CLIP ``encoder.layers`` -> ``resblocks_{i}``; text and vision models."""
    for i in range(layers):
        s, d = f"{src}.{i}", (f"resblocks_{i}",)
        _norm(plan, f"{s}.layer_norm1", d + ("ln_1",))
        _norm(plan, f"{s}.layer_norm2", d + ("ln_2",))
        for n in "qkv":
            _dense(plan, f"{s}.self_attn.{n}_proj", d + ("attn", n))
        _dense(plan, f"{s}.self_attn.out_proj", d + ("attn", "out"))
        _dense(plan, f"{s}.mlp.fc1", d + ("mlp", "c_fc"))
        _dense(plan, f"{s}.mlp.fc2", d + ("mlp", "c_proj"))


def openclip_plan(cfg, *, projection_as_linear: bool = False) -> MultiPlan:
    plan: MultiPlan = {
        "token_embedding.weight": [(("token_embedding", "embedding"), _ident)],
        "positional_embedding": [(("positional_embedding",), _ident)],
    }
    openclip_resblocks_plan(plan, "transformer.resblocks", cfg.layers)
    _norm(plan, "ln_final", ("ln_final",))
    if cfg.output_dim:
        if projection_as_linear:
            plan["text_projection.weight"] = [(("text_projection",), linear_kernel)]
        else:
            plan["text_projection"] = [(("text_projection",), _ident)]
    return plan


def hf_plan(cfg, prefix: str = "text_model.") -> MultiPlan:
    p = prefix
    plan: MultiPlan = {
        f"{p}embeddings.token_embedding.weight": [(("token_embedding", "embedding"), _ident)],
        f"{p}embeddings.position_embedding.weight": [(("positional_embedding",), _ident)],
    }
    hf_encoder_layers_plan(plan, f"{p}encoder.layers", cfg.layers)
    _norm(plan, f"{p}final_layer_norm", ("ln_final",))
    if cfg.output_dim:
        plan["text_projection.weight"] = [(("text_projection",), linear_kernel)]
    return plan


def apply_multi_plan(sd: Mapping[str, np.ndarray], plan: MultiPlan, expected, *, component: str,
                     ignore_prefixes: Sequence[str] = ()) -> dict:
    """Like ``common.apply_plan`` but one source key may feed several Flax leaves."""
    exp_flat = flatten(expected)
    planned = {dst for targets in plan.values() for dst, _ in targets}
    if planned != set(exp_flat):
        raise RuntimeError(f"{component}: internal key plan does not cover the model "
                           f"(plan-only {sorted(planned - set(exp_flat))[:5]}, "
                           f"model-only {sorted(set(exp_flat) - planned)[:5]})")
    keys = set(sd)
    missing = [k for k in plan if k not in keys]
    unexpected = [k for k in keys if k not in plan and not any(k.startswith(p) for p in ignore_prefixes)]
    mismatched, out = [], {}
    for key, targets in plan.items():
        if key not in keys:
            continue
        src = sd[key]
        for dst, fn in targets:
            want = tuple(exp_flat[dst].shape)
            try:
                arr = fn(src)
            except ValueError:
                arr = None
            if arr is None or tuple(arr.shape) != want:
                mismatched.append(f"{key} {tuple(np.shape(src))} (model wants {want} as {'/'.join(dst)})")
                break
            out[dst] = arr.astype(exp_flat[dst].dtype, copy=False)
    if missing or unexpected or mismatched:
        raise ConversionError(component, missing, unexpected, mismatched, prefix=getattr(sd, "prefix", ""))
    return unflatten(out)


# -- converters ---------------------------------------------------------------------------------

def convert_openclip_text(sd: Mapping[str, np.ndarray], cfg, *, ignore_prefixes: Sequence[str] = OPENCLIP_IGNORE):
    """Flax params of an OpenCLIP text tower (``cond_stage_model.model.`` prefix stripped).

    Keys under ``ignore_prefixes`` (default: the visual tower and logit scale) are skipped.
    ``text_projection`` may be a (width, out) parameter or a Linear ``text_projection.weight``."""
    plan = openclip_plan(cfg, projection_as_linear="text_projection.weight" in sd)
    return apply_multi_plan(sd, plan, text_param_shapes(cfg), component="text (OpenCLIP)",
                            ignore_prefixes=tuple(ignore_prefixes))


def convert_hf_clip_text(sd: Mapping[str, np.ndarray], cfg, *, ignore_prefixes: Sequence[str] = HF_IGNORE):
    """Flax params of a transformers ``CLIPTextModel`` (or ``...WithProjection``) state dict.

    Keys may carry the ``text_model.`` prefix (as saved by transformers) or not."""
    prefix = "text_model." if any(k.startswith("text_model.") for k in sd) else ""
    return apply_multi_plan(sd, hf_plan(cfg, prefix), text_param_shapes(cfg), component="text (CLIPTextModel)",
                            ignore_prefixes=tuple(ignore_prefixes))
