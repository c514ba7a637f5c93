"""Nothing is lost and nothing is half-written (issue 22, "data loss").

Each refusal runs as a user types it (a subprocess of ``python -m vstar_jax.cli``) and must exit
non-zero with one ``error: ...`` line (no traceback) and leave the folder exactly as it was (every
file hashed before and after): ``convert --overwrite`` never replaces the source, a folder holding
it, or a folder that is not a previous vstar-jax checkpoint; ``generate --overwrite`` never replaces
a file vstar-jax did not write; a GIF frame rate a GIF cannot store is refused before compute.
A failing writer (ffmpeg exiting non-zero, ENOSPC from the GIF encoder, a real full tmpfs) leaves
the previous video, GIF and sidecar intact and no temporary file behind.
"""
import errno
import hashlib
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tiny_checkpoint import shared_tiny_checkpoint
from vstar_jax import cli
from vstar_jax.generation.outputs import SIDECAR_FORMAT
from vstar_jax.io import atomic
from vstar_jax.io.video import read_video, write_gif, write_video

pytestmark = pytest.mark.filterwarnings("ignore:os.fork")

REPO = pathlib.Path(__file__).resolve().parents[1]
PROMPT = "a red ball rolls to the right"
TINY = ["--frames", "4", "--steps", "2", "--quiet"]


