"""DDIM schedules against VideoCrafter2's golden arrays and diffusers' DDIMScheduler."""
import numpy as np
import pytest

from conftest import load_golden
from vstar_jax.diffusion import schedules as S

GOLDEN = "videocrafter2/ddim_vc2_25steps_eta1_cfg12.safetensors"


def test_alphas_cumprod_matches_golden():
    g = load_golden(GOLDEN)
    ac = S.make_alphas_cumprod()
    assert ac.dtype == np.float64 and ac.shape == (1000,)
    np.testing.assert_allclose(ac.astype(np.float32), g["alphas_cumprod"], rtol=0, atol=1e-7)


def test_videocrafter2_schedule_matches_golden():
    g = load_golden(GOLDEN)
    s = S.videocrafter2_schedule(25, eta=1.0)
    np.testing.assert_array_equal(s.timesteps, g["ddim_timesteps"])
    pairs = [("alphas", "ddim_alphas"), ("alphas_prev", "ddim_alphas_prev"),
             ("sigmas", "ddim_sigmas"), ("scale", "ddim_scale_arr"),
             ("scale_prev", "ddim_scale_arr_prev")]
    for mine, ref in pairs:
        err = np.abs(getattr(s, mine).astype(np.float64) - g[ref]).max()
        assert err <= 1e-7, (mine, err)  # measured: 0 (bit-exact) for all five


def test_videocrafter2_schedule_structure():
    s = S.videocrafter2_schedule(50, eta=0.0)
    assert s.timesteps[0] == 1 and s.timesteps[-1] == 981 and s.num_steps == 50
    assert np.all(s.sigmas == 0)
    np.testing.assert_allclose(s.sigmas_for(1.0), S.videocrafter2_schedule(50, 1.0).sigmas)
    # the reference's uniform discretisation: 30 steps give range(0, 1000, 33) + 1 = 31 steps
    assert S.videocrafter2_schedule(30).num_steps == 31
    ns = S.videocrafter2_schedule(25, use_scale=False)
    assert np.all(ns.scale == 1) and np.all(ns.scale_prev == 1)
    sa = S.make_scale_arr()
    assert sa.shape == (1400,) and sa[0] == 1 and np.isclose(sa[399], 0.7) and np.all(sa[400:] == np.float32(0.7))
    with pytest.raises(ValueError, match="num_steps"):
        S.videocrafter2_schedule(0)
    with pytest.raises(ValueError, match="flavour"):
        S.make_schedule("ddpm")


def test_torch_linspace_emulation():
    torch = pytest.importorskip("torch")
    for a, b in [(0.3, 1.7), (0.00085 ** 0.5, 0.012 ** 0.5), (1.0, 0.7)]:
        for n in [2, 3, 7, 16, 31, 999, 1000]:
            np.testing.assert_array_equal(S.torch_linspace_f32(a, b, n),
                                          torch.linspace(a, b, n, dtype=torch.float32).numpy())


def _modelscope_scheduler():
    diffusers = pytest.importorskip("diffusers")
    return diffusers.DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                   beta_schedule="scaled_linear", clip_sample=False,
                                   set_alpha_to_one=False, steps_offset=1)


@pytest.mark.parametrize("steps", [50, 25, 30])
def test_diffusers_schedule_matches_ddimscheduler(steps):
    sched = _modelscope_scheduler()
    np.testing.assert_array_equal(S.diffusers_alphas_cumprod(), sched.alphas_cumprod.numpy())
    sched.set_timesteps(steps)
    s = S.diffusers_schedule(steps, eta=1.0)
    np.testing.assert_array_equal(s.timesteps[::-1], sched.timesteps.numpy())
    for i, t in enumerate(sched.timesteps.numpy()):
        idx = steps - 1 - i
        prev = t - 1000 // steps
        a_prev = sched.alphas_cumprod[prev] if prev >= 0 else sched.final_alpha_cumprod
        assert s.alphas[idx] == sched.alphas_cumprod[t].item()
        assert s.alphas_prev[idx] == a_prev.item()
        var = sched._get_variance(int(t), int(prev)).item()
        np.testing.assert_allclose(s.sigmas[idx], np.float32(var) ** 0.5, rtol=1e-6)
