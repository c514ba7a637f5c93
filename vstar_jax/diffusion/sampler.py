"""Guided DDIM: the step, classifier-free guidance, the denoiser contract and the single-pass loop.

One step (both flavours; the flavour lives in the schedule's coefficients)::

    e      = e_uncond + s * (e_cond - e_uncond)                  # CFG
    x0     = (x - sqrt(1 - a_t) e) / sqrt(a_t) / scale_t        # scale_t = 1 unless use_scale
    x_prev = sqrt(a_prev) scale_prev x0 + sqrt(1 - a_prev - sigma^2) e + sigma noise

The model is called once per step on the CFG batch ``[uncond rows; cond rows]``:
``model_fn(x (2b, c, f, h, w), t (2b,) int32, context, step_index) -> eps`` (or
``(eps, aux)`` with ``capture=True``), where ``step_index`` is the loop index ``i``
(0 = the noisiest step), as the reference's ``for i, step in enumerate(time_range)``.
A :class:`Denoiser` carries that function with what some methods read besides it (StreamingT2V's
CAM / APM inputs) and the guidance options (x0 clipping); a plain function is a Denoiser without them.

Sampling itself has one entry: ``Strategy.sample`` (``vstar_jax.longvideo.base``), which prepares
the inputs (:func:`prepare_sampling`) and runs the strategy's loop; ``Single`` is the plain DDIM loop
(:func:`ddim_loop`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vstar_jax.diffusion.parameterization import clip_eps
from vstar_jax.diffusion.schedules import DDIMSchedule

ModelFn = Callable[..., Any]


class SampleOutput(NamedTuple):
    latents: jax.Array  # (b, c, f, h, w) final x_0
    pred_x0: jax.Array | None  # (N, b, c, f, h, w) x0 prediction of each step (loop order)
    aux: Any  # model_fn's aux stacked over steps (leading axis N), or None


@dataclasses.dataclass(frozen=True)
class Denoiser:
    """The denoiser a sampling loop calls, and the inputs beside it that some methods read.

    ``fn(x, t, ctx, i, **extra) -> eps`` (or ``(eps, aux)`` when capturing) on CFG rows, as the module
    docstring says. ``cam_input(z)`` / ``anchor_pair(frame)``: StreamingT2V's CAM input of the previous
    chunk's last latent frames and APM's (unconditional, conditional) image embeddings of the anchor
    latent (bound to their params by the sampling stage; None for every other model). ``clip_x0``:
    alphas_cumprod of the schedule when the guided eps is replaced by one whose implied x0 is clipped
    to [-1, 1] (:func:`~vstar_jax.diffusion.parameterization.clip_eps`; the demo model's option), else None.
    ``windows``: D, how many independent windows of a long-video step one call takes
    (:func:`guided_eps_windows`; the size of the mesh axis the ``windows`` rule names, 1 on one device).
    ``v_alphas``: alphas_cumprod when the model predicts v (guide rescaling acts on v: :func:`rescaled_eps`).
    """

    fn: Callable
    cam_input: Optional[Callable] = None
    anchor_pair: Optional[Callable] = None
    clip_x0: Any = None
    windows: int = 1
    v_alphas: Any = None

    def __call__(self, x, t, ctx, i, **extra):
        return self.fn(x, t, ctx, i, **extra)


def as_denoiser(model_fn) -> Denoiser:
    """A :class:`Denoiser` as it is, or a plain ``model_fn`` wrapped in one (no extra inputs)."""
    return model_fn if isinstance(model_fn, Denoiser) else Denoiser(model_fn)


def cfg_combine(e_uncond: jax.Array, e_cond: jax.Array, scale) -> jax.Array:
    """Classifier-free guidance: e_u + s (e_c - e_u)."""
    return e_uncond + scale * (e_cond - e_uncond)


def step_coefficients(schedule: DDIMSchedule, index: int, eta: float | None = None) -> dict:
    """Float32 coefficients of the reference's DDIM array ``index`` (N-1 = noisiest step)."""
    n = schedule.num_steps
    if not 0 <= index < n:
        raise ValueError(f"DDIM index {index} out of range [0, {n})")
    coeffs = schedule.coefficients(eta)
    return {k: v[n - 1 - index] for k, v in coeffs.items()}


def ddim_step(x: jax.Array, eps: jax.Array, coeffs: dict, noise: jax.Array | None = None):
    """One DDIM update from guided ``eps``; returns ``(x_prev, pred_x0)``.

    ``coeffs``: one step's entries of :meth:`DDIMSchedule.coefficients` (scalars).
    ``noise`` is scaled by ``coeffs["sigma"]``; None means no noise (eta = 0).
    """
    pred_x0 = (x - coeffs["sqrt_one_minus_alpha"] * eps) / coeffs["sqrt_alpha"]
    pred_x0 = pred_x0 / coeffs["scale"]
    x_prev = coeffs["prev_x0_coef"] * pred_x0 + coeffs["dir_coef"] * eps
    if noise is not None:
        x_prev = x_prev + coeffs["sigma"] * noise
    return x_prev, pred_x0


def dpmpp_2m_sde_step(x: jax.Array, eps: jax.Array, coeffs: dict, noise: jax.Array | None, x0_prev: jax.Array):
    """One DPM-Solver++ (2M) SDE update from guided ``eps`` (:mod:`vstar_jax.diffusion.dpm_solver`'s factors,
    one step's); returns ``(x_next, pred_x0)``. ``x0_prev``: the previous step's x0 (its factor is 0 at the
    first step)."""
    pred_x0 = (x - coeffs["sqrt_one_minus_alpha"] * eps) / coeffs["sqrt_alpha"]
    x_next = coeffs["x_coef"] * x + coeffs["x0_coef"] * pred_x0 + coeffs["corr_coef"] * (pred_x0 - x0_prev)
    if noise is not None:
        x_next = x_next + coeffs["sigma"] * noise
    return x_next, pred_x0


def is_dpm(coeffs: dict) -> bool:
    """Whether per-step coefficients are DPM++ 2M SDE's (:class:`~vstar_jax.diffusion.dpm_solver.DPMSolverSchedule`)
    rather than DDIM's: the solver travels with the schedule."""
    return "x0_coef" in coeffs


def solver_state(coeffs: dict, x):
    """What a loop carries besides x for its solver: the previous x0 (DPM++ 2M), or nothing (DDIM)."""
    return jnp.zeros_like(x) if is_dpm(coeffs) else ()


def solver_step(x, eps, coeffs: dict, noise, state):
    """One step of the schedule's solver: ``(x_prev, pred_x0, state)`` (:func:`ddim_step` or
    :func:`dpmpp_2m_sde_step`; ``state`` from :func:`solver_state`)."""
    if is_dpm(coeffs):
        x_prev, pred_x0 = dpmpp_2m_sde_step(x, eps, coeffs, noise, state)
        return x_prev, pred_x0, pred_x0
    x_prev, pred_x0 = ddim_step(x, eps, coeffs, noise)
    return x_prev, pred_x0, state


def rescale_factor(out_cond, out, rescale):
    """The reference's CFG std rescaling factor (StreamingT2V ``diffusion_sdedit.py`` lines 77-83): the
    guided output is multiplied by ``rescale * std(cond) / (std(guided) + 1e-12) + (1 - rescale)``, stds
    per batch row over everything else (unbiased, as torch's). Shape (b, 1, ...)."""
    axes = tuple(range(1, out.ndim))
    ratio = jnp.std(out_cond, axis=axes, ddof=1, keepdims=True) / (jnp.std(out, axis=axes, ddof=1, keepdims=True)
                                                                  + 1e-12)
    return rescale * ratio + (1.0 - rescale)


def rescaled_eps(den, eps_cond, eps, x, t, rescale):
    """Guided eps rescaled (:func:`rescale_factor`) where the model's output lives: on v when the denoiser
    predicts v (``Denoiser.v_alphas``; v = (eps - sqrt(1 - a) x) / sqrt(a) is linear in eps, so scaling v by
    f adds sqrt(a) (f - 1) v to eps), else on eps itself. Written as ``eps + (f - 1) ...``: ``rescale`` 0
    returns ``eps`` bit for bit. ``t``: (b,) timesteps of the rows."""
    if den.v_alphas is None:
        return eps + (rescale_factor(eps_cond, eps, rescale) - 1.0) * eps
    a = jnp.asarray(np.asarray(den.v_alphas, np.float32))[jnp.asarray(t)].reshape((-1,) + (1,) * (x.ndim - 1))
    sa, s1 = jnp.sqrt(a), jnp.sqrt(1.0 - a)
    v_c, v = (eps_cond - s1 * x) / sa, (eps - s1 * x) / sa
    return eps + sa * (rescale_factor(v_c, v, rescale) - 1.0) * v


def guided_ddim_step(x, eps_cond, eps_uncond, coeffs: dict, cfg_scale, noise=None):
    """CFG then :func:`ddim_step`; ``eps_uncond=None`` skips guidance."""
    eps = eps_cond if eps_uncond is None else cfg_combine(eps_uncond, eps_cond, cfg_scale)
    return ddim_step(x, eps, coeffs, noise)


def _context_rows(ctx, b: int, f: int, name: str):
    """Classify a context: returns (rows, per_frame) with rows (b, L, C) or (b, f, L, C)."""
    ctx = jnp.asarray(ctx)
    if ctx.ndim == 2:
        ctx = ctx[None]
    if ctx.ndim == 3:
        n = ctx.shape[0]
        if n == 1:
            return jnp.broadcast_to(ctx, (b,) + ctx.shape[1:]), False
        if b == 1 and n == f:  # (f, L, C): one context per frame (VSP)
            return ctx[None], True
        if n == b:
            return ctx, False
        if n == f:
            return jnp.broadcast_to(ctx[None], (b,) + ctx.shape), True
        raise ValueError(f"{name} context has {n} rows; expected 1, batch {b} or frames {f}")
    if ctx.ndim == 4:
        nb, nf = ctx.shape[:2]
        if nb not in (1, b) or nf not in (1, f):
            raise ValueError(f"{name} context shape {tuple(ctx.shape)} does not broadcast to "
                             f"(batch {b}, frames {f}, L, C)")
        return jnp.broadcast_to(ctx, (b, f) + ctx.shape[2:]), True
    raise ValueError(f"{name} context must be 2-, 3- or 4-D, got shape {tuple(ctx.shape)}")


def cfg_context(cond, uncond, batch: int, frames: int) -> jax.Array:
    """Stack [uncond; cond] into one model batch: (2b, L, C), or (2b, f, L, C) if any is per frame.

    Accepts (L, C), (1, L, C), (b, L, C), (f, L, C) per frame (VSP; with b == 1 a 3-D
    context of ``frames`` rows is per frame), or (1|b, 1|f, L, C). ``uncond=None`` gives
    just the cond rows (b, ...).
    """
    c, c_pf = _context_rows(cond, batch, frames, "cond")
    if uncond is None:
        return c
    u, u_pf = _context_rows(uncond, batch, frames, "uncond")
    if u.shape[-2:] != c.shape[-2:]:
        raise ValueError(f"cond/uncond token shapes differ: {c.shape[-2:]} vs {u.shape[-2:]}")
    if c_pf or u_pf:
        shape = (batch, frames) + c.shape[-2:]
        c = c if c_pf else jnp.broadcast_to(c[:, None], shape)
        u = u if u_pf else jnp.broadcast_to(u[:, None], shape)
    return jnp.concatenate([u, c.astype(u.dtype)], axis=0)


def guided_eps(model_fn: ModelFn, x, t, context, step_index, cfg_scale, *, guided: bool = True,
               capture: bool = False, extra: Optional[dict] = None, rescale=None, frame_times=None):
    """One CFG model evaluation: a single call on ``[x; x]`` with ``context`` = [uncond; cond]
    rows (from :func:`cfg_context`). ``model_fn``: a :class:`Denoiser` or a plain model function.
    ``t`` is a scalar timestep, or one per frame (F,) (FIFO's diagonal denoising; the model then
    gets (rows, F)). ``extra``: more model inputs, already in CFG rows (StreamingT2V's ``cam_frames``
    / ``image_embed``). ``rescale``: the reference's guide rescale (:func:`rescaled_eps`; None: plain CFG).
    ``frame_times`` (F,): the frames' clock for the demo options (the UNet's ``frame_times``, shared by the
    rows; None: not passed, the call's own clock). Returns ``(eps, aux)`` (``aux`` None unless ``capture``); eps is float32, guided, and clipped when the
    denoiser asks (``Denoiser.clip_x0``)."""
    den = as_denoiser(model_fn)
    b = x.shape[0]
    t = jnp.asarray(t, jnp.int32)
    tt = jnp.broadcast_to(t, (2 * b if guided else b,) + t.shape)
    x_in = jnp.concatenate([x, x], axis=0) if guided else x
    if frame_times is not None:
        extra = {**(extra or {}), "frame_times": frame_times}
    out = den.fn(x_in, tt, context, step_index, **(extra or {}))
    eps, aux = out if capture else (out, None)
    eps = eps.astype(jnp.float32)
    if guided:
        eps_cond = eps[b:]
        eps = cfg_combine(eps[:b], eps_cond, cfg_scale)
        if rescale is not None:
            eps = rescaled_eps(den, eps_cond, eps, x, tt[:b], rescale)
    if den.clip_x0 is not None:
        eps = clip_eps(eps, x, tt[:b], den.clip_x0)
    return eps, aux


def guided_eps_windows(model_fn: ModelFn, x, t, context, step_index, cfg_scale, *, guided: bool = True,
                       capture: bool = False, rescale=None, frame_times=None):
    """:func:`guided_eps` of D windows in ONE model call (the windows stacked into the batch): ``x`` (D, b,
    c, F, h, w); ``t`` per window, (D,) or (D, F); ``context`` each window's [uncond; cond] rows, (D, rows,
    ...); ``step_index`` a scalar or one per window (D,). The rows are window-major, [u_0; c_0; u_1; c_1;
    ...], so a device holding a window's rows holds both its CFG halves and the guidance is local.
    ``frame_times``: each window's frame clock (D, F) (:func:`~vstar_jax.longvideo.windows.stack_times`), or
    None. Returns
    ``(eps (D, b, c, F, h, w), aux)``; D = 1 is :func:`guided_eps` itself (the serial path's graph)."""
    d = x.shape[0]
    if d == 1:
        si = step_index if jnp.ndim(step_index) == 0 else step_index[0]
        eps, aux = guided_eps(model_fn, x[0], t[0], context[0], si, cfg_scale, guided=guided, capture=capture,
                              rescale=rescale, frame_times=None if frame_times is None else frame_times[0])
        return eps[None], aux
    if capture:
        raise ValueError("attention maps are recorded one window per UNet call (D = 1)")
    den = as_denoiser(model_fn)
    b, r = x.shape[1], (2 if guided else 1)
    t = jnp.asarray(t, jnp.int32)
    tt = jnp.broadcast_to(t[:, None], (d, r * b) + t.shape[1:])
    x_in = jnp.broadcast_to(x[:, None], (d, r) + x.shape[1:]).reshape((d * r * b,) + x.shape[2:])
    ctx = context.reshape((d * context.shape[1],) + context.shape[2:])
    si = step_index if jnp.ndim(step_index) == 0 else jnp.repeat(jnp.asarray(step_index, jnp.int32), r * b)
    extra = {} if frame_times is None else {"frame_times": jnp.repeat(frame_times, r * b, axis=0)}  # (rows, F)
    eps = den.fn(x_in, tt.reshape((d * r * b,) + t.shape[1:]), ctx, si, **extra).astype(jnp.float32)
    eps = eps.reshape((d, r, b) + eps.shape[1:])

    def flat(a):
        return a.reshape((d * b,) + a.shape[2:])

    if guided and rescale is not None:  # per window and row, as one window's call would
        g = cfg_combine(eps[:, 0], eps[:, 1], cfg_scale)
        eps = rescaled_eps(den, flat(eps[:, 1]), flat(g), flat(x), flat(tt[:, :b]), rescale).reshape(g.shape)
    else:
        eps = cfg_combine(eps[:, 0], eps[:, 1], cfg_scale) if guided else eps[:, 0]
    if den.clip_x0 is not None:

        eps = clip_eps(flat(eps), flat(x), flat(tt[:, :b]), den.clip_x0).reshape(eps.shape)
    return eps, None


def ddim_loop(model_fn, x_T, context, coeffs, cfg_scale, keys, *, guided: bool, use_noise: bool,
              return_x0: bool = False, capture: bool = False, rescale=None, frame_times=None):
    """The plain loop (one ``lax.scan`` over steps, every frame in each model call) on prepared inputs
    (:func:`prepare_sampling`); returns (x_0, stacked pred_x0 or None, stacked aux or None). Steps with the
    schedule's solver (:func:`solver_step`: DDIM, or DPM++ 2M SDE); ``rescale``: the guide rescale
    (:func:`guided_eps`); ``frame_times`` (F,): the frames' clock (:func:`guided_eps`). ``Single``'s loop,
    and FIFO's base clip."""
    def body(carry, xs):
        x, state = carry
        co, i, k = xs
        eps, aux = guided_eps(model_fn, x, co["timesteps"], context, i, cfg_scale,
                              guided=guided, capture=capture, rescale=rescale, frame_times=frame_times)
        noise = jax.random.normal(k, x.shape, jnp.float32) if use_noise else None
        x_prev, pred_x0, state = solver_step(x, eps, co, noise, state)
        ys = (pred_x0 if return_x0 else None, aux)
        return (x_prev, state), ys

    n = coeffs["timesteps"].shape[0]
    xs = (coeffs, jnp.arange(n, dtype=jnp.int32), keys)
    x_T = x_T.astype(jnp.float32)
    (x, _), (x0s, aux) = jax.lax.scan(body, (x_T, solver_state(coeffs, x_T)), xs)
    return x, x0s, aux


def prepare_sampling(x_T, cond, uncond, schedule: DDIMSchedule, eta, key, what: str, frames: int | None = None):
    """Shared set-up of every DDIM loop (plain or windowed): checked x_T, CFG context, per-step
    coefficients and noise keys. Returns (x_T, frames, context, coeffs, keys, use_noise, guided).
    ``frames``: the video's length when x_T is not the whole video (FIFO's, VidRD's first clip)."""
    x_T = jnp.asarray(x_T)
    if x_T.ndim != 5:
        raise ValueError(f"x_T must be (b, c, f, h, w), got shape {tuple(x_T.shape)}")
    b, frames = x_T.shape[0], (x_T.shape[2] if frames is None else int(frames))
    coeffs_np = schedule.coefficients(eta)
    use_noise = bool(np.any(coeffs_np["sigma"] > 0))
    n = schedule.num_steps
    if use_noise:
        if key is None:
            raise ValueError(f"{what} with eta > 0 needs a PRNG key (key=jax.random.key(seed))")
        keys = jax.random.split(key, n)
    else:
        keys = jnp.zeros((n,), jnp.uint32)  # unused placeholder
    guided = uncond is not None
    context = cfg_context(cond, uncond, b, frames)
    coeffs = {k: jnp.asarray(v) for k, v in coeffs_np.items()}
    return x_T, frames, context, coeffs, keys, use_noise, guided
