"""The sampling stage: one jitted program from the seed's key to the final latents.

PRNG (every strategy): ``key = jax.random.key(seed)``; ``k_x, k_steps = split(key)``; x_T =
``strategy.init_noise(k_x, shape)`` (``normal(k_x, shape)`` unless the method reschedules it);
step i's DDIM noise = ``normal(split(k_steps, N)[i])``; a method's extra draws fold ``k_steps``
(its ``rng_rule``, recorded in the sidecar).

The program is compiled ahead of time once per (model, plan, argument shapes) and cached in the
process's :class:`~vstar_jax.runtime.Runtime` (with the running loop's progress state), so the progress
bar counts denoising only; params are arguments, never constants. Inside the program the loop is
``Strategy.sample`` (the one sampler) around the UNet's :class:`~vstar_jax.diffusion.sampler.Denoiser`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import functools
import logging
import os
import re
import signal
import sys
import threading
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from vstar_jax.compile_cache import compile_lowered
from vstar_jax.compile_options import jit
from vstar_jax.diffusion.schedules import make_schedule
from vstar_jax.errors import VstarError
from vstar_jax.jax_private import private_jax, warn_once
from vstar_jax.longvideo import parse_strategy
from vstar_jax.longvideo.windows import PATHS
from vstar_jax.models.denoiser import DenoiserSpec, make_denoiser
from vstar_jax.parallel.sharding import DEFAULT_RULES, LATENT_AXES, activation_layout, make_mesh, named, window_group
from vstar_jax.runtime import runtime
from vstar_jax.tar_vsp.analysis import flatten_maps


def log(enabled: bool, msg: str) -> None:
    if enabled:
        print(f"[vstar-jax] {msg}", file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class SamplePlan:
    """Static (hashable) description of one compiled sampling loop."""

    flavor: str
    steps: int
    eta: float
    schedule_kwargs: tuple
    latent_shape: tuple  # (b, c, N, h, w) of the video
    tar: Any
    capture: bool
    row_sharding: Any = None  # NamedSharding of the UNet's (2b, c, F, h, w) rows on a mesh, or None
    strategy: Any = None  # vstar_jax.longvideo.Strategy (None: single pass)
    prediction: str = "eps"  # what the UNet predicts (vstar_jax.diffusion.parameterization)
    rules: Any = None  # logical-axis rules of the activations on the mesh (None: the default table)
    memory: Any = None  # StreamingT2V's StreamingMemory (then params = (unet params, its params)), or None
    clip_x0: bool = False  # guided eps with its implied x0 clipped to [-1, 1] (the demo model's option)
    windows: int = 1  # D: independent long-video windows per UNet call (device_plan; the mesh's windows axis)

    def schedule(self):
        return make_schedule(self.flavor, self.steps, self.eta, **dict(self.schedule_kwargs))

    @property
    def long_video(self):
        return None if self.strategy is None or self.strategy.name == "single" else self.strategy

    def denoiser_spec(self) -> DenoiserSpec:
        hooks = ((self.tar,) if self.tar is not None else ())
        if self.strategy is not None:
            hooks = hooks + tuple(self.strategy.attention_hooks(self.latent_shape[2]))
        return DenoiserSpec(self.prediction, hooks, self.capture, self.row_sharding, self.rules, self.clip_x0,
                            self.windows)


def plan_for(request, latent_channels: int, row_sharding=None, rules=None, memory=None, windows: int = 1) -> SamplePlan:
    """The compiled loop's plan of a validated :class:`~vstar_jax.generation.request.GenerationRequest`."""
    h, w = request.latent_hw
    return SamplePlan(request.flavor, request.steps, request.eta, request.schedule_kwargs,
                      (1, int(latent_channels), request.frames, h, w), request.tar, request.capture, row_sharding,
                      request.strategy, request.prediction, rules, memory, windows=int(windows))


