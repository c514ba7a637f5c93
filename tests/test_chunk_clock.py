"""The enhancer's chunks on the video's own clock (issue 27, ``enhance --chunk-clock``).

The demo models' per-frame conditioning reads a frame clock (``demo_options.frame_clock``). The UNet takes
an optional ``frame_times`` in its place; the enhancer hands each chunk its slice of the whole video's clock
(``--chunk-clock video``), or nothing (``chunk``: every chunk its own clock, the old behaviour).
"""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vstar_jax.enhance import job
from vstar_jax.errors import VstarError
from vstar_jax.longvideo import windows as W
from vstar_jax.models.demo_options import frame_clock, frame_embedding
from vstar_jax.models.unet3d import UNet3D, UNetEmbedding, UNetExtras
from vstar_jax.models.unet_config import UNetConfig

TINY = {"in_channels": 4, "out_channels": 4, "model_channels": 16, "channel_mult": (1,), "num_res_blocks": 1,
        "attention_resolutions": (), "num_head_channels": 8, "context_dim": 8, "norm_groups": 4, "transformer_norm_groups": 4,
        "frame_position": True, "text_frame_cond": True}
CLOCKS = [("normalised", 0), ("clipped", 6)]


def _random_params(init, rng):
    """Random weights of a module's parameter shapes (eval_shape: nothing compiles but the calls); the demo
    options' output layers start at zero, which would hide the clock."""
    return jax.tree_util.tree_map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), jnp.float32),
                                  jax.eval_shape(init)["params"])


def test_unet_embedding_with_its_own_clock_as_frame_times_is_bit_for_bit():
    """What the ResBlocks add (the UNet's embedding, where the clock enters): frame_times = frame_clock(f), an
    argument of the compiled call, gives the embedding without it bit for bit; the same frames placed later in a longer video change it."""
    emb = UNetEmbedding(UNetConfig.from_config(TINY))
    f = 4
    x = jnp.zeros((2, 4, f, 4, 4))
    ctx = jax.random.normal(jax.random.key(3), (2, 3, 8))
    t = jnp.array([500, 300])
    params = _random_params(lambda: emb.init(jax.random.key(0), x, t, ctx, None, UNetExtras()),
                            np.random.default_rng(0))
    plain = np.asarray(jax.jit(lambda p: emb.apply({"params": p}, x, t, ctx, None, UNetExtras()).emb)(params))
    timed = jax.jit(lambda p, ft: emb.apply({"params": p}, x, t, ctx, None, UNetExtras(), ft).emb)
    np.testing.assert_array_equal(np.asarray(timed(params, frame_clock(f))), plain)
    later = np.asarray(timed(params, frame_clock(3 * f)[f:2 * f]))
    assert np.abs(later - plain).max() > 1e-3


@pytest.mark.slow  # two compiles of a whole (tiny) UNet, ~25 s on the loaded 2-core machine; CI: the embedding's
def test_unet_with_its_own_clock_as_frame_times_is_the_unet_bit_for_bit():
    """The same through the whole UNet3D call (``frame_times`` keyword)."""
    unet = UNet3D(TINY)
    f = 4
    x = jax.random.normal(jax.random.key(2), (2, 4, f, 4, 4))
    ctx = jax.random.normal(jax.random.key(3), (2, 3, 8))
    t = jnp.array([500, 300])
    params = _random_params(lambda: unet.init(jax.random.key(0), x, t, ctx), np.random.default_rng(0))
    plain = np.asarray(jax.jit(lambda p: unet.apply({"params": p}, x, t, ctx))(params))
    timed = jax.jit(lambda p, ft: unet.apply({"params": p}, x, t, ctx, frame_times=ft))
    np.testing.assert_array_equal(np.asarray(timed(params, frame_clock(f))), plain)
    later = np.asarray(timed(params, frame_clock(3 * f)[f:2 * f]))
    assert np.abs(later - plain).max() > 1e-3


@pytest.mark.parametrize("clock,trained", CLOCKS)
def test_a_chunk_given_its_slice_of_the_video_clock_embeds_as_those_frames_of_the_video(clock, trained):
    """demo_options level, exact: a chunk of F frames at s given frame_clock(N)[s:s+F] gets rows s..s+F of the
    whole video's frame embedding; given its own clock it does not (s > 0)."""
    n, window, overlap, dim = 20, 8, 4, 16
    whole = np.asarray(frame_embedding(n, dim, clock, trained))
    times = frame_clock(n, clock, trained)
    for s in W.chunk_starts(n, window, overlap):
        got = np.asarray(frame_embedding(window, dim, clock, trained, times[s:s + window]))
        np.testing.assert_array_equal(got, whole[s:s + window])
        per_row = np.asarray(frame_embedding(window, dim, clock, trained, jnp.stack([times[s:s + window]] * 2)))
        np.testing.assert_array_equal(per_row, np.tile(whole[s:s + window], (2, 1)))  # (b, f): one row per entry
    own = np.asarray(frame_embedding(window, dim, clock, trained))
    assert not np.array_equal(own, whole[12:20])


