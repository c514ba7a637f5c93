"""Hostile numbers (issue 22): every numeric flag, spec setting, sidecar field, sweep ``--set`` value,
converter and metrics flag that is not finite or out of its range is refused before any compute, as
a user types it: exit status 2, one line ``error: ...`` that names the setting and its valid range, no
traceback, and the output folder exactly as it was. Before, these ran to exit 0 and wrote black
frames (``--cfg 1e30``, ``--eta 1e6``, ``pns_alpha=inf``), a video identical to no TAR (``--tar
0:1e400``), a 0-second mp4 (``--save-fps 1e9``), ``heads=1`` (``convert --text-heads 0``), one run for
``batch=0``; or ended in a traceback (``--max-memory inf``, ``--llm-timeout inf``, a sidecar's
``until_time`` 1e30, ``metrics --mawe-size 100000``).

Most kinds run as their own process (a few at a time: each is mostly Python start-up, no compile); the
rest go through ``cli.main`` in the test process."""
import json

import pytest

from hostile import REPO, assert_one_line_refusal, run_many, snapshot

pytestmark = pytest.mark.filterwarnings("ignore:os.fork")

SWEEP = str(REPO / "configs" / "sweep_tiny.py")
GEN = ["generate", "a red ball rolls", "--frames", "8", "--steps", "2", "--quiet", "--out", "out/clip.mp4"]
LLM = ["--llm", "http://127.0.0.1:9/v1", "--llm-model", "m"]

# name -> (argv after GEN or a full argv, what the error line must contain)
CASES = {
    "cfg_huge": (GEN + ["--cfg", "1e30"], "cfg must be <= 100 (valid: 0 to 100)"),
    "cfg_nan": (GEN + ["--cfg", "nan"], "cfg must be a finite number"),
    "eta_huge": (GEN + ["--eta", "1e6"], "eta must be <= 1 (valid: 0 to 1)"),
    "fps_huge": (GEN + ["--fps", "1e30"], "fps must be <= 1000"),
    "save_fps_huge": (GEN + ["--save-fps", "1e9"], "save_fps must be <= 240 (valid: 0.1 to 240)"),
    "save_fps_inf": (GEN + ["--save-fps", "inf"], "save_fps must be a finite number"),
    "frames_huge": (GEN + ["--frames", "1000000000"], "frames must be <= 100000"),
    "frame_batch_huge": (GEN + ["--frame-batch", "1000000000"], "frame_batch must be <= 4096"),
    "tar_sigma_overflow": (GEN + ["--tar", "0:1e400"], "TAR sigma (level 0) must be a finite number"),
    "tar_scale_huge": (GEN + ["--tar", "0:1:1e300"], "TAR scale (level 0) must be <= 100"),
    "tar_until_huge": (GEN + ["--tar", "0:1@100000000000000000000"], "TAR until_time (@until) must be <= 100000"),
    "tar_until_exp": (GEN + ["--tar", "0:1@1e20"], "@until must be a step index"),
    "vidrd_pns_nan": (GEN + ["--long-video", "vidrd:window=4,overlap=2,pns_alpha=nan"],
                      "vidrd pns_alpha must be a finite number"),
    "vidrd_pns_inf": (GEN + ["--long-video", "vidrd:window=4,overlap=2,pns_alpha=inf"],
                      "vidrd pns_alpha must be a finite number"),
    "vidrd_pns_huge": (GEN + ["--long-video", "vidrd:window=4,overlap=2,pns_alpha=1e6"],
                       "vidrd pns_alpha must be <= 100"),
    "genl_window_huge": (GEN + ["--long-video", "genl:window=1000000000,stride=8"], "genl window must be <= 100000"),
    "max_memory_inf": (GEN + ["--max-memory", "inf"], "--max-memory (GiB) must be a finite number"),
    "llm_timeout_inf": (GEN + LLM + ["--llm-timeout", "inf"], "--llm-timeout (seconds) must be a finite number"),
    "llm_num_states_0": (GEN + LLM + ["--num-states", "0"], "num_states must be >= 2 (valid: 2 to 8)"),
    "sidecar_until_1e30": (["generate", "--from-sidecar", "out/until.json", "--quiet"],
                           "TAR until_time must be <= 100000"),
    "sidecar_cfg_nan": (["generate", "--from-sidecar", "out/nan.json", "--quiet"], "cfg must be a finite number"),
    "sweep_batch_0": (["sweep", SWEEP, "--out", "out/sweep", "--set", "batch=0", "--no-progress"],
                      "batch must be a positive integer"),
    "sweep_seed_huge": (["sweep", SWEEP, "--out", "out/sweep", "--set", "seeds=[99999999999]", "--no-progress"],
                        "sweep seeds must be <= 4294967295"),
    "sweep_mawe_huge": (["sweep", SWEEP, "--out", "out/sweep", "--set", "metrics.mawe_size=[100000,100000]",
                         "--no-progress"], "sweep metrics.mawe-size must be <= 4096"),
    "sweep_fps_inf": (["sweep", SWEEP, "--out", "out/sweep", "--set", "metrics.fps=.inf", "--no-progress"],
                      "sweep metrics.fps must be a finite number"),
    "sweep_generate_cfg_huge": (["sweep", SWEEP, "--out", "out/sweep", "--set", "generate.cfg=1e30", "--no-progress"],
                                "sweep method 'plain' (8 frames): cfg must be <= 100"),
    "sweep_method_tar_inf": (["sweep", SWEEP, "--out", "out/sweep", "--set", "methods.tar_64D1.tar=0:1e400",
                              "--no-progress"], "sweep method 'tar_64D1' (8 frames): TAR sigma (level 0) must be a "
                                                "finite number"),
    "convert_text_heads_0": (["convert", "videocrafter2", "--ckpt", "out/none.ckpt", "--config", "out/none.yaml",
                              "--out", "out/ckpt", "--text-heads", "0"], "--text-heads must be >= 1 (valid: 1 to"),
    "convert_cam_frames_0": (["convert", "streamingt2v", "out/none.ckpt", "--out", "out/ckpt", "--cam-frames", "0"],
                             "--cam-frames must be >= 1"),
    "metrics_mawe_huge": (["metrics", "out/keep.mp4", "--mawe-size", "100000"], "--mawe-size must be <= 4096"),
    "metrics_fps_inf": (["metrics", "out/keep.mp4", "--fps", "inf"], "--fps must be a finite number"),
}


