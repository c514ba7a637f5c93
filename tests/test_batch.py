"""Batched generation (pipeline.generate_batch): many items per compiled call, each bit-identical to its
single-item run; the item axis split over a data mesh axis on 4 host devices; sidecars of batched
items regenerate alone."""
import os
import sys
import textwrap

import numpy as np
import pytest

from conftest import run_on_host_devices
from tiny_checkpoint import shared_tiny_checkpoint
from vstar_jax import pipeline as pl

pytestmark = pytest.mark.filterwarnings("ignore:os.fork")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ITEMS = [{"prompt": "a red ball", "seed": 1}, {"prompt": "a blue cube", "seed": 2, "cfg": 7.5},
         {"prompt": "a red ball", "seed": 5}]


BATCH = dict(frames=4, steps=2, tar="L0:1")


@pytest.fixture(scope="module")
def exact_batch(tmp_path_factory):
    """ITEMS in one exact-mode call, its compiled loop written to a fresh disk compile cache."""
    import functools

    from vstar_jax.compile_cache import compile_lowered
    from vstar_jax.generation import sampling

    cache = tmp_path_factory.mktemp("cc")
    mp = pytest.MonkeyPatch()
    mp.setattr(sampling, "compile_lowered", functools.partial(compile_lowered, cache_dir=str(cache)))
    try:
        res = pl.generate_batch(ITEMS, checkpoint=shared_tiny_checkpoint(), out_dir=tmp_path_factory.mktemp("exact"),
                                progress=False, **BATCH)
    finally:
        mp.undo()
    return res, str(cache)


def test_items_equal_their_single_runs_bit_for_bit(exact_batch):
    ck = shared_tiny_checkpoint()
    res = exact_batch[0]
    assert [r.sidecar["timing_s"]["batch"] for r in res] == [3, 3, 3]  # one compiled call for all three
    for it, r in zip(ITEMS, res):
        one = pl.generate_video(it["prompt"], checkpoint=ck, frames=4, steps=2, seed=it["seed"], cfg=it.get("cfg"),
                                tar="L0:1", progress=False)
        np.testing.assert_array_equal(r.latents, one.latents)
        assert r.sidecar["frames_sha256"] == one.sidecar["frames_sha256"]
        assert os.path.exists(r.path) and r.sidecar["seed"] == it["seed"]
    again = pl.regenerate(res[1].sidecar_path, progress=False)  # a batched item's sidecar, alone
    np.testing.assert_array_equal(again.video, res[1].video)


def test_batch_errors():
    ck = shared_tiny_checkpoint()
    with pytest.raises(ValueError, match="item 1 has no prompt"):
        pl.generate_batch([{"prompt": "a"}, {"seed": 1}], checkpoint=ck, progress=False)
    with pytest.raises(ValueError, match="item 0: llm is not available in a batch"):
        pl.generate_batch([{"prompt": "a", "llm": {"url": "x"}}], checkpoint=ck, progress=False)
    with pytest.raises(ValueError, match="frames must be >= 2"):
        pl.generate_batch([{"prompt": "a", "frames": 1}], checkpoint=ck, progress=False)


SCRIPT = textwrap.dedent("""
    import sys, tempfile, os, numpy as np
    sys.path.insert(0, "tests")
    from tiny_checkpoint import write_tiny_checkpoint
    from vstar_jax import pipeline as pl
    ck = write_tiny_checkpoint(os.path.join(tempfile.mkdtemp(), "ck"))
    items = [{"prompt": p, "seed": s} for p in ("a red ball", "a blue cube") for s in (1, 2)]
    res = pl.generate_batch(items, checkpoint=ck, frames=4, steps=2, mesh={"data": 4}, progress=False)
    same = all(np.array_equal(r.latents, pl.generate_video(it["prompt"], checkpoint=ck, frames=4, steps=2,
                                                           seed=it["seed"], progress=False).latents)
               for it, r in zip(items, res))
    print("SAME", same, "MESH", res[0].sidecar["mesh"])
    fast = pl.generate_batch(items, checkpoint=ck, frames=4, steps=2, mesh={"data": 4}, batch_mode="vmap",
                             progress=False)  # vmap inside each device's share
    print("VMAP_CLOSE", all(np.abs(f.latents - r.latents).max() <= 1e-5 * np.abs(r.latents).max()
                            for f, r in zip(fast, res)), fast[0].sidecar["batch_mode"])
    try:
        pl.generate_batch(items[:3], checkpoint=ck, frames=4, steps=2, mesh={"data": 4}, progress=False)
    except ValueError as e:
        print("SPLIT_ERR", e)
""")


@pytest.mark.slow  # a 4-device subprocess with two compiles (~2 min); run with -m slow
def test_items_split_over_the_data_axis_of_4_devices():
    r = run_on_host_devices(SCRIPT, 4, timeout=900)
    assert "SAME True MESH {'data': 4}" in r.stdout, r.stdout
    assert "VMAP_CLOSE True vmap" in r.stdout, r.stdout
    assert "3 items do not split over the mesh's data axis of size 4" in r.stdout


