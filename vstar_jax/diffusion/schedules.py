"""DDIM schedules: VideoCrafter2 (lvdm) and diffusers' DDIMScheduler (ModelScope).

Both are computed on the host with numpy, reproducing the reference's float32/float64
arithmetic, and returned as a frozen :class:`DDIMSchedule`. Arrays are in the
reference's ascending order (index 0 = least noisy DDIM step); the sampler walks them
backwards (loop index ``i`` uses array index ``N - 1 - i``).
"""
from __future__ import annotations

import dataclasses

import numpy as np

FLAVOURS = ("videocrafter2", "diffusers")


def make_alphas_cumprod(linear_start: float = 0.00085, linear_end: float = 0.012,
                        num_timesteps: int = 1000) -> np.ndarray:
    """VideoCrafter2's alphas_cumprod (float64): betas = linspace(sqrt(start), sqrt(end), n)**2."""
    if num_timesteps < 2:
        raise ValueError(f"num_timesteps must be >= 2, got {num_timesteps}")
    betas = np.linspace(linear_start ** 0.5, linear_end ** 0.5, num_timesteps, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps, dtype=float32)`` on CPU, bit for bit.

    torch computes the step in float32 and fills the first half as ``start + step * i``
    and the second half as ``end - step * (steps - 1 - i)``, each a fused multiply-add
    (emulated here in float64, where the product of two float32 numbers is exact).
    """
    start32, end32 = np.float32(start), np.float32(end)
    if steps == 1:
        return np.array([start32], np.float32)
    step = np.float64(np.float32((end32 - start32) / np.float32(steps - 1)))
    idx = np.arange(steps)
    half = steps // 2
    lo = np.float64(start32) + step * idx[:half]
    hi = np.float64(end32) - step * (steps - 1 - idx[half:])
    return np.concatenate([lo, hi]).astype(np.float32)


def logsnr_cosine_interp_sigmas(num_timesteps: int = 1000, logsnr_min: float = -15.0, logsnr_max: float = 15.0,
                                scale_min: float = 2.0, scale_max: float = 4.0,
                                zero_terminal_snr: bool = True) -> np.ndarray:
    """MS-Vid2Vid-XL's noise levels sigma_t (float32, ascending in t; x_t = sqrt(1 - sigma^2) x0 + sigma eps).

    StreamingT2V (branch StreamingModelscope) ``.../video_to_video/utils/schedules_sdedit.py``:
    a cosine log-SNR schedule, shifted by 2 log(1 / scale) for scale 2 and for scale 4 and interpolated
    between them from the least to the most noisy level; sigma = sqrt(sigmoid(-logsnr)); then (zero
    terminal SNR) sigmas stretched so the last is 1 (alpha_cumprod 0). ``video_to_video_model.py`` builds
    it with n = 1000, scale 2 to 4, zero_terminal_snr=True: these defaults. The reference computes in
    torch float32 (``torch.linspace`` float32; ``math`` float64 constants); so does this, with
    :func:`torch_linspace_f32` and float32 numpy (transcendental functions may differ from torch's by
    an ulp)."""
    f32 = np.float32
    t = torch_linspace_f32(1.0, 0.0, num_timesteps)
    # math.atan / math.exp in float64; a float64 scalar meets the float32 tensor as a float32 one
    t_min = float(np.arctan(np.exp(-0.5 * logsnr_min)))
    t_max = float(np.arctan(np.exp(-0.5 * logsnr_max)))

    def shifted(scale):
        angle = (t * f32(t_max - t_min)).astype(f32) + f32(t_min)
        cos = (f32(-2) * np.log(np.tan(angle.astype(f32)))).astype(f32)
        return (cos + f32(2 * np.log(1 / scale))).astype(f32)

    logsnrs = (t * shifted(scale_min) + (f32(1) - t) * shifted(scale_max)).astype(f32)
    sigmas = np.sqrt((f32(1) / (f32(1) + np.exp(logsnrs))).astype(f32))  # sigmoid(-logsnr)
    if zero_terminal_snr and sigmas.max() != 1.0:
        lo = sigmas.min()
        sigmas = (lo + ((f32(1) - lo) / (sigmas.max() - lo)) * (sigmas - lo)).astype(f32)
    return sigmas


def logsnr_cosine_interp_alphas_cumprod(num_timesteps: int = 1000) -> np.ndarray:
    """:func:`logsnr_cosine_interp_sigmas` as the float32 alphas_cumprod the DDIM steps with,
    1 - sigma ** 2 (``diffusion_sdedit.py``, ``GaussianDiffusion_SDEdit``: alphas = sqrt(1 - sigmas ** 2)).
    Near t = T that difference cancels (sigma -> 1): an ulp of sigma moves alpha_cumprod by ~1e-7, which
    the reference's alphas share."""
    sigmas = logsnr_cosine_interp_sigmas(num_timesteps)
    return (np.float32(1) - sigmas ** 2).astype(np.float32)


