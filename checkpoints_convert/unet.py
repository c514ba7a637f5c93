"""Key plans for the 3D UNet in its two source layouts, and config builders.

* ``lvdm``: VideoCrafter2 ``model.diffusion_model.*`` (``input_blocks.N.M``, ...).
* ``diffusers``: ``UNet3DConditionModel`` (ModelScope, ``down_blocks.L.resnets.I``, ...).
* ``msvid2vid``: MS-Vid2Vid-XL's ``Vid2VidSDUNet`` (lvdm's names, two placements of its own).

All plans target the same Flax tree (:class:`vstar_jax.models.unet3d.UNet3D`).
"""
from __future__ import annotations

from typing import Mapping, Optional

import ml_collections

from vstar_jax.checkpoints_convert.common import Plan, apply_plan, p_conv, p_dense, p_norm
from vstar_jax.configs import unet_modelscope, unet_videocrafter2
from vstar_jax.models.unet3d import (UNet3D, check_unet_config, init_shapes, unet_base_channels, unet_level_attention,
                                     unet_level_widths)

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
    """Yield (level, down_has_attention, up_has_attention) for the UNet's levels (one shared derivation
    with the model: vstar_jax.models.unet3d.unet_level_attention)."""
    down, up = unet_level_attention(cfg)
    for level in range(len(down)):
        yield level, down[level], up[level]


def _needs_skip(cfg, level: int, i: int, up: bool) -> bool:
    """Whether a ResBlock changes its channel count (and so has a 1x1 skip conv)."""
    widths = unet_level_widths(cfg)
    out_ch = widths[level]
    if not up:
        in_ch = (widths[level - 1] if level > 0 else unet_base_channels(cfg)) if i == 0 else out_ch
        return in_ch != out_ch
    return True  # up blocks concatenate a skip (every width >= 1), so in > out


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
    n_levels = len(list(_levels(cfg)))
    k = 1
    for level, attn, _ in _levels(cfg):
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
    for level, _, attn in reversed(list(_levels(cfg))):
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


# ------------------------------------------------------------ MS-Vid2Vid-XL (StreamingT2V's refiner)


def plan_unet_msvid2vid(cfg) -> Plan:
    """MS-Vid2Vid-XL's ``Vid2VidSDUNet`` (Picsart-AI-Research/StreamingT2V, branch StreamingModelscope,
    ``t2v_enhanced/thirdparty/modelscope/models/multi_modal/video_to_video/modules/unet_v2v.py``). Its
    modules and leaf names are lvdm's (``input_blocks`` / ``middle_block`` / ``output_blocks`` / ``out``,
    ResBlock ``in_layers`` ... ``temopral_conv``), with two placements of its own: the temporal
    transformer after the input conv is the second module of the first input block
    (``input_blocks.0.1``, lvdm's ``init_attn.0``) and a Downsample sits in ``input_blocks`` bare
    (``input_blocks.N.op``, lvdm's ``input_blocks.N.0.op``). No fps embedding."""
    if cfg.fps_cond or not cfg.init_attn:
        raise ValueError("the MS-Vid2Vid-XL layout has a temporal transformer after conv_in and no fps embedding")
    plan: Plan = {}
    for key, dst in plan_unet_lvdm(cfg).items():
        if key.startswith("init_attn.0."):
            key = "input_blocks.0.1." + key[len("init_attn.0."):]
        elif dst[0][0].startswith("downsample_"):
            key = key.replace(".0.op.", ".op.")
        plan[key] = dst
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
    n_levels = len(list(_levels(cfg)))
    for level, attn, _ in _levels(cfg):
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
    for u, (level, _, attn) in enumerate(reversed(list(_levels(cfg)))):
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


PLANS = {"lvdm": plan_unet_lvdm, "diffusers": plan_unet_diffusers, "msvid2vid": plan_unet_msvid2vid}


def convert_unet(sd: Mapping, cfg, layout: str, *, dtype=None) -> dict:
    """Convert a UNet state dict (prefix already stripped) to Flax params for ``UNet3D(cfg)``."""
    if layout not in PLANS:
        raise ValueError(f"unknown UNet layout {layout!r}; choose one of {sorted(PLANS)}")
    expected = init_shapes(UNet3D(cfg))
    return apply_plan(sd, PLANS[layout](cfg), expected, component=f"unet ({layout})", dtype=dtype,
                      hints=shape_hints(cfg, layout))


