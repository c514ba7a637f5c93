"""The project's TFDS builder of a folder of videos (issue 28): clips of the asked shape, one-line bad input."""
import numpy as np
import pytest

from vstar_jax.errors import VstarError
from vstar_jax.io.video import write_video
from vstar_jax.io.video_tfds import prepared_clips, scan_videos, video_folder_builder


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    for i, n in enumerate((10, 9, 13)):  # 10 and 9 frames: 2 clips of 4 each; 13: 3 clips
        base = rng.integers(0, 255, (1, 24, 32, 3))
        frames = np.clip(base + 8 * np.arange(n)[:, None, None, None], 0, 255).astype(np.uint8)
        write_video(d / f"clip{i}.mp4", frames, fps=8)
    (d / "notes.txt").write_text("not a video")
    return d


def test_builder_reads_a_folder_of_mp4s_into_clips(video_folder, tmp_path):
    assert [n for _, n in scan_videos(video_folder, 4)] == [10, 9, 13]
    clips = prepared_clips(video_folder, frames=4, size=16, data_dir=str(tmp_path / "tfds"))
    assert len(clips) == 7
    shapes = {clips[i].shape for i in range(len(clips))}
    assert shapes == {(4, 16, 16, 3)} and clips[0].dtype == np.uint8
    rows = [clips.source[i] for i in range(len(clips))]
    got = sorted((r["source"].decode() if isinstance(r["source"], bytes) else r["source"], int(r["start"])) for r in rows)
    assert got == [("clip0.mp4", 0), ("clip0.mp4", 4), ("clip1.mp4", 0), ("clip1.mp4", 4),
                   ("clip2.mp4", 0), ("clip2.mp4", 4), ("clip2.mp4", 8)]
    # every 3rd video held out whole; frame_step 2 takes every other frame (7 source frames per clip)
    test = prepared_clips(video_folder, frames=4, size=16, frame_step=2, holdout_every=3, split="test",
                          data_dir=str(tmp_path / "tfds"))
    assert len(test) == 1 and test[0].shape == (4, 16, 16, 3)


def test_bad_video_folders_are_one_line_errors(video_folder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "broken.mp4").write_bytes(b"not an mp4")
    with pytest.raises(VstarError, match="no readable video") as e:
        video_folder_builder(empty, 4, 16, data_dir=str(tmp_path / "tfds"))
    assert "\n" not in str(e.value)
    with pytest.raises(VstarError, match=r"clips of 20 frames .* longer than every video .* 13 frames"):
        video_folder_builder(video_folder, 20, 16, data_dir=str(tmp_path / "tfds"))
    with pytest.raises(VstarError, match="does not exist"):
        video_folder_builder(tmp_path / "nowhere", 4, 16)
    assert not (tmp_path / "tfds").exists()  # refused before anything was written
