"""Convert the released StreamingT2V checkpoint (its UNet + CAM + APM) into UNet3D params.

    python -m vstar_jax.checkpoints_convert.streamingt2v streaming_t2v.ckpt --modelscope MODELSCOPE \
        --out checkpoints/streamingt2v [--openclip open_clip_pytorch_model.bin] [--trust-pickle]

``MODELSCOPE``: the diffusers ModelScope folder the model was trained on (its ``unet/config.json``, and
the VAE and text encoder, converted as ``vstar-jax convert diffusers`` does); ``--unet-config`` alone
writes the UNet only. The result runs ``--long-video streaming:16:8`` with ``--checkpoint``.

The checkpoint is the PyTorch Lightning state of ``t2v_enhanced/model/video_ldm.py: VideoLDM``
(Picsart-AI-Research/StreamingT2V, branch StreamingModelscope); the key names below were read there:

* ``base_model.*``: the ModelScope ``UNet3DConditionModel`` (diffusers layout, the same key plan as
  ``vstar_jax.checkpoints_convert.unet.plan_unet_diffusers``), plus
  - CAM mergers ``base_model.cross_attention_merger_down_blocks.{i}.temporal_transformer.{norm, proj_in,
    attention.to_q/to_k/to_v, attention.to_out.0, proj_out}`` (one per skip connection) and
    ``base_model.cross_attention_merger_mid_block.temporal_transformer.*`` -> ``cam_merge_{i}`` /
    ``cam_merge_mid`` (the reference builds 3 mergers per down block and zips them with the skip
    connections: one per skip, with matching widths, only at ``layers_per_block`` 2 -- the released
    ModelScope UNet; another layout's extra or mismatched mergers are reported by name);
  - APM's mixer in every spatial cross-attention: ``...attentions.{i}.transformer_blocks.{d}.attn2.{conv,
    conv_ln, alpha}`` -> ``..._spatial/block_{d}/attn2_mix/{conv, norm, alpha}`` (Conv1d (77, 93, 3) ->
    (3, 93, 77));
* ``unet.*``: the CAM control branch (``ControlNetModel``: the UNet's time embedding, conv_in,
  transformer_in, down blocks and mid block -> ``cam_control/...``) and its frame encoder
  ``unet.controlnet_cond_embedding.{conv_in, blocks.{j}, conv_out}`` -> ``cam_cond_embedding/{conv_in,
  block_{j}, conv_out}`` (merger "addition" and the Identity zero-convs have no weights);
* ``resampler.context_embedding.{0, 2}`` -> ``apm_resampler/{fc_1, fc_2}`` (APM's image-embedding MLP).

* ``image_encoder.model.visual.*``: APM's frozen OpenCLIP ViT-H-14 image tower
  (``FrozenOpenCLIPImageEmbedder``; the text-side leftovers of its OpenCLIP model are not used) ->
  the ``image_encoder`` component (``vstar_jax.models.clip_vision``), or from ``--openclip FILE``
  (an OpenCLIP ``visual.*`` state dict) when the checkpoint has none.

``vae.*`` and ``text_encoder.*`` (ModelScope's, frozen) are skipped (taken from the ModelScope folder).
The CAM / APM settings are read from the weights' shapes (conditioning channels and stages, tokens,
image width, text length); the conditioning frames (8) and head size (64) are the released training
settings (``--cam-frames``, ``--cam-head-dim``). Every other key must be planned, every planned key
present with the model's shape, or a ``ConversionError`` names them all (missing / unexpected / wrong
shape).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vstar_jax.checkpoints_convert import diffusers as conv_diffusers
from vstar_jax.checkpoints_convert.clip import openclip_vision_config_from_state_dict, openclip_vision_plan
from vstar_jax.checkpoints_convert.common import (ConversionError, Plan, add_safety_flags, apply_plan, cast_tree,
                                                  load_state_dict, p_conv, p_dense, p_norm, run_cli)
from vstar_jax.checkpoints_convert.text import apply_multi_plan
from vstar_jax.checkpoints_convert.unet import plan_unet_diffusers, shape_hints, unet_config_from_diffusers
from vstar_jax.io.checkpoint import check_checkpoint_out, save_checkpoint
from vstar_jax.models.clip_vision import vision_param_shapes
from vstar_jax.models.streaming import StreamingUNet, apm_settings, cam_settings
from vstar_jax.models.unet3d import unet_level_widths
from vstar_jax.validate import number

SKIPPED_PREFIXES = ("image_encoder.", "vae.", "text_encoder.")
INFERENCE_DEFAULTS = {"steps": 50, "cfg": 7.5, "eta": 1.0}
IMAGE_PREFIXES = ("image_encoder.model.visual.", "visual.")  # the checkpoint's, an OpenCLIP file's
RELEASED_CAM = {"frames": 8, "cond_channels": 3, "embed_channels": (32, 96, 256, 512), "downsample": True,
                "head_dim": 64, "norm_groups": 32}
RELEASED_APM = {"tokens": 16, "image_dim": 1024, "hidden": 1280, "text_len": 77,
                "image_encoder": "openclip_vit_h14"}


def with_streaming(cfg, cam: Optional[dict] = None, apm: Optional[dict] = None):
    """A copy of a (ModelScope) UNet config with StreamingT2V's CAM and APM (the released settings by default)."""
    c = ml_collections.ConfigDict(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg))
    c.cam = dict(cam or RELEASED_CAM)
    c.apm = dict(apm or RELEASED_APM)
    return c