def device_plan(mesh, rules, splan, strategy, *, frames: int, capture: bool = False, solver: str = "ddim",
                rescale: bool = False) -> dict:
    """How the devices split one long-video step, from the mesh and the method (printed before compute and
    recorded in the sidecar as ``device_plan``): ``windows_per_call`` D (the size of the mesh axis the
    ``windows`` rule names) independent windows stacked into one UNet call, ``window_groups`` calls per
    step of which the last holds ``padded`` masked windows; each call's 2 D CFG rows over ``row_devices``
    devices and each window's frames over ``frame_devices`` (``activation_layout``). ``serial``: why a
    method's windows run one per call (``Strategy.SERIAL``: StreamingT2V, VidRD are autoregressive over
    chunks), else "". A run that records attention maps takes one window per call too. ``path``: the loop
    that steps the windows (``longvideo.windows.PATHS``: blocks, slot sums, serial, one pass) and
    ``path_why`` why it is not the blocks loop, both from the method's own choice
    (:meth:`~vstar_jax.longvideo.Strategy.window_path`, which its loop branches on)."""
    n = math.prod(mesh.shape.get(a, 1) for a in ("data", "frames")) if mesh is not None else 1
    total = int(splan.group_windows)
    d = window_group(mesh, rules) if total and not capture else 1
    groups = splan.groups(d) if total else 0
    layout = activation_layout(mesh, 2 * d, splan.unet_frames, rules or DEFAULT_RULES) if mesh is not None else None
    gb, gf = ((layout.mesh.shape["data"], layout.mesh.shape["frames"]) if layout is not None else (1, 1))
    path = strategy.window_path(frames, d, solver=solver, rescale=rescale, capture=capture)
    return {"method": strategy.name, "devices": n, "windows_per_call": d, "window_groups": groups,
            "padded": groups * d - total if total else 0, "windows": total, "row_devices": gb, "frame_devices": gf,
            "serial": strategy.SERIAL, "capture": bool(capture), "path": path.path, "path_why": path.why}


def describe_device_plan(p: dict) -> str:
    """The plan line printed before compute (see :func:`device_plan`)."""
    if p["serial"]:
        head = f"{p['method']} runs its chunks serially, one per UNet call ({p['serial']})"
    elif p["windows"]:
        head = (f"{p['windows']} windows a step in {p['window_groups']} UNet call(s) of {p['windows_per_call']} "
                f"window(s)" + (f", the last padded with {p['padded']} masked window(s)" if p["padded"] else ""))
    else:
        head = "one UNet call a step"
    path = ""
    if p.get("path") and p["windows"] and not p["serial"]:
        path = (f"; {p['path']} path: {PATHS[p['path']]}" + (f" ({p['path_why']})" if p["path_why"] else ""))
    return (f"device plan: {head}; {p['devices']} device(s): the call's {2 * p['windows_per_call']} CFG rows over "
            f"{p['row_devices']}, each window's frames over {p['frame_devices']}{path}")


def memory_for(pipe, request):
    """The model's StreamingMemory when the request runs ``streaming`` (else None)."""
    return pipe.streaming_memory() if request.strategy.name == "streaming" else None


def plan_params(pipe, plan: SamplePlan):
    """The params argument of ``plan``'s program: the UNet's, with the streaming memory's beside them."""
    unet = pipe.params["unet"]
    return unet if plan.memory is None else (unet, plan.memory.params_of(pipe.params))


# ------------------------------------------------------------------------------- progress
class NonFiniteLatents(VstarError):
    """The sampled latents hold NaN or inf (one line naming the first step that produced them)."""


def reset_finite_check() -> None:
    """Forget the first non-finite step (call before a sampling run)."""
    runtime().progress.first_nonfinite = None


def check_finite(latents, total_steps: int, what: str = "sampling") -> None:
    """Refuse latents that are not all finite (NaN/inf would decode to black frames): one
    :class:`NonFiniteLatents` naming the first DDIM step (loop index, 0 = noisiest) whose UNet
    output was not finite, as noted by :func:`_progress_tick`. One reduction on the device."""
    if bool(jnp.isfinite(latents).all()):
        return
    first = runtime().progress.first_nonfinite
    at = (f"at DDIM step {first} of {total_steps} (0 = the first)" if first is not None
          else "after the last step")
    raise NonFiniteLatents(f"{what} went non-finite (NaN or inf) {at}; no video written: the checkpoint's "
                           f"weights or the settings overflow (check the checkpoint with vstar-jax verify, or try "
                           f"float32 weights)")


class SamplingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped the sampling loop between two UNet calls; nothing was written."""


def _progress_tick(step, finite) -> None:
    """Host callback once per UNet call: advances the bar, notes the first step whose UNet output is
    not finite, and stops the compiled loop when asked (raising here makes the running XLA program
    fail at once with a runtime error)."""
    state = runtime().progress
    if state.first_nonfinite is None:
        f = np.asarray(finite)
        if not (f.all() if f.dtype == bool else np.isfinite(f).all()):
            state.first_nonfinite = int(np.min(np.asarray(step)))
    if state.wake is not None and not state.stop:
        try:
            state.stop = bytes([signal.SIGINT]) in os.read(state.wake, 64)
        except (BlockingIOError, OSError):
            pass
    if state.stop:
        raise SamplingInterrupted("interrupted")
    if state.bar is not None:
        state.bar.update(1)


class _QuietCallbackFailure(logging.Filter):
    """Hides jax's logged traceback of the callback raised on purpose to stop sampling."""

    def filter(self, record):  # noqa: D401 - logging hook
        return not runtime().progress.stop


@contextlib.contextmanager
def interruptible():
    """SIGINT stops the compiled loop at the next UNet call.

    The main thread is blocked inside XLA while the loop runs, so a Python signal handler would
    only run after the loop ends. Instead the C-level handler writes the signal's number to a
    wakeup pipe (:func:`signal.set_wakeup_fd`) at once, and :func:`_progress_tick`, on XLA's
    callback thread, reads it and raises. Off the main thread no handler can be installed and the
    loop runs to its end as before."""
    state = runtime().progress
    state.stop = False
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001 - signal API
        state.stop = True

    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    previous = signal.signal(signal.SIGINT, handler)
    previous_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    state.wake = r
    quiet = _QuietCallbackFailure()
    try:
        jax_log = private_jax().debugging_logger  # where JAX logs the stopped callback's traceback
    except VstarError as e:
        warn_once("Ctrl-C will also print JAX's traceback of the stopped callback", e)
        jax_log = logging.getLogger(__name__)
    jax_log.addFilter(quiet)
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGINT, previous)
        state.wake = None
        os.close(r)
        os.close(w)
        jax_log.removeFilter(quiet)


def _sample(unet, params, cond, uncond, key, fps, cfg_scale, *, plan: SamplePlan):
    """The whole guided loop of ``plan.strategy`` from the seed's key (:meth:`Strategy.sample`, the one
    sampler, around the UNet's :class:`~vstar_jax.diffusion.sampler.Denoiser`); returns its SampleOutput."""
    strategy = plan.strategy or parse_strategy(None)
    k_x, k_steps = jax.random.split(key)
    x_T = strategy.init_noise(k_x, plan.latent_shape)
    schedule = plan.schedule()
    memory = {}
    if plan.memory is not None:  # what StreamingT2V's CAM and APM read (decoded frames, the anchor embedding)
        params, memory_params = params
        memory = {"cam_input": functools.partial(plan.memory.cam_input, memory_params),
                  "anchor_pair": functools.partial(plan.memory.anchor_pair, memory_params)}
    denoiser = make_denoiser(unet, params, plan.denoiser_spec(), alphas_cumprod=schedule.alphas_cumprod, fps=fps,
                             on_call=_progress_tick, **memory)
    return strategy.sample(denoiser, x_T, cond, uncond, schedule, key=k_steps, cfg_scale=cfg_scale,
                           frames=plan.latent_shape[2], capture=plan.capture)


sample_jit = jit(_sample, static_argnames=("unet", "plan"))


#: How :func:`sample_batch_jit` runs its items: ``exact`` one after another (``lax.map``; each item is the
#: single-item program, bit for bit), ``vmap`` all at once (one batched UNet call per step for all items:
#: throughput, equal to the single runs within float32 rounding; docs/devices-and-hosts.md, "Batch mode").
BATCH_MODES = ("exact", "vmap")


