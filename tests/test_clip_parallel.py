"""Windows of one long-video step as a sharded batch axis (issue 24): D independent windows (Gen-L's windows,
blend's chunks, the windows of one FIFO iteration) in ONE batched UNet call, D = the mesh axis the
``windows`` rule names. Here: the grouping on one device equals the serial loop, the plan and its line,
and on 8 simulated devices (one subprocess) the pipeline on data 8 / data 2 x frames 4 equals one device,
with one UNet body per group in the compiled program."""
import os
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_on_host_devices
from vstar_jax.diffusion.sampler import Denoiser
from vstar_jax.diffusion.schedules import make_schedule
from vstar_jax.longvideo import parse_strategy
from vstar_jax.longvideo import windows as W


def test_window_groups_visit_the_windows_in_serial_order_and_mask_the_padding():
    index, real = W.window_groups(7, 3)
    assert index.tolist() == [[0, 1, 2], [3, 4, 5], [6, 6, 6]]
    assert real.tolist() == [[True] * 3, [True] * 3, [True, False, False]]
    index, real = W.window_groups(4, 1)  # D = 1: the serial loop
    assert index.tolist() == [[0], [1], [2], [3]] and real.all()
    with pytest.raises(ValueError, match="group must be >= 1"):
        W.window_groups(4, 0)


def _toy(windows: int):
    """A UNet stand-in that mixes frames (a window's frames depend on each other), reads the timestep of
    each frame, the per-frame context and the step index (TAR's gate): a row-wise function, as the UNet."""
    def fn(x, t, ctx, i):
        t = jnp.asarray(t, jnp.float32)
        t = t[:, None, :, None, None] if t.ndim == 2 else t[:, None, None, None, None]
        c = ctx.mean(axis=(-1, -2))
        c = c[:, None, :, None, None] if c.ndim == 2 else c[:, None, None, None, None]
        gate = jnp.where(jnp.asarray(i) <= 1, 1.0, 0.5)
        gate = gate.reshape((-1,) + (1,) * 4) if gate.ndim else gate
        return jnp.tanh(0.7 * x + 0.3 * x.mean(axis=2, keepdims=True) + t / 1000.0 + c) * gate
    return Denoiser(fn, windows=windows)


@pytest.mark.parametrize("spec,frames,steps", [
    ("genl:4:2", 12, 2), pytest.param("genl:4:1", 7, 2, marks=pytest.mark.slow), ("blend:4:2", 10, 2),
    ("fifo:4:2", 6, 8), pytest.param("fifo:4:2:false", 6, 8, marks=pytest.mark.slow)])
def test_groups_of_windows_equal_the_serial_loop(spec, frames, steps):
    """D = 3 windows per call (the last group padded with masked windows) give the serial loop's
    latents; a per-frame context (VSP) and per-window steps (FIFO's TAR gate) included."""
    st = parse_strategy(spec)
    sched = make_schedule("videocrafter2", steps, 1.0)  # eta 1: the step noise is drawn too
    shape = (1, 2, frames, 3, 3)
    key = jax.random.key(0)
    x_T = st.init_noise(key, shape)
    cond = jax.random.normal(jax.random.key(1), (frames, 5, 4))
    uncond = jnp.zeros((1, 5, 4))
    outs = {d: np.asarray(jax.jit(lambda x, c, u, d=d: st.sample(_toy(d), x, c, u, sched, key=key, cfg_scale=5.0,
                                                                   frames=frames).latents)(x_T, cond, uncond))
            for d in (1, 3)}
    plan = st.check(frames, sched.num_steps)
    assert plan.group_windows > 1 and plan.calls_for(1) == plan.calls and plan.calls_for(2) < plan.calls
    for d in (3,):
        err = float(np.abs(outs[d] - outs[1]).max() / np.abs(outs[1]).max())
        assert err < 1e-6, (spec, d, err)
