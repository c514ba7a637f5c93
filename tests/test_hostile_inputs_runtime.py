"""Hostile inputs found at run time (issue 22): a sampled latent that goes non-finite stops the run with
one line naming the first DDIM step whose UNet output was not finite, and nothing is written (before,
NaN latents decoded to black frames and exit 0)."""
import numpy as np
import pytest

from hostile import assert_one_line_refusal, run_cli, snapshot

pytestmark = pytest.mark.filterwarnings("ignore:os.fork")


def _nan_checkpoint(path):
    """The tiny random checkpoint with a NaN in the UNet's output bias (as a corrupted weight would be)."""
    from tiny_checkpoint import tiny_configs, tiny_params
    from vstar_jax.io.checkpoint import save_checkpoint

    configs = tiny_configs(8)
    params = tiny_params(configs, 0)
    bias = np.array(params["unet"]["conv_out"]["bias"])
    bias[0] = np.nan
    params["unet"]["conv_out"]["bias"] = bias
    return save_checkpoint(str(path), params, dict(configs, source={"layout": "tiny-random", "seed": 0}))


@pytest.mark.slow  # one compile of the tiny UNet (~30 s on a loaded CPU)
def test_non_finite_latents_stop_with_the_step_named(tmp_path):
    ckpt = _nan_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("kept")
    before = snapshot(out)
    r = run_cli(["generate", "a red ball", "--checkpoint", ckpt, "--frames", "4", "--steps", "2",
                 "--out", out / "clip.mp4"], cwd=tmp_path, timeout=600)
    line = assert_one_line_refusal(r, "went non-finite (NaN or inf) at DDIM step 0 of 2", code=2)
    assert "no video written" in line
    assert snapshot(out) == before


class _BadLLM:
    """A local HTTP server on 127.0.0.1: ``/trickle`` sends a byte of its body every 0.5 s (a per-read
    socket timeout never trips), ``/cut`` promises 1000 bytes and closes after 10."""

    def __enter__(self):
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):  # noqa: N802 - http.server API
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = b'{"choices": [{"message": {"content": "1. a\\n2. b"}}]}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "1000" if self.path.startswith("/cut") else str(len(body)))
                self.end_headers()
                if self.path.startswith("/cut"):
                    self.wfile.write(body[:10])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                for i in range(len(body)):
                    if stop.is_set():
                        return
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                    stop.wait(0.5)

        stop = threading.Event()
        self.stop = stop
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("path,match", [("trickle", "timed out: no complete reply within 2 s"),
                                        ("cut", "closed the connection in the middle of its reply")])
def test_an_llm_that_trickles_or_breaks_off_is_one_line_within_the_timeout(tmp_path, path, match):
    import time

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("kept")
    before = snapshot(out)
    with _BadLLM() as llm:
        t0 = time.time()
        r = run_cli(["generate", "a red ball", "--frames", "8", "--steps", "2", "--out", out / "clip.mp4",
                     "--llm", f"{llm.url}/{path}", "--llm-model", "m", "--llm-timeout", "2"], cwd=tmp_path, timeout=60)
        took = time.time() - t0
    assert_one_line_refusal(r, match, code=2)
    assert took < 40, took  # the body alone would take 27 s at a byte per 0.5 s
    assert snapshot(out) == before


@pytest.mark.slow  # one compile of the demo model's batched loop (~25 s on a loaded CPU)
def test_a_long_prompts_file_shows_progress_and_stops_at_the_next_call_on_ctrl_c(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from hostile import env

    (tmp_path / "prompts.txt").write_text("".join(f"a ball number {i} rolls\n" for i in range(1, 7)))
    log = tmp_path / "stderr.txt"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "vstar_jax.cli", "generate", "--prompts-file", "prompts.txt",
                                 "--out-dir", "out", "--frames", "8", "--steps", "2"], cwd=tmp_path,
                                env=env(VSTAR_BATCH_ITEMS="2"), stdout=subprocess.DEVNULL, stderr=fh)
        try:
            deadline = time.time() + 300
            while time.time() < deadline and proc.poll() is None and "wrote" not in log.read_text():
                time.sleep(0.1)
            assert proc.poll() is None, log.read_text()[-2000:]
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    err = log.read_text()
    assert "encoded 6 of 6 prompt(s)" in err and "(items 1-2 of 6)" in err
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()]
    assert rc == 130 and lines[-1] == "error: interrupted" and "Traceback" not in err, err[-2000:]
    videos = sorted(p.name for p in (tmp_path / "out").glob("*.mp4"))
    assert 1 <= len(videos) < 6, videos  # the finished items are kept, the rest not started
    assert all((tmp_path / "out" / v).with_suffix(".json").is_file() for v in videos)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temporary left
