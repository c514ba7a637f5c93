"""Guided DDIM step (golden VideoCrafter2 step, diffusers DDIMScheduler) and the scan loop (the ``single``
strategy through ``Strategy.sample``, the one sampler)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_golden, strategy_sample
from vstar_jax.diffusion import sampler as SP
from vstar_jax.diffusion import schedules as S


def ddim_sample(model_fn, x_T, cond, uncond, schedule, **kw):
    """The plain DDIM loop as every path runs it: the registry's ``single`` through ``Strategy.sample``."""
    return strategy_sample("single", model_fn, x_T, cond, uncond, schedule, **kw)

GOLDEN = "videocrafter2/ddim_vc2_25steps_eta1_cfg12.safetensors"


def _scaled_err(a, ref):
    """max |a - ref| / max(1, max |ref|): float32 error relative to the tensor's scale."""
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return np.abs(a - ref).max() / max(1.0, np.abs(ref).max())


@pytest.mark.parametrize("index", [24, 12, 0])
def test_vc2_guided_step_matches_golden(index):
    g = load_golden(GOLDEN)
    s = S.videocrafter2_schedule(25, eta=1.0)
    co = SP.step_coefficients(s, index)
    # numpy float32: same operations in the same order as lvdm -> bit-exact
    xp, x0 = SP.guided_ddim_step(g["x_t"], g["eps_cond"], g["eps_uncond"], co, np.float32(12.0), g["noise"])
    np.testing.assert_array_equal(x0, g[f"pred_x0_index{index}"])
    np.testing.assert_array_equal(xp, g[f"x_prev_index{index}"])
    # jitted JAX (XLA may fuse/contract): within 1e-5 of the tensor's scale (measured <= 1.4e-7)
    step = jax.jit(SP.guided_ddim_step)
    xp, x0 = step(g["x_t"], g["eps_cond"], g["eps_uncond"], co, 12.0, g["noise"])
    assert _scaled_err(x0, g[f"pred_x0_index{index}"]) < 1e-5
    assert _scaled_err(xp, g[f"x_prev_index{index}"]) < 1e-5


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_diffusers_step_matches_ddimscheduler_over_50_steps(eta):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                    beta_schedule="scaled_linear", clip_sample=False,
                                    set_alpha_to_one=False, steps_offset=1)
    sched.set_timesteps(50)
    s = S.diffusers_schedule(50, eta=eta)
    coeffs = s.coefficients()
    rng = np.random.default_rng(0)
    shape = (1, 4, 3, 4, 5)
    x_ref = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    x = jnp.asarray(x_ref.numpy())
    step = jax.jit(SP.ddim_step)
    worst = 0.0
    for i, t in enumerate(sched.timesteps):
        eps = rng.standard_normal(shape).astype(np.float32)
        noise = rng.standard_normal(shape).astype(np.float32)
        assert int(coeffs["timesteps"][i]) == int(t)
        out = sched.step(torch.from_numpy(eps), t, x_ref, eta=eta,
                         variance_noise=torch.from_numpy(noise) if eta > 0 else None)
        co = {k: v[i] for k, v in coeffs.items()}
        x, x0 = step(x, jnp.asarray(eps), co, jnp.asarray(noise) if eta > 0 else None)
        worst = max(worst, _scaled_err(x0, out.pred_original_sample.numpy()))
        x_ref = out.prev_sample
        worst = max(worst, _scaled_err(x, x_ref.numpy()))
    assert worst < 1e-5, worst


