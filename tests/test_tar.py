"""TAR: the Gaussian band against VSTAR's matrices, the logit transform, presets and specs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_golden
from vstar_jax.models.attention import attention
from vstar_jax.tar_vsp.tar import PRESETS, TARConfig, gaussian_band, make_transform, parse_tar, preset, tar_logits


def test_gaussian_band_matches_reference_matrices():
    gm = load_golden("videocrafter2/tar_matrices.safetensors")
    assert len(gm) == 6
    for name, want in gm.items():
        _, frames, sigma = name.split("_")
        got = gaussian_band(int(frames[len("frames"):]), float(sigma[len("sigma"):]))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_tar_logits_formula_and_row_max_sign():
    rng = np.random.default_rng(0)
    s = rng.standard_normal((3, 2, 6, 6)).astype(np.float32)
    s[0, 0, 1] -= 10.0  # a row whose max is negative: the bias flips sign, as in the reference
    got = np.asarray(tar_logits(jnp.asarray(s), 2.0, 0.5))
    i = np.arange(6)
    g = np.exp(-((i[:, None] - i[None]) ** 2) / 8.0)
    want = s + 0.5 * s.max(-1, keepdims=True) * g
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert s[0, 0, 1].max() < 0 and (got[0, 0, 1, 1] < s[0, 0, 1, 1])


def test_transform_gated_by_step_index_under_jit():
    tar = TARConfig(((0, 1.0, 1.0),), until_time=13)
    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(rng.standard_normal((4, 8, 2, 16)), jnp.float32) for _ in range(3))

    @jax.jit
    def run(step):
        return attention(q, k, v, logit_transform=make_transform(tar, 0, step))

    plain = attention(q, k, v)
    assert np.abs(np.asarray(run(13)) - np.asarray(plain)).max() > 1e-3  # active at until_time
    np.testing.assert_allclose(np.asarray(run(14)), np.asarray(plain), atol=1e-6)  # off after it
    assert make_transform(tar, 1, 0) is None and make_transform(None, 0, 0) is None


def test_presets_and_specs():
    assert set(PRESETS) == {"64D1", "64D4", "64D8", "64D1_32D8", "64D1_32D12", "64D4_32D8", "64D4_32D12", "64D1_32D1"}
    assert preset("64D1_32D8") == TARConfig(((0, 1.0, 1.0), (1, 8.0, 1.0)), 13)
    assert parse_tar("64D4") == preset("64D4")
    assert parse_tar("L0:2:0.5,L1:6@10") == TARConfig(((0, 2.0, 0.5), (1, 6.0, 1.0)), 10)
    assert parse_tar({"levels": [[0, 1, 1]], "until_time": 5}) == TARConfig(((0, 1.0, 1.0),), 5)
    assert parse_tar("none") is None and parse_tar(None) is None
    with pytest.raises(ValueError, match="unknown TAR preset"):
        preset("64D3")
    with pytest.raises(ValueError, match="bad TAR spec"):
        parse_tar("sigma=1")
    with pytest.raises(ValueError, match="sigma"):
        TARConfig(((0, 0.0, 1.0),))
    hash(preset("64D1"))  # static under jit


def test_a_tar_that_would_never_apply_is_refused():
    from vstar_jax.errors import VstarError

    for spec, needle in (("0:1@-5", "until_time"), ("L0:1:0,L1:8:0", "scale is 0"), ("0:1@later", "@until")):
        with pytest.raises(VstarError, match=needle):
            parse_tar(spec)
    with pytest.raises(VstarError, match="until_time"):
        parse_tar({"levels": [[0, 1.0, 1.0]], "until_time": -1})
    with pytest.raises(VstarError, match="no levels"):
        TARConfig(levels=())
    assert parse_tar("0:1@0").until_time == 0  # the first step only is a real setting
