"""The disk cache for programs with host callbacks (the sampling loop's progress tick): a program
compiled once is loaded in a later lowering with that lowering's own callbacks, bit for bit."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vstar_jax import compile_cache as cc

TICKS = []


def _tick(i):
    if TICKS and TICKS[0] == "raise":
        raise RuntimeError("stop")
    TICKS.append(int(i))


def _loop(x):
    def body(c, i):
        c = jnp.tanh(c @ c.T) * 0.5 + jnp.sin(c) * i
        jax.debug.callback(_tick, i)
        return c, None

    return jax.lax.scan(body, x, jnp.arange(4.0))[0]


def test_program_with_callback_loads_from_disk_with_this_lowerings_callback(tmp_path):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 8)), jnp.float32)
    TICKS.clear()
    first, loaded = cc.compile_lowered(jax.jit(_loop).lower(x), cache_dir=str(tmp_path))
    assert not loaded
    assert len(os.listdir(tmp_path / cc.CALLBACK_SUBDIR)) == 1
    want = np.asarray(first(x))
    assert TICKS == [0, 1, 2, 3]
    # a fresh jit and lowering, as a new process has: new callback objects, same program
    TICKS.clear()
    again, loaded = cc.compile_lowered(jax.jit(_loop).lower(x), cache_dir=str(tmp_path))
    assert loaded
    np.testing.assert_array_equal(np.asarray(again(x)), want)
    assert TICKS == [0, 1, 2, 3]
    # the callback raising stops the loaded program too (how Ctrl-C stops sampling)
    TICKS[:] = ["raise"]
    with pytest.raises(Exception):
        jax.block_until_ready(again(x))
    TICKS.clear()


def _loop_other(x):  # _loop's shapes and callback, another body
    def body(c, i):
        c = jnp.tanh(c @ c.T) * 0.25 - jnp.cos(c) * i
        jax.debug.callback(_tick, i)
        return c, None

    return jax.lax.scan(body, x, jnp.arange(4.0))[0]


def test_programs_of_the_same_shapes_but_other_bodies_do_not_share_an_entry(tmp_path):
    """Two programs with the same shapes, callback and signature but different bodies get different
    keys, and the second is compiled (not loaded from the first's entry) and computes its own result.
    Catches the key losing the lowered program text."""
    x = jnp.asarray(np.random.default_rng(1).standard_normal((8, 8)), jnp.float32)
    a, b = jax.jit(_loop).lower(x), jax.jit(_loop_other).lower(x)
    assert cc._program_key(a) != cc._program_key(b)
    assert cc._program_key(a) == cc._program_key(jax.jit(_loop).lower(x))
    TICKS.clear()
    cc.compile_lowered(a, cache_dir=str(tmp_path))
    other, loaded = cc.compile_lowered(b, cache_dir=str(tmp_path))
    assert not loaded and len(os.listdir(tmp_path / cc.CALLBACK_SUBDIR)) == 2
    np.testing.assert_array_equal(np.asarray(other(x)), np.asarray(jax.jit(_loop_other)(x)))
    TICKS.clear()


def test_corrupt_entry_is_recompiled_and_no_cache_means_plain_compile(tmp_path, capsys):
    x = jnp.ones((4, 4), jnp.float32)
    cc.compile_lowered(jax.jit(_loop).lower(x), cache_dir=str(tmp_path))
    (entry,) = (tmp_path / cc.CALLBACK_SUBDIR).iterdir()
    entry.write_bytes(b"not a program")
    TICKS.clear()
    capsys.readouterr()
    fn, loaded = cc.compile_lowered(jax.jit(_loop).lower(x), cache_dir=str(tmp_path))
    assert not loaded and entry.stat().st_size > 100  # replaced by a good entry
    (line,) = capsys.readouterr().err.splitlines()  # said in one line, not swallowed
    assert line.startswith(f"warning: compile cache entry {entry} unreadable, compiling again: UnpicklingError")
    np.testing.assert_array_equal(np.asarray(fn(x)), np.asarray(jax.jit(_loop)(x)))
    if not jax.config.jax_enable_compilation_cache:  # the test suite runs with the cache off
        assert cc.active_cache_dir() is None
        _, loaded = cc.compile_lowered(jax.jit(_loop).lower(x))
        assert not loaded
