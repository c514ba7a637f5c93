"""The project's device programs lowered for TPU and GPU on a machine without them (``jax.export``).

``jax.export.export(jax.jit(f), platforms=(p,))`` traces and lowers ``f`` to StableHLO for platform
``p`` from any host: nothing is compiled and nothing runs, so it checks that a program *lowers* for
the platform (every primitive has a lowering rule there, the Pallas TPU kernel is chosen on TPU, the
shardings are expressible), and its text can be inspected; it does not check that the TPU/GPU
compiler accepts it (Mosaic compiles the kernel only on a TPU) or how fast it is.

Programs (all from abstract shapes: parameters are ``jax.eval_shape`` of the init, no weights):

* ``unet``: one jitted UNet call, CFG batch 2.
* ``sample_tar_vsp``: the whole compiled sampling loop (``generation.sampling.sample_jit``), single pass
  with TAR and a per-frame VSP context, minus the progress host callback (a host side effect; a
  ``jax.debug.callback`` needs the target platform's runtime client to lower, which this host lacks).
* ``sample_genl``: the same loop with Gen-L-Video windows (``genl``), a windowed long-video method.
* ``unet_sharded``: the UNet call laid out on a 2x2 ``AbstractMesh`` (data x frames), as the mesh
  runs do (``parallel.sharding.ActivationLayout``).

One module cannot be lowered for ``("tpu", "cuda")`` together (the Pallas call's TPU compiler params
refuse a GPU lowering), so each platform is exported on its own.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import re
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec

from vstar_jax.configs import unet_tiny
from vstar_jax.errors import VstarError
from vstar_jax.generation import sampling as S
from vstar_jax.jax_private import private_jax, warn_once
from vstar_jax.longvideo import parse_strategy
from vstar_jax.models import attention, unet3d
from vstar_jax.models.unet3d import UNet3D
from vstar_jax.parallel.sharding import LATENT_AXES, ActivationLayout, logical_to_spec
from vstar_jax.tar_vsp.tar import preset

# Custom-call targets of fused attention kernels, by platform.
# Pallas GPU (Triton) kernels lower to this target, which jax.export lets through only when told (it has
# no compatibility guarantee: the modules here are read, not kept).
TRITON_TARGET = "__gpu$xla.gpu.triton"
KERNEL_TARGETS = {"tpu": ("tpu_custom_call",), "cuda": ("__cudnn$fmha", TRITON_TARGET)}

# In a bfloat16 program every matmul/convolution takes bfloat16 operands except these layers, which
# the UNet deliberately keeps in float32 (unet3d.py: ``tdense`` = nn.Dense(dtype=float32)): the
# timestep and fps embedding MLPs, (batch, 4 x model_channels) rows -- 4 tiny matmuls per UNet call,
# kept in full precision as the sinusoidal timestep features lose their low bits in bfloat16.
# GroupNorm / LayerNorm statistics and the attention softmax are float32 too, but are reductions and
# elementwise ops, not dots; attention logits are bf16 x bf16 dots with a float32 result
# (preferred_element_type), which is the MXU's native mode and not counted as a float32 dot.
F32_DOTS_BF16 = {"time_embed_1": 1, "time_embed_2": 1, "fps_embed_1": 1, "fps_embed_2": 1}

_DOT = re.compile(r"stablehlo\.(dot_general|convolution)\b.*:\s*\((tensor<[^>]*>),\s*(tensor<[^>]*>)\)\s*->\s*"
                  r"(tensor<[^>]*>)(?:.*loc\((#loc\d+)\))?")
_LOCDEF = re.compile(r'^(#loc\d+) = loc\("([^"]*)"')
_TENSOR = re.compile(r"tensor<((?:\d+x)*)([a-z]+\d*)>")
_OP = re.compile(r"\b(stablehlo|chlo|func)\.([a-z_]+)\b")
_CUSTOM_CALL = re.compile(r"custom_call\s*@([\w$.]+)")
_ELEM_BYTES = {"f64": 8, "f32": 4, "bf16": 2, "f16": 2, "i64": 8, "ui64": 8, "i32": 4, "ui32": 4, "i16": 2, "ui16": 2,
               "i8": 1, "ui8": 1, "i1": 1}


def _elem(t: str) -> str:
    return t[len("tensor<"):-1].split("x")[-1]


@dataclasses.dataclass
class Lowered:
    """One exported program and what its text says."""

    program: str
    platform: str
    dtype: str
    text: str
    exported: Any

    def kernel_calls(self) -> int:
        return sum(self.text.count(t) for t in KERNEL_TARGETS.get(self.platform, ()))

    def dots(self) -> collections.Counter:
        """(op, lhs dtype, rhs dtype, result dtype) -> count of dot_general / convolution ops."""
        c = collections.Counter()
        for m in _DOT.finditer(self.text):
            c[(m.group(1), _elem(m.group(2)), _elem(m.group(3)), _elem(m.group(4)))] += 1
        return c

    def f32_dots(self) -> collections.Counter:
        """Layer name -> count of dot_general / convolution ops with a float32 operand (by the op's
        source location: the path component before the op name, e.g. ``time_embed_1``)."""
        locs = {}
        for line in self.text.splitlines():
            m = _LOCDEF.match(line)
            if m:
                locs[m.group(1)] = m.group(2)
        c = collections.Counter()
        for m in _DOT.finditer(self.text):
            if "f32" in (_elem(m.group(2)), _elem(m.group(3))):
                path = locs.get(m.group(5) or "", "?").split("/")
                c[path[-2] if len(path) >= 2 else path[-1]] += 1
        return c

    def custom_calls(self) -> collections.Counter:
        """Custom-call target -> count (fused kernels: ``tpu_custom_call``, ``__cudnn$fmha...``,
        ``__gpu$xla.gpu.triton``)."""
        return collections.Counter(_CUSTOM_CALL.findall(self.text))

    def ops(self) -> collections.Counter:
        """StableHLO / CHLO op name -> count in the module text (``while``, ``dot_general``, ...)."""
        return collections.Counter(name for dialect, name in _OP.findall(self.text) if dialect != "func")

    def largest_tensor(self) -> tuple:
        """(shape, element type, bytes) of the largest tensor type the module names anywhere (an argument,
        a result or an intermediate): the most one value of the program holds. The target's compiler may
        fuse it away, so this bounds what the program asks for, not what XLA:GPU allocates."""
        best = ((), "", 0)
        for dims, elem in _TENSOR.findall(self.text):
            shape = tuple(int(d) for d in dims.split("x") if d)
            size = int(np.prod(shape, dtype=np.int64)) * _ELEM_BYTES.get(elem, 4)
            if size > best[2]:
                best = (shape, elem, size)
        return best

    def names_tensor(self, *trailing: int) -> bool:
        """Whether some tensor type ends in dims ``trailing`` (e.g. (Lq, Lk): whole logit rows)."""
        tail = "x".join(str(d) for d in trailing) + "x"
        return any(dims.endswith(tail) and (len(dims) == len(tail) or dims[-len(tail) - 1] == "x")
                   for dims, _ in _TENSOR.findall(self.text))

    def sizes(self) -> dict:
        nbytes = lambda avals: int(sum(np.prod(a.shape) * a.dtype.itemsize for a in avals  # noqa: E731
                                       if hasattr(a.dtype, "itemsize")))
        return {"argument_bytes": nbytes(self.exported.in_avals), "output_bytes": nbytes(self.exported.out_avals),
                "devices": int(self.exported.nr_devices)}


def export(program: str, fn: Callable, args: tuple, platform: str, dtype: str, *, custom_calls=(), **kw) -> Lowered:
    """``fn`` exported for ``platform``; ``custom_calls``: targets without JAX's compatibility guarantee
    to let through (e.g. Pallas GPU's ``__gpu$xla.gpu.triton``; a module to read, not to keep)."""
    checks = [jax.export.DisabledSafetyCheck.custom_call(t) for t in custom_calls]
    exp = jax.export.export(fn, platforms=(platform,), disabled_checks=checks)(*args, **kw)
    return Lowered(program, platform, dtype, exp.mlir_module(), exp)


# ----------------------------------------------------------------------------- the programs
def unet_model(dtype: str = "float32", backend: str = "auto", config=None):
    """The UNet3D of ``config`` (default: configs/unet_tiny) in ``dtype`` with attention ``backend``."""
    cfg = ml_collections.ConfigDict(config if config is not None else unet_tiny.get_config())
    cfg.attention_backend = backend
    cfg.dtype = dtype
    return UNet3D(ml_collections.FrozenConfigDict(cfg)), cfg


def abstract_params(unet, cfg, frames: int, h: int, w: int, sharding=None):
    """The parameters' shapes (``eval_shape`` of the init; they depend on the config only)."""
    shapes_cfg = ml_collections.ConfigDict(cfg)
    shapes_cfg.dtype, shapes_cfg.attention_backend = "float32", "xla"  # neither changes a parameter
    params = _param_shapes(ml_collections.FrozenConfigDict(shapes_cfg))
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), params)