# ------------------------------------------------------------------------------ helpers
def snapshot(root: pathlib.Path) -> dict:
    """Every file (hidden ones too) -> sha256, every folder -> None, relative to ``root``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = None
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def run_cli(args, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO)]), VSTAR_JAX_CACHE_DIR="off")
    env.setdefault("JAX_PLATFORMS", "cpu")
    return subprocess.run([sys.executable, "-m", "vstar_jax.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def assert_one_line_error(rc: int, err: str, match: str = "") -> str:
    assert rc != 0, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: "), err[-2000:]
    assert match in last, last
    return last


def assert_refused_unchanged(args, cwd: pathlib.Path, root: pathlib.Path, match: str = "") -> str:
    before = snapshot(root)
    r = run_cli(args, cwd)
    line = assert_one_line_error(r.returncode, r.stderr, match)
    assert snapshot(root) == before
    return line


def good_outputs(folder: pathlib.Path, stem: str = "clip") -> dict:
    """A readable mp4 + GIF and the vstar-jax sidecar that names them (what an earlier run left)."""
    folder.mkdir(parents=True, exist_ok=True)
    frames = np.random.default_rng(0).integers(0, 255, (3, 16, 16, 3), dtype=np.uint8)
    paths = {"video": folder / f"{stem}.mp4", "gif": folder / f"{stem}.gif", "sidecar": folder / f"{stem}.json"}
    write_video(paths["video"], frames, 8)
    write_gif(paths["gif"], frames, 8)
    paths["sidecar"].write_text(json.dumps({"format": SIDECAR_FORMAT, "prompt": PROMPT,
                                            "outputs": {k: str(v) for k, v in paths.items()}}))
    return paths


@pytest.fixture
def model_tree(tmp_path):
    """PARENT/{MODEL (a diffusers folder), model.ckpt, inference.yaml, notes.txt, mine/}: the refusals
    come before any weight is read, so the files only need to exist."""
    parent = tmp_path / "parent"
    model = parent / "MODEL"
    for sub in ("unet", "vae", "text_encoder", "scheduler"):
        (model / sub).mkdir(parents=True)
        (model / sub / "config.json").write_text(json.dumps({"component": sub}))
        (model / sub / "diffusion_pytorch_model.safetensors").write_bytes(os.urandom(256))
    (parent / "model.ckpt").write_bytes(os.urandom(512))
    (parent / "inference.yaml").write_text("model: {}\n")
    (parent / "notes.txt").write_text("my notes\n")
    (parent / "mine").mkdir()
    (parent / "mine" / "results.csv").write_text("a,b\n1,2\n")
    return parent


@pytest.fixture(scope="module")
def ckpt():
    return shared_tiny_checkpoint()


# ------------------------------------------------------------------ convert --overwrite
@pytest.mark.parametrize("case", ["diffusers-out-is-source", "diffusers-out-is-parent", "diffusers-out-unrelated",
                                  "videocrafter2-out-is-parent", "streamingt2v-out-is-source",
                                  "checkpoint-with-user-files"])
def test_convert_overwrite_never_replaces_the_source_or_a_foreign_folder(model_tree, case):
    p = model_tree
    args, match = {
        "diffusers-out-is-source": (["convert", "diffusers", "MODEL", "--out", "MODEL", "--overwrite"], "is the source"),
        "diffusers-out-is-parent": (["convert", "diffusers", "MODEL", "--out", ".", "--overwrite"], "holds the source"),
        "diffusers-out-unrelated": (["convert", "diffusers", "MODEL", "--out", "mine", "--overwrite"],
                                    "not a vstar-jax checkpoint"),
        "videocrafter2-out-is-parent": (["convert", "videocrafter2", "--ckpt", "model.ckpt", "--config",
                                         "inference.yaml", "--out", ".", "--overwrite"], "holds the source"),
        "streamingt2v-out-is-source": (["convert", "streamingt2v", "model.ckpt", "--modelscope", "MODEL",
                                        "--out", "MODEL", "--overwrite"], "is the source"),
        "checkpoint-with-user-files": (["convert", "diffusers", "MODEL", "--out", "old", "--overwrite"],
                                       "holding other files"),
    }[case]
    if case == "checkpoint-with-user-files":  # a previous checkpoint the user has put a file into
        (p / "old" / "params").mkdir(parents=True)
        (p / "old" / "config.json").write_text(json.dumps({"format": "vstar-jax/1"}))
        (p / "old" / "my-eval.txt").write_text("keep me\n")
    assert_refused_unchanged(args, p, p, match)


def test_overwrite_replaces_a_previous_checkpoint_only(tmp_path):
    from vstar_jax.io.checkpoint import load_checkpoint, save_checkpoint

    out = tmp_path / "ck"
    save_checkpoint(str(out), {"a": {"w": np.zeros(3, np.float32)}}, {"a": {}})
    save_checkpoint(str(out), {"a": {"w": np.ones(3, np.float32)}}, {"a": {}}, overwrite=True)
    np.testing.assert_array_equal(load_checkpoint(str(out))[0]["a"]["w"], np.ones(3))
    assert sorted(x.name for x in tmp_path.iterdir()) == ["ck"]  # no temporary or old folder left
    (tmp_path / "empty").mkdir()  # an empty folder has nothing to lose
    save_checkpoint(str(tmp_path / "empty"), {"a": {"w": np.ones(3, np.float32)}}, {"a": {}}, overwrite=True)
    # the writer itself (not only the converters' early check) refuses a foreign folder, a checkpoint
    # holding the user's files, and a folder holding a source
    (out / "my-eval.txt").write_text("keep me\n")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine\n")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "model.ckpt").write_bytes(b"weights")
    before = snapshot(tmp_path)
    for target, sources, match in ((out, (), "holding other files"), (tmp_path / "mine", (), "not a vstar-jax"),
                                   (tmp_path / "src", [tmp_path / "src" / "model.ckpt"], "holds the source")):
        with pytest.raises(ValueError, match=match):
            save_checkpoint(str(target), {"a": {"w": np.ones(3, np.float32)}}, {"a": {}}, overwrite=True,
                            sources=sources)
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------ generate --overwrite
def test_generate_overwrite_never_replaces_a_video_vstar_jax_did_not_write(tmp_path):
    write_video(tmp_path / "holiday.mp4", np.zeros((2, 16, 16, 3), np.uint8), 8)  # no sidecar: not ours
    assert_refused_unchanged(["generate", PROMPT, "--out", "holiday.mp4", "--overwrite"], tmp_path, tmp_path,
                             "not a vstar-jax output")
    # our sidecar beside it, but a GIF it does not name
    good_outputs(tmp_path, "clip")
    write_gif(tmp_path / "clip.gif", np.zeros((2, 8, 8, 3), np.uint8), 8)
    sc = json.loads((tmp_path / "clip.json").read_text())
    del sc["outputs"]["gif"]
    (tmp_path / "clip.json").write_text(json.dumps(sc))
    assert_refused_unchanged(["generate", PROMPT, "--out", "clip.mp4", "--gif", "--overwrite"], tmp_path, tmp_path,
                             "clip.gif exists and is not a vstar-jax output")


def test_gif_frame_rate_is_checked_before_compute(tmp_path):
    good_outputs(tmp_path)
    # 0.001 is now refused by the general save_fps range (0.1 to 240); 200 fps fits an mp4, not a GIF
    # (a GIF frame lasts at least 0.01 s)
    assert_refused_unchanged(["generate", PROMPT, "--out", "clip.mp4", "--gif", "--overwrite", "--save-fps", "200"],
                             tmp_path, tmp_path, "--save-fps 200 cannot be written as a GIF")


def test_report_never_replaces_a_page_it_did_not_write(tmp_path):
    from vstar_jax.sweep import write_table

    write_table([{"run_id": "r0", "status": "ok", "method": "plain", "frames": 8, "seed": 0, "prompt": PROMPT,
                  "ofs": 0.1}], str(tmp_path / "sweep"))
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<html><title>my homepage</title></html>\n")
    (site / "style.css").write_text("body{}\n")
    assert_refused_unchanged(["report", "sweep", "--out", "site"], tmp_path, tmp_path, "did not write")


def test_sweep_never_takes_over_a_folder_that_is_not_a_sweep(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "results.csv").write_text("my,own\n1,2\n")
    assert_refused_unchanged(["sweep", str(REPO / "configs" / "sweep_tiny.py"), "--out", "mine", "--no-progress"],
                             tmp_path, tmp_path, "not a vstar-jax sweep")


# ------------------------------------------------------------------ failing writers (in process: one compile)
def _generate(ckpt, out, *extra):
    return cli.main(["generate", PROMPT, "--checkpoint", ckpt, *TINY, "--out", str(out), *extra])


@pytest.fixture
def previous_run(ckpt, tmp_path, capsys):
    """A folder holding a complete earlier run (mp4 + GIF + sidecar) of the tiny checkpoint."""
    out = tmp_path / "clip.mp4"
    assert _generate(ckpt, out, "--gif") == 0
    capsys.readouterr()
    assert read_video(tmp_path / "clip.gif").shape[0] == 4
    return out


def _failing_ffmpeg(tmp_path) -> str:
    """An 'ffmpeg' that reads the frames, leaves a truncated file under the name it was given and exits
    1 with ffmpeg's own full-disk message, as ffmpeg does when the disk fills."""
    exe = tmp_path.parent / f"{tmp_path.name}-ffmpeg"
    exe.write_text("#!/bin/sh\nfor a; do out=$a; done\ncat > /dev/null\nhead -c 300 /dev/zero > \"$out\"\n"
                   "echo \"$out: No space left on device\" >&2\nexit 1\n")
    exe.chmod(0o755)
    return str(exe)


