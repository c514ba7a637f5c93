"""eps / v parameterization: conversions, training targets and Min-SNR weights."""
import jax.numpy as jnp
import numpy as np
import pytest

from vstar_jax.diffusion.parameterization import check_prediction, min_snr_weight, target, to_eps
from vstar_jax.diffusion.schedules import make_alphas_cumprod
from vstar_jax.pipeline import diffusion_settings


def _draw():
    ac = make_alphas_cumprod().astype(np.float32)
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (3, 4, 2, 3, 3)).astype(np.float32)
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    t = np.array([0, 480, 999])
    a = ac[t].reshape(-1, 1, 1, 1, 1)
    return ac, x0, noise, t, a, np.sqrt(a) * x0 + np.sqrt(1 - a) * noise


def test_v_target_converts_back_to_the_noise():
    ac, x0, noise, t, a, xt = _draw()
    v = target(jnp.asarray(x0), jnp.asarray(noise), jnp.asarray(a), "v")
    np.testing.assert_allclose(np.asarray(v), np.sqrt(a) * noise - np.sqrt(1 - a) * x0, rtol=1e-6, atol=1e-6)
    # a perfect v-model and a perfect eps-model give the sampler the same eps
    np.testing.assert_allclose(np.asarray(to_eps(v, jnp.asarray(xt), t, ac, "v")), noise, atol=2e-5)
    assert to_eps(noise, xt, t, ac, "eps") is noise
    np.testing.assert_array_equal(np.asarray(target(x0, noise, a, "eps")), noise)


def test_min_snr_weights():
    ac = make_alphas_cumprod().astype(np.float32)
    snr = ac / (1 - ac)
    w_eps = np.asarray(min_snr_weight(ac, 5.0, "eps"))
    w_v = np.asarray(min_snr_weight(ac, 5.0, "v"))
    np.testing.assert_allclose(w_eps, np.minimum(snr, 5) / snr, rtol=1e-5)
    np.testing.assert_allclose(w_v, np.minimum(snr, 5) / (snr + 1), rtol=1e-5)
    assert w_eps[-1] == pytest.approx(1.0) and w_eps[0] < 0.01  # noisy steps full weight, clean ones capped
    np.testing.assert_array_equal(np.asarray(min_snr_weight(ac, 0.0, "v")), np.ones_like(ac))


def test_unknown_prediction_is_a_clear_error():
    assert check_prediction("v") == "v"
    with pytest.raises(ValueError, match="unknown prediction 'x0'"):
        to_eps(jnp.zeros((1,)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32), np.ones(2), "x0")
    with pytest.raises(ValueError, match="unknown prediction"):
        diffusion_settings({"diffusion": {"prediction": "sample"}})
    assert diffusion_settings({})["prediction"] == "eps"
    assert diffusion_settings({"diffusion": {"prediction": "v"}})["prediction"] == "v"


def test_converters_record_the_checkpoints_parameterization(tmp_path):
    import json

    from vstar_jax.checkpoints_convert import diffusers as conv_diffusers
    from vstar_jax.checkpoints_convert import videocrafter2 as conv_vc2

    assert conv_vc2.diffusion_config({})["prediction"] == "eps"  # VideoCrafter2's YAML has none: eps
    assert conv_vc2.diffusion_config({"parameterization": "v"})["prediction"] == "v"
    with pytest.raises(ValueError, match="parameterization 'x0'"):
        conv_vc2.diffusion_config({"parameterization": "x0"})
    (tmp_path / "scheduler").mkdir()
    cfg = tmp_path / "scheduler" / "scheduler_config.json"
    for given, want in (("epsilon", "eps"), ("v_prediction", "v")):
        cfg.write_text(json.dumps({"prediction_type": given}))
        assert conv_diffusers.diffusion_config(str(tmp_path))["prediction"] == want
    cfg.write_text(json.dumps({"prediction_type": "sample"}))
    with pytest.raises(ValueError, match="prediction_type 'sample'"):
        conv_diffusers.diffusion_config(str(tmp_path))
