"""VAE weights: LDM ``first_stage_model.*`` (VideoCrafter2) and diffusers ``vae/`` -> Flax params.

The key plan is derived from the model's own param tree: every Flax path names one LDM key
(``down_0_block_1/conv1/kernel`` <- ``encoder.down.0.block.1.conv1.weight``); the diffusers
layout renames those LDM keys (``encoder.down_blocks.0.resnets.1.conv1.weight``). Every missing,
unexpected or wrongly shaped key is reported by its checkpoint name in one ConversionError.

A config with VidRD's temporal decoder layers (``temporal``, :mod:`vstar_jax.models.temporal_decoder`)
names them ``decoder.up.{i}.temporal.{j}.*`` / ``decoder.mid.temporal_{1,2}.*`` (diffusers layout:
``decoder.up_blocks.{k}.temporal.{j}.*`` / ``decoder.mid_block.temporal.{0,1}.*``; the conv a torch
Conv3d (O, I, 3, 1, 1)). A source without them (every released image VAE) gets them freshly
initialised -- zero output projections, so the converted decoder is the source's image decoder exactly;
a source with some but not all of them is an error like any missing key.
"""
from __future__ import annotations

import re
from typing import Mapping, Optional, Sequence

import ml_collections
import numpy as np

from vstar_jax.checkpoints_convert.common import Plan, apply_plan, flatten
from vstar_jax.models.temporal_decoder import is_temporal_path, merge_params, with_temporal
from vstar_jax.models.vae import init_temporal_params, vae_param_shapes

_ATTN_DENSE = ("q", "k", "v", "proj_out")


def vae_config_from_ldm(ddconfig: Mapping, *, embed_dim: Optional[int] = None, scale_factor: float = 0.18215):
    """ConfigDict for :class:`AutoencoderKL` from an LDM ``ddconfig`` (+ ``embed_dim``, default z_channels)."""
    try:
        c = ml_collections.ConfigDict()
        c.in_channels = int(ddconfig["in_channels"])
        c.out_ch = int(ddconfig["out_ch"])
        c.ch = int(ddconfig["ch"])
        c.ch_mult = tuple(int(m) for m in ddconfig["ch_mult"])
        c.num_res_blocks = int(ddconfig["num_res_blocks"])
        c.attn_resolutions = tuple(int(r) for r in ddconfig.get("attn_resolutions", ()))
        c.resolution = int(ddconfig["resolution"])
        c.z_channels = int(ddconfig["z_channels"])
        c.double_z = bool(ddconfig.get("double_z", True))
    except KeyError as e:
        raise ValueError(f"ddconfig lacks {e.args[0]!r}") from None
    if ddconfig.get("attn_type", "vanilla") != "vanilla" or ddconfig.get("use_linear_attn", False):
        raise ValueError("only attn_type 'vanilla' VAEs are supported")
    c.embed_dim = int(embed_dim if embed_dim is not None else c.z_channels)
    c.norm_num_groups = 32
    c.norm_eps = 1e-6
    c.mid_attention = True
    c.use_quant_conv = True
    c.use_post_quant_conv = True
    c.scale_factor = float(scale_factor)
    return c


