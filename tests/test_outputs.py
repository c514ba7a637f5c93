"""The decode/write stage (vstar_jax.generation.outputs): frame batches streamed into the mp4 and the
hash, equal to writing and hashing the whole video; nothing half-written on failure."""
import types

import numpy as np
import pytest

from vstar_jax.generation.outputs import FrameHasher, VideoSink, decode_batches, frames_digest
from vstar_jax.io.video import read_video

pytestmark = pytest.mark.filterwarnings("ignore:os.fork")


def _pixel_pipe():
    """A pixel-space 'pipeline' (no VAE): latents in [-1, 1] are the frames."""
    return types.SimpleNamespace(decoder=None, pixel_space=True)


def test_batches_cover_every_frame_in_order():
    rng = np.random.default_rng(0)
    lat = rng.uniform(-1, 1, (1, 3, 11, 6, 4)).astype(np.float32)
    batches = list(decode_batches(_pixel_pipe(), lat, 4))
    assert [b.shape[0] for b in batches] == [4, 4, 3]
    whole = np.concatenate(batches)
    from vstar_jax.io.video import video_to_uint8

    np.testing.assert_array_equal(whole, video_to_uint8(lat)[0])


def test_streamed_hash_equals_the_whole_video_hash():
    rng = np.random.default_rng(1)
    video = rng.integers(0, 255, (10, 4, 6, 3), dtype=np.uint8)
    h = FrameHasher(10)
    for s in range(0, 10, 3):
        h.update(video[s:s + 3])
    assert h.hexdigest() == frames_digest(video)
    short = FrameHasher(10)
    short.update(video[:3])
    with pytest.raises(RuntimeError, match="hashed 3 of 10"):
        short.hexdigest()


def test_sink_streams_an_mp4_and_keeps_nothing_unless_asked(tmp_path):
    rng = np.random.default_rng(2)
    video = np.repeat(rng.integers(0, 255, (1, 15, 9, 3), dtype=np.uint8), 12, axis=0)  # odd sizes: padded
    sink = VideoSink(tmp_path / "v.mp4", 12, 8.0)
    for s in range(0, 12, 5):
        sink.write(video[s:s + 5])
    assert not (tmp_path / "v.mp4").exists()  # only the temporary file until finished
    digest = sink.finish()
    assert digest == frames_digest(video) and sink.video() is None
    got = read_video(tmp_path / "v.mp4")
    assert got.shape == (12, 16, 10, 3)  # edge-padded to even sizes (yuv420p)
    from vstar_jax.io.video import write_video

    write_video(tmp_path / "whole.mp4", video, fps=8.0)  # the same encoder settings, all frames at once
    np.testing.assert_array_equal(got, read_video(tmp_path / "whole.mp4"))
    kept = VideoSink(None, 12, 8.0, keep=True)
    kept.write(video)
    assert kept.finish() == digest and np.array_equal(kept.video(), video)


def test_abort_leaves_no_file(tmp_path):
    sink = VideoSink(tmp_path / "v.mp4", 4, 8.0)
    sink.write(np.zeros((2, 8, 8, 3), np.uint8))
    sink.abort()
    assert list(tmp_path.iterdir()) == []