BETA_SCHEDULES = ("scaled_linear", "linear", "logsnr_cosine_interp")


def diffusers_alphas_cumprod(beta_start: float = 0.00085, beta_end: float = 0.012,
                             num_train_timesteps: int = 1000,
                             beta_schedule: str = "scaled_linear") -> np.ndarray:
    """diffusers' float32 alphas_cumprod (cumprod accumulated in float64 like torch on CPU), or with
    ``beta_schedule="logsnr_cosine_interp"`` MS-Vid2Vid-XL's noise levels (beta_start / beta_end unused;
    :func:`logsnr_cosine_interp_alphas_cumprod`)."""
    if beta_schedule == "logsnr_cosine_interp":
        return logsnr_cosine_interp_alphas_cumprod(num_train_timesteps)
    if beta_schedule == "scaled_linear":
        betas = torch_linspace_f32(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps) ** 2
    elif beta_schedule == "linear":
        betas = torch_linspace_f32(beta_start, beta_end, num_train_timesteps)
    else:
        raise ValueError(f"unsupported beta_schedule {beta_schedule!r} (use one of {', '.join(BETA_SCHEDULES)})")
    alphas = (np.float32(1.0) - betas.astype(np.float32)).astype(np.float32)
    return np.cumprod(alphas.astype(np.float64)).astype(np.float32)


