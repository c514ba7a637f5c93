"""DPM-Solver++ (2M) SDE: the enhancer's solver in StreamingT2V's MS-Vid2Vid-XL refiner, as a solver of
the project's one sampler (the schedule carries the solver; the loops step with
:func:`~vstar_jax.diffusion.sampler.solver_step`).

Reference (Picsart-AI-Research/StreamingT2V, branch ``StreamingModelscope``,
``t2v_enhanced/thirdparty/modelscope/models/multi_modal/video_to_video/``):

* ``utils/diffusion_sdedit.py`` ``GaussianDiffusion_SDEdit.sample`` (lines 141-237): solver
  ``dpmpp_2m_sde`` (the only one in its table: ``heun`` is commented out, lines 142-145), not karras (its
  name lacks "karras", line 148), ``steps + 1`` timesteps (``discard_penultimate_step``, lines 153-156, 192)
  discretised ``trailing`` from ``t_max`` to 0 (lines 203-208: ``arange(t_max, t_min - 1, -(t_max - t_min
  + 1) / steps)``, clamped), as k-diffusion sigmas ``_t_to_sigma`` (lines 260-268: log sigma interpolated
  between integer t, sigma = sqrt(s^2 / (1 - s^2)) of the VP level s), a 0 appended and the penultimate
  sigma dropped (lines 213-234); the model's timestep is ``round(_sigma_to_t(sigma))`` (lines 166, 240-258);
* ``utils/solvers_sdedit.py`` ``sample_dpmpp_2m_sde`` (lines 141-195): ``x = noise * sigmas[0]``, the
  model sees ``x * c_in`` (``c_in = 1 / sqrt(sigma^2 + 1)``, lines 25-28) and returns x0 (``denoised``);
  t = -log sigma, h = t_next - t, x <- sigma'/sigma e^{-eta h} x + (1 - e^{-h - eta h}) x0, plus (from the
  second step, midpoint) 0.5 (1 - e^{-h - eta h}) (h / h_last) (x0 - x0_prev), plus sigma' sqrt(1 -
  e^{-2 eta h}) s_noise z; the last step (sigma' = 0) returns x0 itself (the posterior mean, no sample);
  eta = s_noise = 1 (defaults, not overridden by ``video_to_video_model.py`` line 238-252);
* ``video_to_video_model.py`` ``forward`` (lines 227-252): the long latent is noised to t = T' - 1 by the
  VP forward process and handed to the solver as its ``noise``, so the solver's first state is that
  latent times sigma_0: the model first sees it times sigma_0 c_in = s(T') (0.972 at T' = 599 on the
  refiner's schedule), not the noised latent itself. Kept: it is what the reference runs.

The loops here carry the VP latent the model sees, x = c_in(sigma) x_k (x_k the reference's k-diffusion
state), so one step is ``x' = x_coef x + x0_coef x0 + corr_coef (x0 - x0_prev) + sigma z`` with every
factor on the host (:func:`dpmpp_2m_sde_schedule`), and x0 = (x - sqrt(1 - a_t) eps) / sqrt(a_t) at the
model's (rounded) timestep, the reference's ``denoise`` x0 (line 91). Noise: the reference draws z from a
torchsde Brownian tree seeded 0 (``BrownianTreeNoiseSampler``, lines 108-138, 157), a standard normal per
step; here step i draws ``normal(split(key, steps)[i])``, the rule of DDIM with eta > 0.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from vstar_jax.errors import VstarError

SOLVERS = ("ddim", "dpmpp_2m_sde")


def check_solver(solver: str) -> str:
    if solver not in SOLVERS:
        raise VstarError(f"unknown solver {solver!r} (use one of {', '.join(SOLVERS)})")
    return solver


def trailing_timesteps(t_max: int, t_min: int, n: int) -> np.ndarray:
    """``torch.arange(t_max, t_min - 1, -((t_max - t_min + 1) / n)).clamp_(t_min, t_max)`` in float32: the
    reference's 'trailing' discretisation of ``n`` timesteps (length ceil((end - start) / step) as torch's;
    values start + i step rounded once to float32, where torch's vectorised CPU kernel may land an ulp
    the other way on some elements)."""
    step = -((t_max - t_min + 1) / n)
    count = int(math.ceil((t_min - 1 - t_max) / step))
    ts = (float(t_max) + step * np.arange(count, dtype=np.float64)).astype(np.float32)
    return np.clip(ts, np.float32(t_min), np.float32(t_max))


def log_k_sigmas(vp_sigmas: np.ndarray) -> np.ndarray:
    """log of the k-diffusion sigma of each training level, log sqrt(s^2 / (1 - s^2)) in float32 (inf where
    s = 1, zero terminal SNR)."""
    s = np.asarray(vp_sigmas, np.float32)
    with np.errstate(divide="ignore"):
        return np.log(np.sqrt((s ** 2 / (np.float32(1) - s ** 2)).astype(np.float32))).astype(np.float32)


def t_to_sigma(ts: np.ndarray, vp_sigmas: np.ndarray) -> np.ndarray:
    """The k-diffusion sigma of (fractional) timesteps: log sigma interpolated between the integer levels."""
    ts = np.asarray(ts, np.float32)
    ls = log_k_sigmas(vp_sigmas)
    lo, hi = np.floor(ts).astype(np.int64), np.ceil(ts).astype(np.int64)
    w = (ts - np.trunc(ts)).astype(np.float32)
    with np.errstate(invalid="ignore"):
        log_sigma = ((np.float32(1) - w) * ls[lo] + w * ls[hi]).astype(np.float32)
    log_sigma[~np.isfinite(log_sigma)] = np.inf
    return np.exp(log_sigma).astype(np.float32)


def sigma_to_t(sigmas: np.ndarray, vp_sigmas: np.ndarray) -> np.ndarray:
    """The (fractional) timestep of k-diffusion sigmas: the inverse interpolation of :func:`t_to_sigma`."""
    ls = log_k_sigmas(vp_sigmas)
    log_sigma = np.log(np.asarray(sigmas, np.float32))
    at_or_below = (log_sigma[None, :] - ls[:, None]) >= 0  # (T, n)
    lo = np.clip(np.cumsum(at_or_below, axis=0).argmax(axis=0), None, ls.shape[0] - 2)
    hi = lo + 1
    w = np.clip(((ls[lo] - log_sigma) / (ls[lo] - ls[hi])).astype(np.float32), 0, 1).astype(np.float32)
    return ((np.float32(1) - w) * lo.astype(np.float32) + w * hi.astype(np.float32)).astype(np.float32)


def vp_noise_levels(alphas_cumprod: np.ndarray) -> np.ndarray:
    """The VP noise level s_t = sqrt(1 - alpha_cumprod_t) of each training timestep (float32)."""
    ac = np.asarray(alphas_cumprod, np.float64)
    return np.sqrt(np.clip(1.0 - ac, 0.0, 1.0)).astype(np.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class DPMSolverSchedule:
    """DPM++ 2M SDE steps from ``t_max``: per-step factors in loop order (i = 0 the noisiest), the
    interface of :class:`~vstar_jax.diffusion.schedules.DDIMSchedule` that the sampler reads
    (``num_steps``, ``timesteps``, ``coefficients``, ``alphas_cumprod``). ``k_sigmas`` (steps + 1,): the
    reference's sigma list, the last 0."""

    timesteps: np.ndarray  # (N,) int64, the model's timestep of each step (loop order)
    k_sigmas: np.ndarray  # (N + 1,) float32
    alphas_cumprod: np.ndarray  # (T,)
    eta: float
    s_noise: float
    solver = "dpmpp_2m_sde"

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])

    def coefficients(self, eta: float | None = None) -> dict[str, np.ndarray]:
        """Float32 per-step factors in loop order: x0 = (x - sqrt_one_minus_alpha eps) / sqrt_alpha / scale;
        x' = x_coef x + x0_coef x0 + corr_coef (x0 - x0_prev) + sigma z; ``start_scale``: the factor of the
        noised latent the first state is (c_in sigma of the first step, the reference's ``x = noise *
        sigmas[0]``)."""
        eta = self.eta if eta is None else float(eta)
        sig = self.k_sigmas.astype(np.float64)
        n = self.num_steps
        c_in = 1.0 / np.sqrt(sig ** 2 + 1.0)
        x_coef, x0_coef, corr, noise = (np.zeros(n) for _ in range(4))
        h_last = None
        for i in range(n):
            s, s_next = sig[i], sig[i + 1]
            if s_next == 0:  # the last step returns the x0 prediction
                x0_coef[i] = 1.0
                continue
            h = math.log(s) - math.log(s_next)
            eh = eta * h
            keep = -math.expm1(-h - eh)
            x_coef[i] = c_in[i + 1] / c_in[i] * s_next / s * math.exp(-eh)
            x0_coef[i] = c_in[i + 1] * keep
            if h_last is not None:  # 2M (midpoint) correction from the second step on
                corr[i] = c_in[i + 1] * 0.5 * keep * (h / h_last)
            noise[i] = c_in[i + 1] * s_next * math.sqrt(-math.expm1(-2.0 * eh)) * self.s_noise
            h_last = h
        a = np.asarray(self.alphas_cumprod, np.float32)[self.timesteps]
        f32 = np.float32
        return {"timesteps": self.timesteps.astype(np.int32),
                "sqrt_alpha": np.sqrt(a).astype(f32), "sqrt_one_minus_alpha": np.sqrt((f32(1) - a).astype(f32)),
                "scale": np.ones(n, f32), "x_coef": x_coef.astype(f32), "x0_coef": x0_coef.astype(f32),
                "corr_coef": corr.astype(f32), "sigma": noise.astype(f32),
                "start_scale": np.full(n, c_in[0] * sig[0], f32)}


