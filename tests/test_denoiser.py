"""The denoiser (vstar_jax.models.denoiser) passes what a generation asks for to the UNet: fps, the
loop index, the hooks; converts v-predictions to eps; records attention rows when asked. A stub UNet
records its arguments, so dropping any of them fails here (the pipeline's default fps would not)."""
import jax
import jax.numpy as jnp
import numpy as np

from vstar_jax.diffusion.schedules import make_alphas_cumprod
from vstar_jax.models.denoiser import DenoiserSpec, make_denoiser


class StubUNet:
    """eps = x * 0 + fps + 1000 * step_index + 10 * len(hooks)."""

    def __init__(self):
        self.seen = {}

    def apply(self, variables, x, t, ctx, *, fps, step_index, hooks, capture_attention, mutable=None):
        self.seen.update(params=variables["params"], t=t, ctx=ctx, hooks=hooks, capture=capture_attention)
        out = jnp.zeros_like(x) + fps + 1000.0 * step_index + 10.0 * len(hooks)
        if mutable:
            return out, {"intermediates": {"layer": {"weights": jnp.ones((x.shape[0] * 4, 3, 3))}}}
        return out


def test_fps_step_index_and_hooks_reach_the_unet():
    unet = StubUNet()
    ac = make_alphas_cumprod()
    hook = object()
    fn = make_denoiser(unet, {"w": 1}, DenoiserSpec(hooks=(hook,)), alphas_cumprod=ac, fps=jnp.float32(16.0))
    x = jnp.ones((2, 4, 3, 2, 2))
    eps = fn(x, jnp.array([500, 500]), jnp.zeros((2, 5, 8)), 7)
    assert float(eps[0, 0, 0, 0, 0]) == 16.0 + 7000.0 + 10.0
    assert unet.seen["hooks"] == (hook,) and unet.seen["params"] == {"w": 1} and not unet.seen["capture"]


def test_v_prediction_is_converted_to_eps():
    unet = StubUNet()
    ac = np.asarray(make_alphas_cumprod(), np.float32)
    fn = make_denoiser(unet, {}, DenoiserSpec(prediction="v"), alphas_cumprod=ac, fps=jnp.float32(0.5))
    x = jax.random.normal(jax.random.key(0), (2, 4, 3, 2, 2))
    t = jnp.array([100, 900])
    eps = np.asarray(fn(x, t, jnp.zeros((2, 5, 8)), 0))
    a = ac[np.asarray(t)].reshape(-1, 1, 1, 1, 1)
    np.testing.assert_allclose(eps, np.sqrt(a) * 0.5 + np.sqrt(1 - a) * np.asarray(x), rtol=1e-6, atol=1e-6)
    # per-frame timesteps (FIFO): alpha per frame
    tf = jnp.array([[100, 500, 900]] * 2)
    eps = np.asarray(fn(x, tf, jnp.zeros((2, 5, 8)), 0))
    a = ac[np.asarray(tf)][:, None, :, None, None]
    np.testing.assert_allclose(eps, np.sqrt(a) * 0.5 + np.sqrt(1 - a) * np.asarray(x), rtol=1e-6, atol=1e-6)


def test_capture_returns_cond_rows_averaged_over_pixels():
    unet = StubUNet()
    fn = make_denoiser(unet, {}, DenoiserSpec(capture=True), alphas_cumprod=make_alphas_cumprod(), fps=1.0)
    eps, aux = fn(jnp.ones((2, 4, 3, 2, 2)), jnp.array([1, 1]), jnp.zeros((2, 5, 8)), 0)
    assert unet.seen["capture"] and aux["layer"]["weights"].shape == (1, 3, 3)


def test_attention_rows_are_the_cond_rows_averaged_over_pixels():
    """Hand-made sown weights: CFG rows [uncond; cond] of b=2 items, 3 pixels each, 2x2 maps. The
    result is each cond item's mean over its pixels; the uncond rows (all 7s) never show. Catches the
    maps being taken from the uncond half (``[:batch]``)."""
    from vstar_jax.models.denoiser import attention_rows

    b, pixels, f = 2, 3, 2
    uncond = np.full((b * pixels, f, f), 7.0, np.float32)
    cond = np.arange(b * pixels * f * f, dtype=np.float32).reshape(b, pixels, f, f)
    w = jnp.asarray(np.concatenate([uncond, cond.reshape(b * pixels, f, f)]))
    got = attention_rows({"layer": {"weights": w}}, b)["layer"]["weights"]
    np.testing.assert_array_equal(np.asarray(got), cond.mean(axis=1))
