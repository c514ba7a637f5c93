"""Longer videos than one UNet pass: every method is a :class:`~.base.Strategy` registered by name.

``single`` (one pass), ``genl`` (Gen-L-Video co-denoising), ``blend`` (StreamingT2V randomized
blending), ``freenoise`` (FreeNoise), ``fifo`` (FIFO-Diffusion), ``vidrd`` (Reuse and Diffuse), ``streaming``
(StreamingT2V's CAM/APM autoregressive extension);
:func:`parse_strategy` turns a spec (``"genl:16:8"``, a dict or None) into one, and
``strategy.sample(denoiser, x_T, cond, uncond, schedule, key=...)`` samples with it (the one sampler every
path calls). Window arithmetic in :mod:`.windows`.
"""
from vstar_jax.longvideo.base import REGISTRY, Plan, SampleInputs, Strategy, known_methods, parse_strategy
from vstar_jax.longvideo.blend import Blend, blend_offsets
from vstar_jax.longvideo.fifo import FIFO
from vstar_jax.longvideo.freenoise import FreeNoise
from vstar_jax.longvideo.genl import GenL
from vstar_jax.longvideo.single import Single
from vstar_jax.longvideo.streaming import Streaming
from vstar_jax.longvideo.vidrd import VidRD

__all__ = ["REGISTRY", "Plan", "SampleInputs", "Strategy", "known_methods", "parse_strategy", "Single", "GenL",
           "Blend", "FreeNoise", "FIFO", "VidRD", "Streaming", "blend_offsets"]