@jit(static_argnames=("unet", "plan", "item_sharding", "mode"))
def sample_batch_jit(unet, params, conds, unconds, keys, fps, cfg_scale, *, plan: SamplePlan, item_sharding=None,
                     mode: str = "exact"):
    """Many items in one program: each argument but ``params`` has a leading item axis, and item i is
    :func:`sample_jit` of its own (cond, uncond, key, fps, cfg). ``mode`` (:data:`BATCH_MODES`): ``exact``
    runs them one after another (``lax.map``) so each is the single-item program, seed and all; ``vmap``
    batches them into every UNet call. ``item_sharding`` splits the items over a mesh axis (``data``):
    each device runs its share (``shard_map``), params replicated."""
    def one(p, a):
        return _sample(unet, p, *a, plan=plan)

    def items(p, c, u, k, f, s):
        if mode == "vmap":
            return jax.vmap(lambda *a: one(p, a))(c, u, k, f, s)
        return jax.lax.map(lambda a: one(p, a), (c, u, k, f, s))

    if item_sharding is None:
        return items(params, conds, unconds, keys, fps, cfg_scale)

    spec = item_sharding.spec
    fn = jax.shard_map(items, mesh=item_sharding.mesh, in_specs=(P(),) + (spec,) * 5, out_specs=spec,
                       check_vma=False)
    return fn(params, conds, unconds, keys, fps, cfg_scale)


@dataclasses.dataclass(frozen=True)
class Items:
    """A batched program's static settings (:func:`sample_batch_jit`): the item sharding and the mode."""

    sharding: Any = None
    mode: str = "exact"


def compiled_sampler(unet, plan: SamplePlan, args: tuple, progress: bool, items: Optional[Items] = None):
    """The AOT-compiled :func:`sample_jit` (or, with ``items``, :func:`sample_batch_jit`) for these static
    settings and argument shapes, through the compile cache (in memory, then on disk)."""
    leaves, treedef = jax.tree_util.tree_flatten(args)
    key = (unet, plan, items, treedef, tuple((tuple(x.shape), str(x.dtype)) for x in leaves))
    cache = runtime()
    if key not in cache.compiled:
        log(progress, "compiling the sampling loop (once per model, shape and setting)")
        t0 = time.time()
        if items is None:
            lowered = sample_jit.lower(unet, *args, plan=plan)
        else:
            lowered = sample_batch_jit.lower(unet, *args, plan=plan, item_sharding=items.sharding, mode=items.mode)
        # The loop holds the progress tick (a host callback), which JAX's persistent cache refuses;
        # compile_lowered keeps it on disk anyway and re-attaches this process's callback on load.
        program, loaded = compile_lowered(lowered)
        cache.remember_compiled(key, program)
        log(progress, f"{'loaded from the compile cache' if loaded else 'compiled'} in {time.time() - t0:.1f}s")
    return cache.compiled[key]


def run_sampler(sampler, args: tuple, *, total_calls: int, progress: bool, unit: str = "step"):
    """Run a compiled sampler under a progress bar of ``total_calls`` UNet calls; (latents, aux, seconds)."""
    t0 = time.time()
    bar = None
    if progress:
        from tqdm.auto import tqdm  # noqa: PLC0415

        bar = tqdm(total=int(total_calls), desc="denoising", unit=unit, file=sys.stderr, leave=True)
    state = runtime().progress
    state.bar = bar
    reset_finite_check()
    try:
        with interruptible():
            try:
                res = sampler(*args)
                # poll instead of blocking in C++, so the SIGINT handler runs as soon as the signal comes
                while hasattr(res.latents, "is_ready") and not res.latents.is_ready():
                    time.sleep(0.05)
                latents = jax.block_until_ready(res.latents)
            except Exception:
                if state.stop:  # the callback raised: XLA reports it as a runtime error
                    raise SamplingInterrupted("interrupted") from None
                raise
            if state.stop:  # Ctrl-C after the last UNet call: still stop before writing
                raise SamplingInterrupted("interrupted")
    finally:
        state.bar = None
        state.stop = False
        if bar is not None:
            bar.close()
    return latents, res.aux, time.time() - t0


