"""``single``: one pass over all frames (the plain sampler; the default strategy): DDIM, or DPM++ 2M SDE when
the schedule is one (:mod:`vstar_jax.diffusion.dpm_solver`)."""
from __future__ import annotations

import dataclasses

from vstar_jax.diffusion.sampler import ddim_loop
from vstar_jax.errors import VstarError
from vstar_jax.longvideo.base import Plan, SampleInputs, Strategy, register


@register
@dataclasses.dataclass(frozen=True)
class Single(Strategy):
    """The UNet sees every frame at every step: VideoCrafter2/ModelScope as the reference runs them."""

    name = "single"
    SOLVERS = ("ddim", "dpmpp_2m_sde")

    def check(self, frames: int, steps: int) -> Plan:
        if frames < 1:
            raise VstarError(f"frames must be >= 1, got {frames}")
        return Plan(int(frames), int(steps))

    def _loop(self, model_fn, inputs: SampleInputs, capture: bool, return_x0: bool):
        return ddim_loop(model_fn, inputs.x_T, inputs.context, inputs.coeffs, inputs.cfg_scale, inputs.keys,
                         guided=inputs.guided, use_noise=inputs.use_noise, return_x0=return_x0, capture=capture,
                         rescale=inputs.rescale, frame_times=inputs.frame_times)
