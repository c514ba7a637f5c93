"""Metrics on synthetic videos with known answers (OFS, warp error, MAWE, SCuts)."""
import numpy as np
import pytest

from vstar_jax.metrics import compute_metrics
from vstar_jax.metrics.flow import get_flow_model, ofs, resize_frames, video_flows
from vstar_jax.metrics.scuts import scene_cuts, scuts
from vstar_jax.metrics.warp import forward_splat, mawe_from, pair_warp_error, warp_stats


def texture(h, w, seed=0, cell=8):
    """Smooth random RGB texture (uint8 (h, w, 3))."""
    import cv2

    r = np.random.default_rng(seed).random((h // cell + 2, w // cell + 2, 3)).astype(np.float32)
    t = cv2.resize(r, (w, h), interpolation=cv2.INTER_CUBIC)
    return (np.clip(t, 0, 1) * 255).astype(np.uint8)


def translating(frames, h, w, k, seed=0):
    """A camera panning right by k pixels per frame over a texture: content moves left by k."""
    big = texture(h, w + k * frames, seed)
    return np.stack([big[:, t * k : t * k + w] for t in range(frames)])


def static(frames, h, w, seed=0):
    return np.repeat(texture(h, w, seed)[None], frames, axis=0)


# --- OFS ---------------------------------------------------------------------------------

def test_static_video_has_zero_ofs_and_no_cuts():
    v = static(20, 48, 64)
    assert ofs(v) == 0.0
    assert scuts(v) == 0


@pytest.mark.parametrize("k", [1, 2, 3])
def test_translation_ofs_is_k(k):
    v = translating(8, 64, 96, k)
    flows = video_flows(v)
    assert abs(ofs(v) - k) < 0.05
    # direction: content moves left by k pixels
    assert abs(np.median(flows[..., 0]) + k) < 0.05 and abs(np.median(flows[..., 1])) < 0.05


def test_ofs_at_size_scales_with_resolution():
    v = translating(4, 48, 48, 1)
    assert abs(ofs(v, size=(96, 96)) - 2.0) < 0.1


def test_flow_model_names_and_errors():
    assert get_flow_model("dis").name.startswith("dis-medium (opencv ")
    assert get_flow_model("dis-fast").name.startswith("dis-fast")
    with pytest.raises(ValueError, match="unknown flow model"):
        get_flow_model("raft-nope")
    with pytest.raises(ValueError, match="uint8"):
        ofs(np.zeros((3, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(F, H, W, 3\)"):
        ofs(np.zeros((3, 8, 8), np.uint8))


# --- resize (torchvision resize(antialias=False) on uint8 = bilinear, half-pixel, rounded) ----

def test_resize_matches_torch_bilinear():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    for shape, size in [((2, 40, 64, 3), (720, 720)), ((2, 100, 130, 3), (37, 53))]:
        v = rng.integers(0, 256, shape, dtype=np.uint8)
        ours = resize_frames(v, size).astype(int)
        t = torch.from_numpy(v).permute(0, 3, 1, 2).float()
        ref = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)
        ref = ref.round().clamp(0, 255).permute(0, 2, 3, 1).numpy().astype(int)
        diff = np.abs(ours - ref)
        # only float rounding ties at .5 may differ
        assert diff.max() <= 1 and (diff > 0).mean() < 5e-3


# --- forward splatting and warp error ---------------------------------------------------

def test_forward_splat_integer_shift():
    img = np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)
    flow = np.zeros((4, 5, 2), np.float32)
    flow[..., 0] = 2.0  # every pixel moves 2 to the right
    flow[..., 1] = -1.0  # and 1 up
    warped, hit = forward_splat(img, flow)
    expect_hit = np.zeros((4, 5), bool)
    expect_hit[0:3, 2:5] = True
    np.testing.assert_array_equal(hit, expect_hit)
    np.testing.assert_array_equal(warped[0:3, 2:5], img[1:4, 0:3])
    assert np.all(warped[~hit] == 0)


def test_forward_splat_rounds_and_last_source_wins():
    img = np.arange(1 * 4 * 3, dtype=np.float32).reshape(1, 4, 3)
    flow = np.zeros((1, 4, 2), np.float32)
    flow[0, 0, 0] = 1.4  # (0,0) -> rounds to (0,1)
    flow[0, 1, 0] = 0.0  # (0,1) stays: collides with (0,0); the later source (0,1) wins
    flow[0, 2, 0] = 0.6  # (0,2) -> (0,3)
    flow[0, 3, 0] = 0.5  # (0,3) -> round-half-even 3.5 -> 4: outside, dropped
    warped, hit = forward_splat(img, flow)
    np.testing.assert_array_equal(hit, [[False, True, False, True]])
    np.testing.assert_array_equal(warped[0, 1], img[0, 1])
    np.testing.assert_array_equal(warped[0, 3], img[0, 2])


def test_pair_warp_error_known_value_and_empty_mask():
    a = np.full((2, 2, 3), 10, np.uint8)
    b = np.full((2, 2, 3), 13, np.uint8)
    zero = np.zeros((2, 2, 2), np.float32)
    assert pair_warp_error(a, b, zero) == pytest.approx(9.0)
    # only the top-left pixel of ``a`` lands (at (1,1)); the rest fly out of the frame
    flow = np.full((2, 2, 2), 5.0, np.float32)
    flow[0, 0] = 1.0
    b2 = b.copy()
    b2[1, 1] = 12  # error at the one hit pixel: 2^2, mean over 3 channels of 1 pixel
    assert pair_warp_error(a, b2, flow) == pytest.approx(4.0)
    # nothing lands: the reference divides by every element, and the masked diff is all zero
    assert pair_warp_error(a, b, np.full((2, 2, 2), 9.0, np.float32)) == 0.0


def test_mawe_is_mean_of_ratios():
    errors, motions = np.array([1.0, 4.0]), np.array([1.0, 2.0])
    assert mawe_from(errors, motions) == pytest.approx((1 / 9.5 + 2 / 9.5) / 2)
    assert mawe_from(errors, motions, coeff=1.0) == pytest.approx(1.5)  # mean-of-ratios, not 5/3


def test_warp_error_of_translation_is_near_zero():
    v = translating(6, 72, 72, 1)
    native = warp_stats(v, size=None)
    assert native["warp_error"] < 1e-6
    at720 = warp_stats(v)  # 72 -> 720: a 10-pixel shift per frame
    assert abs(at720["motion"] - 10.0) < 0.3
    noise = np.random.default_rng(0).integers(0, 256, v.shape, dtype=np.uint8)
    noisy = warp_stats(noise, size=None)
    assert at720["warp_error"] < 15.0 < 1000.0 < noisy["warp_error"]
    assert at720["mawe"] < 0.1
    assert len(at720["warp_errors"]) == 5 and at720["flow_model"].startswith("dis")


# --- SCuts --------------------------------------------------------------------------------

def test_hard_cut_in_the_middle_is_one_scut():
    v = np.concatenate([translating(20, 64, 96, 1, seed=1), translating(20, 64, 96, 1, seed=2)])
    assert scene_cuts(v) == [20]
    assert scuts(translating(40, 64, 96, 1, seed=1)) == 0


def test_compute_metrics_records_flow_model():
    v = translating(5, 48, 48, 2)
    m = compute_metrics(v, mawe_size=None)
    assert set(m) >= {"ofs", "warp_error", "mawe", "scuts", "flow_model", "num_frames"}
    assert abs(m["ofs"] - 2) < 0.1 and m["scuts"] == 0 and m["num_frames"] == 5
    assert m["flow_model"].startswith("dis-medium")


# --- attention band score -----------------------------------------------------------------

def test_band_score_of_captured_maps():
    from vstar_jax.metrics.band import attention_band_score, layer_band_scores

    f = 16
    i = np.arange(f)
    banded = np.exp(-5.0 * np.abs(i[:, None] - i[None, :]))
    banded /= banded.sum(-1, keepdims=True)
    uniform = np.full((f, f), 1.0 / f)
    captured = {"down_0": {"temporal": (np.stack([banded, banded]),)}, "up_1": {"temporal": (uniform[None],)}}
    scores = layer_band_scores(captured, width=1)
    assert scores["up_1/temporal"] == pytest.approx((f + 2 * (f - 1)) / f**2)  # 46/256 of the mass
    inside = np.abs(i[:, None] - i[None, :]) <= 1
    assert scores["down_0/temporal"] == pytest.approx(banded[inside].sum() / f)
    assert attention_band_score(captured, 1) == pytest.approx(np.mean(list(scores.values())))
    with pytest.raises(ValueError, match="no \\(f, f\\) attention maps"):
        attention_band_score({"x": np.zeros(3)})


# --- command line -------------------------------------------------------------------------

def test_metrics_cli_prints_json(tmp_path, capsys):
    import json

    from vstar_jax.io.video import write_video
    from vstar_jax.metrics.cli import main

    path = tmp_path / "still.mp4"
    write_video(path, static(20, 48, 64), fps=8)
    assert main([str(path), "--mawe-size", "0", "--flow", "dis-fast"]) == 0
    out = json.loads(capsys.readouterr().out)[str(path)]
    assert out["num_frames"] == 20 and out["scuts"] == 0 and out["ofs"] < 0.05
    assert out["flow_model"].startswith("dis-fast")