def test_ffmpeg_failure_is_noticed_and_the_old_video_stays(ckpt, previous_run, tmp_path, monkeypatch, capsys):
    import imageio_ffmpeg

    before = snapshot(tmp_path)
    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", lambda: _failing_ffmpeg(tmp_path))
    rc = _generate(ckpt, previous_run, "--gif", "--overwrite", "--seed", "1")
    assert_one_line_error(rc, capsys.readouterr().err, "No space left on device")
    assert snapshot(tmp_path) == before  # the old mp4, GIF and sidecar; no temporary file


def test_gif_encoder_enospc_leaves_every_old_file(ckpt, previous_run, tmp_path, monkeypatch, capsys):
    from vstar_jax.generation import outputs

    def full_disk(path, frames, fps):
        pathlib.Path(path).write_bytes(b"GIF89a")  # a few bytes, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    before = snapshot(tmp_path)
    monkeypatch.setattr(outputs, "encode_gif", full_disk)  # the GIF writer the video sink calls
    rc = _generate(ckpt, previous_run, "--gif", "--overwrite", "--seed", "1")
    assert_one_line_error(rc, capsys.readouterr().err, "no space left on device")
    assert snapshot(tmp_path) == before  # the mp4 (written fine) is not renamed in without its GIF and sidecar