def _sidecar(**over) -> dict:
    sc = {"format": "vstar-jax-generation/1", "prompt": "a red ball rolls", "frames": 8, "steps": 2, "cfg": 5.0,
          "eta": 1.0, "seed": 0, "fps": 28, "height": 64, "width": 64, "tar": None}
    sc.update(over)
    return sc


# one case of each kind runs as its own process, as typed; the others (the same code paths) run
# through cli.main in this process, which keeps the file's time small (each process is ~2 s of imports)
IN_PROCESS = ("cfg_nan", "save_fps_inf", "frame_batch_huge", "tar_until_exp", "vidrd_pns_nan", "vidrd_pns_huge",
              "sidecar_cfg_nan", "sweep_fps_inf", "sweep_seed_huge", "convert_cam_frames_0", "metrics_fps_inf",
              "tar_scale_huge", "sweep_method_tar_inf")
SUBPROCESS = [name for name in CASES if name not in IN_PROCESS]


def _folder(root):
    out = root / "out"
    out.mkdir()
    (out / "keep.mp4").write_bytes(b"not really a video, but it must stay")
    (out / "until.json").write_text(json.dumps(_sidecar(tar={"levels": [[0, 1.0, 1.0]], "until_time": 1e30})))
    (out / "nan.json").write_text(json.dumps(_sidecar(cfg=float("nan"))))  # json writes NaN, Python reads it
    return root


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """The subprocess cases, each in its own folder holding an ``out/`` with a file and sidecars:
    (result, before, after)."""
    folders, cases = {}, {}
    for name in SUBPROCESS:
        root = _folder(tmp_path_factory.mktemp(name))
        folders[name] = (root, snapshot(root))
        cases[name] = (CASES[name][0], root)
    runs = run_many(cases)
    return {name: (runs[name], before, snapshot(root)) for name, (root, before) in folders.items()}


@pytest.mark.parametrize("name", SUBPROCESS)
def test_a_bad_number_is_one_line_before_compute(results, name):
    r, before, after = results[name]
    line = assert_one_line_refusal(r, CASES[name][1], code=2)
    assert after == before, f"{name}: the folder changed: {line}"
    assert "compiling" not in r.stderr and "denoising" not in r.stderr


@pytest.mark.parametrize("name", IN_PROCESS)
def test_a_bad_number_is_one_line_before_compute_in_process(tmp_path, monkeypatch, capsys, name):
    from vstar_jax import cli

    root = _folder(tmp_path)
    before = snapshot(root)
    monkeypatch.chdir(root)
    rc = cli.main(list(CASES[name][0]))
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and "Traceback" not in err, err[-2000:]
    assert lines[-1].startswith("error:") and CASES[name][1] in lines[-1], lines[-1]
    assert snapshot(root) == before
