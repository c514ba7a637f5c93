"""Sharding as data: a device mesh plus rules that map logical axes to mesh axes.

Long videos are spread over accelerators along the frame axis: every spatial layer
of the UNet is per frame, so it runs where its frames live; the temporal layers
(temporal convs, temporal attention) need neighbouring or all frames, and XLA's
SPMD partitioner inserts the collectives they need. Parameters are replicated by
default (the 1.4 B UNet is 2.8 GB in bf16), or sharded FSDP-style over a "model"
mesh axis along each kernel's largest divisible dimension.

    mesh = make_mesh({"data": 1, "frames": 4})
    x = jax.device_put(x, named(mesh, LATENT_AXES, DEFAULT_RULES))  # (b, c, f, h, w)
    params = shard_params(params, mesh)

Rules are plain tuples ``(logical_axis, mesh_axis or None)`` and can be overridden
per run (e.g. from a config) without touching model code.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence, Tuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = Tuple[Tuple[str, Optional[str]], ...]

#: Logical axes of the latent video tensor as the UNet takes it.
LATENT_AXES = ("batch", "channels", "frames", "height", "width")
#: Logical axes of text context: (b, L, C) or per frame (b, f, L, C).
CONTEXT_AXES = ("batch", "tokens", "embed")
FRAME_CONTEXT_AXES = ("batch", "frames", "tokens", "embed")

DEFAULT_RULES: Rules = (
    ("batch", "data"),
    ("frames", "frames"),
    ("channels", None),
    ("height", None),
    ("width", None),
    ("tokens", None),
    ("embed", None),
)


def make_mesh(axes: Mapping[str, int], devices: Optional[Sequence] = None) -> Mesh:
    """A mesh with named axes, e.g. ``{"data": 2, "frames": 4}``; -1 takes the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = dict(axes)
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise ValueError("at most one mesh axis may be -1")
    known = math.prod(v for v in sizes.values() if v != -1)
    if free:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not divide into mesh axes {axes}")
        sizes[free[0]] = len(devices) // known
    total = math.prod(sizes.values())
    if total > len(devices):
        raise ValueError(f"mesh {sizes} needs {total} devices, only {len(devices)} available")
    grid = np.asarray(devices[:total], dtype=object).reshape(tuple(sizes.values()))
    return Mesh(grid, tuple(sizes))


def logical_to_spec(logical: Sequence[Optional[str]], rules: Rules = DEFAULT_RULES,
                    mesh: Optional[Mesh] = None) -> PartitionSpec:
    """PartitionSpec for a tensor whose dims have these logical names.

    A rule naming a mesh axis the mesh does not have (or of size 1) leaves that dim
    replicated, so one rule set serves every mesh shape; a mesh axis is used once.
    """
    table = dict(rules)
    used, spec = set(), []
    for name in logical:
        axis = table.get(name) if name is not None else None
        if axis is not None and mesh is not None and mesh.shape.get(axis, 1) == 1:
            axis = None
        if axis in used:
            axis = None
        if axis is not None:
            used.add(axis)
        spec.append(axis)
    return PartitionSpec(*spec)


def named(mesh: Mesh, logical: Sequence[Optional[str]], rules: Rules = DEFAULT_RULES) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical, rules, mesh))


def check_divisible(shape: Sequence[int], sharding: NamedSharding, what: str = "tensor") -> None:
    """A clear error when a sharded dim does not split evenly (e.g. frames over devices)."""
    for dim, (size, axis) in enumerate(zip(shape, sharding.spec)):
        if axis is None:
            continue
        n = sharding.mesh.shape[axis]
        if size % n:
            raise ValueError(f"{what} dim {dim} has size {size}, not divisible by mesh axis {axis!r} of size {n}")


def param_sharding(shape: Sequence[int], mesh: Mesh, axis: str = "model") -> NamedSharding:
    """FSDP-style: shard the largest dim divisible by the mesh axis; replicate small or odd leaves."""
    n = mesh.shape.get(axis, 1)
    spec = [None] * len(shape)
    if n > 1 and len(shape) >= 2:
        for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
            if shape[dim] % n == 0:
                spec[dim] = axis
                break
    return NamedSharding(mesh, PartitionSpec(*spec))


def _host(x):
    """A mesh spanning several processes takes host data (the same on every process), not another
    device's array."""
    return np.asarray(x) if jax.process_count() > 1 else x


def shard_params(params, mesh: Mesh, axis: str = "model"):
    """Place a params tree on the mesh (replicated unless the mesh has ``axis`` > 1)."""
    return jax.tree_util.tree_map(lambda x: jax.device_put(_host(x), param_sharding(np.shape(x), mesh, axis)),
                                  params)


def replicate(x, mesh: Mesh):
    """``x`` replicated on every device of the mesh (PRNG keys included)."""
    sharding = NamedSharding(mesh, PartitionSpec())
    if jax.process_count() > 1 and jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
        return jax.random.wrap_key_data(jax.device_put(np.asarray(jax.random.key_data(x)), sharding),
                                        impl=jax.random.key_impl(x))
    return jax.device_put(_host(x), sharding)


def params_sharding_rule(mesh: Mesh, axis: str = "model"):
    """``(path, shape) -> Sharding`` for ``vstar_jax.io.checkpoint.load_checkpoint``: restore
    each array straight into its place on the mesh."""
    return lambda path, shape: param_sharding(shape, mesh, axis)