def make_scale_arr(scale_a: float = 1.0, scale_b: float = 0.7, mid_step: int = 400,
                   num_timesteps: int = 1000) -> np.ndarray:
    """VideoCrafter2's ``use_scale`` array (the reference's unfixed branch: length mid_step + n)."""
    return np.concatenate([np.linspace(scale_a, scale_b, mid_step),
                           np.full(num_timesteps, scale_b)]).astype(np.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class DDIMSchedule:
    """Per-step DDIM quantities, ascending in t (index 0 = last, least noisy step).

    ``alphas``/``alphas_prev``/``sigmas``/``scale``/``scale_prev`` are float32 as the
    reference's step sees them; ``sigmas`` are for ``eta``.
    """

    flavour: str
    timesteps: np.ndarray  # (N,) int64, the UNet timestep of each DDIM step
    alphas: np.ndarray  # (N,) alpha_cumprod[t]
    alphas_prev: np.ndarray  # (N,) alpha_cumprod of the next (less noisy) step
    sigmas: np.ndarray  # (N,) eta * sqrt((1-a_prev)/(1-a) (1 - a/a_prev))
    scale: np.ndarray  # (N,) use_scale factor at t (ones when not used)
    scale_prev: np.ndarray  # (N,) use_scale factor at the previous step
    eta: float
    alphas_cumprod: np.ndarray  # (T,) the full training schedule (float32)
    solver = "ddim"  # the sampler's solver (dpm_solver.DPMSolverSchedule is the other)

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])

    def sigmas_for(self, eta: float) -> np.ndarray:
        """Sigmas for another eta (same formula and precision as the flavour's reference)."""
        return _sigmas(self.flavour, self.alphas, self.alphas_prev, eta)

    def coefficients(self, eta: float | None = None) -> dict[str, np.ndarray]:
        """Float32 per-step coefficients in loop order (i = 0 is the noisiest step).

        x0 = (x - sqrt_one_minus_alpha * e) / sqrt_alpha / scale;
        x_prev = prev_x0_coef * x0 + dir_coef * e + sigma * noise.

        ``sqrt_alpha_prev`` is ``prev_x0_coef`` without the ``use_scale`` factor (equal to it for
        the diffusers flavour).
        """
        sig = self.sigmas if eta is None else self.sigmas_for(eta)
        f32 = np.float32
        a, ap, sg = self.alphas.astype(f32), self.alphas_prev.astype(f32), sig.astype(f32)
        one = f32(1.0)
        if self.flavour == "videocrafter2":
            sqrt_1ma = np.sqrt((one - a).astype(f32))
            dir_coef = np.sqrt((one - ap - sg ** 2).astype(f32))
            prev_coef = (np.sqrt(ap) * self.scale_prev.astype(f32)).astype(f32)
        else:  # diffusers: (1 - a_prev - std**2) ** 0.5 with std = eta * var ** 0.5
            sqrt_1ma = np.sqrt((one - a).astype(f32))
            dir_coef = np.sqrt(np.maximum((one - ap - sg ** 2).astype(f32), f32(0.0)))
            prev_coef = np.sqrt(ap).astype(f32)
        out = {
            "timesteps": self.timesteps.astype(np.int32),
            "sqrt_alpha": np.sqrt(a).astype(f32),
            "sqrt_one_minus_alpha": sqrt_1ma.astype(f32),
            "scale": self.scale.astype(f32),
            "prev_x0_coef": prev_coef,
            "sqrt_alpha_prev": np.sqrt(ap).astype(f32),  # the step without use_scale (FIFO's queue)
            "dir_coef": dir_coef.astype(f32),
            "sigma": sg,
        }
        return {k: np.ascontiguousarray(v[::-1]) for k, v in out.items()}


def _sigmas(flavour: str, alphas: np.ndarray, alphas_prev: np.ndarray, eta: float) -> np.ndarray:
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if flavour == "videocrafter2":
        # as the reference mixes numpy float64 and torch float32: ndarray / tensor is
        # tensor.reciprocal() * ndarray, so 1 / (1 - a) is taken in float32
        a, ap = alphas.astype(np.float64), alphas_prev.astype(np.float64)
        a32 = alphas.astype(np.float32)
        recip = (np.float32(1) / (np.float32(1) - a32)).astype(np.float64)
        return (eta * np.sqrt(recip * (1 - ap) * (1 - a / ap))).astype(np.float32)
    f32 = np.float32
    a, ap = alphas.astype(f32), alphas_prev.astype(f32)
    var = (((f32(1) - ap) / (f32(1) - a)) * (f32(1) - a / ap)).astype(f32)
    return (f32(eta) * np.sqrt(var)).astype(f32)


VC2_SPACINGS = ("uniform", "linspace")


