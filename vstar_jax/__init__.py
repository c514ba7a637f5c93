"""vstar-jax: training-free long text-to-video generation in JAX (VSTAR's TAR and VSP, FIFO, FreeNoise, ...).

The public API, all here (``from vstar_jax import generate_video``)::

    generate_video(prompt, **settings) -> GenerationResult
        One video. The settings are keywords, each documented once in GenerationOptions (its fields
        are generate_video's signature and the list in its docstring): checkpoint (None: the embedded
        demo model), frames, steps, cfg, eta, seed, tar, synopsis, llm, long_video, mesh, out, gif, ...
        An unknown keyword, like any bad setting, is a one-line VstarError before any compute.
    generate_batch(items, *, checkpoint=None, out_dir=None, mesh=None, **settings) -> [GenerationResult]
        Many videos, many per compiled call; items are dicts of settings with a prompt.
    regenerate(sidecar_path, *, out=None, checkpoint=None, verify=True, ...) -> GenerationResult
        A video again from its JSON sidecar, bit for bit (FramesDiffer when the frames differ).
    load_pipeline(checkpoint=None) -> Pipeline
        A loaded model (cached), to pass as ``pipeline=`` to the calls above.
    load_sidecar(path) -> dict
        A sidecar, its fields checked.
    enhance_video(input_path, prompt, *, out=None, checkpoint=None, strength=..., ...) -> EnhanceResult
        StreamingT2V's enhancer on a video file: chunked SDEdit with shared noise and randomized
        blending (:mod:`vstar_jax.enhance`; the command ``vstar-jax enhance``).
    GenerationOptions, GenerationResult, Pipeline, FramesDiffer, VstarError

The command line (``vstar-jax generate | convert | verify | sweep | report | metrics``) is
:mod:`vstar_jax.cli`; the stages behind ``generate_video`` are in :mod:`vstar_jax.generation`.
These names are imported on first use, so ``import vstar_jax`` (and ``vstar-jax --help``) does not
start JAX.
"""
from __future__ import annotations

from vstar_jax import _source_tree

_source_tree.install()  # vstar_jax.configs and vstar_jax.checkpoints_convert from a source checkout too

__all__ = ["FramesDiffer", "GenerationOptions", "GenerationResult", "Pipeline", "VstarError", "enhance_video",
           "generate_batch", "generate_video", "load_pipeline", "load_sidecar", "regenerate"]
_ENHANCE = ("enhance_video",)  # from vstar_jax.enhance; the rest from vstar_jax.pipeline


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module 'vstar_jax' has no attribute {name!r}")
    # the public API on first use: importing vstar_jax stays light
    from vstar_jax import enhance, pipeline  # noqa: PLC0415

    value = getattr(enhance if name in _ENHANCE else pipeline, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