def shape_hints(cfg, layout: str) -> dict:
    """Dimension -> the source config field that sets it, for the key report's "likely cause"."""
    lvdm = layout in ("lvdm", "msvid2vid")  # both name their widths as lvdm does (model_channels ~ dim)
    hints = {}
    for dim, field in ((int(cfg.in_channels), "in_channels"), (int(cfg.out_channels), "out_channels"),
                       (int(cfg.context_dim), "context_dim" if lvdm else "cross_attention_dim"),
                       (4 * unet_base_channels(cfg), "model_channels" if lvdm else "block_out_channels[0]")):
        hints.setdefault(dim, field)
    for level, w in enumerate(unet_level_widths(cfg)):
        hints[w] = "model_channels x channel_mult" if lvdm else "block_out_channels"
    return hints


# ------------------------------------------------------------ configs from source files


def _refuse(field: str, value, why: str):
    raise ValueError(f"unet config field {field}={value!r}: {why}")


def unet_config_from_lvdm(params: Mapping) -> ml_collections.ConfigDict:
    """Build the Flax UNet config from the ``unet_config.params`` block of a VideoCrafter YAML.

    Widths stay as lvdm states them (``model_channels`` x ``channel_mult``); heads as ``num_head_channels``
    (head width) or ``num_heads`` (head count, with num_head_channels -1). Whatever lvdm's ``UNetModel``
    cannot build or run is refused in one line naming the field."""
    if params.get("use_relative_position", False) and int(params.get("temporal_length") or 0) < 1:
        raise ValueError("use_relative_position=true needs temporal_length (the tables' max offset)")
    nhc, nh = params.get("num_head_channels", -1), params.get("num_heads", -1)
    nhc = -1 if nhc is None else nhc
    nh = -1 if nh is None else nh
    if nhc == -1 and nh == -1:
        _refuse("num_head_channels", nhc, "lvdm needs num_head_channels or num_heads")
    if nhc == -1 and params.get("addition_attention", False):
        _refuse("num_head_channels", nhc, "lvdm's init_attn (addition_attention) takes num_head_channels as its "
                                          "head width, so num_heads-only configs cannot build it")
    cfg = unet_videocrafter2.get_config()
    for key in ("in_channels", "out_channels", "model_channels", "num_res_blocks",
                "transformer_depth", "context_dim", "use_linear", "temporal_conv", "temporal_attention",
                "fps_cond"):
        if key in params:
            setattr(cfg, key, params[key])
    cfg.num_head_channels = nhc
    if nhc == -1:
        cfg.num_heads = int(nh)
    mult = tuple(params.get("channel_mult", cfg.channel_mult))
    if not mult:
        _refuse("channel_mult", mult, "needs at least one level")
    if mult[0] != 1:
        _refuse("channel_mult", list(mult), "lvdm's output conv takes model_channels inputs, so the first "
                                            "multiplier must be 1")
    cfg.channel_mult = mult
    cfg.attention_resolutions = tuple(params.get("attention_resolutions", cfg.attention_resolutions))
    cfg.init_attn = bool(params.get("addition_attention", False))
    cfg.use_relative_position = bool(params.get("use_relative_position", False))
    if cfg.use_relative_position:
        cfg.temporal_length = int(params["temporal_length"])
    if params.get("temporal_transformer_depth", 1) != cfg.transformer_depth:
        raise ValueError("temporal_transformer_depth different from transformer_depth is not supported")
    if params.get("use_scale_shift_norm", False) or params.get("resblock_updown", False):
        raise ValueError("use_scale_shift_norm / resblock_updown are not used by VideoCrafter2 and not supported")
    try:
        check_unet_config(cfg)  # lvdm's GroupNorms are 32 groups: every width must divide by 32
    except ValueError as e:
        raise ValueError(f"lvdm UNet config: {e}") from None
    return cfg


DIFFUSERS_DOWN = ("CrossAttnDownBlock3D", "DownBlock3D")
DIFFUSERS_UP = ("CrossAttnUpBlock3D", "UpBlock3D")
# UNet3DConditionModel fields the port does not implement with a non-default value (the default it has).
_DIFFUSERS_FIXED = {"act_fn": "silu", "norm_eps": 1e-5, "time_cond_proj_dim": None, "downsample_padding": 1,
                    "mid_block_scale_factor": 1}