@dataclasses.dataclass(frozen=True)
class RecordingUNet:
    """A stand-in refiner with the demo options in its config: it records the ``frame_times`` each call gets
    (None when none is passed) and predicts zero."""

    config: UNetConfig = UNetConfig.from_config(TINY)
    calls: list = dataclasses.field(default_factory=list, compare=False, hash=False)

    def apply(self, variables, x, t, ctx, frame_times=None, **kw):
        rec = lambda v: self.calls.append(None if v.size == 0 else np.asarray(v))  # noqa: E731
        jax.debug.callback(rec, jnp.zeros((0,)) if frame_times is None else frame_times, ordered=True)
        return jnp.zeros_like(x)


@pytest.mark.parametrize("shared", [True, pytest.param(False, marks=pytest.mark.slow)])  # CI: one loop compile
def test_the_enhancer_hands_each_chunk_the_slice_of_the_video_clock_at_its_start(shared):
    """Every UNet call of chunk k gets frame_clock(N)[s_k:s_k+F] (through the denoiser, the blend loop or the
    independent chunks' loop); --chunk-clock chunk passes no frame_times (each call its own clock)."""
    frames, window, overlap = 12, 8, 4  # two chunks, starts 0 and 4
    starts = [int(s) for s in W.chunk_starts(frames, window, overlap)]
    z0 = jax.random.normal(jax.random.key(0), (1, 4, frames, 2, 2))
    cond = jnp.ones((1, 3, 8))
    plan = job.EnhancePlan("videocrafter2", 10, 0.0, (), 0.5, "eps", window, overlap, shared, True)
    n_steps = plan.schedule().num_steps

    def run(chunk_clock):
        unet = RecordingUNet()
        lat = job.enhance_jit(unet, {}, z0, cond, cond, jax.random.key(1), jnp.float32(8), jnp.float32(7.5),
                           jnp.float32(0), plan=dataclasses.replace(plan, chunk_clock=chunk_clock))
        jax.block_until_ready(lat.latents)
        jax.effects_barrier()
        return unet.calls

    clock = np.asarray(frame_clock(frames))
    calls = run("video")
    # the blend loop runs the chunks in order at every step; independent chunks run one after the other
    order = starts * n_steps if shared else [s for s in starts for _ in range(n_steps)]
    assert len(calls) == len(order)
    for got, s in zip(calls, order):
        np.testing.assert_array_equal(got, clock[s:s + window])
    if not shared:  # --chunk-clock chunk: nothing passed (one more compile: with the slow case)
        assert all(c is None for c in run("chunk"))


def test_request_sidecar_and_legacy_sidecars_carry_the_chunk_clock(tmp_path, monkeypatch):
    """The default is the video's clock; the value is checked; a sidecar without the field regenerates
    with each chunk on its own clock (what ran before the setting existed)."""
    assert job.DEFAULTS["chunk_clock"] == "video" and job.SIDECAR_LEGACY["chunk_clock"] == "chunk"
    assert "chunk_clock" in job.SIDECAR_ARGS
    with pytest.raises(VstarError, match="--chunk-clock"):
        job.make_enhance_request(tmp_path / "none.mp4", "a prompt", chunk_clock="frame")
    seen = []
    monkeypatch.setattr(job, "enhance_video", lambda *a, **kw: seen.append(kw["chunk_clock"]))
    sc = {k: 1 for k in job.SIDECAR_ARGS if k not in job.SIDECAR_LEGACY}
    sc.update(format=job.ENHANCE_SIDECAR_FORMAT, input="in.mp4", input_sha256="0" * 64, height=96, width=96)
    for name, extra in (("old", {}), ("new", {"chunk_clock": "video"})):
        (tmp_path / f"{name}.json").write_text(json.dumps({**sc, **extra}))
        job.regenerate_enhanced(tmp_path / f"{name}.json")
    assert seen == ["chunk", "video"]


def test_video_clock_is_none_without_the_demo_options():
    """Real refiners (no demo options) have no clock: the enhancer passes nothing, as with --chunk-clock chunk."""
    base = {k: v for k, v in TINY.items() if k not in ("frame_position", "text_frame_cond")}
    assert UNetConfig.from_config(base).video_clock(16) is None
    np.testing.assert_array_equal(UNetConfig.from_config(TINY).video_clock(16), frame_clock(16))
    vc = UNetConfig.from_config({**TINY, "frame_clock": "clipped", "trained_frames": 8}).video_clock(16)
    np.testing.assert_array_equal(vc, frame_clock(16, "clipped", 8))