def videocrafter2_timesteps(num_steps: int, num_timesteps: int = 1000, spacing: str = "uniform") -> np.ndarray:
    """The DDIM timesteps of lvdm's ``make_ddim_timesteps`` (``lvdm/models/utils_diffusion.py``).

    ``uniform``: VideoCrafter2's ``range(0, T, T // num_steps) + 1``; like the reference, a
    ``num_steps`` that does not divide T gives ``ceil(T / (T // num_steps))`` steps.
    ``linspace``: FIFO-Diffusion's copy of lvdm (jjihwan/FIFO-Diffusion_public, same file,
    ``make_ddim_timesteps``): ``linspace(0, T - 1, num_steps).round()``, no + 1, so the first step
    is t = 0 and the last t = T - 1.
    """
    if spacing == "uniform":
        return np.arange(0, num_timesteps, num_timesteps // num_steps, dtype=np.int64) + 1
    if spacing == "linspace":
        return np.linspace(0, num_timesteps - 1, num_steps).round().astype(np.int64)
    raise ValueError(f"unsupported timestep_spacing {spacing!r} for videocrafter2 (use one of {VC2_SPACINGS})")


def videocrafter2_schedule(num_steps: int = 25, eta: float = 1.0, *, use_scale: bool = True,
                           scale_a: float = 1.0, scale_b: float = 0.7, mid_step: int = 400,
                           linear_start: float = 0.00085, linear_end: float = 0.012,
                           num_timesteps: int = 1000, timestep_spacing: str = "uniform") -> DDIMSchedule:
    """VideoCrafter2's DDIM schedule (``lvdm/models/samplers/ddim.py: make_schedule``), timesteps
    from :func:`videocrafter2_timesteps` (``timestep_spacing``)."""
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_timesteps}], got {num_steps}")
    ac = make_alphas_cumprod(linear_start, linear_end, num_timesteps).astype(np.float32)
    ts = videocrafter2_timesteps(num_steps, num_timesteps, timestep_spacing)
    alphas = ac[ts]
    alphas_prev = np.concatenate([ac[:1], ac[ts[:-1]]])
    if use_scale:
        sa = make_scale_arr(scale_a, scale_b, mid_step, num_timesteps)
        scale = sa[ts]
        scale_prev = np.concatenate([sa[:1], sa[ts[:-1]]])
    else:
        scale = np.ones_like(alphas)
        scale_prev = np.ones_like(alphas)
    return DDIMSchedule("videocrafter2", ts, alphas, alphas_prev,
                        _sigmas("videocrafter2", alphas, alphas_prev, eta),
                        scale.astype(np.float32), scale_prev.astype(np.float32), float(eta), ac)


def diffusers_schedule(num_steps: int = 50, eta: float = 0.0, *, beta_start: float = 0.00085,
                       beta_end: float = 0.012, beta_schedule: str = "scaled_linear",
                       num_train_timesteps: int = 1000, steps_offset: int = 1,
                       set_alpha_to_one: bool = False,
                       timestep_spacing: str = "leading") -> DDIMSchedule:
    """diffusers ``DDIMScheduler`` (ModelScope's config by default), as diffusers 0.42 steps it."""
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_train_timesteps}], got {num_steps}")
    ac = diffusers_alphas_cumprod(beta_start, beta_end, num_train_timesteps, beta_schedule)
    if timestep_spacing == "leading":
        ratio = num_train_timesteps // num_steps
        ts = (np.arange(0, num_steps) * ratio).round().astype(np.int64) + steps_offset
    elif timestep_spacing == "trailing":
        ratio = num_train_timesteps / num_steps
        ts = np.round(np.arange(num_train_timesteps, 0, -ratio)).astype(np.int64)[::-1] - 1
    elif timestep_spacing == "linspace":
        ts = np.linspace(0, num_train_timesteps - 1, num_steps).round().astype(np.int64)
    else:
        raise ValueError(f"unsupported timestep_spacing {timestep_spacing!r}")
    prev = ts - num_train_timesteps // num_steps
    final = np.float32(1.0) if set_alpha_to_one else ac[0]
    alphas = ac[ts]
    alphas_prev = np.where(prev >= 0, ac[np.clip(prev, 0, None)], final).astype(np.float32)
    ones = np.ones_like(alphas)
    return DDIMSchedule("diffusers", ts, alphas, alphas_prev,
                        _sigmas("diffusers", alphas, alphas_prev, eta), ones, ones, float(eta), ac)


def make_schedule(flavour: str = "videocrafter2", num_steps: int = 25, eta: float = 1.0,
                  **kwargs) -> DDIMSchedule:
    """Dispatch on ``flavour``: "videocrafter2" or "diffusers" (ModelScope)."""
    if flavour == "videocrafter2":
        return videocrafter2_schedule(num_steps, eta, **kwargs)
    if flavour in ("diffusers", "modelscope"):
        return diffusers_schedule(num_steps, eta, **kwargs)
    raise ValueError(f"unknown schedule flavour {flavour!r} (use one of {FLAVOURS})")