def unet_config_from_diffusers(config: Mapping) -> ml_collections.ConfigDict:
    """Build the Flax UNet config from a diffusers ``unet/config.json`` (UNet3DConditionModel).

    The widths are kept as diffusers states them (``block_channels`` = ``block_out_channels``, any
    combination); heads are per level (heads = width // attention_head_dim, as diffusers floors it); the
    up path's attention follows ``up_block_types``. A config that ``UNet3DConditionModel`` refuses (or
    builds but cannot run) is refused here with one line naming the field."""
    downs = tuple(config.get("down_block_types", ["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"]))
    ups = tuple(config.get("up_block_types", ["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3))
    boc = tuple(config.get("block_out_channels", (320, 640, 1280, 1280)))
    if config.get("num_attention_heads") is not None:
        _refuse("num_attention_heads", config["num_attention_heads"],
                "UNet3DConditionModel refuses it (NotImplementedError in diffusers); give attention_head_dim")
    if len(downs) != len(ups):
        _refuse("up_block_types", list(ups), f"needs as many entries as down_block_types ({len(downs)})")
    if len(boc) != len(downs):
        _refuse("block_out_channels", list(boc), f"needs one width per down block ({len(downs)})")
    if not boc:
        _refuse("block_out_channels", list(boc), "needs at least one level")
    if any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in boc):
        _refuse("block_out_channels", list(boc), "widths must be positive integers")
    bad = [t for t in downs if t not in DIFFUSERS_DOWN]
    if bad:
        _refuse("down_block_types", list(downs), f"{bad[0]} is not a UNet3DConditionModel down block "
                                                  f"(use {' or '.join(DIFFUSERS_DOWN)})")
    bad = [t for t in ups if t not in DIFFUSERS_UP]
    if bad:
        _refuse("up_block_types", list(ups), f"{bad[0]} is not a UNet3DConditionModel up block "
                                              f"(use {' or '.join(DIFFUSERS_UP)})")
    head_dim = config.get("attention_head_dim", 64)
    if isinstance(head_dim, (list, tuple)):
        if len(head_dim) != len(downs):
            _refuse("attention_head_dim", list(head_dim), f"a per-level list needs one entry per down block "
                                                          f"({len(downs)})")
        _refuse("attention_head_dim", list(head_dim), "UNet3DConditionModel cannot build a per-level list "
                                                      "(its transformer_in takes one head width); give an int")
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 1:
        _refuse("attention_head_dim", head_dim, "must be a positive integer")
    groups = config.get("norm_num_groups", 32)
    if groups is None or isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        _refuse("norm_num_groups", groups, "UNet3DConditionModel needs a positive group count")
    for w in boc:
        if w % groups:
            _refuse("norm_num_groups", groups, f"does not divide block_out_channels width {w} (GroupNorm)")
    top = len(boc) - 1
    for level, (w, d, u) in enumerate(zip(boc, downs, reversed(ups))):
        if (level == top or d.startswith("CrossAttn") or u.startswith("CrossAttn")) and w // head_dim < 1:
            _refuse("attention_head_dim", head_dim, f"is wider than block_out_channels[{level}]={w} (0 heads; "
                                                    f"diffusers fails with a division by zero)")
    nres = config.get("layers_per_block", 2)
    if isinstance(nres, bool) or not isinstance(nres, int) or nres < 1:
        _refuse("layers_per_block", nres, "must be a positive integer")
    for key, default in _DIFFUSERS_FIXED.items():
        if config.get(key, default) != default:
            _refuse(key, config.get(key), f"only {default!r} is supported by the port")
    cfg = unet_modelscope.get_config()
    cfg.model_channels = boc[0]
    cfg.block_channels = boc
    cfg.channel_mult = None  # widths are block_channels (diffusers states widths, not multipliers)
    cfg.attention_resolutions = tuple(2 ** i for i, t in enumerate(downs) if t.startswith("CrossAttn"))
    # up_block_types run top level first: up_attention is per level, level 0 first
    cfg.up_attention = tuple(t.startswith("CrossAttn") for t in reversed(ups))
    cfg.num_res_blocks = nres
    cfg.num_head_channels = head_dim
    cfg.context_dim = config.get("cross_attention_dim", 1024)
    cfg.in_channels = config.get("in_channels", 4)
    cfg.out_channels = config.get("out_channels", 4)
    cfg.norm_groups = groups
    cfg.transformer_norm_groups = groups  # diffusers' transformers share the resnets' groups
    check_unet_config(cfg)
    return cfg