def vae_config_from_diffusers(config: Mapping):
    """ConfigDict from a diffusers ``vae/config.json`` dict (``AutoencoderKL``)."""
    boc = [int(x) for x in config.get("block_out_channels", (64,))]
    ch = boc[0]
    if any(c % ch for c in boc):
        raise ValueError(f"block_out_channels {boc} are not multiples of the first")
    down = config.get("down_block_types", ["DownEncoderBlock2D"] * len(boc))
    up = config.get("up_block_types", ["UpDecoderBlock2D"] * len(boc))
    if any(t != "DownEncoderBlock2D" for t in down) or any(t != "UpDecoderBlock2D" for t in up):
        raise ValueError(f"unsupported diffusers VAE block types {down} / {up}")
    if config.get("act_fn", "silu") != "silu":
        raise ValueError(f"unsupported VAE act_fn {config.get('act_fn')!r}")
    c = ml_collections.ConfigDict()
    c.in_channels = int(config.get("in_channels", 3))
    c.out_ch = int(config.get("out_channels", 3))
    c.ch = ch
    c.ch_mult = tuple(x // ch for x in boc)
    c.num_res_blocks = int(config.get("layers_per_block", 1))
    c.attn_resolutions = ()
    c.resolution = int(config.get("sample_size", 32))
    c.z_channels = int(config.get("latent_channels", 4))
    c.double_z = True
    c.embed_dim = c.z_channels
    c.norm_num_groups = int(config.get("norm_num_groups", 32))
    c.norm_eps = 1e-6
    c.mid_attention = bool(config.get("mid_block_add_attention", True))
    c.use_quant_conv = bool(config.get("use_quant_conv", True))
    c.use_post_quant_conv = bool(config.get("use_post_quant_conv", True))
    c.scale_factor = float(config.get("scaling_factor", 0.18215))
    return c


# -- Flax paths -> LDM names -----------------------------------------------------------------------

def _module_to_ldm(name: str) -> str:
    """``down_0_block_1`` -> ``down.0.block.1``; ``mid_attn_1`` -> ``mid.attn_1``; ``up_1_upsample`` -> ``up.1.upsample``."""
    m = re.fullmatch(r"(down|up)_(\d+)_(block|attn)_(\d+)", name)
    if m:
        return f"{m[1]}.{m[2]}.{m[3]}.{m[4]}"
    m = re.fullmatch(r"up_(\d+)_temporal_(\d+)", name)
    if m:
        return f"up.{m[1]}.temporal.{m[2]}"
    m = re.fullmatch(r"mid_temporal_(1|2)", name)
    if m:
        return f"mid.temporal_{m[1]}"
    m = re.fullmatch(r"(down|up)_(\d+)_(downsample|upsample)", name)
    if m:
        return f"{m[1]}.{m[2]}.{m[3]}"
    m = re.fullmatch(r"mid_(block_1|block_2|attn_1)", name)
    if m:
        return f"mid.{m[1]}"
    return name


def ldm_plan(expected) -> Plan:
    """LDM key -> (Flax path, transform) for every leaf of the VAE param tree ``expected``."""
    plan: Plan = {}
    for path in flatten(expected):
        *modules, leaf = path
        names = [_module_to_ldm(m) for m in modules]
        src = ".".join(names) + "." + ("bias" if leaf == "bias" else "weight")
        if leaf == "kernel":
            kind = "dense" if modules[-1] in _ATTN_DENSE else "conv3d" if is_temporal_path(path) else "conv2d"
        elif leaf in ("scale", "bias"):
            kind = "identity"
        else:
            raise RuntimeError(f"unexpected VAE param leaf {'/'.join(path)}")
        plan[src] = (tuple(path), kind)
    return plan


def _apply_with_temporal(sd, plan: Plan, expected, cfg, **kw):
    """apply_plan, where the temporal layers absent from ``sd`` (all of them) are freshly initialised."""
    temporal = {k: v for k, v in plan.items() if is_temporal_path(v[0])}
    if not temporal or any(k in sd for k in temporal):
        return apply_plan(sd, plan, expected, **kw)
    image_plan = {k: v for k, v in plan.items() if k not in temporal}
    image_expected = merge_params({"/".join(p): v for p, v in flatten(expected).items() if not is_temporal_path(p)})
    params = apply_plan(sd, image_plan, image_expected, **kw)
    fresh = init_temporal_params(cfg)
    want = {"/".join(p): tuple(v.shape) for p, v in flatten(expected).items() if is_temporal_path(p)}
    if {k: v.shape for k, v in fresh.items()} != want:
        raise RuntimeError(f"{kw.get('component', 'vae')}: fresh temporal params do not match the model's")
    flat = {"/".join(p): v for p, v in flatten(params).items()}
    return merge_params({**flat, **{k: v.astype(next(iter(flat.values())).dtype) for k, v in fresh.items()}})


MAX_ATTENTION_WINDOW = 16  # frames either side; VidRD-style banded attention uses 2 (the default)


def parse_temporal_spec(spec: Optional[str]) -> Optional[dict]:
    """Temporal-layer settings of a ``--vae-temporal`` spec: "conv", "attention", "conv,attention"
    (attention window 2) or "conv,attention:W" (window W); None for None/"" (the image decoder)."""
    if not spec:
        return None
    kinds, _, window = str(spec).partition(":")
    parts = {p.strip() for p in kinds.split(",") if p.strip()}
    if not parts or parts - {"conv", "attention"}:
        raise ValueError(f"--vae-temporal {spec!r}: give conv, attention or conv,attention (optionally :WINDOW)")
    try:
        w = int(window) if window else 2
    except ValueError:
        raise ValueError(f"--vae-temporal {spec!r}: the attention window must be an integer") from None
    if w > MAX_ATTENTION_WINDOW:
        raise ValueError(f"--vae-temporal {spec!r}: attention window {w} is over {MAX_ATTENTION_WINDOW} frames (each "
                         f"decoder layer adds it to the halo every decode window carries)")
    settings = {"conv": "conv" in parts, "attention": "attention" in parts, "attention_window": w}
    with_temporal({}, **settings)  # validated (window >= 1)
    return settings


def add_temporal(cfg, spec: Optional[str]):
    """``cfg`` with the temporal decoder layers of a ``--vae-temporal`` spec (unchanged for None/"")."""
    settings = parse_temporal_spec(spec)
    return cfg if settings is None else with_temporal(cfg, **settings)


def convert_vae_ldm(sd: Mapping[str, np.ndarray], cfg, *, ignore_prefixes: Sequence[str] = ()):
    """Flax params of an LDM VAE state dict (``first_stage_model.`` prefix already stripped).

    ``loss.*`` keys (training-only LPIPS/discriminator weights) are ignored by default."""
    expected = vae_param_shapes(cfg)
    return _apply_with_temporal(sd, ldm_plan(expected), expected, cfg, component="vae (LDM)",
                                ignore_prefixes=("loss.",) + tuple(ignore_prefixes))


# -- LDM names -> diffusers names -----------------------------------------------------------------

_DIFFUSERS_LEAF = {
    "nin_shortcut": "conv_shortcut",
    "norm": "group_norm",
    "q": "to_q",
    "k": "to_k",
    "v": "to_v",
    "proj_out": "to_out.0",
}


def ldm_key_to_diffusers(key: str, levels: int) -> str:
    """The diffusers ``AutoencoderKL`` name of an LDM VAE key (``levels`` = len(ch_mult))."""
    def leaf(rest: str, attn: bool) -> str:
        head, _, tail = rest.partition(".")
        if head == "nin_shortcut" or (attn and head in _DIFFUSERS_LEAF):
            head = _DIFFUSERS_LEAF[head]
        return f"{head}.{tail}"

    m = re.fullmatch(r"encoder\.down\.(\d+)\.(block|attn)\.(\d+)\.(.+)", key)
    if m:
        kind = "resnets" if m[2] == "block" else "attentions"
        return f"encoder.down_blocks.{m[1]}.{kind}.{m[3]}.{leaf(m[4], m[2] == 'attn')}"
    m = re.fullmatch(r"encoder\.down\.(\d+)\.downsample\.(.+)", key)
    if m:
        return f"encoder.down_blocks.{m[1]}.downsamplers.0.{m[2]}"
    m = re.fullmatch(r"decoder\.up\.(\d+)\.(block|attn)\.(\d+)\.(.+)", key)
    if m:
        kind = "resnets" if m[2] == "block" else "attentions"
        return f"decoder.up_blocks.{levels - 1 - int(m[1])}.{kind}.{m[3]}.{leaf(m[4], m[2] == 'attn')}"
    m = re.fullmatch(r"decoder\.up\.(\d+)\.upsample\.(.+)", key)
    if m:
        return f"decoder.up_blocks.{levels - 1 - int(m[1])}.upsamplers.0.{m[2]}"
    m = re.fullmatch(r"decoder\.up\.(\d+)\.temporal\.(\d+)\.(.+)", key)
    if m:
        return f"decoder.up_blocks.{levels - 1 - int(m[1])}.temporal.{m[2]}.{m[3]}"
    m = re.fullmatch(r"decoder\.mid\.temporal_(\d)\.(.+)", key)
    if m:
        return f"decoder.mid_block.temporal.{int(m[1]) - 1}.{m[2]}"
    m = re.fullmatch(r"(encoder|decoder)\.mid\.(block|attn)_(\d)\.(.+)", key)
    if m:
        kind = "resnets" if m[2] == "block" else "attentions"
        return f"{m[1]}.mid_block.{kind}.{int(m[3]) - 1}.{leaf(m[4], m[2] == 'attn')}"
    m = re.fullmatch(r"(encoder|decoder)\.norm_out\.(.+)", key)
    if m:
        return f"{m[1]}.conv_norm_out.{m[2]}"
    return key


def convert_vae_diffusers(sd: Mapping[str, np.ndarray], cfg, *, ignore_prefixes: Sequence[str] = ()):
    """Flax params of a diffusers ``AutoencoderKL`` state dict (``vae/diffusion_pytorch_model``)."""
    expected = vae_param_shapes(cfg)
    levels = len(cfg.ch_mult)
    plan = {ldm_key_to_diffusers(k, levels): v for k, v in ldm_plan(expected).items()}
    return _apply_with_temporal(sd, plan, expected, cfg, component="vae (diffusers)",
                                ignore_prefixes=tuple(ignore_prefixes))
