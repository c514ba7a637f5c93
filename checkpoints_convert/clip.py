"""CLIP (image + text towers) -> Flax params for the CLIP score.

* transformers ``CLIPModel`` (``vision_model.*``, ``visual_projection``, ``text_model.*``,
  ``text_projection``, ``logit_scale``): a folder with ``config.json`` and weights.
* OpenCLIP (``visual.*`` plus the text tower at the top level; ``proj`` is a (width, out) matrix).

The vision tower goes to :class:`vstar_jax.models.clip_vision.CLIPVisionTransformer`, the text
tower to :class:`vstar_jax.models.text.TextTransformer` through ``vstar_jax.checkpoints_convert.text``.
Output params: {"clip_vision": ..., "clip_text": ...}; configs likewise.

Command line: ``python -m vstar_jax.checkpoints_convert.clip SRC OUT`` (SRC: a transformers CLIPModel folder,
or an OpenCLIP state dict file with ``--openclip``); writes a checkpoint with
``vstar_jax.io.checkpoint.save_checkpoint``.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Mapping, Optional

import numpy as np

from vstar_jax.checkpoints_convert.common import ConversionError, conv2d_kernel, linear_kernel, load_state_dict
from vstar_jax.checkpoints_convert.text import (
    HF_IGNORE,
    MultiPlan,
    _ident,
    _norm,
    apply_multi_plan,
    convert_hf_clip_text,
    convert_openclip_text,
    hf_clip_text_config,
    hf_encoder_layers_plan,
    openclip_resblocks_plan,
    openclip_text_config_from_state_dict,
)
from vstar_jax.io.checkpoint import save_checkpoint
from vstar_jax.models.clip_vision import vision_config, vision_param_shapes

_HF_VISION_ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


# -- configs ------------------------------------------------------------------------------------

def hf_clip_vision_config(config: Mapping, projection_dim: Optional[int] = None):
    """Vision ConfigDict from a transformers ``CLIPConfig`` (or ``CLIPVisionConfig``) dict."""
    cfg = dict(config)
    if "vision_config" in cfg:  # a full CLIPConfig: its projection_dim is the one CLIPModel uses
        projection_dim = projection_dim or cfg.get("projection_dim", 512)
        cfg = dict(cfg["vision_config"])
    projection_dim = projection_dim or cfg.get("projection_dim", 512)
    act = cfg.get("hidden_act", "quick_gelu")
    if act not in _HF_VISION_ACTS:
        raise ValueError(f"unsupported CLIP vision hidden_act {act!r}")
    return vision_config(
        image_size=cfg.get("image_size", 224), patch_size=cfg.get("patch_size", 32),
        width=cfg.get("hidden_size", 768), layers=cfg.get("num_hidden_layers", 12),
        heads=cfg.get("num_attention_heads", 12), mlp_dim=cfg.get("intermediate_size", 3072),
        act=_HF_VISION_ACTS[act], layer_norm_eps=cfg.get("layer_norm_eps", 1e-5),
        output_dim=projection_dim,
    )


def hf_clip_configs(config: Mapping):
    """(vision ConfigDict, text ConfigDict) of a transformers ``CLIPConfig`` dict."""
    config = dict(config)
    proj = int(config.get("projection_dim", 512))
    text = hf_clip_text_config(config, layer="last")
    text.output_dim = proj  # CLIPModel always projects
    return hf_clip_vision_config(config, proj), text


def openclip_vision_config_from_state_dict(sd: Mapping[str, np.ndarray], *, head_width: int = 80, act: str = "gelu"):
    """Vision ConfigDict from the shapes of an OpenCLIP ``visual.*`` state dict.

    Heads cannot be read from shapes: width // ``head_width`` (80 for ViT-H-14)."""
    try:
        width, _, patch, _ = np.shape(sd["visual.conv1.weight"])
        n_pos = np.shape(sd["visual.positional_embedding"])[0]
        mlp = np.shape(sd["visual.transformer.resblocks.0.mlp.c_fc.weight"])[0]
        out = np.shape(sd["visual.proj"])[1]
    except KeyError as e:
        raise ValueError(f"not an OpenCLIP vision state dict: no {e.args[0]!r}") from None
    grid = int(round((n_pos - 1) ** 0.5))
    layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("visual.transformer.resblocks."))
    return vision_config(image_size=grid * patch, patch_size=patch, width=width, layers=layers,
                         heads=width // head_width, mlp_dim=mlp, act=act, output_dim=out)


# -- plans --------------------------------------------------------------------------------------

def hf_vision_plan(cfg, prefix: str = "vision_model.") -> MultiPlan:
    p = prefix
    plan: MultiPlan = {
        f"{p}embeddings.patch_embedding.weight": [(("patch_embedding", "kernel"), conv2d_kernel)],
        f"{p}embeddings.class_embedding": [(("class_embedding",), _ident)],
        f"{p}embeddings.position_embedding.weight": [(("positional_embedding",), _ident)],
        "visual_projection.weight": [(("visual_projection",), linear_kernel)],
    }
    _norm(plan, f"{p}pre_layrnorm", ("ln_pre",))
    _norm(plan, f"{p}post_layernorm", ("ln_post",))
    hf_encoder_layers_plan(plan, f"{p}encoder.layers", cfg.layers)
    return plan


def openclip_vision_plan(cfg, prefix: str = "visual.") -> MultiPlan:
    p = prefix
    plan: MultiPlan = {
        f"{p}conv1.weight": [(("patch_embedding", "kernel"), conv2d_kernel)],
        f"{p}class_embedding": [(("class_embedding",), _ident)],
        f"{p}positional_embedding": [(("positional_embedding",), _ident)],
        f"{p}proj": [(("visual_projection",), _ident)],
    }
    _norm(plan, f"{p}ln_pre", ("ln_pre",))
    _norm(plan, f"{p}ln_post", ("ln_post",))
    openclip_resblocks_plan(plan, f"{p}transformer.resblocks", cfg.layers)
    return plan


# -- converters ---------------------------------------------------------------------------------

def convert_hf_clip(sd: Mapping[str, np.ndarray], config: Mapping):
    """(params, configs) of a transformers ``CLIPModel`` state dict and its config dict."""
    vcfg, tcfg = hf_clip_configs(config)
    text_keys = {k: sd[k] for k in sd if k.startswith("text_model.") or k == "text_projection.weight"}
    vision_keys = {k: sd[k] for k in sd if k.startswith("vision_model.") or k == "visual_projection.weight"}
    rest = sorted(set(sd) - set(text_keys) - set(vision_keys) - {"logit_scale"})
    rest = [k for k in rest if not k.endswith("position_ids")]
    if rest:
        raise ConversionError("CLIP (CLIPModel)", unexpected=rest)
    vision = apply_multi_plan(vision_keys, hf_vision_plan(vcfg), vision_param_shapes(vcfg),
                              component="CLIP vision (CLIPModel)",
                              ignore_prefixes=("vision_model.embeddings.position_ids",))
    text = convert_hf_clip_text(text_keys, tcfg, ignore_prefixes=HF_IGNORE)
    return {"clip_vision": vision, "clip_text": text}, {"clip_vision": vcfg, "clip_text": tcfg}


def convert_openclip(sd: Mapping[str, np.ndarray], *, vision_head_width: int = 80, text_head_dim: int = 64,
                     act: str = "gelu"):
    """(params, configs) of an OpenCLIP state dict (``visual.*`` + the text tower)."""
    vcfg = openclip_vision_config_from_state_dict(sd, head_width=vision_head_width, act=act)
    tcfg = openclip_text_config_from_state_dict({k: sd[k] for k in sd if not k.startswith("visual.")},
                                                head_dim=text_head_dim, act=act, layer="last")
    vision_keys = {k: sd[k] for k in sd if k.startswith("visual.")}
    vision = apply_multi_plan(vision_keys, openclip_vision_plan(vcfg), vision_param_shapes(vcfg),
                              component="CLIP vision (OpenCLIP)")
    text = convert_openclip_text(sd, tcfg)
    return {"clip_vision": vision, "clip_text": text}, {"clip_vision": vcfg, "clip_text": tcfg}


def _hf_weights(folder: str) -> str:
    for name in ("model.safetensors", "pytorch_model.bin"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    raise ValueError(f"no model.safetensors or pytorch_model.bin in {folder}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vstar_jax.checkpoints_convert.clip",
                                     description="Convert a CLIP checkpoint for the CLIP score.")
    parser.add_argument("src", help="transformers CLIPModel folder, or an OpenCLIP state dict (--openclip)")
    parser.add_argument("out", help="output checkpoint folder")
    parser.add_argument("--openclip", action="store_true")
    parser.add_argument("--vision-head-width", type=int, default=80)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)

    if args.openclip:
        params, configs = convert_openclip(load_state_dict(args.src), vision_head_width=args.vision_head_width)
    else:
        with open(os.path.join(args.src, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
        params, configs = convert_hf_clip(load_state_dict(_hf_weights(args.src)), config)
    save_checkpoint(args.out, params, {k: v.to_dict() for k, v in configs.items()}, overwrite=args.overwrite,
                    sources=[args.src])
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
