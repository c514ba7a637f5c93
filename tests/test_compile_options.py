"""The XLA options vstar-jax compiles with (``vstar_jax.compile_options``): on CPU, jaxlib's own YNNPACK
fusion kinds less individual convolutions, so XLA runs convolutions itself, on every core (issue 30)."""
import json
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vstar_jax import cli
from vstar_jax import compile_cache as cc
from vstar_jax import compile_options as co
from vstar_jax.errors import VstarError
from vstar_jax.jax_private import private_jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _conv_args():
    rng = np.random.default_rng(0)
    return (jnp.asarray(rng.standard_normal((2, 16, 16, 32)), jnp.float32),  # YNNPACK takes >= 32 channels
            jnp.asarray(rng.standard_normal((3, 3, 32, 32)) * 0.1, jnp.float32))


def _kinds_in_a_fresh_process(xla_flags: str) -> tuple:
    code = ("from vstar_jax import compile_options as co; from vstar_jax.jax_private import private_jax; "
            "print(list(co.ynn_fusion_kinds(private_jax().default_compile_options())))")
    env = {**os.environ, "XLA_FLAGS": xla_flags}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return tuple(json.loads(out.stdout.strip().splitlines()[-1]))


def test_the_fusion_kinds_are_read_from_jaxlibs_own_options():
    # this jaxlib's default holds individual convolutions (what the option takes out) and XLA_FLAGS moves it
    default = co.ynn_fusion_kinds(private_jax().default_compile_options())
    assert co.CONVOLUTION in default and all(k in co.KINDS for k in default)
    assert _kinds_in_a_fresh_process("--xla_cpu_experimental_ynn_fusion_type=reduce") == (3,)
    assert _kinds_in_a_fresh_process("--xla_cpu_experimental_ynn_fusion_type=individual_dot,individual_convolution") \
        == (4, 5)
    # packed and unpacked encodings of field 422 inside fields 3 / 3
    def msg(number, payload):  # a length-delimited field, number < 16 and payload < 128 bytes
        return bytes([(number << 3) | 2, len(payload)]) + payload
    packed = bytes([0xB2, 0x1A, 2, 4, 5])  # field 422, wire 2: (422 << 3) | 2 = 3378 = 0xB2 0x1A
    unpacked = bytes([0xB0, 0x1A, 3, 0xB0, 0x1A, 1])  # field 422, wire 0, twice
    assert co.ynn_fusion_kinds(msg(3, msg(3, packed))) == (4, 5)
    assert co.ynn_fusion_kinds(msg(3, msg(3, unpacked))) == (3, 1)
    assert co.ynn_fusion_kinds(msg(3, msg(4, packed))) == ()  # not the debug options


