"""Video writing/reading round trips, sidecars, uint8 conversion, writability checks."""
import json

import numpy as np
import pytest

from vstar_jax.io import video as V


def _frames(n, h, w):
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, h * w * 3).reshape(h, w, 3)
    # smooth content (compresses predictably) that changes per frame
    return np.stack([np.clip(base + 8 * i + rng.normal(0, 2, base.shape), 0, 255) for i in range(n)]
                    ).astype(np.uint8)


def test_mp4_roundtrip(tmp_path):
    frames = _frames(12, 32, 48)
    out = V.write_video(tmp_path / "sub" / "clip.mp4", frames, fps=8)
    assert out.exists() and not list(out.parent.glob(".*tmp*"))
    back, fps = V.read_video(out, return_fps=True)
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert fps == pytest.approx(8)
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 6  # lossy (crf 10)


def test_mp4_odd_size_is_padded(tmp_path):
    frames = _frames(5, 33, 47)
    out = V.write_video(tmp_path / "odd.mp4", frames, fps=28)
    back = V.read_video(out)
    assert back.shape == (5, 34, 48, 3)
    assert np.abs(back[:, :33, :47].astype(int) - frames.astype(int)).mean() < 6


def test_gif_roundtrip(tmp_path):
    frames = _frames(4, 16, 20)
    out = V.write_video(tmp_path / "clip.gif", frames, fps=10)
    back, fps = V.read_video(out, return_fps=True)
    assert back.shape == (4, 16, 20, 3)
    assert fps == pytest.approx(10)


def test_bad_frames(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        V.write_video(tmp_path / "a.mp4", np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(F, H, W, 3\)"):
        V.write_video(tmp_path / "a.mp4", np.zeros((8, 8, 3), np.uint8))


def test_sidecar(tmp_path):
    video = tmp_path / "clip.mp4"
    p = V.write_sidecar(video, {"prompt": "x", "seed": np.int64(3), "tar": (("64", 1.0, 1.0),),
                                "frames": np.arange(3), "scale": np.float32(0.5)})
    assert p == tmp_path / "clip.json"
    data = json.loads(p.read_text())
    assert data == {"prompt": "x", "seed": 3, "tar": [["64", 1.0, 1.0]], "frames": [0, 1, 2], "scale": 0.5}
    assert V.read_sidecar(video) == data


def test_video_to_uint8_matches_reference_rounding():
    v = np.array([-2.0, -1.0, 0.0, 0.5, 0.999, 1.0, 3.0], np.float32)
    video = np.broadcast_to(v[None, None, None, None, :], (1, 3, 2, 1, 7))
    out = V.video_to_uint8(video)
    assert out.shape == (1, 2, 1, 7, 3) and out.dtype == np.uint8
    # clamp, (x + 1) / 2 * 255, truncate (torch's .to(uint8))
    np.testing.assert_array_equal(out[0, 0, 0, :, 0], [0, 0, 127, 191, 254, 255, 255])
    assert V.video_to_uint8(video[0]).shape == (2, 1, 7, 3)
    with pytest.raises(ValueError, match="video must be"):
        V.video_to_uint8(np.zeros((1, 4, 2, 8, 8)))


def test_check_writable(tmp_path):
    target = tmp_path / "new" / "dir" / "clip.mp4"
    assert V.check_writable(target) == target.resolve()
    assert target.parent.is_dir() and not list(target.parent.iterdir())
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(V.NotWritableError, match="not writable|does not exist"):
        V.check_writable(blocker / "clip.mp4")
    with pytest.raises(V.NotWritableError, match="is a directory"):
        V.check_writable(tmp_path)
    with pytest.raises(V.NotWritableError) as e:
        V.check_writable(blocker / "x" / "clip.mp4")
    assert "\n" not in str(e.value)
