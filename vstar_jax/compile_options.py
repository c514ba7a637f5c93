"""The XLA options vstar-jax compiles its programs with: on CPU, convolutions on every core.

This jaxlib's XLA:CPU (0.10.2) hands every convolution to YNNPACK as an "individual convolution" fusion
and runs it on one thread. On the 2-core developer machine the UNet's 3x3 convolution took 34 ms on 2
cores against 28.5 on 1, where torch halves; without that fusion kind XLA runs the convolution itself, on
every core (14.7 ms, against 29.3). With it the small UNet call is 1.21x (16 frames) and 1.15x (64) faster
on 2 cores and as fast on 1, and the demo ``generate`` at 64 frames makes 1.12-1.17x more videos a minute
(``benchmarks/RESULTS.md``, issue 30).

``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`` says the same, but an XLA
that does not know an ``XLA_FLAGS`` entry aborts the process at start, and the flag is experimental. A
per-compile option is refused with a catchable error instead. So :func:`options_for` gives CPU programs
``xla_cpu_experimental_ynn_fusion_type`` = this jaxlib's own default fusion kinds (read from a default
``CompileOptions``, which ``XLA_FLAGS`` also sets) less individual convolutions, and nothing else:

* GPU and TPU programs get no options;
* nothing when ``XLA_FLAGS`` names ``xla_cpu_experimental_ynn_fusion_type`` (the user's choice stands), when
  jaxlib's default holds no convolution fusion, or names a kind this module does not know;
* ``VSTAR_JAX_CPU_CONV=ynnpack`` keeps jaxlib's default (``xla``, the default, is the above);
* the first use compiles a one-convolution program with the options: a jaxlib that refuses them gets
  none, and one ``warning:`` line says so.

The options change how a CPU convolution rounds (the UNet call is 1.4e-6 from torch, relative, with them
and 1.6e-6 without). Every program of one run gets the same options, so a run is still bit-reproducible.

:func:`jit` is ``jax.jit`` with these options, decided at the first call (when JAX's backend is up);
:func:`vstar_jax.compile_cache.compile_lowered` passes them to the programs it compiles.
"""
from __future__ import annotations

import functools
import os
from typing import Mapping, Optional

from vstar_jax.errors import VstarError
from vstar_jax.jax_private import private_jax, warn_once

