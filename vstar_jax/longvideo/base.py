"""The long-video strategy protocol and its registry.

A strategy decides how one video of ``frames`` frames is denoised with a UNet that sees a
window of frames at a time: which noise it starts from, which frames each UNet call sees at
which timestep, and how the calls' predictions are combined. Every method (single-pass DDIM,
Gen-L-Video, StreamingT2V blending, FreeNoise, FIFO-Diffusion, VidRD) is one module of this
package with one frozen, hashable dataclass registered by name, so it is a static argument of
the compiled sampler and a new method is one file plus one test file.

    strategy = parse_strategy("genl:16:8")          # or {"method": "genl", "window": 16, "stride": 8}
    plan = strategy.check(frames)                   # VstarError naming valid lengths, before compute
    x_T = strategy.init_noise(k_x, shape)           # FreeNoise reschedules it
    out = strategy.sample(denoiser, x_T, cond, uncond, schedule, key=k_steps, cfg_scale=cfg)  # SampleOutput

:meth:`Strategy.sample` is the one sampler: every path (the pipeline's compiled program, batches,
sweeps, the demo model, benchmarks, tests) calls it; it prepares :class:`SampleInputs` once and runs
the strategy's own loop, :meth:`Strategy.run` (``latents, aux = strategy.run(denoiser, inputs)``).
``denoiser`` is a :class:`~vstar_jax.diffusion.sampler.Denoiser` (or a plain
``model_fn(x (2b, c, F, h, w), t, context, step_index) -> eps``, or ``(eps, aux)`` when capturing) on
CFG rows (``t`` a scalar, or one timestep per frame (F,) for FIFO). Spec strings are ``name:v1:v2``
(the class's ``POSITIONAL`` fields in order) or ``name:field=value,...``.
"""
from __future__ import annotations

import dataclasses
import importlib
import math
from typing import Any, Callable, ClassVar, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp

from vstar_jax.diffusion.sampler import SampleOutput, prepare_sampling
from vstar_jax.errors import VstarError
from vstar_jax.longvideo.windows import WindowPath
from vstar_jax.validate import number

MAX_SETTING = 100_000  # a window, stride, overlap or partition count (frames are at most this many too)

REGISTRY: dict[str, type] = {}


def register(cls):
    """Class decorator: make a strategy available by its ``name``."""
    if not cls.name or cls.name in REGISTRY:
        raise ValueError(f"strategy name {cls.name!r} is empty or taken")
    REGISTRY[cls.name] = cls
    return cls


class SampleInputs(NamedTuple):
    """Everything a strategy's loop needs besides the denoiser (see ``prepare_sampling``)."""

    x_T: jax.Array  # (b, c, F0, h, w): the strategy's initial noise (init_noise)
    context: jax.Array  # [uncond; cond] rows, (2b, L, C) or per frame (2b, N, L, C)
    coeffs: dict  # DDIM coefficients in loop order (i = 0 noisiest), each (steps,)
    keys: Any  # (steps,) per-step noise keys (placeholder when eta == 0)
    key: Any  # the sampling key the step keys came from (extra draws fold it)
    cfg_scale: Any
    frames: int  # output frames N
    guided: bool
    use_noise: bool
    rescale: Any = None  # the reference's guide rescale in [0, 1] (sampler.rescaled_eps); None: plain CFG
    #: (N,) the whole video's frame clock (UNetConfig.video_clock): each UNet call gets its frames' slice as
    #: the UNet's ``frame_times`` (the enhancer's ``--chunk-clock video``; ``single`` and ``blend`` read it);
    #: None: each call its own clock
    frame_times: Any = None


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a strategy will do for a length: the frames the UNet sees per call, and how many
    (CFG-batched) UNet calls the whole loop makes one window per call (the progress bar counts them:
    :meth:`calls_for` with D windows per call)."""

    unet_frames: int
    calls: int
    note: str = ""
    #: windows of one step (FIFO: one queue iteration) that do not depend on each other, so D of them run
    #: as one batched UNet call (the ``windows`` mesh axis); 0: the method's calls run serially
    group_windows: int = 0
    group_steps: int = 0  # how many steps (iterations) have those windows

    def groups(self, d: int) -> int:
        """UNet calls per step with D windows per call (ceil(windows / D); the last group padded)."""
        return -(-self.group_windows // max(1, int(d))) if self.group_windows else 0

    def calls_for(self, d: int) -> int:
        """The loop's UNet calls with D windows per call (:attr:`calls` when D = 1 or serial)."""
        if not self.group_windows:
            return self.calls
        return self.calls - self.group_steps * (self.group_windows - self.groups(d))


