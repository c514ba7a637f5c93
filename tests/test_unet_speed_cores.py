"""benchmarks/unet_speed.py --threads N holds each framework to N cores (issue 30: fair baselines)."""
import os
import subprocess
import sys

import pytest

from benchmarks.unet_speed import pin_to_cores


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to tell 1 from all")
def test_one_thread_child_runs_on_one_core():
    """The 1-thread child is pinned to one CPU before JAX starts, so XLA:CPU's pools (YNNPACK fusions, the
    thunk executor) have one core as torch has one thread; the Eigen flag alone left JAX on every core.
    The child reports its CPUs and the CPU seconds per wall second of a large dot (<= 1 on one core; ~2 on
    two idle cores). Mutation: no preexec pin fails the CPU count."""
    code = ("import os, time, jax, jax.numpy as jnp\n"
            "x = jnp.ones((1536, 1536)); f = jax.jit(lambda a: a @ a); f(x).block_until_ready()\n"
            "t, c = time.perf_counter(), time.process_time()\n"
            "for _ in range(4): f(x).block_until_ready()\n"
            "print(len(os.sched_getaffinity(0)), (time.process_time() - c) / (time.perf_counter() - t))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       preexec_fn=lambda: pin_to_cores(1))
    assert p.returncode == 0, p.stderr[-2000:]
    cpus, ratio = p.stdout.split()
    assert int(cpus) == 1, p.stdout
    assert float(ratio) < 1.2, p.stdout
