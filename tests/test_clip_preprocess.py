"""``resize_antialiased`` / ``openclip_pixels`` against a torch re-statement of kornia 0.7's
``resize(..., interpolation="bicubic", align_corners=True, antialias=True)`` (kornia is not a
dependency; the reference below is written from kornia's formulas with plain torch ops)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import jax  # noqa: E402

from conftest import rel_err  # noqa: E402
from vstar_jax.models.clip_vision import CLIP_MEAN, CLIP_STD, openclip_pixels, resize_antialiased  # noqa: E402

# Both sides are float32 linear filters with the same weights (ours folds blur and bicubic into one
# matrix per axis, the reference runs conv2d then interpolate): only the summation order differs.
TOL = 1e-5


def _gauss1d(k, sigma):
    x = torch.arange(k, dtype=torch.float32) - k // 2
    if k % 2 == 0:
        x = x + 0.5
    g = torch.exp(-x.pow(2) / (2 * sigma ** 2))
    return g / g.sum()


def _blur(x, sigmas, ks, border="reflect"):
    """kornia's separable gaussian_blur2d on NCHW: along W, then along H (correlation, groups=C)."""
    c = x.shape[1]
    kw, kh = ks[1], ks[0]
    wx = _gauss1d(kw, sigmas[1]).view(1, 1, 1, kw).repeat(c, 1, 1, 1)
    x = F.conv2d(F.pad(x, ((kw - 1) // 2, kw - 1 - (kw - 1) // 2, 0, 0), mode=border), wx, groups=c)
    wy = _gauss1d(kh, sigmas[0]).view(1, 1, kh, 1).repeat(c, 1, 1, 1)
    return F.conv2d(F.pad(x, (0, 0, (kh - 1) // 2, kh - 1 - (kh - 1) // 2), mode=border), wy, groups=c)


def _params(hw, size):
    factors = (hw[0] / size[0], hw[1] / size[1])
    sigmas = (max((factors[0] - 1) / 2, 0.001), max((factors[1] - 1) / 2, 0.001))
    ks = [int(max(2.0 * 2 * sigmas[0], 3)), int(max(2.0 * 2 * sigmas[1], 3))]
    ks = tuple(k + 1 if k % 2 == 0 else k for k in ks)
    return factors, sigmas, ks


def kornia_resize_ref(x_nchw, size, *, border="reflect", antialias=True):
    """kornia 0.7 ``resize(x, size, "bicubic", align_corners=True, antialias=True)`` in torch."""
    factors, sigmas, ks = _params(tuple(x_nchw.shape[-2:]), size)
    if antialias and max(factors) > 1:  # kornia blurs only when downscaling
        x_nchw = _blur(x_nchw, sigmas, ks, border)
    return F.interpolate(x_nchw, size=size, mode="bicubic", align_corners=True)


def _ours(x_nhwc, size, fn=resize_antialiased):
    return np.asarray(fn(x_nhwc, size))


def _ref(x_nhwc, size, **kw):
    t = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
    return kornia_resize_ref(t, size, **kw).numpy().transpose(0, 2, 3, 1)


def _rand(shape, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


CASES = [
    ((2, 256, 256, 3), (224, 224)),  # StreamingT2V: factor 1.14, sigma 0.07, kernel 3
    ((1, 64, 48, 1), (16, 20)),      # strong downscale: kernels 7 (6 made odd) and 3
    ((1, 8, 8, 1), (20, 20)),        # upscale: no blur
    ((2, 64, 12, 3), (16, 20)),      # H shrinks, W grows: W blur has sigma 0.001 (identity)
    ((2, 9, 7, 2), (1, 3)),          # kernel 17 > H, one output row (bicubic scale 0)
    ((1, 5, 6, 2), (5, 6)),          # same size: identity
]


@pytest.mark.parametrize("shape,size", CASES)
def test_matches_kornia_formulas(shape, size):
    x = _rand(shape)
    got, want = _ours(x, size), _ref(x, size)
    assert got.shape == want.shape == (shape[0], *size, shape[3])
    assert got.dtype == np.float32
    assert rel_err(got, want) < TOL
    if size == shape[1:3]:
        np.testing.assert_allclose(got, x, atol=1e-6)


def test_blur_and_border_matter():
    """A resize without the blur, or with another border, is caught by the tolerance above."""
    x = _rand((1, 64, 48, 1), seed=1)
    got = _ours(x, (16, 20))
    assert _params((64, 48), (16, 20))[2] == (7, 3)
    assert rel_err(got, _ref(x, (16, 20), antialias=False)) > 1e-3
    assert rel_err(got, _ref(x, (16, 20), border="replicate")) > 1e-3
    # upscaling: kornia skips the blur; applying the sigma-0.001 blur changes nothing
    x = _rand((1, 8, 8, 1), seed=2)
    t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    _, sigmas, ks = _params((8, 8), (20, 20))
    blurred = F.interpolate(_blur(t, sigmas, ks), size=(20, 20), mode="bicubic", align_corners=True)
    assert rel_err(_ours(x, (20, 20)), blurred.numpy().transpose(0, 2, 3, 1)) < TOL


def test_openclip_pixels_and_jit():
    frames = _rand((2, 64, 80, 3), seed=3)
    want = (_ref(frames, (32, 32)) + 1) / 2
    want = (want - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    eager = np.asarray(openclip_pixels(frames, 32))
    jitted = np.asarray(jax.jit(openclip_pixels, static_argnums=1)(frames, 32))
    assert eager.shape == jitted.shape == (2, 32, 32, 3) and eager.dtype == np.float32
    assert rel_err(eager, want) < TOL
    assert rel_err(jitted, want) < TOL
    with pytest.raises(ValueError):
        openclip_pixels(frames.transpose(0, 3, 1, 2), 32)  # NCHW is refused


def test_resize_jit():
    x = _rand((2, 256, 256, 3), seed=4)
    got = np.asarray(jax.jit(resize_antialiased, static_argnums=1)(x, (224, 224)))
    assert rel_err(got, _ref(x, (224, 224))) < TOL


def test_against_kornia_if_installed():
    kornia = pytest.importorskip("kornia")
    x = _rand((2, 64, 48, 3), seed=5)
    t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    want = kornia.geometry.resize(t, (16, 20), interpolation="bicubic", align_corners=True, antialias=True)
    assert rel_err(_ours(x, (16, 20)), want.numpy().transpose(0, 2, 3, 1)) < TOL