def test_v_prediction_step_matches_ddimscheduler():
    """A v-model's output through ``to_eps`` then our DDIM step == DDIMScheduler(prediction_type=
    "v_prediction") over 50 steps (eta 0)."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    from vstar_jax.diffusion.parameterization import to_eps

    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                    beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                                    steps_offset=1, prediction_type="v_prediction")
    sched.set_timesteps(50)
    s = S.diffusers_schedule(50, eta=0.0)
    coeffs = s.coefficients()
    rng = np.random.default_rng(1)
    shape = (2, 4, 3, 4, 5)
    x_ref = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    x = jnp.asarray(x_ref.numpy())
    worst = 0.0
    for i, t in enumerate(sched.timesteps):
        v = rng.standard_normal(shape).astype(np.float32)
        out = sched.step(torch.from_numpy(v), t, x_ref, eta=0.0)
        eps = to_eps(jnp.asarray(v), x, jnp.full((shape[0],), int(t)), s.alphas_cumprod, "v")
        x, x0 = SP.ddim_step(x, eps, {k: c[i] for k, c in coeffs.items()})
        worst = max(worst, _scaled_err(x0, out.pred_original_sample.numpy()))
        x_ref = out.prev_sample
        worst = max(worst, _scaled_err(x, x_ref.numpy()))
    assert worst < 1e-5, worst


def _dummy_model(counter):
    def model_fn(x, t, context, step_index):
        counter.append(1)  # Python side effect: runs once per trace
        cmean = context.mean(axis=tuple(range(1, context.ndim)))  # (2b,)
        eps = 0.5 * x + 0.01 * t[:, None, None, None, None].astype(x.dtype) / 1000 \
            + cmean[:, None, None, None, None]
        aux = {"step": step_index, "t": t[0]}
        return eps, aux
    return model_fn


def test_ddim_sample_compiles_once_and_passes_step_index():
    calls = []
    fn = _dummy_model(calls)
    s = S.videocrafter2_schedule(10, eta=1.0)
    x_T = jax.random.normal(jax.random.key(1), (1, 4, 3, 4, 4))
    cond, uncond = jnp.ones((1, 77, 8)), jnp.zeros((1, 77, 8))
    out = ddim_sample(fn, x_T, cond, uncond, s, cfg_scale=7.5, key=jax.random.key(0), capture=True,
                      return_x0=True)
    assert len(calls) == 1  # the scan body is traced once
    np.testing.assert_array_equal(np.asarray(out.aux["step"]), np.arange(10))
    np.testing.assert_array_equal(np.asarray(out.aux["t"]), s.timesteps[::-1])
    assert out.pred_x0.shape == (10,) + x_T.shape and out.latents.shape == x_T.shape
    again = ddim_sample(fn, x_T, cond, uncond, s, cfg_scale=7.5, key=jax.random.key(0), capture=True,
                        return_x0=True)
    assert len(calls) == 1  # cached: no retrace for the same model_fn/shapes
    np.testing.assert_array_equal(np.asarray(again.latents), np.asarray(out.latents))
    other = ddim_sample(fn, x_T, cond, uncond, s, cfg_scale=7.5, key=jax.random.key(1), capture=True)
    assert not np.allclose(np.asarray(other.latents), np.asarray(out.latents))


def test_ddim_sample_matches_python_loop():
    """The scan equals a Python loop of guided steps with two separate model calls."""
    calls = []
    fn = _dummy_model(calls)
    s = S.videocrafter2_schedule(8, eta=0.7)
    b, f = 2, 3
    x_T = jax.random.normal(jax.random.key(3), (b, 4, f, 2, 2))
    cond = jax.random.normal(jax.random.key(4), (f, 77, 8))  # per-frame (VSP) cond
    uncond = jnp.zeros((1, 77, 8))
    key = jax.random.key(5)
    got = ddim_sample(fn, x_T, cond, uncond, s, cfg_scale=12.0, key=key, capture=True).latents

    coeffs = s.coefficients()
    keys = jax.random.split(key, s.num_steps)
    cond_rows = jnp.broadcast_to(cond[None], (b, f, 77, 8))
    unc_rows = jnp.broadcast_to(uncond[:, None], (b, f, 77, 8))
    x = x_T
    for i in range(s.num_steps):
        co = {k: v[i] for k, v in coeffs.items()}
        t = jnp.full((b,), co["timesteps"], jnp.int32)
        e_c = fn(x, t, cond_rows, i)[0]
        e_u = fn(x, t, unc_rows, i)[0]
        noise = jax.random.normal(keys[i], x.shape)
        x, _ = SP.guided_ddim_step(x, e_c, e_u, co, 12.0, noise)
    assert _scaled_err(got, x) < 1e-5


def test_ddim_sample_no_guidance_and_eta0_is_deterministic_without_key():
    calls = []
    fn = _dummy_model(calls)

    def eps_only(x, t, c, i):
        return fn(x, t, c, i)[0]

    s = S.diffusers_schedule(5, eta=0.0)
    x_T = jnp.ones((1, 4, 2, 2, 2))
    a = ddim_sample(eps_only, x_T, jnp.ones((1, 77, 8)), None, s).latents
    b = ddim_sample(eps_only, x_T, jnp.ones((1, 77, 8)), None, s, key=jax.random.key(9)).latents
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="PRNG key"):
        ddim_sample(eps_only, x_T, jnp.ones((1, 77, 8)), None, s, eta=1.0)


def test_cfg_context_shapes():
    c3 = jnp.ones((1, 77, 8))
    assert SP.cfg_context(c3, c3, 2, 16).shape == (4, 77, 8)
    pf = jnp.ones((16, 77, 8))
    ctx = SP.cfg_context(pf, jnp.zeros((1, 77, 8)), 1, 16)
    assert ctx.shape == (2, 16, 77, 8)
    assert float(ctx[0].max()) == 0 and float(ctx[1].min()) == 1  # [uncond; cond]
    assert SP.cfg_context(pf, c3, 2, 16).shape == (4, 16, 77, 8)
    assert SP.cfg_context(jnp.ones((2, 77, 8)), c3, 2, 16).shape == (4, 77, 8)
    assert SP.cfg_context(jnp.ones((2, 1, 77, 8)), c3, 2, 16).shape == (4, 16, 77, 8)
    with pytest.raises(ValueError, match="rows"):
        SP.cfg_context(jnp.ones((5, 77, 8)), c3, 1, 16)
    with pytest.raises(ValueError, match="broadcast"):
        SP.cfg_context(jnp.ones((1, 5, 77, 8)), c3, 1, 16)