@dataclasses.dataclass(frozen=True)
class Strategy:
    """Base of every strategy (subclasses are frozen dataclasses of their settings)."""

    name: ClassVar[str] = ""
    POSITIONAL: ClassVar[tuple] = ()
    #: strategies whose UNet calls take one timestep per frame (the UNet supports it by shape)
    per_frame_timesteps: ClassVar[bool] = False
    #: why the method's UNet calls must run one after another (autoregressive over chunks), or ""; the
    #: device plan prints it (:func:`vstar_jax.generation.sampling.device_plan`)
    SERIAL: ClassVar[str] = ""
    #: settings a sidecar written before a field existed ran with (:func:`sidecar_settings` fills them in)
    SIDECAR_LEGACY: ClassVar[dict] = {}
    #: the solvers its loop steps with (the schedule's ``solver``: DDIM, or DPM++ 2M SDE where the loop is
    #: ``sampler.ddim_loop`` or the blend loop, which step with ``sampler.solver_step``)
    SOLVERS: ClassVar[tuple] = ("ddim",)

    # ---- protocol ------------------------------------------------------------------------------
    def check(self, frames: int, steps: int) -> Plan:
        """Validate a video length (and step count); a :class:`VstarError` names valid lengths."""
        raise NotImplementedError

    def window_path(self, frames: int, group: int, *, solver: str = "ddim", rescale: bool = False,
                    capture: bool = False, return_x0: bool = False, clock: bool = False) -> WindowPath:
        """Which loop steps this method's windows with D = ``group`` window slots a call (``windows.PATHS``),
        and why when it is not the blocks loop: the one place the loop is chosen (the method's loop branches
        on it; the device plan records and prints it). ``clock``: the windows carry the whole video's frame
        clock (``SampleInputs.frame_times``, the enhancer's ``--chunk-clock video``). Default: ``serial`` for :attr:`SERIAL` methods, else
        ``one pass`` (one UNet call over all frames: single, FreeNoise)."""
        return WindowPath("serial", self.SERIAL) if self.SERIAL else WindowPath("one pass")

    def noise_shape(self, shape: tuple) -> tuple:
        """Shape of the initial noise for a (b, c, N, h, w) video (FIFO: one window)."""
        return tuple(shape)

    def init_noise(self, key, shape: tuple) -> jax.Array:
        """The initial noise x_T for a (b, c, N, h, w) video (``normal(key)`` unless overridden)."""
        return jax.random.normal(key, self.noise_shape(shape), jax.numpy.float32)

    def rng_rule(self) -> str:
        """How the strategy uses the seed beyond the pipeline's rule (recorded in the sidecar)."""
        return ""

    def attention_hooks(self, frames: int) -> tuple:
        """Hooks the UNet's temporal attention takes for this strategy (FreeNoise's windows)."""
        return ()

    def check_model(self, info) -> None:
        """Refuse (one-line :class:`VstarError`) a model this strategy cannot run (``ModelInfo``);
        StreamingT2V needs trained CAM / APM modules. Default: any model."""

    def schedule_kwargs(self, flavor: str, kwargs: tuple) -> tuple:
        """The DDIM schedule's keyword arguments (sorted (key, value) pairs) this strategy runs with,
        given the checkpoint's; FIFO takes its reference's timestep rule. Default: the checkpoint's."""
        return kwargs

    def steps_for(self, requested: Optional[int]) -> Optional[int]:
        """The DDIM step count this strategy runs (None: the model's default); FIFO fixes it."""
        return requested

    def run(self, model_fn: Callable, inputs: SampleInputs, *, capture: bool = False):
        """The strategy's denoising loop; returns ``(latents (b, c, N, h, w), aux)``. A method overrides
        this, or :meth:`_loop` when its step has one x0 prediction of the whole video (then :meth:`trace`
        comes with it)."""
        x, _, aux = self._loop(model_fn, inputs, capture, False)
        return x, aux

    def trace(self, model_fn: Callable, inputs: SampleInputs, *, capture: bool = False) -> SampleOutput:
        """:meth:`run` keeping every step's x0 prediction of the whole video (``pred_x0`` (steps, b, c, N,
        h, w)), for analysis and tests; only methods that implement :meth:`_loop` have it."""
        return SampleOutput(*self._loop(model_fn, inputs, capture, True))

    def _loop(self, model_fn: Callable, inputs: SampleInputs, capture: bool, return_x0: bool):
        """(latents, stacked pred_x0 or None, stacked aux or None) of the loop (see :meth:`run`)."""
        if return_x0:
            raise VstarError(f"long_video {self.name} does not record x0 predictions")
        raise NotImplementedError

    # ---- the one sampler ------------------------------------------------------------------------
    def sample(self, model_fn: Callable, x_T, cond, uncond, schedule, *, key=None, cfg_scale=12.0, eta=None,
               frames: Optional[int] = None, capture: bool = False, return_x0: bool = False,
               guide_rescale=None) -> SampleOutput:
        """Sample a video with this strategy: every caller's way in (traceable; jit it, or call it inside
        a jitted function with the params as arguments).

        ``x_T``: the strategy's initial noise (:meth:`init_noise`); ``frames``: the video's length when
        it is not ``x_T``'s (FIFO, VidRD); ``cond`` / ``uncond``: as ``cfg_context`` takes them
        (``uncond=None``: no guidance); ``schedule``: a ``DDIMSchedule`` (``eta=None``: its own); ``key``:
        the sampling key (step i's noise ``normal(split(key, steps)[i])``; a method's extra draws fold it),
        needed when eta > 0 or the method draws. ``return_x0``: :meth:`trace` instead of :meth:`run`.
        ``schedule.solver`` must be one of :attr:`SOLVERS`; ``guide_rescale``: the reference enhancer's CFG
        std rescaling (None: plain CFG).
        Returns :class:`~vstar_jax.diffusion.sampler.SampleOutput` (``pred_x0`` None unless asked)."""
        solver = getattr(schedule, "solver", "ddim")
        if solver not in self.SOLVERS:
            raise VstarError(f"long_video {self.name} steps with {', '.join(self.SOLVERS)}, not {solver}")
        if guide_rescale is not None and self.SOLVERS == ("ddim",):  # the same two loops take the rescale
            raise VstarError(f"long_video {self.name} has no guide rescale (single and blend have)")
        x_T, frames, context, coeffs, keys, use_noise, guided = prepare_sampling(
            x_T, cond, uncond, schedule, eta, key, f"{self.name} sampling", frames=frames)
        inputs = SampleInputs(x_T, context, coeffs, keys, key, jnp.asarray(cfg_scale, jnp.float32), frames, guided,
                              use_noise, None if guide_rescale is None else jnp.asarray(guide_rescale, jnp.float32))
        if return_x0:
            return self.trace(model_fn, inputs, capture=capture)
        latents, aux = self.run(model_fn, inputs, capture=capture)
        return SampleOutput(latents, None, aux)

    # ---- config as data ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"method": self.name, **dataclasses.asdict(self)}

    def spec(self) -> str:
        """``name:v1:v2`` (positional), or ``name:k=v,...`` when a non-positional setting is not its default."""
        extra = [f for f in dataclasses.fields(self) if f.name not in self.POSITIONAL
                 and getattr(self, f.name) != f.default]
        if extra:
            return f"{self.name}:" + ",".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self))
        return ":".join([self.name] + [str(getattr(self, f)) for f in self.POSITIONAL])

    @classmethod
    def from_dict(cls, d: Mapping) -> "Strategy":
        fields = {f.name: f for f in dataclasses.fields(cls)}
        extra = sorted(set(d) - set(fields) - {"method"})
        if extra:
            raise VstarError(f"long_video {cls.name!r} takes {', '.join(fields) or 'no settings'}; "
                             f"unexpected {extra}")
        kw = {}
        for name, f in fields.items():
            if name in d:
                kw[name] = _coerce(cls.name, name, d[name], f.type)
            elif f.default is dataclasses.MISSING:
                raise VstarError(f"long_video {cls.name!r} needs {', '.join(k for k in cls.POSITIONAL)}")
        return cls(**kw)

    @classmethod
    def from_spec(cls, body: str) -> "Strategy":
        """``"16:8"`` (positional, in ``POSITIONAL`` order) or ``"window=16,stride=8"``."""
        body = body.strip()
        if not body:
            return cls.from_dict({})
        if "=" in body:
            d = {}
            for part in body.split(","):
                k, sep, v = part.partition("=")
                if not sep:
                    raise VstarError(f"bad long-video setting {part!r} for {cls.name}: use field=value")
                d[k.strip()] = v.strip()
            return cls.from_dict(d)
        parts = [p.strip() for p in body.split(":")]
        if len(parts) > len(cls.POSITIONAL):
            raise VstarError(f"{cls.name} takes at most {len(cls.POSITIONAL)} numbers "
                             f"({cls.name}:{':'.join(cls.POSITIONAL)}), got {body!r}")
        return cls.from_dict(dict(zip(cls.POSITIONAL, parts)))


