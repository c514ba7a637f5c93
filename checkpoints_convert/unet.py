"""Key plans for the 3D UNet in its two source layouts, and config builders.

* ``lvdm``: VideoCrafter2 ``model.diffusion_model.*`` (``input_blocks.N.M``, ...).
* ``diffusers``: ``UNet3DConditionModel`` (ModelScope, ``down_blocks.L.resnets.I``, ...).

Both plans target the same Flax tree (:class:`vstar_jax.models.unet3d.UNet3D`).
"""
from __future__ import annotations

from typing import Mapping, Optional

import ml_collections
import numpy as np

from checkpoints_convert.common import Plan, apply_plan, p_conv, p_dense, p_norm

# ------------------------------------------------------------ shared sub-plans


def _transformer(plan: Plan, src: str, dst: tuple, depth: int, relative: bool = False):
    """Spatial or temporal transformer: identical leaf names in lvdm and diffusers. ``relative``: lvdm
    temporal attention with ``use_relative_position`` (k and v tables in attn1 and attn2)."""
    p_norm(plan, f"{src}.norm", dst + ("norm",))
    p_dense(plan, f"{src}.proj_in", dst + ("proj_in",))
    p_dense(plan, f"{src}.proj_out", dst + ("proj_out",))
    for d in range(depth):
        s, t = f"{src}.transformer_blocks.{d}", dst + (f"block_{d}",)
        for a in ("attn1", "attn2"):
            for qkv in ("to_q", "to_k", "to_v"):
                p_dense(plan, f"{s}.{a}.{qkv}", t + (a, qkv), bias=False)
            p_dense(plan, f"{s}.{a}.to_out.0", t + (a, "to_out"))
            if relative:
                for r in ("relative_position_k", "relative_position_v"):
                    plan[f"{s}.{a}.{r}.embeddings_table"] = (t + (a, r, "embeddings_table"), "identity")
        for n in ("norm1", "norm2", "norm3"):
            p_norm(plan, f"{s}.{n}", t + (n,))
        p_dense(plan, f"{s}.ff.net.0.proj", t + ("ff_in",))
        p_dense(plan, f"{s}.ff.net.2", t + ("ff_out",))


def _temporal_conv(plan: Plan, src: str, dst: tuple):
    for n in range(1, 5):
        p_norm(plan, f"{src}.conv{n}.0", dst + (f"norm{n}",))
        p_conv(plan, f"{src}.conv{n}.{2 if n == 1 else 3}", dst + (f"conv{n}",), "conv3d")


def _levels(cfg):
    """Yield (level, ds, has_attention) for the UNet's levels."""
    ds = 1
    for level in range(len(cfg.channel_mult)):
        yield level, ds, ds in tuple(cfg.attention_resolutions)
        ds *= 2


def _needs_skip(cfg, level: int, i: int, up: bool) -> bool:
    """Whether a ResBlock changes its channel count (and so has a 1x1 skip conv)."""
    mc, mult = cfg.model_channels, tuple(cfg.channel_mult)
    out_ch = mult[level] * mc
    if not up:
        in_ch = (mult[level - 1] * mc if level > 0 else mc) if i == 0 else out_ch
        return in_ch != out_ch
    return True  # up blocks always concatenate a skip, so in != out


# ------------------------------------------------------------ lvdm (VideoCrafter2)


def _lvdm_res(plan: Plan, src: str, dst: tuple, skip: bool, tconv: bool):
    p_norm(plan, f"{src}.in_layers.0", dst + ("in_norm",))
    p_conv(plan, f"{src}.in_layers.2", dst + ("in_conv",))
    p_dense(plan, f"{src}.emb_layers.1", dst + ("emb_proj",))
    p_norm(plan, f"{src}.out_layers.0", dst + ("out_norm",))
    p_conv(plan, f"{src}.out_layers.3", dst + ("out_conv",))
    if skip:
        p_conv(plan, f"{src}.skip_connection", dst + ("skip",))
    if tconv:
        _temporal_conv(plan, f"{src}.temopral_conv", dst + ("temporal_conv",))  # sic: the reference's spelling


