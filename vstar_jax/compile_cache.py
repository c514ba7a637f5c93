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

from vstar_jax.io.atomic import write_bytes

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
# callbacks in the same order). Same executable, so the same results bit for bit.

CALLBACK_SUBDIR = "with_callbacks"
_FORMAT = 1


def active_cache_dir() -> Optional[str]:
    """The persistent cache folder JAX is using now (set by :func:`enable_compile_cache`), or None."""
    import jax

    if not jax.config.jax_enable_compilation_cache:
        return None
    return jax.config.jax_compilation_cache_dir or None


def _program_key(lowered) -> str:
    import hashlib

    import jax
    import jaxlib

    backend = lowered._lowering.compile_args["backend"]
    h = hashlib.sha256()
    for part in (str(_FORMAT), jax.__version__, jaxlib.__version__, backend.platform, backend.platform_version,
                 os.environ.get("XLA_FLAGS", ""), os.environ.get("LIBTPU_INIT_ARGS", ""),
                 ",".join(f"{d.id}:{d.device_kind}" for d in jax.devices()), lowered.as_text()):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _picklers(callbacks):
    from jax.experimental import serialize_executable as se

    class Pickler(se._JaxPjrtPickler):
        def persistent_id(self, obj):
            for i, cb in enumerate(callbacks):
                if obj is cb:
                    return ("vstar_callback", i)
            return super().persistent_id(obj)

    class Unpickler(se._JaxPjrtUnpickler):
        def persistent_load(self, pid):
            if pid[0] == "vstar_callback":
                return callbacks[pid[1]]
            if pid[0] == "exec":
                return self.backend.deserialize_executable(pid[1], executable_devices=self.execution_devices,
                                                           host_callbacks=list(callbacks))
            return super().persistent_load(pid)

    return Pickler, Unpickler


def compile_lowered(lowered, cache_dir: Optional[str] = None):
    """``lowered.compile()`` through the disk cache, for programs with host callbacks; returns
    ``(compiled, loaded)`` with ``loaded`` True when it came from disk.

    ``cache_dir``: default :func:`active_cache_dir` (no cache, i.e. a plain compile, when that is
    None). Programs without host callbacks are left to JAX's own cache. Any failure to read or
    write the cache falls back to compiling (an unreadable entry is replaced)."""
    import io
    import pickle

    import jax

    folder = active_cache_dir() if cache_dir is None else cache_dir
    try:
        args = lowered._lowering.compile_args
        callbacks = list(args["host_callbacks"])
        usable = folder is not None and bool(callbacks)
    except (AttributeError, KeyError, TypeError):  # a JAX without these internals: plain compile
        usable = False
    if not usable:
        return lowered.compile(), False
    Pickler, Unpickler = _picklers(callbacks)  # noqa: N806
    path = os.path.join(folder, CALLBACK_SUBDIR, _program_key(lowered) + ".bin")
    if os.path.exists(path):
        try:
            with open(path, "rb") as fh:
                head = pickle.load(fh)
                if head["callbacks"] == len(callbacks):
                    by_id = {d.id: d for d in jax.devices()}
                    devices = [by_id[i] for i in head["devices"]]
                    unloaded, args_info_flat, no_kwargs = Unpickler(fh, devices[0].client, devices).load()
                    args_info = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(lowered.args_info),
                                                             args_info_flat)
                    return jax.stages.Compiled(unloaded.load(), [], args_info, lowered.out_tree,
                                               no_kwargs=no_kwargs), True
        except Exception:  # noqa: BLE001 - a stale or unreadable entry: compile and replace it
            pass
    compiled = lowered.compile()
    if jax.process_index() != 0:  # as JAX's cache: one writer when several processes share the folder
        return compiled, False
    try:
        unloaded = compiled._executable._unloaded_executable
        args_info_flat, _ = jax.tree_util.tree_flatten(compiled.args_info)
        buf = io.BytesIO()
        pickle.dump({"callbacks": len(callbacks), "devices": [d.id for d in unloaded.device_list]}, buf)
        Pickler(buf).dump((unloaded, args_info_flat, compiled._no_kwargs))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_bytes(path, buf.getvalue())
    except Exception:  # noqa: BLE001 - not cacheable (e.g. constants in the program): just not cached
        pass
    return compiled, False
