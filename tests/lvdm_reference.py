"""VideoCrafter2's DDIM sampler transcribed in numpy, for the long-video strategies' reference tests.

This is written from the reference repository's code, not from ``vstar_jax.diffusion`` (a reference
built from the project's own schedule could not disagree with it). Repository AILab-CVC/VideoCrafter
(commit 11bcd76); the lines transcribed are cited at each piece. Precision follows the reference:
the training schedule is float64 numpy turned into float32 tensors, the DDIM parameters mix numpy
float64 and torch float32 (see ``make_schedule``), and ``p_sample_ddim`` builds every per-step scalar
with ``torch.full(..., dtype float32)``. The latent arithmetic is float64 here (the reference's is
float32): that is the math, and it keeps the tests' 1e-5 relative tolerance meaningful.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

f32 = np.float32


def torch_linspace_f64(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps, dtype=torch.float64)`` on CPU, bit for bit: the step is
    (end - start) / (steps - 1); the first half is start + step * i, the second half
    end - step * (steps - 1 - i), each a fused multiply-add (one rounding; done exactly with
    fractions here). Checked against torch 2.13 for the VideoCrafter2 betas."""
    step = (end - start) / (steps - 1)
    half = steps // 2
    out = [float(Fraction(start) + Fraction(step) * i) if i < half
           else float(Fraction(end) - Fraction(step) * (steps - 1 - i)) for i in range(steps)]
    return np.asarray(out, np.float64)


