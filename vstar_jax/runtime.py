"""The process's run-time state in one object: what is cached between calls, and the progress of the
sampling loop that is running.

Lifetime: one :class:`Runtime` per process, made when this module is first imported and kept until the
process ends; :func:`runtime` returns it. Nothing in it is a setting or a result: emptying it
(:func:`reset`: tests, or a long-lived process that wants its memory back) costs only reloading models and
recompiling programs. Its parts, and who fills them:

* ``compiled``: the AOT-compiled sampling programs, by (UNet, plan, argument tree and shapes)
  (``generation.sampling.compiled_sampler``; at most ``MAX_COMPILED``, oldest dropped first).
* ``pipelines``: the loaded models (``generation.model.load_pipeline``): built-in models under
  ``"builtin:NAME"`` (``demo``, ``demo_vc``) and at most one checkpoint, by (path, config mtime).
* ``models``: other loaded models by (kind, name): RAFT flow models (``metrics.flow``), CLIP scorers
  (``sweep``).
* ``said``: one-time notices already printed, by key (FreeNoise's fallback line when its frames do not
  split over a mesh: ``longvideo.freenoise``).
* ``progress``: the running loop's :class:`Progress` (the bar its host callback advances, the Ctrl-C
  flag and wake-up pipe, the first non-finite step); reset before every run by ``run_sampler``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

MAX_COMPILED = 8  # compiled sampling programs kept (each holds its executable's device memory)


@dataclasses.dataclass
class Progress:
    """The sampling loop's host-side state, read and written by its progress callback."""

    bar: Any = None  # the tqdm bar advanced once per UNet call, or None
    stop: bool = False  # Ctrl-C seen: the callback raises at the next UNet call
    wake: Optional[int] = None  # read end of the SIGINT wake-up pipe while a loop runs, else None
    first_nonfinite: Optional[int] = None  # the first loop index whose UNet output was not finite


@dataclasses.dataclass
class Runtime:
    """Caches and the running loop's progress (see the module docstring)."""

    compiled: dict = dataclasses.field(default_factory=dict)
    pipelines: dict = dataclasses.field(default_factory=dict)
    models: dict = dataclasses.field(default_factory=dict)
    said: set = dataclasses.field(default_factory=set)
    progress: Progress = dataclasses.field(default_factory=Progress)

    def remember_compiled(self, key, program) -> None:
        """Keep a compiled program, dropping the oldest beyond :data:`MAX_COMPILED`."""
        if key not in self.compiled and len(self.compiled) >= MAX_COMPILED:
            self.compiled.pop(next(iter(self.compiled)))
        self.compiled[key] = program


_RUNTIME = Runtime()


def runtime() -> Runtime:
    """The process's :class:`Runtime`."""
    return _RUNTIME


def reset() -> None:
    """Empty every cache and forget the progress (the same object stays: references to it stay valid)."""
    _RUNTIME.compiled.clear()
    _RUNTIME.pipelines.clear()
    _RUNTIME.models.clear()
    _RUNTIME.said.clear()
    _RUNTIME.progress = Progress()
