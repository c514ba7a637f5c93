"""Convert the released StreamingT2V checkpoint (its UNet + CAM + APM) into UNet3D params.

    python -m checkpoints_convert.streamingt2v streaming_t2v.ckpt --unet-config MODELSCOPE/unet/config.json \
        --out checkpoints/streamingt2v [--modelscope MODELSCOPE]   # vae + text from the ModelScope folder

The checkpoint is the PyTorch Lightning state of ``t2v_enhanced/model/video_ldm.py: VideoLDM``
(Picsart-AI-Research/StreamingT2V, branch StreamingModelscope); the key names below were read there:

* ``base_model.*``: the ModelScope ``UNet3DConditionModel`` (diffusers layout, the same key plan as
  ``checkpoints_convert.unet.plan_unet_diffusers``), plus
  - CAM mergers ``base_model.cross_attention_merger_down_blocks.{i}.temporal_transformer.{norm, proj_in,
    attention.to_q/to_k/to_v, attention.to_out.0, proj_out}`` (one per skip connection) and
    ``base_model.cross_attention_merger_mid_block.temporal_transformer.*`` -> ``cam_merge_{i}`` /
    ``cam_merge_mid``;
  - APM's mixer in every spatial cross-attention: ``...attentions.{i}.transformer_blocks.{d}.attn2.{conv,
    conv_ln, alpha}`` -> ``..._spatial/block_{d}/attn2_mix/{conv, norm, alpha}`` (Conv1d (77, 93, 3) ->
    (3, 93, 77));
* ``unet.*``: the CAM control branch (``ControlNetModel``: the UNet's time embedding, conv_in,
  transformer_in, down blocks and mid block -> ``cam_control/...``) and its frame encoder
  ``unet.controlnet_cond_embedding.{conv_in, blocks.{j}, conv_out}`` -> ``cam_cond_embedding/{conv_in,
  block_{j}, conv_out}`` (merger "addition" and the Identity zero-convs have no weights);
* ``resampler.context_embedding.{0, 2}`` -> ``apm_resampler/{fc_1, fc_2}`` (APM's image-embedding MLP).

``image_encoder.*`` (the frozen OpenCLIP ViT-H-14), ``vae.*`` and ``text_encoder.*`` (ModelScope's,
frozen) are not part of the UNet: they are skipped here (convert VAE and text from the ModelScope
folder). Every other key must be planned, every planned key present with the model's shape, or a
``ConversionError`` names them all (missing / unexpected / wrong shape).
"""
from __future__ import annotations

import argparse
import re
import sys
from typing import Mapping, Optional

from checkpoints_convert.common import Plan, apply_plan, p_conv, p_dense, p_norm
from checkpoints_convert.unet import plan_unet_diffusers, shape_hints

SKIPPED_PREFIXES = ("image_encoder.", "vae.", "text_encoder.")
RELEASED_CAM = {"frames": 8, "cond_channels": 3, "embed_channels": (32, 96, 256, 512), "downsample": True,
                "head_dim": 64, "norm_groups": 32}
RELEASED_APM = {"tokens": 16, "image_dim": 1024, "hidden": 1280, "text_len": 77,
                "image_encoder": "openclip_vit_h14"}


def with_streaming(cfg, cam: Optional[dict] = None, apm: Optional[dict] = None):
    """A copy of a (ModelScope) UNet config with StreamingT2V's CAM and APM (the released settings by default)."""
    import ml_collections  # noqa: PLC0415

    c = ml_collections.ConfigDict(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg))
    c.cam = dict(cam or RELEASED_CAM)
    c.apm = dict(apm or RELEASED_APM)
    return c


def _base_config(cfg):
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    d.pop("cam", None)
    d.pop("apm", None)
    import ml_collections  # noqa: PLC0415

    return ml_collections.ConfigDict(d)


def plan_streamingt2v(cfg) -> Plan:
    """The key plan of a StreamingT2V checkpoint for ``UNet3D(cfg)`` (cfg with ``cam`` and ``apm``)."""
    from vstar_jax.models.streaming import apm_settings, cam_settings  # noqa: PLC0415
    from vstar_jax.models.unet3d import unet_level_widths  # noqa: PLC0415

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
    """The UNet3D(cfg) params' shapes with CAM and APM built (``jax.eval_shape``, nothing allocated)."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from vstar_jax.models.streaming import apm_settings, cam_settings  # noqa: PLC0415
    from vstar_jax.models.unet3d import UNet3D  # noqa: PLC0415

    cam, apm = cam_settings(cfg), apm_settings(cfg)
    model = UNet3D(cfg)
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
    """StreamingT2V checkpoint state dict (``state_dict`` of the Lightning file) -> UNet3D params with CAM
    and APM; ``cfg``: the ModelScope UNet config with ``cam`` / ``apm`` (:func:`with_streaming`)."""
    return apply_plan(sd, plan_streamingt2v(cfg), expected_shapes(cfg), component="unet (streamingt2v)",
                      ignore_prefixes=SKIPPED_PREFIXES, dtype=dtype, hints=shape_hints(_base_config(cfg), "diffusers"))


def convert(ckpt: str, unet_config: str, out: str, *, modelscope: Optional[str] = None, dtype=None,
            trust_pickle: bool = False) -> str:
    """Write a vstar-jax checkpoint whose UNet carries CAM + APM (+ VAE and text from ``modelscope``)."""
    import json  # noqa: PLC0415

    from checkpoints_convert.common import load_state_dict  # noqa: PLC0415
    from checkpoints_convert.unet import unet_config_from_diffusers  # noqa: PLC0415
    from vstar_jax.io.checkpoint import save_checkpoint  # noqa: PLC0415

    with open(unet_config) as f:
        cfg = with_streaming(unet_config_from_diffusers(json.load(f)))
    sd = load_state_dict(ckpt, trust_pickle=trust_pickle)
    sd = sd.get("state_dict", sd) if hasattr(sd, "get") and "state_dict" in sd else sd
    params = {"unet": convert_streamingt2v_unet(sd, cfg, dtype=dtype)}
    config = {"unet": cfg.to_dict(), "diffusion": {"flavor": "diffusers", "prediction": "eps"}}
    if modelscope is not None:
        from checkpoints_convert import diffusers as conv_diffusers  # noqa: PLC0415
        import os  # noqa: PLC0415

        for comp in ("vae", "text"):
            p, c = conv_diffusers.CONVERTERS[comp](os.path.join(modelscope, conv_diffusers.SUBDIRS[comp]))
            params[comp] = p
            config[comp] = c.to_dict() if hasattr(c, "to_dict") else dict(c)
        config["diffusion"] = conv_diffusers.diffusion_config(modelscope)
    save_checkpoint(out, params, config)
    return out


def main(argv=None) -> int:
    from checkpoints_convert.common import run_cli  # noqa: PLC0415

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ckpt", help="StreamingT2V Lightning checkpoint (streaming_t2v.ckpt)")
    ap.add_argument("--unet-config", required=True, help="the ModelScope unet/config.json it was trained on")
    ap.add_argument("--modelscope", default=None, help="ModelScope diffusers folder (VAE + text encoder)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--trust-pickle", action="store_true", help="allow a full torch unpickle of the checkpoint")
    a = ap.parse_args(argv)
    return run_cli(lambda: convert(a.ckpt, a.unet_config, a.out, modelscope=a.modelscope,
                                   trust_pickle=a.trust_pickle))


if __name__ == "__main__":
    sys.exit(main())