class LvdmDDIM:
    """``DDIMSampler.make_schedule`` + ``p_sample_ddim`` of lvdm, for a LatentDiffusion configured as
    VideoCrafter2 (configs/inference_t2v_512_v2.0.yaml: linear_start 0.00085, linear_end 0.012,
    timesteps 1000, use_scale true, scale_b 0.7; scale_a 1 and mid_step 400 are ddpm3d.py's defaults)."""

    def __init__(self, ddim_num_steps: int, ddim_eta: float, *, linear_start=0.00085, linear_end=0.012,
                 timesteps=1000, use_scale=True, scale_a=1.0, scale_b=0.7, mid_step=400):
        T = timesteps
        # lvdm/models/utils_diffusion.py:31-35,53 (make_beta_schedule "linear": torch float64 linspace of
        # the square roots, squared, .numpy()); lvdm/models/ddpm3d.py:120-121 (alphas = 1 - betas,
        # np.cumprod in float64); ddpm3d.py:130-133 (registered as a float32 tensor).
        betas = torch_linspace_f64(linear_start ** 0.5, linear_end ** 0.5, T) ** 2
        alphas_cumprod = np.cumprod(1.0 - betas, axis=0).astype(f32)

        # lvdm/models/utils_diffusion.py:56-70 (make_ddim_timesteps, "uniform"): range(0, T, T // S), + 1
        c = T // ddim_num_steps
        self.ddim_timesteps = np.asarray(list(range(0, T, c))) + 1

        # lvdm/models/samplers/ddim.py:50-56 calling utils_diffusion.py:73-85 (make_ddim_sampling_parameters)
        # with alphacums = the float32 tensor:
        #   alphas = alphacums[ddim_timesteps]                       -> float32 tensor
        #   alphas_prev = np.asarray([alphacums[0]] + [...].tolist()) -> float64 ndarray (float32 values)
        #   sigmas = eta * np.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev))
        # where ndarray / tensor is Tensor.__rtruediv__ = tensor.reciprocal() * ndarray: 1 / (1 - alphas)
        # is taken in float32 and the rest in float64 (tensor float32 op ndarray float64 -> float64).
        ts = self.ddim_timesteps
        self.ddim_alphas = alphas_cumprod[ts]  # float32
        self.ddim_alphas_prev = np.asarray([alphas_cumprod[0]] + alphas_cumprod[ts[:-1]].tolist(),
                                           dtype=np.float64)
        recip = (f32(1.0) / (f32(1.0) - self.ddim_alphas)).astype(np.float64)  # (1 - alphas).reciprocal()
        self.ddim_sigmas = ddim_eta * np.sqrt(
            recip * (1.0 - self.ddim_alphas_prev)
            * (1.0 - self.ddim_alphas.astype(np.float64) / self.ddim_alphas_prev))
        # ddim.py:56: np.sqrt(1. - ddim_alphas) on the float32 tensor -> float32
        self.ddim_sqrt_one_minus_alphas = np.sqrt(f32(1.0) - self.ddim_alphas).astype(f32)

        self.use_scale = use_scale
        if use_scale:
            # lvdm/models/ddpm3d.py:362-376 (fix_scale_bug False: the "bug" branch, scale_step = T):
            # linspace(scale_a, scale_b, mid_step) then T copies of scale_b, float32 tensor
            scale_arr = np.concatenate((np.linspace(scale_a, scale_b, mid_step), np.full(T, scale_b)))
            scale_arr = scale_arr.astype(f32)
            # ddim.py:35-40: ddim_scale_arr = scale_arr[ddim_timesteps] (float32 tensor);
            # ddim_scale_arr_prev = np.asarray([scale_arr[0]] + scale_arr[ddim_timesteps[:-1]].tolist())
            self.ddim_scale_arr = scale_arr[ts]
            self.ddim_scale_arr_prev = np.asarray([scale_arr[0]] + scale_arr[ts[:-1]].tolist(), dtype=np.float64)

    @property
    def total_steps(self) -> int:
        return int(self.ddim_timesteps.shape[0])

    def time_range(self):
        """lvdm/models/samplers/ddim.py:156-167: ``for i, step in enumerate(np.flip(timesteps))`` with
        ``index = total_steps - i - 1``; yields (i, step, index)."""
        n = self.total_steps
        for i, step in enumerate(np.flip(self.ddim_timesteps)):
            yield i, int(step), n - i - 1

    def scalars(self, index: int) -> dict:
        """ddim.py:264-267,283-285: the step's scalars as ``torch.full(size, value)`` makes them (float32)."""
        out = {"a_t": f32(self.ddim_alphas[index]), "a_prev": f32(self.ddim_alphas_prev[index]),
               "sigma_t": f32(self.ddim_sigmas[index]),
               "sqrt_one_minus_at": f32(self.ddim_sqrt_one_minus_alphas[index])}
        if self.use_scale:
            out["scale_t"] = f32(self.ddim_scale_arr[index])
            out["scale_t_prev"] = f32(self.ddim_scale_arr_prev[index])
        return out

    def p_sample_ddim(self, x, e_t, index: int, noise=None):
        """lvdm/models/samplers/ddim.py:269-291 (after the guidance of 222-236): returns (x_prev, pred_x0).
        ``noise``: the standard normal draw of ``noise_like`` (None: eta = 0, nothing added)."""
        s = self.scalars(index)
        x = np.asarray(x, np.float64)
        e_t = np.asarray(e_t, np.float64)
        pred_x0 = (x - s["sqrt_one_minus_at"] * e_t) / np.sqrt(s["a_t"])  # a_t.sqrt() in float32
        dir_xt = np.sqrt(f32(1.0) - s["a_prev"] - s["sigma_t"] ** 2) * e_t  # float32 scalar expression
        noise_term = 0.0 if noise is None else s["sigma_t"] * np.asarray(noise, np.float64)
        if self.use_scale:
            pred_x0 = pred_x0 / s["scale_t"]
            x_prev = (np.sqrt(s["a_prev"]) * s["scale_t_prev"]) * pred_x0 + dir_xt + noise_term
        else:
            x_prev = np.sqrt(s["a_prev"]) * pred_x0 + dir_xt + noise_term
        return x_prev, pred_x0

    def eps_from_x0(self, x, x0, index: int):
        """The eps whose lvdm ``pred_x0`` is ``x0`` at this step: x0 = (x - sqrt(1-a) eps) / sqrt(a) / scale
        solved for eps -- what modelscope's ``GaussianDiffusion_SDEdit.denoise`` does after restricting x0
        (StreamingT2V, branch StreamingModelscope, t2v_enhanced/thirdparty/modelscope/models/multi_modal/
        video_to_video/utils/diffusion_sdedit.py:105-106: eps = (xt - alphas * x0) / sigmas), with lvdm's
        scale folded into the x0 coefficient."""
        s = self.scalars(index)
        coef = np.sqrt(s["a_t"]) * (s["scale_t"] if self.use_scale else f32(1.0))
        return (np.asarray(x, np.float64) - coef * np.asarray(x0, np.float64)) / s["sqrt_one_minus_at"]


def cfg(e_t_uncond, e_t, scale):
    """lvdm/models/samplers/ddim.py:236: e_t = e_t_uncond + scale * (e_t - e_t_uncond)."""
    return e_t_uncond + scale * (e_t - e_t_uncond)
