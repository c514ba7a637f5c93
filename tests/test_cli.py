"""``vstar-jax`` command line: generate end to end on a tiny random checkpoint, regeneration
from the sidecar, flag mapping, one-line errors (exit 2) before any compute, forwarding of
convert / sweep / report / metrics."""
import dataclasses
import json
import os
import sys
import time

import jax
import pytest

from tiny_checkpoint import shared_tiny_checkpoint
from vstar_jax import cli
from vstar_jax import pipeline as pl
from vstar_jax.generation.options import GenerationOptions
from vstar_jax.io.video import read_video

pytestmark = pytest.mark.filterwarnings("ignore:os.fork")

PROMPT = "a red ball rolls to the right"


@pytest.fixture(scope="module")
def ckpt():
    return shared_tiny_checkpoint()


def test_generate_then_regenerate_from_sidecar(ckpt, tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    rc = cli.main(["generate", PROMPT, "--checkpoint", ckpt, "--frames", "4", "--steps", "2", "--seed", "3",
                   "--out", str(out), "--gif"])
    assert rc == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    assert "denoising" in captured.err and "wrote" in captured.err  # progress bar and messages
    frames = read_video(out)
    assert frames.shape == (4, 16, 16, 3)
    assert read_video(tmp_path / "clip.gif").shape == (4, 16, 16, 3)
    sc = json.loads((tmp_path / "clip.json").read_text())
    assert (sc["prompt"], sc["frames"], sc["steps"], sc["seed"]) == (PROMPT, 4, 2, 3)

    again = tmp_path / "again.mp4"
    rc = cli.main(["generate", "--from-sidecar", str(tmp_path / "clip.json"), "--out", str(again), "--quiet"])
    assert rc == 0
    assert "identical frames" in capsys.readouterr().out
    assert json.loads((tmp_path / "again.json").read_text())["frames_sha256"] == sc["frames_sha256"]
    assert again.read_bytes() == out.read_bytes()


def test_flags_map_to_generate_video(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake(prompt, **kw):
        seen.update(kw, prompt=prompt)
        return pl.GenerationResult(None, {}, kw["out"])

    monkeypatch.setattr(pl, "generate_video", fake)
    assert cli.main(["generate", "A Red Ball!", "--checkpoint", "ck", "--frames", "32", "--steps", "50",
                     "--cfg", "7.5", "--eta", "0", "--seed", "9", "--fps", "16", "--tar", "64D1_32D8",
                     "--synopsis", "s1", "--synopsis", "s2", "--synopsis", "s3", "--vsp-mode", "same",
                     "--height", "320", "--width", "512", "--attention-png", "a.png", "--quiet"]) == 0
    assert seen["prompt"] == "A Red Ball!" and seen["checkpoint"] == "ck"
    assert (seen["frames"], seen["steps"], seen["cfg"], seen["eta"], seen["seed"], seen["fps"]) == (32, 50, 7.5, 0.0, 9, 16.0)
    assert seen["tar"] == "64D1_32D8" and seen["synopsis"] == ["s1", "s2", "s3"] and seen["vsp_mode"] == "same"
    assert (seen["height"], seen["width"], seen["attention_png"], seen["progress"]) == (320, 512, "a.png", False)
    assert seen["out"] == os.path.join("outputs", "a-red-ball-9.mp4") and seen["llm"] is None
    assert seen["attention_backend"] == "auto"  # the default: XLA's frames on a CPU, the fused kernels elsewhere
    # every setting the CLI leaves at its default is the API's default (one default per setting), but
    # those the CLI sets on purpose: its frames stream into the file (keep_video), and it replaces an
    # existing video only when told (--overwrite), where a Python caller names its own output
    seen.clear()
    assert cli.main(["generate", "p", "--out", "x.mp4"]) == 0
    api = {f.name: f.default for f in dataclasses.fields(GenerationOptions)}
    differ = {k: (v, api[k]) for k, v in seen.items()
              if k in api and v != api[k] and k not in ("out", "keep_video", "overwrite")}
    assert differ == {}, differ
    assert cli.main(["generate", "p", "--attention-backend", "xla", "--out", "x.mp4"]) == 0
    assert seen["attention_backend"] == "xla"
    # a synopsis file, and an LLM endpoint
    f = tmp_path / "states.txt"
    f.write_text("one\ntwo\n")
    assert cli.main(["generate", "p", "--synopsis", str(f), "--out", "x.mp4"]) == 0
    assert seen["synopsis"] == str(f)
    assert cli.main(["generate", "p", "--llm", "http://localhost:9/v1", "--llm-model", "m", "--num-states", "4",
                     "--out", "x.mp4"]) == 0
    assert seen["llm"] == {"url": "http://localhost:9/v1", "model": "m", "api_key": None, "num_states": 4}
    assert cli.main(["generate", "p", "--local-lm", "/models/lm", "--out", "x.mp4"]) == 0
    assert seen["llm"] == {"local_path": "/models/lm", "num_states": None}


def _bad_argvs(ckpt, tmp):
    blocker = tmp / "a-file"
    blocker.write_text("x")
    base = ["--checkpoint", ckpt, "--frames", "4", "--steps", "2", "--out", str(tmp / "ok.mp4")]
    return [
        ["generate", "", *base],
        ["generate", *base],
        ["generate", PROMPT, *base, "--frames", "1"],
        ["generate", PROMPT, *base, "--frames", "two"],
        ["generate", PROMPT, *base, "--frames", "2", "--synopsis", "a", "--synopsis", "b", "--synopsis", "c"],
        ["generate", PROMPT, *base, "--synopsis", "just one state"],
        ["generate", PROMPT, *base, "--synopsis", str(tmp / "missing.json")],
        ["generate", PROMPT, *base, "--tar", "64D5"],
        ["generate", PROMPT, *base, "--out", str(blocker / "x.mp4")],
        ["generate", PROMPT, *base, "--height", "18"],
        ["generate", PROMPT, *base, "--steps", "3"],
        ["generate", PROMPT, *base, "--llm", "http://x", "--local-lm", "/m"],
        ["generate", PROMPT, *base, "--num-states", "3"],
        ["generate", PROMPT, *base, "--bogus-flag"],
        ["generate", PROMPT, "--checkpoint", str(tmp / "nope"), "--out", str(tmp / "ok.mp4")],
        ["generate", "--from-sidecar", str(tmp / "nope.json")],
        ["generate", PROMPT, *base, "--attention-backend", "flash"],
        ["generate", PROMPT, *base, "--attention-backend", "pallas"],  # a TPU only (this test runs off one)
    ] + ([["generate", PROMPT, *base, "--attention-backend", "cudnn"]] if jax.default_backend() != "gpu" else [])


def test_bad_inputs_one_line_exit_2_without_compute(ckpt, tmp_path, monkeypatch, capsys):
    def boom(*a, **k):
        raise AssertionError("no model may be loaded or run for a bad input")

    monkeypatch.setattr(pl, "load_pipeline", boom)
    monkeypatch.setattr(pl, "_compiled_sampler", boom)
    for argv in _bad_argvs(ckpt, tmp_path):
        t0 = time.time()
        rc = cli.main(argv)
        err = capsys.readouterr().err
        assert rc == 2, (argv, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
        assert time.time() - t0 < 5.0
    assert not (tmp_path / "ok.mp4").exists()


def test_llm_failure_is_one_line(ckpt, tmp_path, monkeypatch, capsys):
    from vstar_jax.tar_vsp import synopsis

    def refuse(*a, **k):
        raise synopsis.SynopsisError("LLM endpoint http://127.0.0.1:9/v1/chat/completions unreachable: refused")

    monkeypatch.setattr(synopsis, "llm_synopsis", refuse)
    monkeypatch.setattr(pl, "load_pipeline", lambda *a: (_ for _ in ()).throw(AssertionError("loaded")))
    rc = cli.main(["generate", PROMPT, "--checkpoint", ckpt, "--frames", "4", "--out", str(tmp_path / "v.mp4"),
                   "--llm", "http://127.0.0.1:9/v1", "--llm-model", "m", "--quiet"])
    assert rc == 2
    assert capsys.readouterr().err.strip() == ("error: LLM endpoint http://127.0.0.1:9/v1/chat/completions "
                                               "unreachable: refused")


def test_forwarding(monkeypatch, capsys):
    import vstar_jax.checkpoints_convert.diffusers as conv_d
    import vstar_jax.checkpoints_convert.videocrafter2 as conv_v

    calls = []
    monkeypatch.setattr(conv_v, "main", lambda argv: calls.append(("vc2", argv)) or 0)
    monkeypatch.setattr(conv_d, "main", lambda argv: calls.append(("diffusers", argv)) or 3)
    assert cli.main(["convert", "videocrafter2", "--ckpt", "m.ckpt", "--out", "o"]) == 0
    assert cli.main(["convert", "diffusers", "dir", "--out", "o"]) == 3
    assert calls == [("vc2", ["--ckpt", "m.ckpt", "--out", "o"]), ("diffusers", ["dir", "--out", "o"])]
    assert cli.main(["convert", "tensorflow"]) == 2
    assert capsys.readouterr().err.startswith("error: convert needs a source layout")

    import types

    for cmd, (module, _) in cli.FORWARD.items():
        fake = types.ModuleType(module)
        fake.main = lambda argv, cmd=cmd: calls.append((cmd, argv)) or 0
        monkeypatch.setitem(sys.modules, module, fake)
        assert cli.main([cmd, "--x", "1"]) == 0
        assert calls[-1] == (cmd, ["--x", "1"])
    monkeypatch.setitem(sys.modules, "vstar_jax.report", None)  # a missing module
    assert cli.main(["report", "r"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: 'report' is not available") and "\n" not in err
    assert cli.main(["frobnicate"]) == 2
    assert cli.main([]) == 2
    assert cli.main(["--help"]) == 0


# ----------------------------------------------------------------- issue 16: no surprises
def _no_compute(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("no model may be loaded or run for a bad input")

    monkeypatch.setattr(pl, "load_pipeline", boom)
    monkeypatch.setattr(pl, "_compiled_sampler", boom)


def _one_line(capsys, rc, want_rc=2, match=None):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == want_rc, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    if match is not None:
        assert match in lines[0], lines[0]
    return lines[0]


def test_refused_before_compute_with_one_line(ckpt, tmp_path, monkeypatch, capsys):
    _no_compute(monkeypatch)
    base = ["generate", PROMPT, "--checkpoint", ckpt, "--steps", "2", "--out", str(tmp_path / "ok.mp4")]
    # too large for memory: refused with the estimate, before anything is compiled
    line = _one_line(capsys, cli.main([*base, "--frames", "100000"]), match="not enough memory")
    assert "GiB" in line and "100000 frames" in line
    _one_line(capsys, cli.main([*base, "--frames", "4", "--width", "30000", "--height", "30000"]),
              match="not enough memory")
    _one_line(capsys, cli.main([*base, "--frames", "4", "--max-memory", "0.000001"]), match="not enough memory")
    _one_line(capsys, cli.main([*base, "--frames", "4", "--max-memory", "-1"]), match="--max-memory")
    # meshes with no devices on an axis
    _one_line(capsys, cli.main([*base, "--frames", "4", "--mesh", "frames=0"]), match="frames must be >= 1")
    _one_line(capsys, cli.main([*base, "--frames", "4", "--mesh", "data=1,data=2"]), match="twice")
    # a TAR that would never be applied
    _one_line(capsys, cli.main([*base, "--frames", "4", "--tar", "0:1@-5"]), match="until_time")
    _one_line(capsys, cli.main([*base, "--frames", "4", "--tar", "0:1:0"]), match="scale is 0")
    _one_line(capsys, cli.main([*base, "--frames", "4", "--tar", "0:1@soon"]), match="@until")
    # --llm-timeout
    _one_line(capsys, cli.main([*base, "--frames", "4", "--llm-timeout", "5"]), match="--llm-timeout needs --llm")
    _one_line(capsys, cli.main([*base, "--frames", "4", "--llm", "http://x", "--llm-timeout", "0"]),
              match="--llm-timeout")
    assert not (tmp_path / "ok.mp4").exists()


def test_existing_outputs_need_overwrite_and_foreign_json_is_never_replaced(ckpt, tmp_path, monkeypatch, capsys):
    _no_compute(monkeypatch)
    out = tmp_path / "v.mp4"
    out.write_bytes(b"an old video")
    base = ["generate", PROMPT, "--checkpoint", ckpt, "--frames", "4", "--steps", "2", "--out", str(out)]
    _one_line(capsys, cli.main(base), match="--overwrite")
    assert out.read_bytes() == b"an old video"
    # an unrelated .json beside the video: never overwritten, not even with --overwrite
    (tmp_path / "v.json").write_text('{"mine": true}')
    _one_line(capsys, cli.main([*base, "--overwrite"]), match="not a vstar-jax sidecar")
    assert (tmp_path / "v.json").read_text() == '{"mine": true}'
    # a GIF in the way
    (tmp_path / "w.gif").write_bytes(b"gif")
    _one_line(capsys, cli.main([*base[:-1], str(tmp_path / "w.mp4"), "--gif"]), match="--overwrite")
    # with --overwrite an old video that our own sidecar names may be replaced: the check lets it through
    from vstar_jax.generation.outputs import SIDECAR_FORMAT, check_outputs
    (tmp_path / "v.json").write_text(json.dumps({"format": SIDECAR_FORMAT}))
    _one_line(capsys, cli.main([*base, "--overwrite"]), match="not a vstar-jax output")  # the sidecar names no v.mp4
    (tmp_path / "v.json").write_text(json.dumps({"format": SIDECAR_FORMAT, "outputs": {"video": "/elsewhere/v.mp4"}}))
    paths = check_outputs(str(out), False, None, overwrite=True)
    assert paths["video"].name == "v.mp4"


def test_llm_timeout_flag_maps(monkeypatch):
    seen = {}
    monkeypatch.setattr(pl, "generate_video", lambda prompt, **kw: seen.update(kw) or pl.GenerationResult(None, {}, "x"))
    assert cli.main(["generate", "p", "--llm", "http://h/v1", "--llm-model", "m", "--llm-timeout", "2.5",
                     "--out", "x.mp4", "--quiet"]) == 0
    assert seen["llm"]["timeout"] == 2.5 and seen["overwrite"] is False and seen["max_memory"] is None


def test_from_sidecar_flags_schema_and_differing_frames(ckpt, tmp_path, capsys):
    first = tmp_path / "orig" / "clip.mp4"
    assert cli.main(["generate", PROMPT, "--checkpoint", ckpt, "--frames", "4", "--steps", "2", "--seed", "5",
                     "--out", str(first), "--quiet"]) == 0
    capsys.readouterr()
    sc = json.loads(first.with_suffix(".json").read_text())
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "clip.json").write_text(json.dumps(sc))
    import shutil
    shutil.rmtree(tmp_path / "orig")
    # flags the sidecar decides are named, not silently ignored
    line = _one_line(capsys, cli.main(["generate", "--from-sidecar", str(moved / "clip.json"), "--seed", "3",
                                       "--frames", "8", "--attention-backend", "xla"]))
    assert "--seed" in line and "--frames" in line and "--attention-backend" in line
    # the sidecar's attention backend is checked before any compute too ('cudnn' off a GPU)
    if jax.default_backend() != "gpu":
        (moved / "bad.json").write_text(json.dumps(dict(sc, attention_backend="cudnn")))
        _one_line(capsys, cli.main(["generate", "--from-sidecar", str(moved / "bad.json")]), match="needs a GPU")
    # a sidecar with a wrong field is refused before any compute
    bad = dict(sc, frames="many")
    (moved / "bad.json").write_text(json.dumps(bad))
    _one_line(capsys, cli.main(["generate", "--from-sidecar", str(moved / "bad.json")]), match="'frames'")
    (moved / "bad.json").write_text(json.dumps(dict(sc, frames_sha256="abc")))
    _one_line(capsys, cli.main(["generate", "--from-sidecar", str(moved / "bad.json")]), match="frames_sha256")
    (moved / "bad.json").unlink()
    # without --out: beside the sidecar, the recorded directory is not re-created
    assert cli.main(["generate", "--from-sidecar", str(moved / "clip.json"), "--quiet"]) == 0
    assert "identical frames" in capsys.readouterr().out
    assert (moved / "clip-regen.mp4").is_file() and not (tmp_path / "orig").exists()
    # tampered (another seed): computed, but the differing frames are not kept; exit 1
    (moved / "tampered.json").write_text(json.dumps(dict(sc, seed=6)))
    before = sorted(p.name for p in moved.iterdir())
    _one_line(capsys, cli.main(["generate", "--from-sidecar", str(moved / "tampered.json"), "--quiet"]), want_rc=1,
              match="differ")
    assert sorted(p.name for p in moved.iterdir()) == before
    # a sidecar from before the XLA compile options (issue 30; no "xla_options") whose frames differ names
    # the setting that compiles as it did
    if sc.get("xla_options") is not None:
        old = {k: v for k, v in dict(sc, seed=6).items() if k != "xla_options"}
        (moved / "old.json").write_text(json.dumps(old))
        _one_line(capsys, cli.main(["generate", "--from-sidecar", str(moved / "old.json"), "--quiet"]), want_rc=1,
                  match="VSTAR_JAX_CPU_CONV=ynnpack")
        (moved / "old.json").unlink()
    # an existing output needs --overwrite here too
    _one_line(capsys, cli.main(["generate", "--from-sidecar", str(moved / "clip.json"), "--quiet"]),
              match="--overwrite")
    assert cli.main(["generate", "--from-sidecar", str(moved / "clip.json"), "--quiet", "--overwrite"]) == 0


def test_damaged_checkpoint_and_non_video_metrics_are_one_line(ckpt, tmp_path, capsys):
    import shutil
    for broken, remove in (("no-meta", "params/_METADATA"), ("no-params", "params")):
        d = tmp_path / broken
        shutil.copytree(ckpt, d)
        target = d / remove
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        rc = cli.main(["generate", PROMPT, "--checkpoint", str(d), "--frames", "4", "--steps", "2",
                       "--out", str(tmp_path / f"{broken}.mp4"), "--quiet"])
        _one_line(capsys, rc, match=remove.split("/")[-1] if broken == "no-meta" else "params/")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all")
    _one_line(capsys, cli.main(["metrics", str(text)]), match="cannot read")