def test_a_250_character_output_name_is_written(ckpt, tmp_path, capsys):
    out = tmp_path / ("v" * 246 + ".mp4")
    assert _generate(ckpt, out, "--gif") == 0, capsys.readouterr().err[-1000:]
    assert read_video(out).shape[0] == 4 and out.with_suffix(".gif").is_file() and out.with_suffix(".json").is_file()
    assert not [p.name for p in tmp_path.iterdir() if atomic.is_temp_name(p.name)]


def _mount_tmpfs(where: pathlib.Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()[:200]}")


def test_a_really_full_disk_keeps_the_previous_run(ckpt, previous_run, tmp_path, capsys):
    import shutil

    mnt = tmp_path / "small"
    _mount_tmpfs(mnt, "1m")
    try:
        for name in ("clip.mp4", "clip.gif", "clip.json"):
            shutil.copy(tmp_path / name, mnt / name)
        with open(mnt / "filler", "wb", buffering=0) as f:  # fill the disk, then free a few KiB
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError as e:
                assert e.errno == errno.ENOSPC
        os.truncate(mnt / "filler", max(0, os.path.getsize(mnt / "filler") - 8192))
        before = snapshot(mnt)
        rc = _generate(ckpt, mnt / "clip.mp4", "--gif", "--overwrite", "--seed", "1")
        assert_one_line_error(rc, capsys.readouterr().err)
        assert snapshot(mnt) == before
        assert read_video(mnt / "clip.gif").shape[0] == 4 and read_video(mnt / "clip.mp4").shape[0] == 4
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_a_full_disk_while_converting_keeps_the_previous_checkpoint(tmp_path, capfd, caplog):
    from vstar_jax.io.checkpoint import load_checkpoint, save_checkpoint

    mnt = tmp_path / "small"
    _mount_tmpfs(mnt, "256k")
    try:
        save_checkpoint(str(mnt / "ck"), {"a": {"w": np.zeros(3, np.float32)}}, {"a": {}})
        before = snapshot(mnt)
        capfd.readouterr()
        big = np.random.default_rng(0).random((400, 400), np.float32)  # 640 kB that do not compress
        with pytest.raises(atomic.WriteError, match="no space left on device"):
            save_checkpoint(str(mnt / "ck"), {"a": {"w": big}}, {"a": {}}, overwrite=True)
        assert "Traceback" not in capfd.readouterr().err
        assert not [r for r in caplog.records if r.levelname == "ERROR"]  # orbax's thread tracebacks, logged
        assert snapshot(mnt) == before
        np.testing.assert_array_equal(load_checkpoint(str(mnt / "ck"))[0]["a"]["w"], np.zeros(3))
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


# ------------------------------------------------------------------ the helper itself
def test_atomic_helpers_keep_the_old_file_on_any_failure(tmp_path):
    target = tmp_path / "table.csv"
    atomic.write_text(target, "old\n")
    with pytest.raises(atomic.WriteError, match="no space left on device"):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(ZeroDivisionError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            1 / 0
    with pytest.raises(atomic.WriteError, match="produced no file"):
        with atomic.atomic_path(target):
            pass  # a writer that reported success but wrote nothing
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]
    with atomic.Staging() as st:  # nothing replaced unless committed
        st.write_text(target, "new\n")
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]
    with pytest.raises(RuntimeError):
        with atomic.atomic_dir(tmp_path / "d") as d:
            (d / "f").write_text("x")
            raise RuntimeError("conversion failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]
    assert len(atomic.temp_path(tmp_path / ("x" * 250 + ".mp4")).name) < 32


def test_append_text_adds_whole_lines_or_nothing(tmp_path):
    """A benchmark's JSON-lines log: each append lands whole, and a full disk leaves the log as it was."""
    log = tmp_path / "small" / "rows.jsonl"
    _mount_tmpfs(log.parent, "16k")
    try:
        atomic.append_text(log, "1\n")
        atomic.append_text(log, "2\n")
        assert log.read_text() == "1\n2\n"
        with pytest.raises(atomic.WriteError, match="no space left on device"):
            atomic.append_text(log, "x" * 64_000 + "\n")
        assert log.read_text() == "1\n2\n" and sorted(p.name for p in log.parent.iterdir()) == ["rows.jsonl"]
    finally:
        subprocess.run(["umount", str(log.parent)], capture_output=True)
