"""A torch transcription of StreamingT2V's enhancer sampler, for the DPM++ 2M SDE parity tests.

Picsart-AI-Research/StreamingT2V, branch ``StreamingModelscope``,
``t2v_enhanced/thirdparty/modelscope/models/multi_modal/video_to_video/``:

* ``utils/diffusion_sdedit.py``: ``diffuse`` (lines 32-35), ``denoise`` with CFG and guide rescale
  (lines 37-110, only the x0 it returns), the chunked x0 of ``sample``'s ``model_fn`` (lines 164-188, the
  random offsets given instead of drawn), the timestep / sigma selection of ``sample`` (lines 147-234 for
  solver ``dpmpp_2m_sde``), ``_sigma_to_t`` / ``_t_to_sigma`` (lines 240-268);
* ``utils/solvers_sdedit.py``: ``sample_dpmpp_2m_sde`` (lines 141-195), ``get_scalings`` (lines 25-28);
  the Brownian-tree noise (lines 108-138) replaced by given standard normals, one per step.

Written from the reference's arithmetic, in torch float32 as it runs; nothing here calls vstar_jax.
"""
from __future__ import annotations

import torch


def log_sigmas_of(vp_sigmas):
    return torch.sqrt(vp_sigmas ** 2 / (1 - vp_sigmas ** 2)).log()


def t_to_sigma(t, vp_sigmas):
    t = t.float()
    lo, hi, w = t.floor().long(), t.ceil().long(), t.frac()
    ls = log_sigmas_of(vp_sigmas)
    out = (1 - w) * ls[lo] + w * ls[hi]
    out[torch.isnan(out) | torch.isinf(out)] = float("inf")
    return out.exp()


def sigma_to_t(sigma, vp_sigmas):
    ls = log_sigmas_of(vp_sigmas)
    ds = sigma.log() - ls[:, None]
    lo = ds.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=ls.shape[0] - 2)
    hi = lo + 1
    w = ((ls[lo] - sigma.log()) / (ls[lo] - ls[hi])).clamp(0, 1)
    return ((1 - w) * lo + w * hi).view(sigma.shape)


def select_sigmas(vp_sigmas, t_max: int, steps: int):
    """``sample``'s sigmas for solver dpmpp_2m_sde: not karras, trailing, penultimate discarded."""
    n = steps + 1
    ts = torch.arange(t_max, -1, -((t_max + 1) / n)).clamp_(0, t_max)
    ts = torch.as_tensor(ts, dtype=torch.float32)
    sig = torch.cat([t_to_sigma(ts, vp_sigmas), torch.zeros(1)])
    return torch.cat([sig[:-2], sig[-1:]])


def diffuse(x0, t: int, noise, vp_sigmas):
    s = vp_sigmas[t]
    return torch.sqrt(1 - s ** 2) * x0 + s * noise


def denoise_x0(raw_model, xt, t: int, vp_sigmas, guide_scale, guide_rescale, prediction="v"):
    """x0 of one chunk: CFG (cond first, as ``model_kwargs`` = [y, negative]), the std rescale, then x0."""
    s = vp_sigmas[t]
    a = torch.sqrt(1 - s ** 2)
    y_out, u_out = raw_model(xt, t, "cond"), raw_model(xt, t, "uncond")
    out = u_out + guide_scale * (y_out - u_out)
    if guide_rescale is not None:
        ratio = (y_out.flatten(1).std(dim=1) / (out.flatten(1).std(dim=1) + 1e-12)).view(
            (-1,) + (1,) * (y_out.ndim - 1))
        out = out * (guide_rescale * ratio + (1 - guide_rescale) * 1.0)
    return a * xt - s * out if prediction == "v" else (xt - s * out) / a


def chunked_x0(raw_model, xt, sigma, vp_sigmas, offsets, chunk: int, overlap: int, guide_scale, guide_rescale):
    t = int(sigma_to_t(sigma.reshape(1), vp_sigmas).round().long()[0])
    x0 = torch.empty_like(xt)
    start, k = 0, 0
    while start + chunk <= xt.shape[2]:
        c = denoise_x0(raw_model, xt[:, :, start:start + chunk], t, vp_sigmas, guide_scale, guide_rescale)
        r = 0 if start == 0 else int(offsets[k])
        x0[:, :, start + r:start + chunk] = c[:, :, r:]
        start += chunk - overlap
        k += 1
    return x0, t


def sample_dpmpp_2m_sde(noise, model, sigmas, step_noises, eta=1.0, s_noise=1.0):
    """``sample_dpmpp_2m_sde`` (midpoint), the noise sampler's draws given. ``model(x_in, sigma, i)``."""
    x = noise * sigmas[0]
    old, h_last, h = None, None, None
    for i in range(len(sigmas) - 1):
        c_in = 1 / (sigmas[i] ** 2 + 1.0) ** 0.5
        den = model(x * c_in, sigmas[i], i)
        if sigmas[i + 1] == 0:
            x = den
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            eh = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eh).exp() * x + (-h - eh).expm1().neg() * den
            if old is not None:
                r = h_last / h
                x = x + 0.5 * (-h - eh).expm1().neg() * (1 / r) * (den - old)
            x = x + step_noises[i] * sigmas[i + 1] * (-2 * eh).expm1().neg().sqrt() * s_noise
        old, h_last = den, h
    return x