def dpmpp_2m_sde_schedule(alphas_cumprod, t_max: int, steps: int, *, eta: float = 1.0, s_noise: float = 1.0,
                          vp_sigmas=None) -> DPMSolverSchedule:
    """The reference's sigma selection (see the module docstring) for ``steps`` solver steps from the
    integer timestep ``t_max`` down to 0: ``steps + 1`` trailing timesteps, their sigmas, 0 appended and
    the penultimate dropped. ``vp_sigmas``: the VP levels s_t (default sqrt(1 - alphas_cumprod); give the
    schedule's own where it is defined by them, as MS-Vid2Vid-XL's is)."""
    ac = np.asarray(alphas_cumprod, np.float32)
    s = vp_noise_levels(ac) if vp_sigmas is None else np.asarray(vp_sigmas, np.float32)
    steps, t_max = int(steps), int(t_max)
    if steps < 1:
        raise VstarError(f"the DPM++ 2M SDE solver needs at least one step, got {steps}")
    if not 0 < t_max <= ac.shape[0] - 1:
        raise VstarError(f"DPM++ 2M SDE starts at t = {t_max}, outside (0, {ac.shape[0] - 1}]")
    if s[t_max] >= 1.0:
        raise VstarError(f"t = {t_max} is the schedule's zero-SNR end (alpha_cumprod 0): the samplers predict eps, "
                         f"from which x0 cannot be recovered there; use a strength below 1")
    ts = trailing_timesteps(t_max, 0, steps + 1)
    k = np.concatenate([t_to_sigma(ts, s), np.zeros(1, np.float32)])
    k = np.concatenate([k[:-2], k[-1:]])  # discard the penultimate sigma
    # the model's timestep, as the reference rounds it (a trailing timestep at exactly k + 0.5 may round
    # the other way than torch's: its float32 log and numpy's can differ by an ulp)
    model_t = np.round(sigma_to_t(k[:-1], s)).astype(np.int64)
    return DPMSolverSchedule(model_t, k.astype(np.float32), ac, float(eta), float(s_noise))
