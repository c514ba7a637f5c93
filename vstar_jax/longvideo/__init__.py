"""Longer videos than one UNet pass: chunked denoising compiled as nested ``lax.scan`` loops.

``genl_sample`` (Gen-L-Video co-denoising) and ``blend_sample`` (StreamingT2V randomized
blending) in :mod:`.strategies`; window arithmetic in :mod:`.windows`; the pipeline's
``long_video`` setting in :mod:`.config`.
"""
from vstar_jax.longvideo.config import LongVideoConfig, parse_long_video
from vstar_jax.longvideo.strategies import blend_offsets, blend_sample, genl_sample

__all__ = ["LongVideoConfig", "parse_long_video", "genl_sample", "blend_sample", "blend_offsets"]