def _base_config(cfg):
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    d.pop("cam", None)
    d.pop("apm", None)

    return ml_collections.ConfigDict(d)


def plan_streamingt2v(cfg) -> Plan:
    """The key plan of a StreamingT2V checkpoint for ``StreamingUNet(cfg)`` (cfg with ``cam`` and ``apm``)."""
    cam, apm = cam_settings(cfg), apm_settings(cfg)
    base = _base_config(cfg)
    base_plan = plan_unet_diffusers(base)
    plan: Plan = {f"base_model.{k}": v for k, v in base_plan.items()}
    if apm:
        spatial = re.compile(r"^(.*\.attentions\.\d+\.transformer_blocks\.\d+)\.attn2\.to_q\.weight$")
        for key, (dst, _) in base_plan.items():
            m = spatial.match(key)
            if m and ".temp_attentions." not in key:
                src, blk = f"base_model.{m.group(1)}.attn2", dst[:-3]  # (..._spatial, block_d)
                plan[f"{src}.conv.weight"] = (blk + ("attn2_mix", "conv", "kernel"), "conv1d")
                plan[f"{src}.conv.bias"] = (blk + ("attn2_mix", "conv", "bias"), "identity")
                p_norm(plan, f"{src}.conv_ln", blk + ("attn2_mix", "norm"))
                plan[f"{src}.alpha"] = (blk + ("attn2_mix", "alpha"), "identity")
        p_dense(plan, "resampler.context_embedding.0", ("apm_resampler", "fc_1"))
        p_dense(plan, "resampler.context_embedding.2", ("apm_resampler", "fc_2"))
    if cam:
        n_skips = 1 + len(unet_level_widths(base)) * int(base.num_res_blocks) + len(unet_level_widths(base)) - 1
        mergers = [(f"cross_attention_merger_down_blocks.{i}", f"cam_merge_{i}") for i in range(n_skips)]
        mergers.append(("cross_attention_merger_mid_block", "cam_merge_mid"))
        for src, dst in mergers:
            s, d = f"base_model.{src}.temporal_transformer", (dst,)
            p_norm(plan, f"{s}.norm", d + ("norm",))
            p_dense(plan, f"{s}.proj_in", d + ("proj_in",))
            p_dense(plan, f"{s}.proj_out", d + ("proj_out",))
            for qkv in ("to_q", "to_k", "to_v"):
                p_dense(plan, f"{s}.attention.{qkv}", d + ("attention", qkv), bias=False)
            p_dense(plan, f"{s}.attention.to_out.0", d + ("attention", "to_out"))
        # the control branch: the UNet's encoder half (no up blocks, no output layers)
        for key, (dst, kind) in base_plan.items():
            if key.startswith(("up_blocks.", "conv_norm_out.", "conv_out.")):
                continue
            plan[f"unet.{key}"] = (("cam_control",) + dst, kind)
        n_enc = len(cam["embed_channels"])
        p_conv(plan, "unet.controlnet_cond_embedding.conv_in", ("cam_cond_embedding", "conv_in"))
        for j in range(2 * (n_enc - 1)):
            p_conv(plan, f"unet.controlnet_cond_embedding.blocks.{j}", ("cam_cond_embedding", f"block_{j}"))
        p_conv(plan, "unet.controlnet_cond_embedding.conv_out", ("cam_cond_embedding", "conv_out"))
    return plan


def expected_shapes(cfg) -> dict:
    """The StreamingUNet(cfg) params' shapes with CAM and APM built (``jax.eval_shape``, nothing allocated)."""
    cam, apm = cam_settings(cfg), apm_settings(cfg)
    model = StreamingUNet(cfg)
    n = int(cam["frames"]) + 1 if cam else 2
    side = 2 ** 3
    x = jnp.zeros((1, int(cfg.in_channels), n, side, side))
    ctx = jnp.zeros((1, int(apm["text_len"]) if apm else 77, int(cfg.context_dim)))
    kw = {}
    if cam:
        px = side * (2 ** (len(cam["embed_channels"]) - 1) if cam["downsample"] else 1)
        kw["cam_frames"] = jnp.zeros((1, int(cam["cond_channels"]), int(cam["frames"]), px, px))
    if apm:
        kw["image_embed"] = jnp.zeros((1, int(apm["image_dim"])))
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, jnp.zeros((1,), jnp.int32), ctx,
                                             **kw))["params"]


