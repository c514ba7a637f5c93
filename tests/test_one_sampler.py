"""Every path samples through ``Strategy.sample`` of the method it names: ``generate_video`` and
``generate_batch`` with each long-video method give the latents of that method's class sampled directly.

The pipeline is the embedded demo model's (its text encoder, its StreamingT2V memory, its patch decoder)
with the UNet replaced by a small parameter-free flax module (``Probe``), so each method's program compiles
in a fraction of a second. The direct run names the class itself (``Blend(4, 2)``, not the registry): a
registry or pipeline that sent a method to another method's loop fails here.
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vstar_jax import pipeline as pl
from vstar_jax.diffusion.schedules import make_schedule
from vstar_jax.longvideo.blend import Blend
from vstar_jax.longvideo.fifo import FIFO
from vstar_jax.longvideo.freenoise import FreeNoise
from vstar_jax.longvideo.genl import GenL
from vstar_jax.longvideo.single import Single
from vstar_jax.longvideo.streaming import Streaming
from vstar_jax.longvideo.vidrd import VidRD
from vstar_jax.models.denoiser import DenoiserSpec, make_denoiser

PROMPT = "a red circle moves to the right"
STEPS = 2


class Probe(nn.Module):
    """eps from x, the context of each row (per frame with VSP), the timestep(s), the loop index, the frame
    position and StreamingT2V's CAM frames / anchor embedding: cheap, and different for every method."""

    @nn.compact
    def __call__(self, x, t, ctx, fps=None, step_index=None, hooks=(), capture_attention=False, cam_frames=None,
                 image_embed=None, layout=None):
        f = x.shape[2]
        c = ctx.mean(axis=tuple(range(1, ctx.ndim)))[:, None, None, None, None]
        tt = t.astype(jnp.float32)
        tt = tt[:, None, :, None, None] if tt.ndim == 2 else tt[:, None, None, None, None]
        eps = 0.1 * x + 0.02 * jnp.arange(f, dtype=jnp.float32)[None, None, :, None, None] + c + 1e-4 * tt
        eps = eps + 0.003 * step_index
        if cam_frames is not None:
            eps = eps + 0.3 * cam_frames.mean(axis=2, keepdims=True) + 0.05 * image_embed.mean(axis=1)[
                :, None, None, None, None]
        return eps


@pytest.fixture(scope="module")
def probe_pipe():
    """The demo pipeline with the Probe as its UNet (settings kept, so the pipeline keeps this module)."""
    return dataclasses.replace(pl.load_pipeline(None), unet=Probe())


def _direct(pipe, strategy, results, seeds):
    """The strategy's class sampled directly with each run's recorded settings (the seed rule as the
    sidecar's), one compile for all the results (they share their settings but the prompt and seed)."""
    sc = results[0].sidecar
    kw = {k: v for k, v in sc["schedule"].items() if k != "flavor"}
    schedule = make_schedule(sc["schedule"]["flavor"], sc["steps"], sc["eta"], **kw)
    memory = {}
    if strategy.name == "streaming":
        mem = pipe.streaming_memory()
        mp = mem.params_of(pipe.params)
        memory = {"cam_input": lambda z: mem.cam_input(mp, z), "anchor_pair": lambda a: mem.anchor_pair(mp, a)}
    # the Probe as the demo model's denoiser: its output is a v-prediction, converted to eps
    denoiser = make_denoiser(Probe(), {}, DenoiserSpec(pipe.diffusion["prediction"]),
                             alphas_cumprod=schedule.alphas_cumprod, **memory)
    run = jax.jit(lambda x, c, u, k: strategy.sample(denoiser, x, c, u, schedule, key=k, cfg_scale=sc["cfg"],
                                                     frames=sc["frames"]).latents)
    out = []
    for res, seed in zip(results, seeds):
        k_x, k_steps = jax.random.split(jax.random.key(seed))
        x_T = strategy.init_noise(k_x, tuple(sc["latent_shape"]))
        cond, uncond = pipe.encode([res.sidecar["prompt"]]), pipe.encode([""])
        out.append(np.asarray(run(x_T, cond, uncond, k_steps), np.float64))
    return out


def _scaled_err(a, ref):
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return np.abs(a - ref).max() / max(1.0, np.abs(ref).max())


SLOW = pytest.mark.slow  # fifo, vidrd: ~12-16 s each on the loaded 2-core machine (two compiles of nested scans)
METHODS = [  # (spec, frames, the class run directly): the fewest frames and steps that exercise each loop
    # single in CI: test_pipeline::test_sampling_matches_a_plain_ddim_loop
    pytest.param(None, 4, Single(), id="single", marks=SLOW),
    pytest.param("genl:2:1", 4, GenL(2, 1), id="genl"),
    pytest.param("blend:3:1", 5, Blend(3, 1), id="blend"),
    pytest.param("freenoise:2:1", 4, FreeNoise(2, 1), id="freenoise"),
    pytest.param("fifo:2:1", 4, FIFO(2, 1), id="fifo", marks=SLOW),
    pytest.param("vidrd:2:1", 4, VidRD(2, 1), id="vidrd", marks=SLOW),
    pytest.param("streaming:5:4", 6, Streaming(5, 4), id="streaming"),  # the demo model's CAM takes 4 frames
]


@pytest.mark.parametrize("spec, frames, strategy", METHODS)
def test_generate_video_runs_the_named_strategy(probe_pipe, spec, frames, strategy):
    steps = None if strategy.name == "fifo" else STEPS  # FIFO fixes its step count
    res = pl.generate_video(PROMPT, pipeline=probe_pipe, frames=frames, steps=steps, seed=3, long_video=spec,
                            attention_backend=None, progress=False)
    (want,) = _direct(probe_pipe, strategy, [res], [3])
    assert res.latents.shape == want.shape
    err = _scaled_err(res.latents, want)
    assert err < 1e-5, err  # two compiles of the same float32 arithmetic; another method's loop is >> 1e-2


def test_generate_batch_runs_the_named_strategy(probe_pipe):
    """The batch path (items through ``lax.map``) samples each item with its method as a single run does."""
    items = [{"prompt": PROMPT, "seed": 3}, {"prompt": "a green triangle moves down", "seed": 4}]
    res = pl.generate_batch(items, pipeline=probe_pipe, frames=5, steps=STEPS, long_video="blend:3:1",
                            attention_backend=None, progress=False)
    wants = _direct(probe_pipe, Blend(3, 1), res, [item["seed"] for item in items])
    for r, want in zip(res, wants):
        assert _scaled_err(r.latents, want) < 1e-5