def test_cpu_options_take_out_convolutions_and_nothing_else():
    assert co.cpu_options((4, 5, 3), {}) == {co.FLAG: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
    assert co.cpu_options((5,), {}) == {co.FLAG: ""}  # only convolutions: an empty list
    assert co.cpu_options((4, 3), {}) is None  # nothing to take out
    assert co.cpu_options((4, 5, 9), {}) is None  # a kind this module cannot name: leave jaxlib alone
    assert co.cpu_options((4, 5, 3), {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=reduce"}) is None
    assert co.cpu_options((4, 5, 3), {co.ENV: "ynnpack"}) is None
    assert co.cpu_options((4, 5, 3), {co.ENV: " XLA "}) is not None
    with pytest.raises(ValueError, match="VSTAR_JAX_CPU_CONV='eigen': use one of xla, ynnpack"):
        co.cpu_options((4, 5, 3), {co.ENV: "eigen"})


def test_cpu_programs_run_convolutions_outside_ynnpack_and_others_get_nothing(tmp_path):
    assert co.options_for("gpu") is None and co.options_for("tpu") is None
    opts = co.options_for("cpu")
    assert opts is not None and "INDIVIDUAL_CONVOLUTION" not in opts[co.FLAG]
    x, w = _conv_args()
    plain = jax.jit(_conv).lower(x, w).compile()
    ours = co.jit(_conv).lower(x, w).compile()
    assert "__ynn_fusion" in plain.as_text()  # jaxlib's default: the convolution is a YNNPACK fusion
    assert "__ynn_fusion" not in ours.as_text() and "convolution(" in ours.as_text()
    np.testing.assert_allclose(np.asarray(co.jit(_conv)(x, w)), np.asarray(plain(x, w)), rtol=1e-5, atol=1e-5)
    # the sampling loop's compile (compile_lowered) gets them too, and they are part of its cache key; the
    # host callback (a no-op here) makes it a program compile_lowered stores itself, as the sampling loop
    def loop(x, w):
        def body(c, i):
            jax.debug.callback(lambda i: None, i)
            return jnp.tanh(_conv(c, w)), None
        return jax.lax.scan(body, x, jnp.arange(2))[0]
    lowered = jax.jit(loop).lower(x, w)
    compiled, loaded = cc.compile_lowered(lowered, cache_dir=str(tmp_path))
    assert not loaded and "__ynn_fusion" not in compiled.as_text()
    assert cc._program_key(lowered, opts) != cc._program_key(lowered, None)


def test_a_bad_cpu_conv_setting_is_one_error_line_before_anything_runs(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(co.ENV, "fast")
    monkeypatch.setenv("VSTAR_JAX_CACHE_DIR", "off")
    rc = cli.main(["generate", "--prompt", "a red ball", "--out", str(tmp_path / "v.mp4")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["error: VSTAR_JAX_CPU_CONV='fast': use one of xla, ynnpack"]
    assert not list(tmp_path.iterdir())
    with pytest.raises(VstarError):
        co.check_environment({co.ENV: "fast"})


def test_a_jaxlib_that_refuses_the_option_or_moved_compiles_without_it_and_says_so(monkeypatch, capsys):
    import vstar_jax.jax_private as jp_mod

    co.options_for.cache_clear()
    jp_mod._REPORTED.clear()
    try:
        # a jaxlib whose enum lacks the kind names: the probe compile is refused
        monkeypatch.setattr(co, "cpu_options", lambda kinds, environ=None: {co.FLAG: "LIBRARY_FUSION_TYPE_NO_SUCH"})
        assert co.options_for("cpu") is None
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("warning: XLA:CPU convolutions stay on one thread (this jaxlib "
                                                   "refuses the compile option)"), err
        x, w = _conv_args()
        np.testing.assert_allclose(np.asarray(co.jit(_conv)(x, w)), np.asarray(jax.jit(_conv)(x, w)))
        # options this reader cannot parse (a field longer than its message): no options, one line
        co.options_for.cache_clear()
        monkeypatch.undo()
        truncated = types.SimpleNamespace(default_compile_options=lambda: b"\x1a\x05\x1a\x03\xb2\x1a\x09")
        monkeypatch.setattr(co, "private_jax", lambda: truncated)
        assert co.options_for("cpu") is None
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("warning: XLA:CPU convolutions stay on one thread: protobuf "
                                                   "field 422 runs past"), err
    finally:
        monkeypatch.undo()
        co.options_for.cache_clear()


# the one place that calls jax.jit, and the module that only exports (lowers for TPU/CUDA, never compiles here)
JIT_OWNERS = {"vstar_jax/compile_options.py", "vstar_jax/lowering.py"}


def direct_jits(root: str = ROOT) -> list:
    """``path:line`` of each ``jax.jit`` / ``from jax import jit`` in the project's code outside JIT_OWNERS."""
    import ast
    import pathlib

    out = []
    for folder in ("vstar_jax", "checkpoints_convert", "configs", "launch"):
        for path in sorted(pathlib.Path(root, folder).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel in JIT_OWNERS:
                continue
            for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (isinstance(n, ast.Attribute) and n.attr == "jit" and isinstance(n.value, ast.Name)
                        and n.value.id == "jax") or (isinstance(n, ast.ImportFrom) and n.module == "jax"
                                                     and any(a.name == "jit" for a in n.names)):
                    out.append(f"{rel}:{n.lineno}")
    return out


def test_every_program_compiles_through_compile_options(tmp_path):
    # so no CPU program is left with one-thread convolutions, and a sidecar's xla_options say what ran
    assert direct_jits() == []
    (tmp_path / "vstar_jax").mkdir()
    (tmp_path / "vstar_jax" / "bad.py").write_text("import jax\nf = jax.jit(lambda x: x)\n")
    (tmp_path / "launch").mkdir()
    (tmp_path / "launch" / "worse.py").write_text("from jax import jit\n")
    assert direct_jits(str(tmp_path)) == ["vstar_jax/bad.py:2", "launch/worse.py:1"]