def test_cli_seeds_and_prompts_file_make_one_batch(tmp_path, capsys):
    """`vstar-jax generate --prompts-file F --seeds 1,2 --out-dir D`: one video per (prompt, seed), equal to
    the single-video command's; options that name one video are refused in one line."""
    import json

    from vstar_jax.cli import main

    ck = shared_tiny_checkpoint()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# two prompts\na red ball\n\na blue cube\n")
    flags = ["--checkpoint", ck, "--frames", "4", "--steps", "2", "--tar", "L0:1", "--quiet"]
    assert main(["generate", "--prompts-file", str(prompts), "--seeds", "1,2", "--out-dir", str(tmp_path / "many")]
                + flags) == 0
    paths = capsys.readouterr().out.split()
    assert [os.path.basename(p) for p in paths] == ["a-red-ball-1.mp4", "a-red-ball-2.mp4", "a-blue-cube-1.mp4",
                                                     "a-blue-cube-2.mp4"]
    sc = json.loads((tmp_path / "many" / "a-blue-cube-2.json").read_text())
    assert sc["timing_s"]["batch"] == 4
    assert main(["generate", "a blue cube", "--seed", "2", "--out", str(tmp_path / "one.mp4")] + flags) == 0
    one = json.loads((tmp_path / "one.json").read_text())
    assert sc["frames_sha256"] == one["frames_sha256"]
    capsys.readouterr()
    assert main(["generate", "a red ball", "--seeds", "1,2", "--out", str(tmp_path / "x.mp4")] + flags) == 2
    assert "--out is for one video" in capsys.readouterr().err
    assert main(["generate", "a red ball", "--seeds", "1,b"] + flags) == 2
    assert "--seeds must be comma-separated integers" in capsys.readouterr().err
    assert main(["generate", "a red ball", "--prompts-file", str(prompts)] + flags) == 2
    assert "not both" in capsys.readouterr().err


def test_vmap_mode_batches_items_within_rounding_and_says_so(exact_batch, tmp_path, capsys):
    """``batch_mode="vmap"`` runs all items in every UNet call: each video equals its exact (single-run)
    latents within float32 rounding (bound 1e-5 of the latents' scale: a different batch size changes only
    XLA's summation order; measured ~1e-7), not bit for bit; its sidecars say so, and ``--from-sidecar``
    regenerates them alone without claiming identical frames."""
    from vstar_jax.cli import main

    ck = shared_tiny_checkpoint()
    exact = exact_batch[0]
    fast = pl.generate_batch(ITEMS, checkpoint=ck, out_dir=tmp_path, batch_mode="vmap", progress=False, **BATCH)
    for e, f in zip(exact, fast):
        scale = float(np.abs(e.latents).max())
        np.testing.assert_allclose(f.latents, e.latents, rtol=0, atol=1e-5 * scale)
        assert "batch_mode" not in e.sidecar and f.sidecar["batch_mode"] == "vmap"
    assert not np.array_equal(fast[0].latents, fast[2].latents)  # each item its own seed
    assert pl.regenerates_exactly(exact[0].sidecar) and not pl.regenerates_exactly(fast[0].sidecar)
    capsys.readouterr()
    assert main(["generate", "--from-sidecar", fast[1].sidecar_path, "--quiet"]) == 0
    cap = capsys.readouterr()
    assert "identical frames" not in cap.out and "batch's vmap mode" in cap.err
    with pytest.raises(ValueError, match="batch_mode must be one of exact, vmap"):
        pl.generate_batch(ITEMS[:1], checkpoint=ck, batch_mode="fast", progress=False, **BATCH)
    assert main(["generate", "a red ball", "--batch-mode", "vmap", "--checkpoint", ck, "--quiet"]) == 2
    assert "--batch-mode is for several videos" in capsys.readouterr().err
    # the jax-free CLI spells the modes out: they and its default are the API's
    import inspect

    from vstar_jax.cli import generate_parser
    from vstar_jax.generation.sampling import BATCH_MODES

    flag = next(a for a in generate_parser()._actions if a.dest == "batch_mode")
    assert tuple(flag.choices) == BATCH_MODES
    assert flag.default == inspect.signature(pl.generate_batch).parameters["batch_mode"].default


def test_batched_program_goes_through_the_disk_compile_cache(exact_batch, tmp_path, monkeypatch, capsys):
    """A batch's compiled loop (it holds the progress callback) was written to the compile cache by the
    first call; a fresh process (here: the in-memory cache emptied) loads it instead of compiling again."""
    import functools

    from vstar_jax.compile_cache import compile_lowered
    from vstar_jax.generation import sampling
    from vstar_jax.runtime import runtime

    monkeypatch.setattr(sampling, "compile_lowered", functools.partial(compile_lowered, cache_dir=exact_batch[1]))
    runtime().compiled.clear()
    capsys.readouterr()
    pl.generate_batch(ITEMS, checkpoint=shared_tiny_checkpoint(), out_dir=tmp_path, progress=True, **BATCH)
    assert "loaded from the compile cache" in capsys.readouterr().err
