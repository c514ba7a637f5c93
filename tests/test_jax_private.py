"""JAX's private internals are read in one function (``vstar_jax.jax_private.private_jax``).

Every handle is exercised on the installed JAX, so a JAX release that moves one fails here, by name,
instead of silently turning a feature off; a moved handle is one VstarError line, which callers
report as one ``warning:`` line; and no other module touches JAX's private modules or attributes.
"""
import ast
import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_compile_cache import TICKS, _loop  # a scan of 4 steps with a host callback (ticks 0..3)
from vstar_jax import compile_cache as cc
from vstar_jax.errors import VstarError
from vstar_jax.jax_private import private_jax

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_private_handle_works_on_this_jax():
    jp = private_jax()
    assert jp.distributed_client() is None  # before jax.distributed.initialize: there, and unset

    # a failing host callback is logged on the logger the sampling loop filters on Ctrl-C
    records = []
    grab = logging.Handler()
    grab.emit = records.append
    jp.debugging_logger.addHandler(grab)
    TICKS[:] = ["raise"]
    try:
        with pytest.raises(Exception):
            jax.block_until_ready(jax.jit(_loop)(jnp.ones((4, 4))))
    finally:
        jp.debugging_logger.removeHandler(grab)
        TICKS.clear()
    assert any("callback" in r.getMessage() for r in records)

    # a program with a host callback: stored without it, loaded with a lowering's callback
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 4)), jnp.float32)
    first = jax.jit(_loop).lower(x)
    callbacks = jp.host_callbacks(first)
    assert len(callbacks) == 1 and jp.backend(first).platform == "cpu"
    compiled = first.compile()
    data = jp.serialize_with_callbacks(compiled, callbacks)
    again = jax.jit(_loop).lower(x)
    loaded = jp.load_with_callbacks(data, again, jp.host_callbacks(again))
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(compiled(x)))
    assert TICKS == [0, 1, 2, 3] * 2
    TICKS.clear()

    # one trace exported for several platforms
    exported = jp.export_per_platform(jax.jit(jnp.sin).trace(x), ("cpu", "tpu"))
    assert [e.platforms for e in exported] == [("cpu",), ("tpu",)]

    # the default compile options, serialised (vstar_jax.compile_options reads XLA's CPU fusion kinds there)
    opts = jp.default_compile_options()
    assert isinstance(opts, bytes) and len(opts) > 100


def test_a_moved_internal_is_one_line_naming_jax_and_what_moved(monkeypatch, tmp_path, capsys):
    from jax._src import debugging

    private_jax.cache_clear()
    monkeypatch.delattr(debugging, "logger")
    try:
        with pytest.raises(VstarError) as e:
            private_jax()
        msg = str(e.value)
        assert "\n" not in msg and f"JAX {jax.__version__} no longer has jax._src.debugging.logger" in msg
        # the compile cache says so in one line and compiles as usual
        fn, loaded = cc.compile_lowered(jax.jit(_loop).lower(jnp.ones((4, 4))), cache_dir=str(tmp_path))
        TICKS.clear()
        assert not loaded and not (tmp_path / cc.CALLBACK_SUBDIR).exists()
        err = capsys.readouterr().err.splitlines()
        assert [line for line in err if "compile cache" in line] == [
            "warning: compile cache disabled for programs with host callbacks (the sampling loop): " + msg]
    finally:
        monkeypatch.undo()
        private_jax.cache_clear()
    # a handle reading an attribute that moved says which
    with pytest.raises(VstarError, match=r"no longer has jax.stages.Lowered._lowering "):
        private_jax().host_callbacks(object())


# ------------------------------------------------------------------ nobody else touches them
SCANNED = ("vstar_jax", "launch", "checkpoints_convert", "benchmarks", "configs")
OWNER = ROOT / "vstar_jax" / "jax_private.py"
PRIVATE_MODULES = ("jax._src", "jax.lib", "jax.interpreters", "jax.experimental.serialize_executable", "jaxlib")
# underscore names of other libraries that are public API or read knowingly (not JAX's)
FOREIGN_OK = {
    "_actions": "argparse keeps no public list of a parser's arguments (cli.py)",
    "_sock": "http.client keeps no public handle to the socket (tar_vsp/synopsis.py)",
    "_replace": "namedtuple API", "_fields": "namedtuple API", "_asdict": "namedtuple API",
    "_VSTAR_SHARDING_CHILD": "an environment variable passed to dict(os.environ, ...) (benchmarks/sharding.py)",
}


def _sources():
    return [p for d in SCANNED for p in sorted((ROOT / d).rglob("*.py")) if p != OWNER]


def _own_names(trees) -> set:
    """Every name the project defines: functions, classes, parameters, assigned names and attributes."""
    names = set()
    for tree in trees:
        for n in ast.walk(tree):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(n.name)
            elif isinstance(n, ast.arg):
                names.add(n.arg)
            elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                names.add(n.id)
            elif isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store):
                names.add(n.attr)
            elif isinstance(n, ast.alias) and n.asname:
                names.add(n.asname)
    return names


def private_uses(files) -> list:
    """``path:line what`` for each import of a private JAX module, string naming one, or private attribute
    or keyword of an object the project does not define."""
    trees = {p: ast.parse(p.read_text(encoding="utf-8"), str(p)) for p in files}
    own = _own_names(trees.values()) | set(FOREIGN_OK)
    out = []
    for path, tree in trees.items():
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
        for n in ast.walk(tree):
            mods = []
            if isinstance(n, ast.Import):
                mods = [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom) and n.module and not n.level:
                mods = [n.module] + [f"{n.module}.{a.name}" for a in n.names]
            for m in mods:
                if m != "jaxlib" and any(m == p or m.startswith(p + ".") for p in PRIVATE_MODULES):
                    out.append(f"{where}:{n.lineno} imports {m}")  # (``import jaxlib`` for its version is fine)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and "jax._src" in n.value:
                out.append(f"{where}:{n.lineno} names {n.value!r}")
            private = (n.attr if isinstance(n, ast.Attribute) else n.arg if isinstance(n, ast.keyword) else None)
            if private and private.startswith("_") and not private.startswith("__") and private not in own:
                out.append(f"{where}:{n.lineno} uses {private}")
    return out


def test_only_jax_private_touches_jax_internals():
    assert private_uses(_sources()) == []


def test_the_scan_finds_each_kind_of_private_use(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import jax\nfrom jax._src import distributed\nfrom jax.experimental import serialize_executable\n"
                   "import logging\nlogging.getLogger('jax._src.debugging')\n"
                   "def f(lowered, traced):\n    return lowered._lowering, traced.lower(_private_parameters=None)\n")
    found = sorted(line.split(" ", 1)[1] for line in private_uses([bad]))
    assert found == ["imports jax._src", "imports jax._src.distributed",
                     "imports jax.experimental.serialize_executable", "names 'jax._src.debugging'",
                     "uses _lowering", "uses _private_parameters"]