def sampler_args(params, cond, uncond, seed: int, fps, cfg) -> tuple:
    return (params, jnp.asarray(cond), jnp.asarray(uncond), jax.random.key(int(seed)), jnp.float32(fps),
            jnp.float32(cfg))


def resolve_mesh(mesh):
    """A ``jax.sharding.Mesh`` from a mesh, a ``{"data": d, "frames": n, "model": m}`` dict, or a mesh
    config (``configs/mesh.py``: ``axes`` and ``rules``); None stays None. A mesh the devices cannot
    hold is a one-line :class:`VstarError`."""
    if mesh is None or hasattr(mesh, "devices"):
        return mesh

    axes = mesh.get("axes", mesh) if hasattr(mesh, "get") else mesh
    try:
        return make_mesh({str(k): int(v) for k, v in dict(axes).items()})
    except (TypeError, ValueError) as e:
        raise VstarError(f"bad mesh {dict(axes)}: {e}") from None


def resolve_rules(mesh):
    """The logical-axis rules of a mesh config (``rules``), as the hashable table the layout takes; None
    for the default table. Each rule is (logical axis, mesh axis / list of mesh axes / None)."""
    rules = mesh.get("rules") if hasattr(mesh, "get") and "axes" in mesh else None
    if rules is None:
        return None

    out = []
    for r in rules:
        if len(r) != 2 or not isinstance(r[0], str):
            raise VstarError(f"a sharding rule is (logical axis, mesh axis or axes or None), got {r!r}")
        axis = r[1]
        out.append((r[0], tuple(axis) if isinstance(axis, (list, tuple)) else axis))
    return tuple(out)


def row_sharding(mesh, frames: int, rows: int = 2, rules=None):
    """The sharding of the UNet's (rows, c, F, h, w) input on ``mesh``: the devices of the data and
    frames axes split the CFG/batch rows first, then the frames
    (``vstar_jax.parallel.sharding.activation_layout``: with 2 CFG rows, ``frames=8`` is 2 x 4 and
    ``data=2`` is 2 x 1); divisibility is checked on the window the UNet is given."""
    mesh = resolve_mesh(mesh)
    if mesh is None:
        return None

    layout = activation_layout(mesh, rows, frames, rules or DEFAULT_RULES)
    if layout is not None:
        return named(layout.mesh, LATENT_AXES, layout.rules)
    n = math.prod(mesh.shape.get(a, 1) for a in ("data", "frames"))
    if n > 1:
        raise VstarError(f"the UNet's input ({rows} CFG rows x {frames} frames) does not split over the "
                         f"{n} devices of mesh axes data x frames {dict(mesh.shape)}: frames ({frames}) "
                         f"not divisible by mesh axis 'frames' once the rows take {math.gcd(rows, n)}")
    return named(mesh, LATENT_AXES)


def capture_maps(aux) -> Optional[dict]:
    """Attention maps of a capturing run: {label: (steps, F, F)} cond rows, in UNet order."""
    def label(path: str) -> str:
        parts = [p for p in path.split("/") if p != "weights"]
        if parts and parts[0].endswith("_temporal"):
            parts[0] = parts[0][: -len("_temporal")]
        return ".".join(p for p in parts if p != "block_0")

    def order(lab: str):
        head, _, tail = lab.partition(".")
        m = re.fullmatch(r"(down|up)_(\d+)_(\d+)", head)
        if head == "init_attn":
            k = (0, 0, 0)
        elif m and m.group(1) == "down":
            k = (1, int(m.group(2)), int(m.group(3)))
        elif head == "mid":
            k = (2, 0, 0)
        elif m:
            k = (3, -int(m.group(2)), int(m.group(3)))
        else:
            k = (4, 0, 0)
        return k + (tail,)

    maps = {label(k): np.asarray(v, np.float32)[:, 0] for k, v in flatten_maps(jax.device_get(aux)).items()}
    return {k: maps[k] for k in sorted(maps, key=order)}