def _coerce(method: str, name: str, value, typ):
    """A setting from a spec string or JSON into the field's type (int, float, bool)."""
    typ = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    try:
        if typ == "bool":
            if isinstance(value, str):
                low = value.lower()
                if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError
                return low in ("1", "true", "yes", "on")
            return bool(value)
        if typ == "int":
            if isinstance(value, bool):
                raise ValueError
            v = float(value)
            if not math.isfinite(v) or not v.is_integer():
                raise ValueError
            return number(f"long_video {method} {name}", v, integer=True, minimum=0, maximum=MAX_SETTING)
        if typ == "float":
            v = float(value)
            return number(f"long_video {method} {name}", v)  # finite; each strategy checks its range
    except (TypeError, ValueError, OverflowError) as e:
        if isinstance(e, VstarError):
            raise
        raise VstarError(f"long_video {method} {name} must be {'an' if typ == 'int' else 'a'} {typ}, "
                         f"got {value!r}") from None
    return value


def positive(method: str, **values) -> None:
    """One-line errors for settings that must be >= 1."""
    for k, v in values.items():
        if v < 1:
            raise VstarError(f"long_video {method} {k} must be a positive integer, got {v}")


def known_methods() -> str:
    _load_all()
    return ", ".join(sorted(REGISTRY))


