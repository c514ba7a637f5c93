"""Every use of JAX's private internals, in one function: :func:`private_jax`.

JAX has no public handle for a few things vstar-jax needs:

* the distributed runtime client (its key-value store and barriers: the launch handshake, the sweep
  barrier): ``jax._src.distributed.global_state.client``;
* the logger JAX reports a failing ``jax.debug.callback`` on (the sampling loop stops on Ctrl-C by
  raising in its progress callback and hides that one traceback): ``jax._src.debugging.logger``;
* storing a compiled program that holds host callbacks (the sampling loop's progress tick) and
  loading it with another process's callbacks. JAX's persistent cache refuses such programs, and the
  public ``jax.experimental.serialize_executable.serialize`` / ``deserialize_and_load`` cannot re-attach
  callbacks; this uses the pickler classes behind them and the lowered/compiled objects' internals;
* exporting one trace for several platforms (``jax.export`` re-traces per platform);
* the compile options XLA starts from (``XLA_FLAGS`` included), to read its default CPU fusion kinds
  (:mod:`vstar_jax.compile_options`): ``jaxlib.xla_client.CompileOptions().SerializeAsString()``.

:func:`private_jax` resolves them all and returns them as one :class:`JaxPrivate`; when a JAX release
moves any of them it raises one :class:`~vstar_jax.errors.VstarError` line naming the JAX version and
what moved, and so do the handles when an object they read has lost an attribute. Callers say so in
one line (``warning: ...``) and fall back where they can (a plain compile, one export per platform).
``tests/test_jax_private.py`` exercises every handle on the installed JAX, and checks that no other
module of the project touches JAX's private modules or private attributes.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import io
import logging
import pickle
import sys
from typing import Any, Callable

from vstar_jax.errors import VstarError


@dataclasses.dataclass(frozen=True)
class JaxPrivate:
    """The private JAX handles vstar-jax uses (see the module docstring)."""

    distributed_client: Callable[[], Any]  # () -> the runtime client, None before jax.distributed.initialize
    debugging_logger: logging.Logger  # where JAX logs a failing jax.debug.callback
    host_callbacks: Callable[[Any], list]  # (Lowered) -> its host callbacks, in the executable's order
    backend: Callable[[Any], Any]  # (Lowered) -> the client it compiles for (platform, platform_version)
    serialize_with_callbacks: Callable[[Any, list], bytes]  # (Compiled, callbacks) -> bytes, callbacks left out
    load_with_callbacks: Callable[[bytes, Any, list], Any]  # (bytes, Lowered, callbacks) -> Compiled
    export_per_platform: Callable[..., list]  # (Traced, platforms, disabled_checks=()) -> [jax.export.Exported]
    default_compile_options: Callable[[], bytes]  # () -> a default CompileOptionsProto, serialised


@functools.lru_cache(maxsize=1)
def private_jax() -> JaxPrivate:
    """Resolve every private JAX handle vstar-jax uses; a VstarError line says which one this JAX lacks."""
    import jax  # noqa: PLC0415 - importing this module stays jax-free (parallel.distributed is stdlib-only)

    def moved(what: str, detail: object = "") -> VstarError:
        why = f" ({' '.join(str(detail).split())[:200]})" if str(detail) else ""
        return VstarError(f"JAX {jax.__version__} no longer has {what}{why}, which vstar-jax uses "
                          f"(vstar_jax/jax_private.py); install the versions in constraints-min.txt")

    def attr(obj, name: str, what: str):
        try:
            return getattr(obj, name)
        except AttributeError as e:
            raise moved(what, e) from None

    def takes(fn, names, what: str) -> None:
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError) as e:
            raise moved(what, e) from None
        missing = [n for n in names if n not in params]
        if missing:
            raise moved(what, f"no parameter {', '.join(missing)}")

    try:
        from jax._src import debugging as jax_debugging  # noqa: PLC0415
        from jax._src import distributed as jax_distributed  # noqa: PLC0415
        from jax._src.export import _export  # noqa: PLC0415
        from jax._src.interpreters import mlir  # noqa: PLC0415
        from jax.experimental import serialize_executable  # noqa: PLC0415
        from jaxlib import xla_client  # noqa: PLC0415
    except ImportError as e:
        raise moved(f"the module {getattr(e, 'name', None) or e}", e) from None

    global_state = attr(jax_distributed, "global_state", "jax._src.distributed.global_state")
    attr(global_state, "client", "jax._src.distributed.global_state.client")
    logger = attr(jax_debugging, "logger", "jax._src.debugging.logger")
    if not isinstance(logger, logging.Logger):
        raise moved("jax._src.debugging.logger", f"a {type(logger).__name__}, not a logging.Logger")
    base_pickler = attr(serialize_executable, "_JaxPjrtPickler", "jax.experimental.serialize_executable._JaxPjrtPickler")
    base_unpickler = attr(serialize_executable, "_JaxPjrtUnpickler",
                          "jax.experimental.serialize_executable._JaxPjrtUnpickler")
    export_lowered = attr(_export, "_export_lowered", "jax._src.export._export._export_lowered")
    lowering_parameters = attr(mlir, "LoweringParameters", "jax._src.interpreters.mlir.LoweringParameters")
    takes(lowering_parameters, ("for_export", "hoist_constants_as_args"), "mlir.LoweringParameters(for_export=, "
          "hoist_constants_as_args=)")
    takes(jax.stages.Traced.lower, ("lowering_platforms", "_private_parameters"),
          "jax.stages.Traced.lower(lowering_platforms=, _private_parameters=)")
    takes(jax.stages.Compiled, ("executable", "const_args", "args_info", "out_tree", "no_kwargs"),
          "jax.stages.Compiled(executable, const_args, args_info, out_tree, no_kwargs=)")

    compile_options_cls = attr(xla_client, "CompileOptions", "jaxlib.xla_client.CompileOptions")
    attr(compile_options_cls, "SerializeAsString", "jaxlib.xla_client.CompileOptions.SerializeAsString")

    def default_compile_options() -> bytes:
        return bytes(compile_options_cls().SerializeAsString())

    def distributed_client():
        return attr(global_state, "client", "jax._src.distributed.global_state.client")

    def compile_args(lowered) -> dict:
        args = attr(attr(lowered, "_lowering", "jax.stages.Lowered._lowering"), "compile_args",
                    "jax.stages.Lowered._lowering.compile_args")
        for key in ("backend", "host_callbacks"):
            if key not in args:
                raise moved(f"jax.stages.Lowered._lowering.compile_args[{key!r}]")
        return args

    def host_callbacks(lowered) -> list:
        return list(compile_args(lowered)["host_callbacks"])

    def backend(lowered):
        return compile_args(lowered)["backend"]

    # The executable refers to its callbacks by index: they are pickled as ("vstar_callback", i) and,
    # on load, replaced by the loading process's callbacks (its own lowering of the same program).
    class Pickler(base_pickler):
        def __init__(self, file, callbacks):
            super().__init__(file)
            self.callbacks = callbacks

        def persistent_id(self, obj):
            for i, cb in enumerate(self.callbacks):
                if obj is cb:
                    return ("vstar_callback", i)
            return super().persistent_id(obj)

    class Unpickler(base_unpickler):
        def __init__(self, file, client, devices, callbacks):
            super().__init__(file, client, devices)
            self.callbacks = callbacks

        def persistent_load(self, pid):
            if pid[0] == "vstar_callback":
                return self.callbacks[pid[1]]
            if pid[0] == "exec":
                client = attr(self, "backend", "_JaxPjrtUnpickler.backend")
                devices = attr(self, "execution_devices", "_JaxPjrtUnpickler.execution_devices")
                return client.deserialize_executable(pid[1], executable_devices=devices,
                                                     host_callbacks=list(self.callbacks))
            return super().persistent_load(pid)

    def serialize_with_callbacks(compiled, callbacks) -> bytes:
        executable = attr(compiled, "_executable", "jax.stages.Compiled._executable")
        unloaded = attr(executable, "_unloaded_executable", "jax.stages.Compiled._executable._unloaded_executable")
        if unloaded is None:
            raise ValueError("this program's executable cannot be serialised")
        params = attr(compiled, "_params", "jax.stages.Compiled._params")
        if attr(params, "const_args", "jax.stages.Compiled._params.const_args"):
            raise ValueError("the program holds constants passed as arguments, which a stored program would lose")
        device_ids = [d.id for d in attr(unloaded, "device_list", "the unloaded executable's device_list")]
        args_info_flat, _ = jax.tree_util.tree_flatten(compiled.args_info)
        no_kwargs = attr(compiled, "_no_kwargs", "jax.stages.Compiled._no_kwargs")
        buf = io.BytesIO()
        pickle.dump({"callbacks": len(callbacks), "devices": device_ids}, buf)
        Pickler(buf, list(callbacks)).dump((unloaded, args_info_flat, no_kwargs))
        return buf.getvalue()

    def load_with_callbacks(data: bytes, lowered, callbacks):
        fh = io.BytesIO(data)
        head = pickle.load(fh)
        if head["callbacks"] != len(callbacks):
            raise ValueError(f"stored with {head['callbacks']} host callbacks, this program has {len(callbacks)}")
        by_id = {d.id: d for d in jax.devices()}
        devices = [by_id[i] for i in head["devices"]]
        unloaded, args_info_flat, no_kwargs = Unpickler(fh, devices[0].client, devices, list(callbacks)).load()
        args_info = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(lowered.args_info), args_info_flat)
        return jax.stages.Compiled(unloaded.load(), [], args_info, lowered.out_tree, no_kwargs=no_kwargs)

    def export_per_platform(traced, platforms, disabled_checks=()) -> list:
        out = []
        for p in platforms:
            try:
                lowered = traced.lower(lowering_platforms=(p,), _private_parameters=lowering_parameters(
                    for_export=True, hoist_constants_as_args=False))
                out.append(export_lowered(lowered, traced.jaxpr, traced.fun_name, disabled_checks=tuple(disabled_checks)))
            except (AttributeError, TypeError) as e:
                raise moved("the exporter internals (jax._src.export._export._export_lowered)", e) from None
        return out

    return JaxPrivate(distributed_client=distributed_client, debugging_logger=logger, host_callbacks=host_callbacks,
                      backend=backend, serialize_with_callbacks=serialize_with_callbacks,
                      load_with_callbacks=load_with_callbacks, export_per_platform=export_per_platform,
                      default_compile_options=default_compile_options)


_REPORTED: set = set()


def warn_once(what: str, err: BaseException) -> None:
    """One ``warning: <what>: <err>`` line on stderr, once per process for each distinct message."""
    line = f"warning: {what}: {' '.join(str(err).split())}"
    if line not in _REPORTED:
        _REPORTED.add(line)
        print(line, file=sys.stderr)
