"""Sweeps: grid expansion, the results table, failed runs, and resuming after a real kill."""
import csv
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from vstar_jax import sweep
from vstar_jax.io.atomic import is_temp_name
from vstar_jax.sweep import (
    expand_runs,
    load_config,
    read_prompts_file,
    read_prompts_tfds,
    read_table,
    run_id,
    run_sweep,
    score_video,
)

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "sweep_tiny.py")
FAKE = "test_sweep.fake_run"


def moving_square(frames, size, speed, seed=0):
    """A white square moving right by ``speed`` pixels a frame over a fixed textured background."""
    rng = np.random.default_rng(seed)
    bg = (rng.random((size // 4, size // 4, 3)) * 120).astype(np.uint8)
    bg = np.kron(bg, np.ones((4, 4, 1), np.uint8))
    video = np.repeat(bg[None], frames, axis=0)
    for t in range(frames):
        x = 2 + t * speed
        video[t, size // 3 : size // 3 + 8, x : x + 8] = 255
    return video


def fake_run(run, out_dir, config):
    """The tests' run_fn: a synthetic video instead of a generated one (sleeps to be killable)."""
    if run["method"] == "broken":
        raise RuntimeError("this method always fails")
    time.sleep(float(config.get("fake_sleep", 0.0)))
    speed = 1 + run["seed"]
    video = moving_square(run["frames"], 48, speed, seed=run["seed"])
    result = {"speed": speed, **score_video(video, run["prompt"], config)}
    if config.get("write_videos", False):
        import imageio.v3 as iio

        rel = os.path.join("videos", run["run_id"] + ".mp4")
        os.makedirs(os.path.join(out_dir, "videos"), exist_ok=True)
        iio.imwrite(os.path.join(out_dir, rel), video, fps=8, codec="libx264")
        result["video"] = rel
    return result


def tiny_config(**overrides):
    config, config_dir = load_config(TINY, [f"run_fn={FAKE}"])
    for k, v in overrides.items():
        config[k] = v
    return config, config_dir


def test_grid_and_stable_ids():
    config, d = tiny_config()
    runs = expand_runs(config, d)
    assert len(runs) == 2 * 3 * 1 * 2
    assert len({r["run_id"] for r in runs}) == len(runs)
    assert [r["run_id"] for r in expand_runs(config, d)] == [r["run_id"] for r in runs]
    vsp = [r for r in runs if r["method"] == "vsp"][0]
    assert vsp["kwargs"]["synopsis"] == [vsp["prompt"] + ", slowly", vsp["prompt"] + ", fast"]
    a = {"prompt": "p", "method": "m", "frames": 8, "seed": 0, "kwargs": {"tar": None}}
    assert run_id(a) == run_id(dict(reversed(list(a.items()))))
    assert run_id(a) != run_id({**a, "seed": 1})


def test_prompt_sources(tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("# a comment\nfirst prompt\n\n  second prompt  \n")
    assert read_prompts_file(str(f)) == ["first prompt", "second prompt"]
    config, d = tiny_config(prompts=[], prompts_file=str(f))
    assert {r["prompt"] for r in expand_runs(config, d)} == {"first prompt", "second prompt"}
    with pytest.raises(ValueError, match="prompts file not found"):
        read_prompts_file(str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="not prepared"):
        read_prompts_tfds("mnist", data_dir=str(tmp_path / "tfds"))
    config, d = tiny_config(prompts=[])
    with pytest.raises(ValueError, match="no prompts"):
        expand_runs(config, d)


def test_prompts_from_a_local_tfds_dataset(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")

    class VstarTestCaptions(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"caption": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i, c in enumerate(["a cat runs", "a dog swims", "a bird flies"]):
                yield i, {"caption": c}

    data_dir = str(tmp_path / "tfds")
    VstarTestCaptions(data_dir=data_dir, file_format="array_record").download_and_prepare()
    assert read_prompts_tfds("vstar_test_captions", data_dir=data_dir) == ["a cat runs", "a dog swims", "a bird flies"]
    config, d = tiny_config(prompts=["first"])
    config.prompts_tfds.update({"name": "vstar_test_captions", "data_dir": data_dir, "limit": 2})
    assert [r["prompt"] for r in expand_runs(config, d)][::6] == ["first", "a cat runs", "a dog swims"]


def test_sweep_table_and_failed_runs(tmp_path):
    config, d = tiny_config(prompts=["only prompt"], seeds=[0])
    config.methods["broken"] = {"tar": "64D4"}
    rows = run_sweep(config, str(tmp_path), d, progress=False)
    assert len(rows) == 4
    by_method = {r["method"]: r for r in read_table(str(tmp_path))}
    assert by_method["broken"]["status"] == "error"
    assert "RuntimeError: this method always fails" in by_method["broken"]["error"]
    ok = by_method["plain"]
    assert ok["status"] == "ok" and ok["flow_model"].startswith("dis-fast")
    assert abs(ok["ofs"] - 0) < 0.5 and ok["scuts"] == 0  # a small square on a still background
    # the CSV holds the same runs as the Parquet
    with open(tmp_path / "results.csv", newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert sorted(r["run_id"] for r in csv_rows) == sorted(by_method[m]["run_id"] for m in by_method)
    assert {"prompt", "method", "frames", "seed", "settings", "ofs", "mawe", "warp_error"} <= set(csv_rows[0])
    # a second start redoes nothing; --retry-errors reruns only the failed run, kept once
    before = {r["run_id"]: r["elapsed_s"] for r in read_table(str(tmp_path))}
    run_sweep(config, str(tmp_path), d, progress=False)
    assert {r["run_id"]: r["elapsed_s"] for r in read_table(str(tmp_path))} == before
    rows = run_sweep(config, str(tmp_path), d, retry_errors=True, progress=False)
    assert len(rows) == 4 and len({r["run_id"] for r in rows}) == 4
    again = {r["run_id"]: r["elapsed_s"] for r in rows}
    assert [k for k in again if again[k] != before[k]] == [by_method["broken"]["run_id"]]


def test_ofs_follows_the_square_speed(tmp_path):
    # the square covers 64 of 48*48 pixels: OFS = speed * 64 / 2304 where the flow is exact
    config, d = tiny_config(prompts=["p"], seeds=[0, 2])
    config.methods = {"plain": {"tar": None}}
    rows = {r["seed"]: r for r in run_sweep(config, str(tmp_path), d, progress=False)}
    assert rows[2]["ofs"] > 2 * rows[0]["ofs"] > 0


def _sweep_cmd(out):
    return [sys.executable, "-m", "vstar_jax.sweep", TINY, "--out", str(out), "--no-progress",
            "--set", f"run_fn={FAKE}", "--set", "fake_sleep=0.4"]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=["SIGKILL", "SIGTERM", "SIGINT"])
def test_killed_sweep_resumes_without_redoing_or_losing_runs(tmp_path, sig):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO)]))
    env.setdefault("JAX_PLATFORMS", "cpu")
    proc = subprocess.Popen(_sweep_cmd(tmp_path), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    rows = []
    while time.time() < deadline and proc.poll() is None:
        try:
            rows = read_table(str(tmp_path))
        except Exception:  # noqa: BLE001 - the file is replaced atomically; retry on a race
            rows = []
        if len(rows) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep ended before it could be interrupted: " + proc.stderr.read().decode()[-2000:]
    proc.send_signal(sig)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    if sig == signal.SIGINT:  # Ctrl-C: a clean stop (no crash, no traceback), the table intact
        err = proc.stderr.read().decode()
        assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
        assert err.strip().splitlines()[-1].startswith("error: interrupted: "), err[-500:]
    first = {r["run_id"]: r["elapsed_s"] for r in read_table(str(tmp_path))}
    assert 3 <= len(first) < 12

    done = subprocess.run(_sweep_cmd(tmp_path), cwd=REPO, env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    final = read_table(str(tmp_path))
    ids = [r["run_id"] for r in final]
    config, d = load_config(TINY)
    assert sorted(ids) == sorted(r["run_id"] for r in expand_runs(config, d))  # each run exactly once
    assert all(r["status"] == "ok" for r in final)
    kept = {r["run_id"]: r["elapsed_s"] for r in final if r["run_id"] in first}
    assert kept == first  # finished runs were neither redone nor lost
    with open(tmp_path / "results.csv", newline="") as fh:
        assert sorted(r["run_id"] for r in csv.DictReader(fh)) == sorted(ids)
    assert not [p.name for p in tmp_path.iterdir() if is_temp_name(p.name)]  # no temporary file left


def test_default_run_fn_calls_generate_video(tmp_path, monkeypatch):
    """generate_and_score passes the run's settings to vstar_jax.pipeline.generate_video."""
    import types


    calls = []

    def generate_video(prompt, **kwargs):
        calls.append((prompt, kwargs))
        maps = {"block": (np.full((2, 8, 8), 1 / 8),)}
        return types.SimpleNamespace(video=moving_square(kwargs["frames"], 48, 2), sidecar={}, path=kwargs["out"],
                                     attention=maps)

    monkeypatch.setattr(sweep, "generate_video", generate_video)
    config, d = load_config(TINY)
    config.prompts = ["p"]
    config.seeds = [3]
    rows = {r["method"]: r for r in run_sweep(config, str(tmp_path), d, progress=False)}
    assert all(r["status"] == "ok" for r in rows.values()), [r.get("error") for r in rows.values()]
    by_method = {kw.get("tar", "vsp") if "synopsis" not in kw else "vsp": (p, kw) for p, kw in calls}
    prompt, kw = by_method["64D1"]
    assert prompt == "p" and kw["frames"] == 8 and kw["seed"] == 3 and kw["steps"] == 2 and kw["checkpoint"] is None
    assert kw["out"] == str(tmp_path / "videos" / (rows["tar_64D1"]["run_id"] + ".mp4"))
    assert by_method["vsp"][1]["synopsis"] == ["p, slowly", "p, fast"]
    assert rows["plain"]["video"] == os.path.join("videos", rows["plain"]["run_id"] + ".mp4")
    assert rows["plain"]["band_score"] == pytest.approx(22 / 64)  # uniform 8x8 maps, |i - j| <= 1


@pytest.mark.slow
def test_sweep_with_the_real_pipeline_on_a_tiny_checkpoint(tmp_path):
    """The default run_fn end to end: generate_video on a tiny random checkpoint, then metrics."""
    from tiny_checkpoint import write_tiny_checkpoint

    config, d = load_config(TINY)
    config.checkpoint = write_tiny_checkpoint(str(tmp_path / "ckpt"))
    config.prompts = ["a red ball"]
    config.seeds = [0]
    config.methods = {"plain": {"tar": None}, "tar_64D1": {"tar": "64D1"}}
    config.metrics.mawe_size = None
    rows = {r["method"]: r for r in run_sweep(config, str(tmp_path / "sweep"), d, progress=False)}
    for r in rows.values():
        assert r["status"] == "ok", r.get("error")
        assert (tmp_path / "sweep" / r["video"]).is_file()
        assert r["num_frames"] == 8 and np.isfinite(r["ofs"]) and r["flow_model"].startswith("dis-fast")
    # TAR adds a Gaussian band to the temporal logits: more attention mass near the diagonal
    assert rows["tar_64D1"]["band_score"] > rows["plain"]["band_score"]


def test_per_prompt_synopsis_table():
    import ml_collections

    from vstar_jax.sweep import expand_runs

    c = ml_collections.ConfigDict({"prompts": ["a red circle turns blue", "a blue square grows"],
                                   "synopses": {"a red circle turns blue": ["a red circle", "a blue circle"]},
                                   "methods": {"vsp": {"synopsis": "per_prompt"}}, "frames": [8], "seeds": [0]})
    with pytest.raises(ValueError, match="a blue square grows"):
        expand_runs(c)
    c.prompts = ["a red circle turns blue"]
    (run,) = expand_runs(c)
    assert run["kwargs"]["synopsis"] == ["a red circle", "a blue circle"]


# ----------------------------------------------------------------- issue 16: no silent sweeps
def _main_err(capsys, argv):
    from vstar_jax.sweep import main

    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def test_bad_configs_and_overrides_are_one_line_errors(tmp_path, capsys):
    out = ["--out", str(tmp_path / "o"), "--no-progress"]
    cases = {
        "seeds=abc": (["--set", "seeds=abc"], "seeds"),
        "unknown --set": (["--set", "seedz=[1]"], "unknown key 'seedz'"),
        "unknown nested --set": (["--set", "metrics.flwo_model=dis"], "metrics.flwo_model"),
        "missing parent": (["--set", "nothing.here=1"], "no 'nothing'"),
        "bad yaml": (["--set", "seeds=[1"], "not a YAML value"),
    }
    for name, (extra, needle) in cases.items():
        rc, err = _main_err(capsys, [TINY, *out, *extra])
        assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0], (name, err)
    # open tables take new entries
    config, _ = load_config(TINY, ["methods.extra={tar: 64D4}", "generate.eta=0.5"])
    assert config.methods.extra.tar == "64D4" and config.generate.eta == 0.5
    # a syntax error, an unknown top-level key, a get_config that raises
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(:\n    pass\n")
    bad_key = tmp_path / "badkey.py"
    bad_key.write_text(pathlib.Path(TINY).read_text().replace("    return c", "    c.sedes = [3]\n    return c"))
    raises = tmp_path / "raises.py"
    raises.write_text("def get_config():\n    return {}['x']\n")
    for path, needle in ((broken, "syntax error"), (bad_key, "sedes"), (raises, "KeyError")):
        rc, err = _main_err(capsys, [str(path), *out])
        assert rc == 2 and len(err) == 1 and needle in err[0], (path.name, err)
    assert not (tmp_path / "o").exists()


def test_a_sweep_whose_runs_all_failed_exits_1(tmp_path, capsys):
    rc, err = _main_err(capsys, [TINY, "--out", str(tmp_path), "--no-progress", "--set", f"run_fn={FAKE}",
                                 "--set", "methods={broken: {}}", "--set", "prompts=[p]", "--set", "seeds=[0]"])
    assert rc == 1 and err[-1].startswith("error: every run failed"), err
    assert [r["status"] for r in read_table(str(tmp_path))] == ["error"]


@pytest.mark.slow  # ~1-2 min (a real pipeline); SIGINT + resume is in CI with the fake run_fn
def test_sigint_mid_sampling_stops_a_real_sweep_cleanly(tmp_path):
    """The real pipeline on the tiny checkpoint: Ctrl-C while the compiled loop runs -> exit 130,
    no crash, the table written (no run recorded), no half-written video."""
    from tiny_checkpoint import shared_tiny_checkpoint

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO)]))
    env.setdefault("JAX_PLATFORMS", "cpu")
    err_path = tmp_path / "stderr.txt"
    cmd = [sys.executable, "-m", "vstar_jax.sweep", TINY, "--out", str(tmp_path / "s"), "--no-progress",
           "--set", f"checkpoint={shared_tiny_checkpoint()}", "--set", "prompts=[a ball]",
           "--set", "methods={plain: {tar: null}}", "--set", "seeds=[0]", "--set", "frames=[4]",
           "--set", "generate={steps: 500, progress: true}"]
    with open(err_path, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=fh)
        deadline = time.time() + 300
        while "denoising:" not in err_path.read_text(errors="replace"):
            assert proc.poll() is None and time.time() < deadline, err_path.read_text()[-2000:]
            time.sleep(0.1)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    err = err_path.read_text(errors="replace")
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    assert "Traceback" not in err and "Segmentation" not in err, err[-2000:]
    assert read_table(str(tmp_path / "s")) == []
    videos = tmp_path / "s" / "videos"
    assert not videos.exists() or list(videos.iterdir()) == []


_DIE = {"after": None, "calls": 0}


def dying_run(run, out_dir, config):
    """fake_run, but the process 'dies' (Ctrl-C) at its n-th call."""
    _DIE["calls"] += 1
    if _DIE["after"] is not None and _DIE["calls"] > _DIE["after"]:
        raise KeyboardInterrupt
    return fake_run(run, out_dir, config)


def test_shards_split_the_grid_and_a_dead_shard_resumes(tmp_path):
    """Two shards (processes) of one sweep folder: each writes only its share, every run once; a shard
    that dies keeps its finished rows and, started again, runs only what is left."""
    from vstar_jax.sweep import SweepInterrupted, read_rows

    config, d = tiny_config(run_fn="test_sweep.dying_run", prompts=["a square moves right"])  # 6 runs
    out = str(tmp_path / "sw")
    runs = expand_runs(config, d)
    _DIE.update(after=None, calls=0)
    run_sweep(config, out, d, progress=False, shard=(0, 2))
    _DIE.update(after=1, calls=0)
    with pytest.raises(SweepInterrupted):
        run_sweep(config, out, d, progress=False, shard=(1, 2))
    rows = read_rows(out)
    assert len(rows) == 4 and sorted(r["process"] for r in rows.values()) == [0, 0, 0, 1]
    first = (tmp_path / "sw" / "rows" / f"{runs[1]['run_id']}.json").stat().st_mtime_ns
    _DIE.update(after=None, calls=0)
    run_sweep(config, out, d, progress=False, shard=(1, 2))
    assert _DIE["calls"] == 2  # only the two runs left
    rows = read_rows(out)
    assert sorted(rows) == sorted(r["run_id"] for r in runs)
    assert [rows[r["run_id"]]["process"] for r in runs] == [0, 1, 0, 1, 0, 1]
    assert (tmp_path / "sw" / "rows" / f"{runs[1]['run_id']}.json").stat().st_mtime_ns == first  # written once
    assert {r["run_id"] for r in read_table(out)} == set(rows)
    assert not list((tmp_path / "sw" / "rows").glob(".*"))  # no temporary file left
    with pytest.raises(ValueError, match="shard 2 of 2"):
        run_sweep(config, out, d, progress=False, shard=(2, 2))


def test_batches_share_checkpoint_method_and_frames():
    """Hand-made runs: a batch (one compiled program) only holds runs of one (checkpoint, method,
    frames), in order, at most ``size`` each. Catches grouping by the checkpoint only."""
    from vstar_jax.sweep import _chunks

    runs = [{"run_id": i, "checkpoint": ck, "method": m, "frames": n}
            for i, (ck, m, n) in enumerate([("a", "plain", 8), ("a", "tar", 8), ("a", "plain", 12), ("b", "plain", 8),
                                            ("a", "plain", 8), ("a", "plain", 8), ("a", "tar", 8)])]
    got = [[r["run_id"] for r in g] for g in _chunks(runs, 2)]
    assert got == [[0, 4], [5], [1, 6], [2], [3]]
    assert _chunks(runs, 1) == [[r] for r in runs]
