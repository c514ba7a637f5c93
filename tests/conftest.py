"""Shared test fixtures.

Golden vectors live in ``../shared/golden`` beside the checkout. Outside the
project's machines they may be absent and the tests that need them skip; under
``CI=true`` a missing folder is a failure, never a skip.
"""
import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# tests (and the CLI subprocesses they start) do not write JAX's persistent compile cache into ~/.cache
os.environ.setdefault("VSTAR_JAX_CACHE_DIR", "off")
GOLDEN = pathlib.Path(os.environ.get("VSTAR_GOLDEN", REPO.parent / "shared" / "golden"))


def _require(path: pathlib.Path) -> pathlib.Path:
    if not path.exists():
        msg = f"golden vectors not found at {path}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + " (CI=true: golden vectors are required)")
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def golden_dir() -> pathlib.Path:
    return _require(GOLDEN)


def load_golden(rel: str):
    """Load a golden safetensors file as a dict of numpy arrays (fails/skips like ``golden_dir``)."""
    from safetensors.numpy import load_file

    return load_file(str(_require(GOLDEN / rel)))


def rel_err(got, want) -> float:
    """Max abs error relative to the reference's largest magnitude (float64)."""
    import numpy as np

    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


# The files whose tests take longest on CI's 2 cores (subprocesses with 8 simulated devices or two
# processes, eager UNet passes). ``-n 2 --dist loadfile`` hands files to the two workers in collection
# order, so a long file collected last leaves one worker idle while the other finishes it: these go first.
LONG_FILES = ("test_sharding.py", "test_multihost.py", "test_unet.py", "test_streaming.py", "test_demo_model.py",
              "test_convert.py", "test_fifo.py", "test_streaming_released.py", "test_docs.py", "test_pipeline.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))  # stable: order within a file kept


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running; excluded from CI (run with -m slow)")


def run_on_host_devices(script: str, devices: int = 4, timeout: int = 900):
    """Run a Python snippet in a fresh process that sees ``devices`` simulated CPU devices (XLA_FLAGS
    must be set before JAX starts); returns the CompletedProcess, failing the test on a non-zero exit."""
    import subprocess
    import sys

    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=str(REPO),
                       timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


_SAMPLE_PROGRAMS: dict = {}


def strategy_sample(spec, model_fn, x_T, cond, uncond, schedule, *, key=None, cfg_scale=12.0, **options):
    """``parse_strategy(spec).sample(...)`` (the one sampler, the registry's method: what the pipeline runs),
    jitted once per (method, model function, schedule, options) like the pipeline's program, so a test that
    samples several times compiles once. Returns :class:`~vstar_jax.diffusion.sampler.SampleOutput`."""
    import jax

    from vstar_jax.longvideo import parse_strategy

    # the schedule by what sampling reads of it (its coefficients), so equal schedules share the program
    sched_key = tuple((k, v.tobytes()) for k, v in sorted(schedule.coefficients().items()))
    k = (spec, model_fn, sched_key, tuple(sorted(options.items())))
    if k not in _SAMPLE_PROGRAMS:
        st = parse_strategy(spec)
        _SAMPLE_PROGRAMS[k] = jax.jit(
            lambda x, c, u, kk, s: st.sample(model_fn, x, c, u, schedule, key=kk, cfg_scale=s, **options))
    return _SAMPLE_PROGRAMS[k](x_T, cond, uncond, key, cfg_scale)


@pytest.fixture()
def fake_sampler(monkeypatch):
    """``fake_sampler(fn, batch_fn=None)``: the pipeline's sampler stage runs ``fn(unet, params, cond, uncond,
    key, fps, cfg_scale, *, plan) -> SampleOutput`` instead of the compiled loop (for this test only), and
    a batch's ``batch_fn(unet, params, conds, ..., *, plan, items)`` (the same arguments with an item axis)."""
    import functools

    from vstar_jax import pipeline as pl

    def use(fn, batch_fn=None):
        def stage(unet, plan, args, progress, items=None):
            if items is None:
                return functools.partial(fn, unet, plan=plan)
            assert batch_fn is not None, "this test's fake sampler has no batch stage"
            return functools.partial(batch_fn, unet, plan=plan, items=items)

        monkeypatch.setattr(pl, "_compiled_sampler", stage)

    return use
