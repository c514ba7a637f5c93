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
import dataclasses
from typing import Mapping, Optional, Sequence, Tuple, Union

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = Tuple[Tuple[str, Union[None, str, Tuple[str, ...]]], ...]

#: Logical axes of the latent video tensor as the UNet takes it.
LATENT_AXES = ("batch", "channels", "frames", "height", "width")
#: Logical axes of text context: (b, L, C) or per frame (b, f, L, C).
CONTEXT_AXES = ("batch", "tokens", "embed")
FRAME_CONTEXT_AXES = ("batch", "frames", "tokens", "embed")

DEFAULT_RULES: Rules = (
    ("batch", "data"),
    ("frames", "frames"),
    # the windows of one long-video step that do not depend on each other (Gen-L, blend, FIFO) run as one
    # batched UNet call of D windows, D = the size of this axis (window_group)
    ("windows", "data"),
    # inside the UNet (ActivationLayout): spatial layers see (b*f, h, w, c) rows, split over both;
    # temporal layers see (b, f, h*w, c) with every frame local and the pixels split instead
    ("rows", ("data", "frames")),
    ("pixels", "frames"),
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
        want = table.get(name) if name is not None else None
        axes = (want,) if isinstance(want, str) else tuple(want or ())
        keep = tuple(a for a in axes if a not in used and (mesh is None or mesh.shape.get(a, 1) > 1))
        used.update(keep)
        spec.append(None if not keep else keep[0] if len(keep) == 1 else keep)
    return PartitionSpec(*spec)


def named(mesh: Mesh, logical: Sequence[Optional[str]], rules: Rules = DEFAULT_RULES) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical, rules, mesh))


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
    device's array; an array already spread over the processes (restored onto a mesh) moves as it is."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return x
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


def window_group(mesh: Optional[Mesh], rules: Optional[Rules] = None) -> int:
    """D: how many independent windows of a long-video step one UNet call takes, the size of the mesh
    axes the ``windows`` rule names (1 without a mesh, or when the rule names none of its axes)."""
    if mesh is None:
        return 1
    want = dict(rules or DEFAULT_RULES).get("windows")
    axes = (want,) if isinstance(want, str) else tuple(want or ())
    return math.prod(mesh.shape.get(a, 1) for a in axes)


def axis_size(mesh: Mesh, axis) -> int:
    """Devices along a mesh axis or a tuple of axes (a rule's value)."""
    return math.prod(mesh.shape[a] for a in ((axis,) if isinstance(axis, str) else axis))


@dataclasses.dataclass(frozen=True)
class ActivationLayout:
    """How the UNet's activations lie on a mesh, by logical axis name (hashable: a static argument).

    The UNet calls :meth:`constrain` at each change of layout: spatial layers on
    ``("rows", "height", "width", "channels")`` (the (b*f) rows split over data x frames), temporal
    layers on ``("batch", None, "pixels", "channels")`` (all frames local, pixels split over the frames
    axis), so the switch between them is an all-to-all. A dim that its mesh axes do not divide is left
    to XLA (a tiny level's 2x2 pixels on 8 devices); so is a whole tensor on a mesh of one device."""

    mesh: Mesh
    rules: Rules = DEFAULT_RULES

    def spec(self, shape: Sequence[int], logical: Sequence[Optional[str]]) -> PartitionSpec:
        spec = logical_to_spec(logical, self.rules, self.mesh)
        return PartitionSpec(*(a if a is None or size % axis_size(self.mesh, a) == 0 else None
                               for size, a in zip(shape, spec)))

    def constrain(self, x, logical: Sequence[Optional[str]]):
        spec = self.spec(x.shape, logical)
        if all(a is None for a in spec):
            return x
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))

    def switch(self, x, to_pixels: bool):
        """(b, f, 1, p, c) between the frames split (spatial rows) and the pixels split (temporal), as
        one explicit all-to-all over the ``pixels`` rule's mesh axis (XLA's own resharding of this
        pattern all-gathers the frames). Falls back to a constraint when p does not divide."""
        frames_spec = self.spec(x.shape, ("batch", "frames", None, None, "channels"))
        pixels_spec = self.spec(x.shape, ("batch", None, None, "pixels", "channels"))
        axis = pixels_spec[3]
        if axis is None or frames_spec[1] != axis:
            return self.constrain(x, ("batch", None, None, "pixels", "channels") if to_pixels
                                  else ("batch", "frames", None, None, "channels"))
        split, concat = (3, 1) if to_pixels else (1, 3)
        fn = jax.shard_map(lambda v: jax.lax.all_to_all(v, axis, split, concat, tiled=True), mesh=self.mesh,
                           in_specs=frames_spec if to_pixels else pixels_spec,
                           out_specs=pixels_spec if to_pixels else frames_spec, check_vma=False)
        return fn(x)


def activation_layout(mesh: Mesh, batch: int, frames: int, rules: Rules = DEFAULT_RULES,
                      activation_axes: Sequence[str] = ("data", "frames")) -> Optional[ActivationLayout]:
    """The UNet's :class:`ActivationLayout` for ``batch`` rows of ``frames`` frames on ``mesh``.

    The devices of the activation axes (data x frames) are one group of n; the (b*f) rows are split
    into n contiguous blocks, which on the (b, f) grid is gb x gf tiles (gb = the rows' share of the
    batch). The layout's mesh is the same devices re-gridded to ``(data=gb, frames=gf, <other axes>)``,
    so the temporal layout (b over gb, pixels over gf) is reached from the rows by one all-to-all inside
    each group of gf devices, whichever way the user's mesh splits them (frames=8 with 2 CFG rows:
    2 x 4). None when there is nothing to split or the rows do not divide."""
    names = [a for a in mesh.axis_names if a in activation_axes]
    n = math.prod(mesh.shape[a] for a in names) if names else 1
    if n == 1 or (batch * frames) % n:
        return None
    gb = math.gcd(batch, n)
    gf = n // gb
    if frames % gf:
        return None
    rest = [a for a in mesh.axis_names if a not in names]
    order = [mesh.axis_names.index(a) for a in names + rest]
    grid = np.transpose(mesh.devices, order).reshape((gb, gf) + tuple(mesh.shape[a] for a in rest))
    return ActivationLayout(Mesh(grid, ("data", "frames") + tuple(rest)), rules)


def put_global(x, sharding: NamedSharding):
    """Host data that every process holds alike, placed on ``sharding`` (which may span processes: each
    process gives the pieces its own devices hold). PRNG key arrays keep their key type."""
    if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
        return jax.random.wrap_key_data(put_global(np.asarray(jax.random.key_data(x)), sharding),
                                        impl=jax.random.key_impl(x))
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])