def _load_all() -> None:
    """Import every strategy module of the package (they register themselves)."""
    for mod in ("single", "genl", "blend", "freenoise", "fifo", "vidrd", "streaming"):
        importlib.import_module(f"vstar_jax.longvideo.{mod}")


def sidecar_settings(recorded):
    """A sidecar's recorded ``long_video`` dict with the fields it lacks filled in with the values
    the code that wrote it ran with (the class's ``SIDECAR_LEGACY``), not today's defaults, so that
    ``--from-sidecar`` regenerates the recorded video. Anything else is returned as it is."""
    _load_all()
    if isinstance(recorded, Mapping) and recorded.get("method") in REGISTRY:
        return {**REGISTRY[recorded["method"]].SIDECAR_LEGACY, **recorded}
    return recorded


def parse_strategy(spec) -> Optional[Strategy]:
    """None | "genl:16:8" | "fifo:window=8,partitions=2" | {"method": ..., ...} | Strategy -> Strategy.

    None (and "single"/"none") mean one pass over all frames (:class:`~.single.Single`)."""
    _load_all()
    if spec is None or isinstance(spec, Strategy):
        return spec if spec is not None else REGISTRY["single"]()
    if isinstance(spec, str):
        name, _, body = spec.strip().partition(":")
        name = name.strip().lower()
        if name in ("", "none", "off"):
            return REGISTRY["single"]()
        if name not in REGISTRY:
            raise VstarError(f"unknown long-video method {name!r} (known: {known_methods()})")
        return REGISTRY[name].from_spec(body)
    if isinstance(spec, Mapping):
        name = spec.get("method")
        if name not in REGISTRY:
            raise VstarError(f"unknown long-video method {name!r} (known: {known_methods()})")
        return REGISTRY[name].from_dict(spec)
    raise VstarError(f"long_video must be None, a 'method:...' string or a dict, got {type(spec).__name__}")