@functools.lru_cache(maxsize=8)
def _param_shapes(cfg):
    x = jnp.zeros((1, cfg.in_channels, 4, 8, 8))
    return jax.eval_shape(lambda: UNet3D(cfg).init(jax.random.key(0), x, jnp.zeros((1,), jnp.int32),
                                                   jnp.zeros((1, 77, cfg.context_dim))))["params"]


def param_bytes(params) -> int:
    return int(sum(np.prod(a.shape) * a.dtype.itemsize for a in jax.tree_util.tree_leaves(params)))


def unet_program(dtype: str, frames: int = 4, h: int = 16, w: int = 16, config=None):
    """(jitted fn, abstract args, params) of one CFG-batched UNet call."""
    unet, cfg = unet_model(dtype, config=config)
    params = abstract_params(unet, cfg, frames, h, w)
    x = jax.ShapeDtypeStruct((2, cfg.in_channels, frames, h, w), jnp.float32)
    t = jax.ShapeDtypeStruct((2,), jnp.int32)
    ctx = jax.ShapeDtypeStruct((2, 77, cfg.context_dim), jnp.float32)
    fn = jax.jit(lambda p, x, t, c: unet.apply({"params": p}, x, t, c, fps=16))
    return fn, (params, x, t, ctx), params


def sharded_unet_program(dtype: str, mesh_shape=(2, 2), frames: int = 4, h: int = 16, w: int = 16, config=None):
    """The UNet call with its activations laid out on an abstract (data, frames) mesh, parameters
    replicated, latents split as the mesh runs split them."""
    mesh = AbstractMesh(tuple(mesh_shape), ("data", "frames"))
    unet, cfg = unet_model(dtype, config=config)
    layout = ActivationLayout(mesh)
    xs = NamedSharding(mesh, logical_to_spec(LATENT_AXES, mesh=mesh))
    rep = NamedSharding(mesh, PartitionSpec())
    params = abstract_params(unet, cfg, frames, h, w, sharding=rep)
    x = jax.ShapeDtypeStruct((2, cfg.in_channels, frames, h, w), jnp.float32, sharding=xs)
    t = jax.ShapeDtypeStruct((2,), jnp.int32, sharding=rep)
    ctx = jax.ShapeDtypeStruct((2, 77, cfg.context_dim), jnp.float32, sharding=rep)
    fn = jax.jit(lambda p, x, t, c: unet.apply({"params": p}, x, t, c, fps=16, layout=layout), out_shardings=xs)
    return fn, (params, x, t, ctx), params


