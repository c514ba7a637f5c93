"""StreamingT2V's video enhancer: chunked SDEdit with shared noise and randomized blending.

:mod:`.sdedit` is the loop (on the project's DDIM, CFG and randomized-blending machinery), :mod:`.job` the
``vstar-jax enhance`` job (read, encode, sample, write, sidecar), :mod:`.cli` its command line.
"""
from vstar_jax.enhance.job import (DEFAULTS, EnhanceRequest, EnhanceResult, encode_frames, enhance_video,
                                   make_enhance_request, regenerate_enhanced, resize_frames)
from vstar_jax.enhance.sdedit import chunk_noises, enhance_loop, sdedit_noised, sdedit_schedule, start_timestep

__all__ = ["DEFAULTS", "EnhanceRequest", "EnhanceResult", "encode_frames", "enhance_video", "make_enhance_request",
           "regenerate_enhanced", "resize_frames", "chunk_noises", "enhance_loop", "sdedit_noised", "sdedit_schedule",
           "start_timestep"]