def convert_streamingt2v_unet(sd: Mapping, cfg, *, dtype=None) -> dict:
    """StreamingT2V checkpoint state dict (``state_dict`` of the Lightning file) -> StreamingUNet params with CAM
    and APM; ``cfg``: the ModelScope UNet config with ``cam`` / ``apm`` (:func:`with_streaming`)."""
    return apply_plan(sd, plan_streamingt2v(cfg), expected_shapes(cfg), component="unet (streamingt2v)",
                      ignore_prefixes=SKIPPED_PREFIXES, dtype=dtype, hints=shape_hints(_base_config(cfg), "diffusers"))


def streaming_settings_from_state_dict(sd: Mapping, context_dim: int, *, cam_frames: int = 8,
                                       head_dim: int = 64) -> tuple[dict, dict]:
    """(cam, apm) settings of a StreamingT2V state dict, read from its weights' shapes."""
    def shape(key):
        if key not in sd:
            raise ConversionError("unet (streamingt2v)", missing=[key])
        return tuple(np.shape(sd[key]))

    enc = "unet.controlnet_cond_embedding"
    cond_channels = shape(f"{enc}.conv_in.weight")[1]
    n_blocks = 1 + max((int(k.split(".")[3]) for k in sd if k.startswith(f"{enc}.blocks.")), default=-1)
    embed = [shape(f"{enc}.conv_in.weight")[0]] + [shape(f"{enc}.blocks.{j}.weight")[0] for j in range(1, n_blocks, 2)]
    fc2 = shape("resampler.context_embedding.2.weight")
    mix = next((k for k in sd if k.startswith("base_model.") and k.endswith(".attn2.conv.weight")),
               "base_model.<any>.attn2.conv.weight")  # (absent: named as missing by shape())
    text_len, total, _ = shape(mix)
    cam = dict(RELEASED_CAM, frames=int(cam_frames), cond_channels=int(cond_channels), embed_channels=tuple(embed),
               downsample=int(cond_channels) == 3, head_dim=int(head_dim))
    apm = dict(RELEASED_APM, tokens=int(fc2[0]) // int(context_dim), image_dim=shape("resampler.context_embedding.0.weight")[1],
               hidden=int(fc2[1]), text_len=int(text_len))
    if total != text_len + apm["tokens"]:
        raise ValueError(f"{mix}: mixes {total} tokens, expected {text_len} text + {apm['tokens']} image tokens")
    return cam, apm


def convert_image_encoder(sd: Mapping, *, head_width: int = 80):
    """(params, config) of APM's OpenCLIP image tower from ``image_encoder.model.visual.*`` (the
    StreamingT2V checkpoint) or ``visual.*`` (an OpenCLIP file); None when neither is there."""
    prefix = next((p for p in IMAGE_PREFIXES if any(k.startswith(p) for k in sd)), None)
    if prefix is None:
        return None
    visual = {"visual." + k[len(prefix):]: sd[k] for k in sd if k.startswith(prefix)}
    cfg = openclip_vision_config_from_state_dict(visual, head_width=head_width)
    params = apply_multi_plan(visual, openclip_vision_plan(cfg), vision_param_shapes(cfg),
                              component=f"APM image encoder ({prefix}*)")
    return params, cfg


