"""Attention band score and the attention-map PNG grid."""
import numpy as np
import pytest

from vstar_jax.tar_vsp import analysis as A


def test_band_score_identity_and_uniform():
    f = 16
    eye = np.eye(f)
    for w in (0, 1, 5):
        assert A.band_score(eye, w) == pytest.approx(1.0)
    uni = np.full((f, f), 1.0 / f)
    for w in (0, 1, 3, 15):
        inside = sum(1 for i in range(f) for j in range(f) if abs(i - j) <= w)
        assert A.band_score(uni, w) == pytest.approx(inside / f ** 2)
    assert A.band_score(uni, 0) == pytest.approx(1.0 / f)
    batched = A.band_score(np.stack([eye, uni]), 0)
    np.testing.assert_allclose(batched, [1.0, 1.0 / f])
    with pytest.raises(ValueError, match="width"):
        A.band_score(eye, -1)
    with pytest.raises(ValueError, match="f, f"):
        A.band_score(np.ones((3, 4)), 1)


def test_flatten_maps():
    tree = {"intermediates": {"down_0": {"temporal": {"attn1": (np.ones((3, 4, 4)),)}},
                              "mid": {"attn": [np.eye(4), np.eye(4)]}, "other": (np.ones(5),)}}
    flat = A.flatten_maps(tree)
    assert set(flat) == {"intermediates/down_0/temporal/attn1", "intermediates/mid/attn/0",
                         "intermediates/mid/attn/1"}


def test_plot_attention_grid(tmp_path):
    iio = pytest.importorskip("imageio.v3")
    f, steps = 8, 5
    rng = np.random.default_rng(0)
    band = np.exp(-np.subtract.outer(np.arange(f), np.arange(f)) ** 2 / 2.0)
    band /= band.sum(-1, keepdims=True)
    maps = {"up_1/attn1": np.stack([band] * steps),
            "up_1/attn2": rng.dirichlet(np.ones(f), size=(steps, f)),
            "init": band}
    out = A.plot_attention_grid(maps, tmp_path / "fig" / "attn.png", steps=[0, 2, 4], title="test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = iio.imread(out)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    # default step choice and a batch axis (S, b, f, f)
    A.plot_attention_grid({"x": np.stack([maps["up_1/attn2"]] * 2, axis=1)}, tmp_path / "b.png")
    with pytest.raises(ValueError, match="out of range"):
        A.plot_attention_grid(maps, tmp_path / "c.png", steps=[9])
    with pytest.raises(ValueError, match="no attention"):
        A.plot_attention_grid({}, tmp_path / "d.png")