def plan_unet_lvdm(cfg) -> Plan:
    plan: Plan = {}
    depth, tconv, tattn = cfg.transformer_depth, cfg.temporal_conv, cfg.temporal_attention
    rel = bool(cfg.get("use_relative_position", False))
    p_dense(plan, "time_embed.0", ("time_embed_1",))
    p_dense(plan, "time_embed.2", ("time_embed_2",))
    if cfg.fps_cond:
        p_dense(plan, "fps_embedding.0", ("fps_embed_1",))
        p_dense(plan, "fps_embedding.2", ("fps_embed_2",))
    p_conv(plan, "input_blocks.0.0", ("conv_in",))
    if cfg.init_attn:
        _transformer(plan, "init_attn.0", ("init_attn",), depth, rel)
    n_levels = len(cfg.channel_mult)
    k = 1
    for level, ds, attn in _levels(cfg):
        for i in range(cfg.num_res_blocks):
            name = f"down_{level}_{i}"
            _lvdm_res(plan, f"input_blocks.{k}.0", (f"{name}_res",), _needs_skip(cfg, level, i, False), tconv)
            if attn:
                _transformer(plan, f"input_blocks.{k}.1", (f"{name}_spatial",), depth)
                if tattn:
                    _transformer(plan, f"input_blocks.{k}.2", (f"{name}_temporal",), depth, rel)
            k += 1
        if level != n_levels - 1:
            p_conv(plan, f"input_blocks.{k}.0.op", (f"downsample_{level}",))
            k += 1
    _lvdm_res(plan, "middle_block.0", ("mid_res_0",), False, tconv)
    _transformer(plan, "middle_block.1", ("mid_spatial",), depth)
    if tattn:
        _transformer(plan, "middle_block.2", ("mid_temporal",), depth, rel)
    _lvdm_res(plan, f"middle_block.{3 if tattn else 2}", ("mid_res_1",), False, tconv)
    k = 0
    for level, ds, attn in reversed(list(_levels(cfg))):
        for i in range(cfg.num_res_blocks + 1):
            name = f"up_{level}_{i}"
            _lvdm_res(plan, f"output_blocks.{k}.0", (f"{name}_res",), True, tconv)
            j = 1
            if attn:
                _transformer(plan, f"output_blocks.{k}.1", (f"{name}_spatial",), depth)
                j = 2
                if tattn:
                    _transformer(plan, f"output_blocks.{k}.2", (f"{name}_temporal",), depth, rel)
                    j = 3
            if level != 0 and i == cfg.num_res_blocks:
                p_conv(plan, f"output_blocks.{k}.{j}.conv", (f"upsample_{level}",))
            k += 1
    p_norm(plan, "out.0", ("norm_out",))
    p_conv(plan, "out.2", ("conv_out",))
    return plan


# ------------------------------------------------------------ diffusers (ModelScope)


def _diffusers_res(plan: Plan, src: str, tsrc: Optional[str], dst: tuple, skip: bool):
    p_norm(plan, f"{src}.norm1", dst + ("in_norm",))
    p_conv(plan, f"{src}.conv1", dst + ("in_conv",))
    p_dense(plan, f"{src}.time_emb_proj", dst + ("emb_proj",))
    p_norm(plan, f"{src}.norm2", dst + ("out_norm",))
    p_conv(plan, f"{src}.conv2", dst + ("out_conv",))
    if skip:
        p_conv(plan, f"{src}.conv_shortcut", dst + ("skip",))
    if tsrc is not None:
        _temporal_conv(plan, tsrc, dst + ("temporal_conv",))


def plan_unet_diffusers(cfg) -> Plan:
    if not (cfg.temporal_conv and cfg.temporal_attention and cfg.init_attn) or cfg.fps_cond:
        raise ValueError("the diffusers UNet3DConditionModel layout has temporal convs, temporal attention, "
                         "transformer_in and no fps embedding")
    plan: Plan = {}
    depth = cfg.transformer_depth
    p_dense(plan, "time_embedding.linear_1", ("time_embed_1",))
    p_dense(plan, "time_embedding.linear_2", ("time_embed_2",))
    p_conv(plan, "conv_in", ("conv_in",))
    _transformer(plan, "transformer_in", ("init_attn",), depth)
    n_levels = len(cfg.channel_mult)
    for level, ds, attn in _levels(cfg):
        b = f"down_blocks.{level}"
        for i in range(cfg.num_res_blocks):
            name = f"down_{level}_{i}"
            _diffusers_res(plan, f"{b}.resnets.{i}", f"{b}.temp_convs.{i}", (f"{name}_res",),
                           _needs_skip(cfg, level, i, False))
            if attn:
                _transformer(plan, f"{b}.attentions.{i}", (f"{name}_spatial",), depth)
                _transformer(plan, f"{b}.temp_attentions.{i}", (f"{name}_temporal",), depth)
        if level != n_levels - 1:
            p_conv(plan, f"{b}.downsamplers.0.conv", (f"downsample_{level}",))
    _diffusers_res(plan, "mid_block.resnets.0", "mid_block.temp_convs.0", ("mid_res_0",), False)
    _transformer(plan, "mid_block.attentions.0", ("mid_spatial",), depth)
    _transformer(plan, "mid_block.temp_attentions.0", ("mid_temporal",), depth)
    _diffusers_res(plan, "mid_block.resnets.1", "mid_block.temp_convs.1", ("mid_res_1",), False)
    for u, (level, ds, attn) in enumerate(reversed(list(_levels(cfg)))):
        b = f"up_blocks.{u}"
        for i in range(cfg.num_res_blocks + 1):
            name = f"up_{level}_{i}"
            _diffusers_res(plan, f"{b}.resnets.{i}", f"{b}.temp_convs.{i}", (f"{name}_res",), True)
            if attn:
                _transformer(plan, f"{b}.attentions.{i}", (f"{name}_spatial",), depth)
                _transformer(plan, f"{b}.temp_attentions.{i}", (f"{name}_temporal",), depth)
        if level != 0:
            p_conv(plan, f"{b}.upsamplers.0.conv", (f"upsample_{level}",))
    p_norm(plan, "conv_norm_out", ("norm_out",))
    p_conv(plan, "conv_out", ("conv_out",))
    return plan


