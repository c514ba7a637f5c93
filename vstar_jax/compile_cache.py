"""Compile once: JAX's persistent compilation cache, on by default.

A ``vstar-jax generate`` process compiles the UNet/sampler/VAE programs for its shapes; with the
cache on, a second process with the same shapes (and the same jax/XLA version and flags) loads the
compiled executables from disk instead of compiling again.

Where: ``$VSTAR_JAX_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/vstar-jax/jax_cache`` (default
``~/.cache/vstar-jax/jax_cache``). ``VSTAR_JAX_CACHE_DIR=off`` (or ``0``, ``none``, ``false``, or set
to the empty string) turns it off. Call :func:`enable_compile_cache` once, before the first
``jax.jit`` call compiles anything (the CLI does it at start).
"""
from __future__ import annotations

import os
from typing import Optional

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