def sampler_program(dtype: str, strategy: Optional[str] = None, frames: int = 4, h: int = 16, w: int = 16,
                    steps: int = 2, tar: Optional[str] = "64D1_32D8", vsp: bool = True, config=None):
    """(fn, args, params) of the compiled sampling loop: ``strategy`` None = single pass; TAR preset
    ``tar``; ``vsp``: one text context per frame (what a synopsis gives the loop)."""
    unet, cfg = unet_model(dtype, config=config)
    strat = parse_strategy(strategy)
    unet_frames = strat.check(frames, steps).unet_frames
    params = abstract_params(unet, cfg, unet_frames, h, w)
    plan = S.SamplePlan("videocrafter2", steps, 1.0, (("use_scale", True),), (1, cfg.in_channels, frames, h, w),
                        preset(tar) if tar else None, False, strategy=strat)
    cond = jax.ShapeDtypeStruct((frames if vsp else 1, 77, cfg.context_dim), jnp.float32)
    uncond = jax.ShapeDtypeStruct((1, 77, cfg.context_dim), jnp.float32)
    args = (params, cond, uncond, jax.random.key(0), jnp.float32(16), jnp.float32(12))

    # sample_jit's body, jitted afresh (sample_jit's own trace cache may hold the progress callback)
    fn = jax.jit(lambda *a: S._sample(unet, *a, plan=plan))
    return fn, args, params


