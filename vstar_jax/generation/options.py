"""What a caller may ask of one video: the keywords of ``generate_video``, documented once.

:class:`GenerationOptions` is the one list of the settings :func:`vstar_jax.generate_video` takes;
its docstring and signature are written from these fields (:func:`options_doc`), so a new setting
cannot be left out of them, and an unknown keyword is a one-line :class:`~vstar_jax.errors.VstarError`
naming it. Checked against the model, the settings become a
:class:`~vstar_jax.generation.request.GenerationRequest` (:meth:`GenerationOptions.request_kwargs`
are the keywords of :func:`~vstar_jax.generation.request.make_request`).
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import textwrap
from typing import Any, Iterable, Mapping, Optional

from vstar_jax.errors import VstarError
from vstar_jax.generation.request import ATTENTION_BACKEND, SAVE_FPS


def _setting(default, doc: str):
    return dataclasses.field(default=default, metadata={"doc": doc})


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
    """The settings of one video as given (validated later, against the model)."""

    # -- the model ----------------------------------------------------------------------------
    checkpoint: Any = _setting(None, "a converted checkpoint directory; None: the embedded demo model.")
    pipeline: Any = _setting(None, "a model already loaded (``load_pipeline``); then ``checkpoint`` is not read.")
    # -- what is sampled ----------------------------------------------------------------------
    frames: Optional[int] = _setting(None, "number of frames; None: the model's (16 for VideoCrafter2).")
    steps: Optional[int] = _setting(None, "DDIM steps; None: the model's (25 for VideoCrafter2 as VSTAR runs it, "
                                          "50 for ModelScope).")
    cfg: Optional[float] = _setting(None, "classifier-free guidance scale; None: the model's (12.0; 9.0 for "
                                          "ModelScope).")
    eta: Optional[float] = _setting(None, "DDIM eta in [0, 1]; None: the model's (1.0; 0.0 for ModelScope).")
    seed: int = _setting(0, "PRNG seed (the rule is in :mod:`vstar_jax.pipeline`).")
    fps: Optional[float] = _setting(None, "the UNet's fps conditioning; None: the model's (28).")
    tar: Any = _setting(None, "temporal attention regularization: None, a preset name (``64D1``, ``64D1_32D8``, "
                              "...), a spec string or dict, or a ``TARConfig``.")
    synopsis: Any = _setting(None, "the visual states (VSP): None, a list of >= 2 state prompts, or a file "
                                   "(.json / .yaml / .txt).")
    vsp_mode: str = _setting("linear", "how the states are spread over the frames: ``linear`` or ``same``.")
    llm: Optional[Mapping] = _setting(None, "ask a language model for the synopsis (after every other check): "
                                            "``{url, model, api_key, num_states, timeout}`` over HTTP or "
                                            "``{local_path, num_states}``.")
    synopsis_source: Optional[Mapping] = _setting(None, "where a given synopsis came from (recorded in the "
                                                        "sidecar).")
    height: Optional[int] = _setting(None, "video height in pixels; None: the model's.")
    width: Optional[int] = _setting(None, "video width in pixels; None: the model's.")
    long_video: Any = _setting(None, "how the frames are denoised with a UNet that sees a window of them: a "
                                     "strategy spec (``genl:16:8``, ``blend:24:8``, ``freenoise:16:4``, "
                                     "``fifo:16:4``, ``vidrd:16:8``, ``streaming:16:8``), a dict, or None for one "
                                     "pass (:mod:`vstar_jax.longvideo`).")
    mesh: Any = _setting(None, "spread the UNet's work over devices: a ``jax.sharding.Mesh`` or ``{\"data\": d, "
                               "\"frames\": n, \"model\": m}``: the CFG rows over ``data``, the frames the UNet sees "
                               "over ``frames``, kernels FSDP-style over ``model`` "
                               "(:mod:`vstar_jax.parallel.sharding`); results then match the single-device run to "
                               "float tolerance, not bit for bit.")
    max_memory: Optional[float] = _setting(None, "bytes one UNet call may use by a rough activation estimate "
                                                 "(None: the machine's available memory; 0: no check); a larger "
                                                 "run is refused before compute.")
    frame_batch: int = _setting(16, "frames decoded (and written) per batch.")
    attention_backend: Optional[str] = _setting(ATTENTION_BACKEND, "the UNet's attention: ``auto`` (cuDNN on a GPU in "
                                                "bf16/fp16, Pallas Triton for its float32 self-attention, the "
                                                "Pallas flash kernel on a TPU, XLA elsewhere: on a "
                                                "CPU the same frames as ``xla``), ``xla``, ``cudnn`` (GPU only) or "
                                                "``pallas`` (TPU only); None: as the checkpoint's config says.")
    # -- what is written and returned ---------------------------------------------------------
    out: Any = _setting(None, "the video path (.mp4 / .gif / ...); None writes nothing.")
    save_fps: float = _setting(SAVE_FPS, "frame rate of the written video.")
    gif: bool = _setting(False, "also write a GIF beside the video.")
    attention_png: Any = _setting(None, "record the temporal attention maps (``result.attention``: {layer: "
                                        "(steps, F, F)}, conditional rows, averaged over heads and pixels) and "
                                        "plot them to this path (plus a .npz of the maps).")
    record_attention: bool = _setting(False, "record the attention maps without plotting them.")
    keep_video: bool = _setting(True, "return the frames in ``result.video`` (False: they are only streamed into "
                                      "the file, so memory does not grow with the length).")
    overwrite: bool = _setting(True, "replace existing output files (False refuses them; an existing .json "
                                     "that is not a vstar-jax sidecar is never replaced).")
    progress: bool = _setting(True, "progress lines and bars on stderr.")

    @classmethod
    def from_kwargs(cls, kwargs: Mapping, where: str = "generate_video") -> "GenerationOptions":
        """The options of ``kwargs``; an unknown name is a one-line VstarError naming it."""
        check_names(kwargs, where)
        return cls(**kwargs)

    def request_kwargs(self) -> dict:
        """The keywords of :func:`~vstar_jax.generation.request.make_request` for these options."""
        kw = {name: getattr(self, name) for name in REQUEST_SETTINGS}
        kw["capture"] = self.attention_png is not None or bool(self.record_attention)
        kw["llm_asked"] = self.llm is not None
        return kw


FIELDS = tuple(f.name for f in dataclasses.fields(GenerationOptions))
# the settings make_request validates (the rest choose the model, the outputs and the run)
REQUEST_SETTINGS = ("frames", "steps", "cfg", "eta", "seed", "fps", "save_fps", "tar", "synopsis", "vsp_mode",
                    "height", "width", "frame_batch", "long_video", "synopsis_source", "max_memory",
                    "attention_backend")


def check_names(names: Iterable[str], where: str = "generate_video") -> None:
    """Raise a one-line VstarError naming the first name that is not a setting (with the closest one)."""
    for name in names:
        if name not in FIELDS:
            close = difflib.get_close_matches(str(name), FIELDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise VstarError(f"{where}: unknown setting {name!r}{hint}; the settings are {', '.join(FIELDS)}")


def options_doc(indent: str = "    ") -> str:
    """The settings as docstring lines: ``name`` (default ...): what it does."""
    lines = []
    for f in dataclasses.fields(GenerationOptions):
        text = f"``{f.name}`` (default ``{f.default!r}``): {f.metadata['doc']}"
        lines += textwrap.wrap(text, 108, initial_indent=indent, subsequent_indent=indent + "    ")
    return "\n".join(lines)


def document(fn):
    """Give ``fn(prompt, **settings)`` the settings' signature and a docstring ending in their list."""
    params = [inspect.Parameter("prompt", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="str")]
    params += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
               for f in dataclasses.fields(GenerationOptions)]
    fn.__signature__ = inspect.signature(fn).replace(parameters=params)
    fn.__doc__ = (inspect.cleandoc(fn.__doc__ or "") + "\n\nSettings (:class:`vstar_jax.GenerationOptions`):\n\n"
                  + options_doc())
    return fn
