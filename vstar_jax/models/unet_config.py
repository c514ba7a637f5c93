"""The UNet's typed config: :class:`UNetConfig`, made once from the ml_collections config (or a plain
dict, or a checkpoint's saved ``config.json`` ``unet`` block) by :meth:`UNetConfig.from_config`.

Every key the UNet, StreamingT2V's CAM / APM and the demo-model options read is a field here, with
the default the UNet has always used. A key that is not a field is refused in one line naming it and
the nearest field (a misspelt key no longer silently takes its default); so is a value of the wrong
type, and a layout the UNet cannot build (GroupNorm groups that do not divide a width, a level with
attention but no heads, ...). No saved checkpoint carries a key that is not a field: every key any
revision of the UNet, its configs or its converters has read or written is one (so there is no legacy
table of renamed keys; one would go beside ``_FIELDS`` if a key were ever renamed).

The per-level layout (widths, heads, attention flags) is derived here, in one place, from either
config form: ``block_channels`` (per-level widths as a diffusers ``block_out_channels`` states them)
or lvdm's ``model_channels`` x ``channel_mult``; the model, the converters' key plans and the
pipeline all read it from here.
"""
from __future__ import annotations

import dataclasses
import difflib
import operator
from typing import Any, Optional, Union

import jax.numpy as jnp

from vstar_jax.errors import VstarError
from vstar_jax.models.attention import BACKENDS
from vstar_jax.models.demo_options import FRAME_CLOCKS, frame_clock

_JNP_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
DTYPES = tuple(_JNP_DTYPES)


def _kind(kind: str, default=dataclasses.MISSING, **meta):
    """A dataclass field whose config value is parsed as ``kind`` (see ``_PARSERS``)."""
    return dataclasses.field(default=default, metadata={"kind": kind, **meta})


@dataclasses.dataclass(frozen=True)
class CAMConfig:
    """StreamingT2V CAM settings (``unet.cam``; vstar_jax.models.streaming): conditioning frames C, their
    channels (latent channels for latent conditioning), the frame encoder's widths c_0..c_last and
    whether its stages downsample (pixel frames), the mergers' head width and GroupNorm groups."""

    frames: int = _kind("pos_int", 8)
    cond_channels: int = _kind("pos_int", 3)
    embed_channels: tuple = _kind("pos_ints", (32, 96, 256, 512))
    downsample: bool = _kind("bool", True)
    head_dim: int = _kind("pos_int", 64)
    norm_groups: int = _kind("pos_int", 32)