@contextlib.contextmanager
def accelerator_trace(tile_elems: Optional[int] = None):
    """Trace as an accelerator host would: without the sampling loop's host progress callback (see the
    module docstring), without the CPU-only chunking of transformer blocks (``unet3d.CHUNK_ELEMS``) and
    with the accelerator's blockwise-attention tiles (``attention.TILE_ELEMS_ACCEL``; ``tile_elems`` to choose
    others), both chosen by ``jax.default_backend()`` at trace time, which is this CPU host's."""
    saved = S._progress_tick, unet3d.CHUNK_ELEMS, attention.TILE_ELEMS
    tiles = attention.TILE_ELEMS_ACCEL if tile_elems is None else int(tile_elems)
    S._progress_tick, unet3d.CHUNK_ELEMS, attention.TILE_ELEMS = None, 0, tiles
    try:
        yield
    finally:
        S._progress_tick, unet3d.CHUNK_ELEMS, attention.TILE_ELEMS = saved


PROGRAMS = ("unet", "sample_tar_vsp", "sample_genl", "unet_sharded")


def build(program: str, dtype: str):
    if program == "unet":
        return unet_program(dtype)
    if program == "sample_tar_vsp":
        return sampler_program(dtype)
    if program == "sample_genl":
        return sampler_program(dtype, strategy="genl:4:2", frames=6)
    if program == "unet_sharded":
        return sharded_unet_program(dtype)
    raise ValueError(f"unknown program {program!r}; known: {PROGRAMS}")


def lower(program: str, platforms=("tpu", "cuda"), dtype: str = "float32") -> tuple:
    """({platform: Lowered}, params) of ``program`` in ``dtype``, traced once and exported per platform."""
    fn, args, params = build(program, dtype)
    with accelerator_trace():
        return {p: e for p, e in zip(platforms, export_each(program, fn, args, platforms, dtype))}, params


def export_each(program: str, fn, args: tuple, platforms, dtype: str) -> list:
    """``jax.export.export(fn, platforms=(p,))(*args)`` for each p, sharing one trace through JAX's
    exporter internals (the trace is platform-independent: ``lax.platform_dependent`` defers the
    choice to lowering); when this JAX moved them, one public export per platform (and a warning line)."""
    try:
        checks = [jax.export.DisabledSafetyCheck.custom_call(TRITON_TARGET)]
        exported = private_jax().export_per_platform(fn.trace(*args), platforms, disabled_checks=checks)
    except VstarError as e:
        warn_once("exporting once per platform", e)
        return [export(program, fn, args, p, dtype, custom_calls=(TRITON_TARGET,)) for p in platforms]
    return [Lowered(program, p, dtype, exp.mlir_module(), exp) for p, exp in zip(platforms, exported)]