def convert(ckpt: str, out: str, *, unet_config: Optional[str] = None, modelscope: Optional[str] = None,
            openclip: Optional[str] = None, image_head_width: int = 80, cam_frames: int = 8, cam_head_dim: int = 64,
            dtype=None, trust_pickle: bool = False, overwrite: bool = False, verbose: bool = True) -> str:
    """Write a vstar-jax checkpoint: the UNet with CAM + APM, APM's image encoder, and (from ``modelscope``)
    the VAE, the text encoder and the scheduler settings."""
    say = (lambda m: print(f"[convert streamingt2v] {m}", file=sys.stderr, flush=True)) if verbose else (lambda m: None)
    if unet_config is None:
        if modelscope is None:
            raise ValueError("give --modelscope DIR (the ModelScope folder it was trained on) or --unet-config FILE")
        unet_config = os.path.join(modelscope, "unet", "config.json")
    if not os.path.isfile(unet_config):
        raise FileNotFoundError(f"UNet config not found: {unet_config}")
    sources = [ckpt, modelscope, unet_config, openclip]
    check_checkpoint_out(out, overwrite=overwrite, sources=sources)  # before the (long) conversion, not after
    with open(unet_config) as f:
        base = unet_config_from_diffusers(json.load(f))
    sd = load_state_dict(ckpt, trust_pickle=trust_pickle)
    if not any(k.startswith("base_model.") for k in sd) or not any(k.startswith("unet.controlnet_cond_embedding.")
                                                                   for k in sd):
        raise ValueError(f"{ckpt}: not a StreamingT2V checkpoint (it needs base_model.* and "
                         f"unet.controlnet_cond_embedding.* keys; first keys: {', '.join(list(sd)[:3])})")
    cam, apm = streaming_settings_from_state_dict(sd, int(base.context_dim), cam_frames=cam_frames,
                                                  head_dim=cam_head_dim)
    cfg = with_streaming(base, cam, apm)
    say(f"UNet + CAM ({cam['frames']} frames, {'pixel' if cam['downsample'] else 'latent'} conditioning) + APM "
        f"({apm['tokens']} image tokens)")
    params = {"unet": convert_streamingt2v_unet(sd, cfg, dtype=dtype)}
    config = {"source": {"layout": "streamingt2v", "checkpoint": os.path.abspath(ckpt)}, "unet": cfg.to_dict(),
              "diffusion": {"flavor": "diffusers", "prediction": "eps"}}
    image = convert_image_encoder(sd, head_width=image_head_width)
    if image is None and openclip is not None:
        image = convert_image_encoder(load_state_dict(openclip, trust_pickle=trust_pickle), head_width=image_head_width)
        if image is None:
            raise ValueError(f"{openclip}: no OpenCLIP image tower (visual.*) in it")
    if image is not None:
        if int(image[1].output_dim) != int(apm["image_dim"]):
            raise ValueError(f"the image encoder embeds {image[1].output_dim} values but APM reads {apm['image_dim']}")
        params["image_encoder"], config["image_encoder"] = image[0], image[1].to_dict()
        say(f"APM image encoder: {image[1].layers} layers, width {image[1].width}, {image[1].image_size}px")
    else:
        say("no image_encoder.* in the checkpoint and no --openclip: APM's image encoder not written "
            "(long_video streaming will refuse this checkpoint)")
    if modelscope is not None:
        config["source"]["modelscope"] = os.path.abspath(modelscope)

        vae_text, vae_text_cfg = conv_diffusers.convert_vae_text(modelscope)
        params.update(vae_text)
        config.update(vae_text_cfg)
        config["diffusion"] = conv_diffusers.diffusion_config(modelscope)
        # sampling defaults: the reference's long-video inference settings
        # (t2v_enhanced/configs/inference/inference_long_video.yaml), not ModelScope's
        config["diffusion"].update(INFERENCE_DEFAULTS)
        vae_cfg = os.path.join(modelscope, "vae", "config.json")
        if os.path.isfile(vae_cfg):
            with open(vae_cfg) as f:
                config["diffusion"]["scale_factor"] = float(json.load(f).get("scaling_factor", 0.18215))
    if dtype is not None:
        params = {k: (v if k == "unet" else cast_tree(v, dtype)) for k, v in params.items()}
    return save_checkpoint(out, params, config, overwrite=overwrite, sources=sources)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vstar-jax convert streamingt2v", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", help="StreamingT2V Lightning checkpoint (streaming_t2v.ckpt)")
    ap.add_argument("--modelscope", default=None, help="ModelScope diffusers folder (UNet config, VAE, text encoder)")
    ap.add_argument("--unet-config", default=None, help="the UNet's config.json (default: MODELSCOPE/unet/config.json)")
    ap.add_argument("--openclip", default=None, help="OpenCLIP ViT-H-14 weights, when the checkpoint has no image_encoder.*")
    ap.add_argument("--image-head-width", type=int, default=80, help="the image tower's head width (ViT-H-14: 80)")
    ap.add_argument("--cam-frames", type=int, default=8, help="CAM's conditioning frames (released: 8)")
    ap.add_argument("--cam-head-dim", type=int, default=64, help="CAM attention's head size (released: 64)")
    ap.add_argument("--dtype", default=None, choices=[None, "float32", "bfloat16", "float16"])
    ap.add_argument("--out", required=True)
    add_safety_flags(ap)
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    rc = run_cli(lambda: [number(flag, v, integer=True, minimum=1, maximum=4096) for flag, v in (
        ("--image-head-width", a.image_head_width), ("--cam-frames", a.cam_frames),
        ("--cam-head-dim", a.cam_head_dim))])
    if rc:
        return rc
    return run_cli(lambda: convert(a.ckpt, a.out, unet_config=a.unet_config, modelscope=a.modelscope,
                                   openclip=a.openclip, image_head_width=a.image_head_width, cam_frames=a.cam_frames,
                                   cam_head_dim=a.cam_head_dim, dtype=a.dtype, trust_pickle=a.trust_pickle,
                                   overwrite=a.overwrite))


if __name__ == "__main__":
    sys.exit(main())