@dataclasses.dataclass(frozen=True)
class APMConfig:
    """StreamingT2V APM settings (``unet.apm``): image tokens T, the image embedding's width D, the
    resampler's hidden width, the text tokens ahead of the image tokens, and the image encoder
    (``latent``: the demo model's parameter-free stand-in; anything else: an OpenCLIP tower)."""

    tokens: int = _kind("pos_int", 16)
    image_dim: int = _kind("pos_int", 1024)
    hidden: int = _kind("pos_int", 1280)
    text_len: int = _kind("pos_int", 77)
    image_encoder: str = _kind("str", "openclip_vit_h14")


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Every setting of the 3D UNet (configs/unet_*.py), typed. Build with :meth:`from_config`."""

    # required (None only while a partial config is read for its layout; ``check`` refuses it)
    in_channels: Optional[int] = _kind("pos_int", None, required=True)
    out_channels: Optional[int] = _kind("pos_int", None, required=True)
    num_res_blocks: Optional[int] = _kind("pos_int", None, required=True)
    context_dim: Optional[int] = _kind("pos_int", None, required=True)
    # widths: block_channels (per level), or model_channels x channel_mult; model_channels is also the
    # width of conv_in / init_attn and of the timestep sinusoid (default: level 0's width)
    model_channels: Optional[int] = _kind("pos_int?", None)
    channel_mult: Optional[tuple] = _kind("ints?", None)
    block_channels: Optional[tuple] = _kind("ints?", None)
    attention_resolutions: tuple = _kind("ints0", ())  # downsampling factors 2 ** level with attention
    up_attention: Optional[tuple] = _kind("bools?", None)  # per level (level 0 first); None: as down
    # heads: num_head_channels (head width; one int or one per level), else num_heads (-1 / None: unset)
    num_head_channels: Union[int, tuple, None] = _kind("int_or_ints?", -1)
    num_heads: Union[int, tuple, None] = _kind("int_or_ints?", -1)
    transformer_depth: int = _kind("pos_int", 1)
    norm_groups: int = _kind("int", 32)  # ResBlock / output GroupNorms
    transformer_norm_groups: int = _kind("int", 32)  # transformers' GroupNorm (lvdm: always 32)
    temporal_conv: bool = _kind("bool", True)
    temporal_attention: bool = _kind("bool", True)
    init_attn: bool = _kind("bool", True)  # temporal attention after conv_in (lvdm addition_attention)
    init_attn_heads: int = _kind("pos_int", 8)
    init_attn_head_dim: Optional[int] = _kind("int?", None)  # default: num_head_channels (an int)
    fps_cond: bool = _kind("bool", False)  # VideoCrafter2's fps embedding
    use_relative_position: bool = _kind("bool", False)  # lvdm relative positions in temporal attention
    temporal_length: int = _kind("int", 16)  # their max frame offset, when on
    # the down / up convs' geometry: MS-Vid2Vid-XL (StreamingT2V's refiner) pads its downsampling convs
    # (2, 1) (rows, columns) and crops one row top and bottom after each 2x nearest upsampling, so that
    # its 90-row latents (720p) go 90 -> 46 -> 24 -> 13 and back; everything else pads 1 and crops 0
    downsample_padding: tuple = _kind("pos_ints", (1, 1))
    upsample_crop: int = _kind("int", 0)
    dtype: str = _kind("str", "float32", choices=DTYPES)  # activations / matmuls
    param_dtype: str = _kind("str", "float32", choices=DTYPES)
    attention_backend: str = _kind("str", "xla", choices=BACKENDS)
    remat: bool = _kind("bool", False)  # recompute each block's activations in the backward pass
    # demo-model options (not in VideoCrafter2 / ModelScope; vstar_jax.models.demo_options)
    frame_position: bool = _kind("bool", False)
    text_frame_cond: bool = _kind("bool", False)
    # the frame clock those two options read (demo_options.frame_clock): "normalised" t = i / (f - 1) (the
    # default demo model), "clipped" t = min(i, trained_frames - 1) / (trained_frames - 1) (demo_vc: a
    # trained length), "none" t = 0 (no absolute clock: frame order only from the temporal attention)
    frame_clock: str = _kind("str", "normalised", choices=FRAME_CLOCKS)
    trained_frames: int = _kind("int", 0)  # the clipped clock's length (>= 2); unused by the others
    # StreamingT2V (vstar_jax.models.streaming): absent / empty = off
    cam: Optional[CAMConfig] = _kind("cam", None)
    apm: Optional[APMConfig] = _kind("apm", None)
    # what the converters record; the UNet does not read them
    layout: Optional[str] = _kind("str?", None)  # source key layout: lvdm | diffusers | msvid2vid | demo
    use_linear: bool = _kind("bool", True)  # spatial proj_in / proj_out Linear (else 1x1 conv: the same map)

    # ------------------------------------------------------------ building
    @classmethod
    def from_config(cls, cfg, *, check: bool = True) -> "UNetConfig":
        """``cfg``: an ml_collections ConfigDict, a plain mapping or a UNetConfig. Unknown keys and
        values of the wrong type are refused in one line (VstarError); with ``check`` (default) so are
        a missing required key and a layout the UNet cannot build (without: a partial config, read for
        its per-level layout or its CAM / APM settings)."""
        if isinstance(cfg, UNetConfig):
            out = cfg
        else:
            out = cls(**_parse(cls, _as_dict(cfg, "unet"), "unet"))
        if check:
            out.check()
        return out

    def replace(self, **changes) -> "UNetConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The config as a plain dict (what ``from_config`` reads back)."""
        return dataclasses.asdict(self)

    def video_clock(self, frames: int):
        """(frames,) the demo options' frame clock of a whole video of ``frames`` frames
        (:func:`~vstar_jax.models.demo_options.frame_clock` with this UNet's ``frame_clock``), whose slices
        a chunked sampler hands each chunk (the UNet's ``frame_times``); None for a UNet without the
        options (no clock: the real text-to-video models)."""
        if not (self.frame_position or self.text_frame_cond):
            return None
        return frame_clock(int(frames), self.frame_clock, self.trained_frames)

    @property
    def compute_dtype(self):
        """Activations' and matmuls' dtype (``dtype``) as a jnp dtype."""
        return _JNP_DTYPES[self.dtype]

    @property
    def weight_dtype(self):
        """Parameters' dtype (``param_dtype``) as a jnp dtype."""
        return _JNP_DTYPES[self.param_dtype]

    # ------------------------------------------------------------ the per-level layout
    @property
    def widths(self) -> tuple:
        """Per-level channel widths: ``block_channels`` when given, else ``model_channels`` x ``channel_mult``."""
        bc, mult, mc = self.block_channels, self.channel_mult, self.model_channels
        if bc is not None:
            widths = _int_list(bc, "block_channels")
            if mult is not None and mc is not None and tuple(int(m) * int(mc) for m in mult) != widths:
                raise VstarError(f"unet.block_channels {list(widths)} disagrees with model_channels x channel_mult "
                                 f"({mc} x {list(mult)}); give one form")
        elif mult is not None:
            if mc is None:
                raise VstarError("unet.channel_mult needs model_channels")
            widths = tuple(m * int(mc) for m in _int_list(mult, "channel_mult"))
        else:
            raise VstarError("unet config needs block_channels (per-level widths) or model_channels + channel_mult")
        if any(w < 1 for w in widths):
            raise VstarError(f"unet.block_channels / channel_mult: widths must be positive, got {list(widths)}")
        return widths

    @property
    def num_levels(self) -> int:
        """Number of UNet levels (resolutions): the latent must divide by 2 ** (levels - 1)."""
        return len(self.widths)

    @property
    def base_channels(self) -> int:
        """Width of conv_in / init_attn and of the timestep sinusoid: model_channels (default: level 0's width)."""
        return int(self.model_channels) if self.model_channels is not None else self.widths[0]

    @property
    def level_attention(self) -> tuple:
        """(down, up): per-level flags, whether that level's down / up ResBlocks carry spatial+temporal
        transformers. Down from ``attention_resolutions`` (downsampling factors 2 ** level); up the same
        unless ``up_attention`` (one flag per level, level 0 first) says otherwise (diffusers up_block_types)."""
        n = self.num_levels
        down = tuple(2 ** level in self.attention_resolutions for level in range(n))
        if self.up_attention is None:
            return down, down
        if len(self.up_attention) != n:
            raise VstarError(f"unet.up_attention has {len(self.up_attention)} flags for {n} levels")
        return down, self.up_attention

    @property
    def level_heads(self) -> tuple:
        """(heads, head_dim) of each level's transformers. ``num_head_channels``: head width, one int or one
        per level (heads = width // head_dim, as lvdm and diffusers floor it); or, with num_head_channels
        -1/None, ``num_heads`` (one int or one per level; head_dim = width // heads, lvdm's num_heads form).
        Levels whose layout cannot work (0 heads or 0-wide heads) get None and are refused where used."""
        widths = self.widths
        n = len(widths)

        def per_level(value, field):
            vals = _int_list(value, field)
            if len(vals) == 1 and not isinstance(value, tuple):
                return vals * n
            if len(vals) != n:
                raise VstarError(f"unet.{field} has {len(vals)} entries for {n} levels")
            return vals

        nhc, out = self.num_head_channels, []
        if nhc is not None and nhc != -1:
            for w, hd in zip(widths, per_level(nhc, "num_head_channels")):
                out.append((w // hd, hd) if hd > 0 and w // hd > 0 else None)
        else:
            nh = self.num_heads
            if nh is None or nh == -1:
                raise VstarError("unet config needs num_head_channels (head width) or num_heads")
            for w, h in zip(widths, per_level(nh, "num_heads")):
                out.append((h, w // h) if h > 0 and w // h > 0 else None)
        return tuple(out)

    @property
    def init_attn_width(self) -> int:
        """``init_attn``'s head width: init_attn_head_dim, else num_head_channels when it is one int."""
        hd = self.init_attn_head_dim or self.num_head_channels
        if isinstance(hd, tuple) or hd is None or int(hd) < 1:
            raise VstarError("init_attn needs one head width: set unet.init_attn_head_dim (or an int "
                             "num_head_channels)")
        return int(hd)

    @property
    def relative_position(self) -> int:
        """lvdm use_relative_position: the tables' max frame offset (temporal_length); 0 = off."""
        return int(self.temporal_length) if self.use_relative_position else 0

    def latent_fits(self, size: int, axis: int) -> bool:
        """Whether a latent side of ``size`` along ``axis`` (0 rows, 1 columns) goes down and back up
        this UNet's levels to itself with ``downsample_padding`` / ``upsample_crop`` (rows only). Without
        a crop the decoder resizes to each skip, and the project asks sides divisible by 2 ** (levels - 1)."""
        crop = self.upsample_crop if axis == 0 else 0
        if not crop:
            return size % 2 ** (self.num_levels - 1) == 0
        sizes = [int(size)]
        for _ in range(self.num_levels - 1):
            sizes.append((sizes[-1] + 2 * self.downsample_padding[axis] - 3) // 2 + 1)
        return all(2 * small - 2 * crop == big for big, small in zip(sizes, sizes[1:]))

    @property
    def streaming(self) -> bool:
        """Whether StreamingT2V's CAM or APM is on (the UNet is then vstar_jax.models.streaming.StreamingUNet)."""
        return self.cam is not None or self.apm is not None

    def without_streaming(self) -> "UNetConfig":
        """The base UNet's config: this one without CAM and APM."""
        return self.replace(cam=None, apm=None)

    # ------------------------------------------------------------ what the UNet cannot build
    def check(self) -> None:
        """Refuse, in one line naming the field, a config the UNet cannot build (GroupNorm groups that do
        not divide a width, empty heads at a level with attention, ...)."""
        missing = [f.name for f in dataclasses.fields(self)
                   if f.metadata.get("required") and getattr(self, f.name) is None]
        if missing:
            raise VstarError(f"unet config lacks {', '.join(missing)}")
        widths = self.widths
        mc = self.base_channels
        down, up = self.level_attention
        heads = self.level_heads
        groups, tgroups = self.norm_groups, self.transformer_norm_groups
        if groups < 1 or tgroups < 1:
            raise VstarError(f"unet.norm_groups / transformer_norm_groups must be >= 1, got {groups} / {tgroups}")
        for name, w in [("model_channels", mc)] + [(f"level {i} width", w) for i, w in enumerate(widths)]:
            if w % groups:
                raise VstarError(f"unet.norm_groups {groups} does not divide {name} {w}")
        top = len(widths) - 1
        for level, w in enumerate(widths):
            if down[level] or up[level] or level == top:
                if w % tgroups:
                    raise VstarError(f"unet.transformer_norm_groups {tgroups} does not divide level {level} "
                                     f"width {w}")
                if heads[level] is None:
                    raise VstarError(f"unet head layout (num_head_channels / num_heads) gives no heads at level "
                                     f"{level} (width {w})")
        if self.init_attn:
            if mc % tgroups:
                raise VstarError(f"unet.transformer_norm_groups {tgroups} does not divide model_channels {mc}")
            _ = self.init_attn_width
        if len(self.downsample_padding) != 2:
            raise VstarError(f"unet.downsample_padding must be (rows, columns), got {list(self.downsample_padding)}")
        if self.upsample_crop < 0:
            raise VstarError(f"unet.upsample_crop must be >= 0, got {self.upsample_crop}")
        if self.frame_clock == "clipped" and self.trained_frames < 2:
            raise VstarError(f"unet.frame_clock 'clipped' needs unet.trained_frames >= 2, got {self.trained_frames}")
        if self.use_relative_position and self.temporal_length < 1:
            raise VstarError(f"use_relative_position needs temporal_length >= 1, got {self.temporal_length}")


# ---------------------------------------------------------------- the functions the converters call
def unet_level_widths(cfg) -> tuple:
    """Per-level channel widths of a UNet config (any form :meth:`UNetConfig.from_config` takes)."""
    return UNetConfig.from_config(cfg, check=False).widths


def unet_num_levels(cfg) -> int:
    return UNetConfig.from_config(cfg, check=False).num_levels


def unet_base_channels(cfg) -> int:
    return UNetConfig.from_config(cfg, check=False).base_channels


def unet_level_attention(cfg) -> tuple:
    return UNetConfig.from_config(cfg, check=False).level_attention


def unet_level_heads(cfg) -> tuple:
    return UNetConfig.from_config(cfg, check=False).level_heads


def check_unet_config(cfg) -> None:
    """Refuse (VstarError, a ValueError, one line) a UNet config the UNet cannot build."""
    UNetConfig.from_config(cfg)


# ---------------------------------------------------------------- parsing
def _as_dict(value, where: str) -> dict:
    if hasattr(value, "to_dict"):  # ml_collections ConfigDict / FrozenConfigDict
        value = value.to_dict()
    if not hasattr(value, "keys"):
        raise VstarError(f"{where} config must be a mapping, got {type(value).__name__}")
    return {str(k): value[k] for k in value.keys()}


def _parse(cls, raw: dict, where: str) -> dict:
    """{field: parsed value} of ``raw``; unknown keys and wrong types refused."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in raw if k not in fields]
    if unknown:
        def near(k):
            m = difflib.get_close_matches(k, fields, n=1)
            return f"'{k}' (did you mean '{m[0]}'?)" if m else f"'{k}'"

        raise VstarError(f"{where} config: unknown key{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(near(k) for k in unknown)}")
    out = {}
    for name, value in raw.items():
        meta = fields[name].metadata
        out[name] = _PARSERS[meta["kind"]](value, f"{where}.{name}")
        if "choices" in meta and out[name] not in meta["choices"]:
            raise VstarError(f"{where}.{name} must be one of {', '.join(meta['choices'])}, got {value!r}")
    return out


def _int_list(value, field: str) -> tuple:
    vals = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    try:
        ints = tuple(operator.index(v) for v in vals)
    except TypeError:
        ints = ()
    if not ints or any(isinstance(v, bool) for v in vals):
        raise VstarError(f"unet.{field} must be integers, got {value!r}")
    return ints


def _int(value, where):
    if isinstance(value, bool):
        raise VstarError(f"{where} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise VstarError(f"{where} must be an integer, got {value!r}") from None


def _pos_int(value, where):
    v = _int(value, where)
    if v < 1:
        raise VstarError(f"{where} must be >= 1, got {v}")
    return v


def _bool(value, where):
    if isinstance(value, bool):
        return value
    if type(value) is int and value in (0, 1):
        return bool(value)
    raise VstarError(f"{where} must be true or false, got {value!r}")


def _str(value, where):
    if not isinstance(value, str):
        raise VstarError(f"{where} must be a string, got {value!r}")
    return value


def _seq(value, where, item):
    if not isinstance(value, (list, tuple)):
        raise VstarError(f"{where} must be a list, got {value!r}")
    return tuple(item(v, where) for v in value)


def _optional(parse):
    return lambda value, where: None if value is None else parse(value, where)


def _section(cls):
    """CAM / APM settings: None, empty or false = off; else a mapping over the defaults."""
    return lambda value, where: cls(**_parse(cls, _as_dict(value, where), where)) if value else None


_PARSERS = {
    "int": _int, "int?": _optional(_int), "pos_int": _pos_int, "pos_int?": _optional(_pos_int),
    "bool": _bool, "str": _str, "str?": _optional(_str),
    "ints?": lambda v, w: None if v is None else _seq(v, w, _int),
    "ints0": lambda v, w: () if v is None else _seq(v, w, _int),  # None: empty
    "pos_ints": lambda v, w: _seq(v, w, _pos_int),
    "bools?": _optional(lambda v, w: _seq(v, w, _bool)),
    "int_or_ints?": _optional(lambda v, w: _seq(v, w, _int) if isinstance(v, (list, tuple)) else _int(v, w)),
    "cam": _section(CAMConfig), "apm": _section(APMConfig),
}
