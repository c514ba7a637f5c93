"""Hostile files and folders (issue 22), as a user types the commands: two prompts of a
``--prompts-file`` that map to one file name are refused before compute (before, the second
overwrote the first without ``--overwrite``); a sweep folder is locked by the sweep running in it (a
second sweep there is refused in one line; a stale lock left by a dead process is taken over); an
output folder that cannot be made is one line for ``sweep`` and ``report``. Each refusal: non-zero
exit, stderr's last line ``error: ...``, no traceback, the folder exactly as it was."""
import os
import signal
import subprocess
import sys
import time

import pytest

from hostile import REPO, assert_one_line_refusal, env, run_cli, snapshot

pytestmark = pytest.mark.filterwarnings("ignore:os.fork")

TINY = str(REPO / "configs" / "sweep_tiny.py")
FAKE = "test_sweep.fake_run"


def _sweep_args(out, *more):
    return ["sweep", TINY, "--out", out, "--no-progress", "--set", f"run_fn={FAKE}", *more]


def test_prompts_that_map_to_one_file_are_refused_before_compute(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("kept")
    (tmp_path / "prompts.txt").write_text("a red ball!\n# a comment\na red ball?\n")
    before = snapshot(out)
    r = run_cli(["generate", "--prompts-file", "prompts.txt", "--out-dir", "out", "--frames", "8", "--steps", "2"],
                cwd=tmp_path)
    line = assert_one_line_refusal(r, "would both be written to", code=2)
    assert "'a red ball!'" in line and "'a red ball?'" in line and "compiling" not in r.stderr
    assert snapshot(out) == before


def test_a_sweep_folder_is_locked_and_a_dead_holders_lock_taken_over(tmp_path):
    out = tmp_path / "sweep"
    # the first sweep holds the folder (its first run sleeps 60 s: nothing else is written meanwhile)
    first = subprocess.Popen([sys.executable, "-m", "vstar_jax.cli", *_sweep_args(out, "--set", "fake_sleep=60")],
                             cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        lock = out / ".sweep.lock"
        deadline = time.time() + 120
        while time.time() < deadline and not (lock.exists() and lock.read_text().strip()):
            assert first.poll() is None, first.stderr.read().decode()[-2000:]
            time.sleep(0.1)
        time.sleep(1.0)  # past its config snapshot and first table write
        before = snapshot(out)
        second = run_cli(_sweep_args(out), cwd=tmp_path)
        line = assert_one_line_refusal(second, "is in use by process", code=2)
        assert str(first.pid) in line
        assert snapshot(out) == before
    finally:
        first.send_signal(signal.SIGKILL)  # dies holding the lock: its file still names it
        first.wait(timeout=30)
    assert str(first.pid) in (out / ".sweep.lock").read_text()
    third = run_cli(_sweep_args(out), cwd=tmp_path, timeout=300)
    assert third.returncode == 0, third.stderr[-2000:]
    assert "12 runs in" in third.stdout


def test_sweep_and_report_to_a_folder_that_cannot_be_made(tmp_path):
    (tmp_path / "a-file").write_text("in the way")
    before = snapshot(tmp_path)
    r = run_cli(_sweep_args(tmp_path / "a-file" / "sweep"), cwd=tmp_path)
    assert_one_line_refusal(r, "Not a directory", code=2)
    assert snapshot(tmp_path) == before
    ok = run_cli(_sweep_args(tmp_path / "sweep", "--set", "seeds=[0]", "--set", "prompts=['p']"), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    before = snapshot(tmp_path)
    r = run_cli(["report", tmp_path / "sweep", "--out", tmp_path / "a-file" / "report"], cwd=tmp_path)
    assert_one_line_refusal(r, "Not a directory", code=2)
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_sweep_and_report_into_a_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ok = run_cli(_sweep_args(tmp_path / "sweep", "--set", "seeds=[0]", "--set", "prompts=['p']"), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    ro.chmod(0o555)
    try:
        for args in (_sweep_args(ro / "sweep"), ["report", tmp_path / "sweep", "--out", ro / "report"]):
            before = snapshot(tmp_path)
            assert_one_line_refusal(run_cli(args, cwd=tmp_path))
            assert snapshot(tmp_path) == before
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("gap", [0.0, 0.05, 0.2])
def test_a_double_ctrl_c_in_a_sweep_still_ends_in_one_line(tmp_path, gap):
    """The second Ctrl-C lands while the first one winds the sweep down (before: killed by the signal,
    exit -2, or a traceback)."""
    out = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "vstar_jax.cli", *_sweep_args(out, "--set", "fake_sleep=0.3")],
                            cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not (out / "rows").exists():
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        time.sleep(gap)
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=60)[1].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 130 and "Traceback" not in err, (proc.returncode, err[-2000:])
    assert lines[-1].startswith("error: interrupted"), err[-2000:]