PLANS = {"lvdm": plan_unet_lvdm, "diffusers": plan_unet_diffusers}


def convert_unet(sd: Mapping, cfg, layout: str, *, dtype=None) -> dict:
    """Convert a UNet state dict (prefix already stripped) to Flax params for ``UNet3D(cfg)``."""
    from vstar_jax.models.unet3d import UNet3D, init_shapes

    if layout not in PLANS:
        raise ValueError(f"unknown UNet layout {layout!r}; choose one of {sorted(PLANS)}")
    expected = init_shapes(UNet3D(cfg))
    return apply_plan(sd, PLANS[layout](cfg), expected, component=f"unet ({layout})", dtype=dtype)


# ------------------------------------------------------------ configs from source files


def unet_config_from_lvdm(params: Mapping) -> ml_collections.ConfigDict:
    """Build the Flax UNet config from the ``unet_config.params`` block of a VideoCrafter YAML."""
    from configs.unet_videocrafter2 import get_config

    if params.get("use_relative_position", False) and int(params.get("temporal_length") or 0) < 1:
        raise ValueError("use_relative_position=true needs temporal_length (the tables' max offset)")
    if params.get("num_head_channels", -1) in (-1, None):
        raise ValueError("only num_head_channels-style configs are supported (VideoCrafter2 sets 64)")
    cfg = get_config()
    for key in ("in_channels", "out_channels", "model_channels", "num_res_blocks", "num_head_channels",
                "transformer_depth", "context_dim", "use_linear", "temporal_conv", "temporal_attention",
                "fps_cond"):
        if key in params:
            setattr(cfg, key, params[key])
    cfg.channel_mult = tuple(params.get("channel_mult", cfg.channel_mult))
    cfg.attention_resolutions = tuple(params.get("attention_resolutions", cfg.attention_resolutions))
    cfg.init_attn = bool(params.get("addition_attention", False))
    cfg.use_relative_position = bool(params.get("use_relative_position", False))
    if cfg.use_relative_position:
        cfg.temporal_length = int(params["temporal_length"])
    if params.get("temporal_transformer_depth", 1) != cfg.transformer_depth:
        raise ValueError("temporal_transformer_depth different from transformer_depth is not supported")
    if params.get("use_scale_shift_norm", False) or params.get("resblock_updown", False):
        raise ValueError("use_scale_shift_norm / resblock_updown are not used by VideoCrafter2 and not supported")
    return cfg


def unet_config_from_diffusers(config: Mapping) -> ml_collections.ConfigDict:
    """Build the Flax UNet config from a diffusers ``unet/config.json`` (UNet3DConditionModel)."""
    from configs.unet_modelscope import get_config

    cfg = get_config()
    boc = tuple(config.get("block_out_channels", (320, 640, 1280, 1280)))
    mc = boc[0]
    if any(c % mc for c in boc):
        raise ValueError(f"block_out_channels {boc} are not multiples of the first")
    head_dim = config.get("attention_head_dim", 64)
    if not isinstance(head_dim, int):
        raise ValueError("per-block attention_head_dim is not supported")
    downs = config.get("down_block_types", ["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"])
    cfg.model_channels = mc
    cfg.channel_mult = tuple(c // mc for c in boc)
    cfg.attention_resolutions = tuple(2 ** i for i, t in enumerate(downs) if t.startswith("CrossAttn"))
    cfg.num_res_blocks = config.get("layers_per_block", 2)
    cfg.num_head_channels = head_dim
    cfg.context_dim = config.get("cross_attention_dim", 1024)
    cfg.in_channels = config.get("in_channels", 4)
    cfg.out_channels = config.get("out_channels", 4)
    cfg.norm_groups = config.get("norm_num_groups", 32)
    cfg.transformer_norm_groups = cfg.norm_groups  # diffusers' transformers share the resnets' groups
    if config.get("norm_eps", 1e-5) != 1e-5:
        raise ValueError("norm_eps other than 1e-5 is not supported")
    return cfg


def count_source_params(sd: Mapping) -> int:
    return int(sum(np.prod(np.shape(sd[k])) for k in sd))