ENV = "VSTAR_JAX_CPU_CONV"
CHOICES = ("xla", "ynnpack")
FLAG = "xla_cpu_experimental_ynn_fusion_type"
# xla.DebugOptions.LibraryFusionType (xla/xla.proto); 0 is LIBRARY_FUSION_TYPE_INVALID.
KINDS = {1: "LIBRARY_FUSION_TYPE_DOT", 2: "LIBRARY_FUSION_TYPE_ELTWISE", 3: "LIBRARY_FUSION_TYPE_REDUCE",
         4: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT", 5: "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"}
CONVOLUTION = 5
# Field numbers: CompileOptionsProto.executable_build_options = 3, ExecutableBuildOptionsProto.debug_options
# = 3, DebugOptions.xla_cpu_experimental_ynn_fusion_type = 422 (xla/pjrt/proto/compile_options.proto,
# xla/xla.proto). Protobuf field numbers do not change between releases.
_PATH = (3, 3)
_FIELD = 422


def _varint(buf: bytes, i: int):
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def _fields(buf: bytes):
    """(field number, wire type, value) of one protobuf message, in order."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"protobuf wire type {wire} (field {number})")
        if i > len(buf):
            raise ValueError(f"protobuf field {number} runs past the end of its message")
        yield number, wire, value


def ynn_fusion_kinds(compile_options: bytes) -> tuple:
    """The ``xla_cpu_experimental_ynn_fusion_type`` values in a serialised ``CompileOptionsProto``."""
    messages = [compile_options]
    for number in _PATH:
        messages = [v for m in messages for f, w, v in _fields(m) if f == number and w == 2]
    kinds = []
    for message in messages:
        for number, wire, value in _fields(message):
            if number != _FIELD:
                continue
            if wire == 0:
                kinds.append(value)
            else:  # packed
                i = 0
                while i < len(value):
                    v, i = _varint(value, i)
                    kinds.append(v)
    return tuple(kinds)


def cpu_options(default_kinds, environ: Optional[Mapping[str, str]] = None) -> Optional[dict]:
    """The options for a CPU program, given jaxlib's default fusion kinds; None for none (see the module
    docstring for when). An unknown ``VSTAR_JAX_CPU_CONV`` raises ValueError."""
    environ = os.environ if environ is None else environ
    choice = environ.get(ENV, "").strip().lower() or "xla"
    if choice not in CHOICES:
        raise ValueError(f"{ENV}={environ.get(ENV)!r}: use one of {', '.join(CHOICES)}")
    if choice == "ynnpack" or FLAG in environ.get("XLA_FLAGS", ""):
        return None
    kinds = list(dict.fromkeys(default_kinds))
    if CONVOLUTION not in kinds or any(k not in KINDS for k in kinds):
        return None
    return {FLAG: ",".join(KINDS[k] for k in kinds if k != CONVOLUTION)}


def check_environment(environ: Optional[Mapping[str, str]] = None) -> None:
    """Raise VstarError for a ``VSTAR_JAX_CPU_CONV`` that is not one of :data:`CHOICES` (the CLI calls it
    at start, before any compute)."""
    try:
        cpu_options((), environ)
    except ValueError as e:
        raise VstarError(str(e)) from None


@functools.lru_cache(maxsize=None)
def options_for(platform: str) -> Optional[dict]:
    """The compile options for a program on ``platform`` (``jax.default_backend()`` names), or None."""
    if platform != "cpu":
        return None
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    check_environment()
    try:
        opts = cpu_options(ynn_fusion_kinds(private_jax().default_compile_options()))
    except (VstarError, ValueError, IndexError) as e:  # JAX moved, or options this reader cannot parse
        warn_once("XLA:CPU convolutions stay on one thread", e)
        return None
    if opts is None:
        return None
    try:  # one convolution: a jaxlib that does not take the option says so here, not in the user's program
        x = jnp.zeros((1, 4, 4, 1), jnp.float32)
        conv = functools.partial(jax.lax.conv_general_dilated, window_strides=(1, 1), padding="SAME",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
        jax.jit(conv).lower(x, jnp.zeros((3, 3, 1, 1), jnp.float32)).compile(compiler_options=opts)
    except Exception as e:  # noqa: BLE001 - any refusal: compile without the option, and say so once
        warn_once("XLA:CPU convolutions stay on one thread (this jaxlib refuses the compile option)",
                  f"{type(e).__name__}: {e}")
        return None
    return opts


def rerun_hint(recorded) -> str:
    """For a video that did not regenerate bit for bit: "" when its sidecar's ``xla_options`` (``recorded``;
    None in sidecars from before them) are what this process compiles with, else what to set."""
    import jax  # noqa: PLC0415

    now = options_for(jax.default_backend())
    if recorded == now:
        return ""
    return (f"; this process compiles with XLA options {now}, the recorded run with {recorded}: rerun with "
            f"{ENV}={'ynnpack' if recorded is None else 'xla'}")


class _Jit:
    """``jax.jit(fun, **kwargs)`` with :func:`options_for` the default backend, built at the first use."""

    def __init__(self, fun, kwargs):
        self._fun, self._kwargs, self._jitted = fun, kwargs, None
        functools.update_wrapper(self, fun)

    def _get(self):
        if self._jitted is None:
            import jax  # noqa: PLC0415

            self._jitted = jax.jit(self._fun, compiler_options=options_for(jax.default_backend()), **self._kwargs)
        return self._jitted

    def __call__(self, *args, **kwargs):
        return self._get()(*args, **kwargs)

    def lower(self, *args, **kwargs):
        return self._get().lower(*args, **kwargs)


def jit(fun=None, **kwargs):
    """``jax.jit`` for vstar-jax's own programs: the same, compiled with :func:`options_for` its backend.
    Use as ``jit(f, static_argnames=...)`` or as a decorator (``@jit`` / ``@jit(static_argnames=...)``)."""
    if fun is None:
        return lambda f: _Jit(f, kwargs)
    return _Jit(fun, kwargs)
