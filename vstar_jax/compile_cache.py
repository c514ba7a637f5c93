"""Compile once: JAX's persistent compilation cache, on by default.

A ``vstar-jax generate`` process compiles the UNet/sampler/VAE programs for its shapes; with the
cache on, a second process with the same shapes (and the same jax/XLA version and flags) loads the
compiled executables from disk instead of compiling again.

The sampling loop holds a host callback (the progress tick, which is also how Ctrl-C stops it), and
JAX's cache does not store such programs; :func:`compile_lowered` keeps them in the ``with_callbacks``
subfolder and reloads them with the new process's callbacks (see below). Entries are executables:
like JAX's own cache, only point the cache at a folder you trust.

Where: ``$VSTAR_JAX_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/vstar-jax/jax_cache`` (default
``~/.cache/vstar-jax/jax_cache``). ``VSTAR_JAX_CACHE_DIR=off`` (or ``0``, ``none``, ``false``, or set
to the empty string) turns it off. Call :func:`enable_compile_cache` once, before the first
``jax.jit`` call compiles anything (the CLI does it at start).
"""
from __future__ import annotations

import os
from typing import Optional

from vstar_jax.compile_options import options_for
from vstar_jax.errors import VstarError
from vstar_jax.io.atomic import write_bytes
from vstar_jax.jax_private import private_jax, warn_once

ENV = "VSTAR_JAX_CACHE_DIR"
OFF = ("", "off", "0", "none", "false", "no")


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vstar-jax", "jax_cache")


def cache_dir_from_env(environ=None) -> Optional[str]:
    """The cache folder the environment asks for, or None when it turns the cache off."""
    environ = os.environ if environ is None else environ
    if ENV not in environ:
        return default_cache_dir()
    value = environ[ENV].strip()
    if value.lower() in OFF:
        return None
    return os.path.expanduser(value)


def enable_compile_cache(path: Optional[str] = None, *, min_compile_time_s: float = 1.0) -> Optional[str]:
    """Turn on JAX's persistent compilation cache; returns the folder used, or None when off.

    ``path`` overrides the environment (``"off"`` / ``""`` turn it off). Programs that compile in
    under ``min_compile_time_s`` are not written (they are cheaper to recompile than to load).
    A folder that cannot be created leaves the cache off rather than failing the run."""
    import jax

    folder = cache_dir_from_env() if path is None else (None if path.strip().lower() in OFF else path)
    if folder is None:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


# ------------------------------------------------------------------ programs with host callbacks
# JAX's persistent cache does not store an executable that contains host callbacks (the sampling
# loop's progress tick, which is also how Ctrl-C stops it): its read path deserialises without
# callbacks, so it refuses to write them. The executable itself only refers to its callbacks by
# index; this cache stores it with the callbacks left out and, in a later process, loads it with the
# callbacks of that process's own lowering of the same program (same StableHLO, so the same
# callbacks in the same order). Same executable, so the same results bit for bit. Neither JAX's
# persistent cache nor jax.experimental.serialize_executable (which cannot re-attach callbacks) does
# this; it needs JAX internals, read in vstar_jax.jax_private. Measured on the 2-core CPU (a scanned
# 12-conv program): JAX's cache, callback-free: compile 1.10 s, next process loads in 0.01 s; the same
# program with a callback: JAX's cache recompiles it (0.98 s, then 0.71 s); this cache: 0.60 s, then
# 0.02 s.

CALLBACK_SUBDIR = "with_callbacks"
_FORMAT = 1


def active_cache_dir() -> Optional[str]:
    """The persistent cache folder JAX is using now (set by :func:`enable_compile_cache`), or None."""
    import jax

    if not jax.config.jax_enable_compilation_cache:
        return None
    return jax.config.jax_compilation_cache_dir or None


def _program_key(lowered, options=None) -> str:
    import hashlib

    import jax
    import jaxlib

    backend = private_jax().backend(lowered)
    h = hashlib.sha256()
    for part in (str(_FORMAT), jax.__version__, jaxlib.__version__, backend.platform, backend.platform_version,
                 os.environ.get("XLA_FLAGS", ""), os.environ.get("LIBTPU_INIT_ARGS", ""),
                 ",".join(f"{d.id}:{d.device_kind}" for d in jax.devices()), repr(sorted((options or {}).items())),
                 lowered.as_text()):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def compile_lowered(lowered, cache_dir: Optional[str] = None):
    """``lowered.compile()`` through the disk cache, for programs with host callbacks; returns
    ``(compiled, loaded)`` with ``loaded`` True when it came from disk.

    ``cache_dir``: default :func:`active_cache_dir` (no cache, i.e. a plain compile, when that is
    None). Programs without host callbacks are left to JAX's own cache. A failure to read or write
    the cache falls back to compiling (an unreadable entry is replaced) and says so in one
    ``warning:`` line on stderr; so does a JAX whose internals moved (the cache is then off).

    Every program compiles with :func:`vstar_jax.compile_options.options_for` its platform (on CPU:
    convolutions on every core), which is part of the stored program's key."""
    import jax

    options = options_for(jax.default_backend())

    def compile_():
        return lowered.compile(compiler_options=options)

    folder = active_cache_dir() if cache_dir is None else cache_dir
    if folder is None:
        return compile_(), False
    try:
        jp = private_jax()
        callbacks = jp.host_callbacks(lowered)
        path = os.path.join(folder, CALLBACK_SUBDIR, _program_key(lowered, options) + ".bin") if callbacks else None
    except VstarError as e:
        warn_once("compile cache disabled for programs with host callbacks (the sampling loop)", e)
        return compile_(), False
    if path is None:
        return compile_(), False
    if os.path.exists(path):
        try:
            with open(path, "rb") as fh:
                return jp.load_with_callbacks(fh.read(), lowered, callbacks), True
        except Exception as e:  # noqa: BLE001 - any unreadable entry: compile and replace it, and say so
            warn_once(f"compile cache entry {path} unreadable, compiling again", f"{type(e).__name__}: {e}")
    compiled = compile_()
    if jax.process_index() != 0:  # as JAX's cache: one writer when several processes share the folder
        return compiled, False
    try:
        data = jp.serialize_with_callbacks(compiled, callbacks)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_bytes(path, data)
    except Exception as e:  # noqa: BLE001 - not storable (or not writable): this run is unaffected; say so
        warn_once("compile cache: this program is not stored", f"{type(e).__name__}: {e}")
    return compiled, False
