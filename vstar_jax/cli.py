"""``vstar-jax``: generate | convert | sweep | report | metrics.

    vstar-jax generate "a lighthouse at dusk, waves crash" --checkpoint ckpt/vc2 --frames 32 --tar 64D1
    vstar-jax generate "..." --synopsis "state 1" --synopsis "state 2" --synopsis "state 3"
    vstar-jax generate "..." --frames 64 --long-video genl:16:8
    vstar-jax generate --from-sidecar outputs/a-lighthouse-0.json --out again.mp4
    vstar-jax convert videocrafter2 --ckpt model.ckpt --config inference_t2v_512_v2.0.yaml --out ckpt/vc2
    vstar-jax convert diffusers MODEL_DIR --out ckpt/modelscope
    vstar-jax verify ckpt/modelscope --source MODEL_DIR
    vstar-jax enhance long.mp4 --prompt "..." --checkpoint ckpt/refiner --strength 0.6
    vstar-jax sweep ... | report ... | metrics ...

Every bad input is reported as one line ``error: ...`` with exit status 2; Ctrl-C stops sampling
between two UNet calls (``error: interrupted``, exit status 130, no file half-written); frames
regenerated from a sidecar that differ from its hash are not kept (exit status 1).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import signal
import sys
import threading
from typing import Optional, Sequence

from vstar_jax.checkpoints_convert import convert_help
from vstar_jax.compile_cache import enable_compile_cache
from vstar_jax.compile_options import check_environment
from vstar_jax.errors import VstarError
from vstar_jax.validate import number  # jax-free: ``--help`` still does not start JAX

# subcommand -> (module, function) forwarded with the remaining argv
FORWARD = {
    "sweep": ("vstar_jax.sweep", "main"),
    "report": ("vstar_jax.report", "main"),
    "metrics": ("vstar_jax.metrics.cli", "main"),
    "verify": ("vstar_jax.checkpoints_convert.verify", "main"),
}
CONVERTERS = {
    "videocrafter2": ("vstar_jax.checkpoints_convert.videocrafter2", "main"),
    "diffusers": ("vstar_jax.checkpoints_convert.diffusers", "main"),
    "streamingt2v": ("vstar_jax.checkpoints_convert.streamingt2v", "main"),
    "msvid2vid": ("vstar_jax.checkpoints_convert.msvid2vid", "main"),
}
SYNOPSIS_FILE_SUFFIXES = (".json", ".yaml", ".yml", ".txt")
MAX_MEMORY_GIB = 1_000_000  # about 1 PiB: above any machine (0 = no check)
MAX_LLM_TIMEOUT = 24 * 3600.0  # seconds for the LLM's whole reply


# flax's errors for params whose shapes or names are not the module's (raised while tracing the model)
PARAM_MISMATCH = ("ScopeParamShapeError", "ScopeParamNotFoundError")


class UsageError(ValueError):
    """A command-line mistake (reported in one line, exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) so every bad input reads the same."""

    def error(self, message):  # noqa: D401 - argparse hook
        raise UsageError(f"{self.prog}: {message}")


def _error(msg: str) -> int:
    line = " ".join(str(msg).split()) or "unknown error"
    print(f"error: {line}", file=sys.stderr)
    return 2


def _os_error(e: OSError) -> str:
    where = " ".join(repr(os.fspath(f)) for f in (e.filename, e.filename2) if f is not None)
    return f"{e.strerror or type(e).__name__}{': ' + where if where else ''}" if e.strerror else str(e)


def _call(module: str, func: str, argv: Sequence[str], what: str) -> int:
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        return _error(f"'{what}' is not available: cannot import {module} ({e})")
    fn = getattr(mod, func, None)
    if fn is None:
        return _error(f"'{what}' is not available: {module} has no {func}()")
    try:
        rc = fn(list(argv))
    except SystemExit as e:  # argparse inside the subcommand
        code = e.code
        return code if isinstance(code, int) else (0 if code is None else _error(code))
    return int(rc or 0)


# ------------------------------------------------------------------------------ generate
def generate_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vstar-jax generate", description="Generate a video from a text prompt (VSTAR: TAR + VSP).")
    p.add_argument("prompt", nargs="?", help="the video prompt")
    p.add_argument("--checkpoint", help="converted checkpoint directory, or a built-in model: demo (the default, the "
                                        "embedded demo model) or demo_vc (the demo model with a trained length)")
    p.add_argument("--frames", type=int, help="number of frames (default: the model's, 16 for VideoCrafter2)")
    p.add_argument("--steps", type=int, help="DDIM steps (default 25)")
    p.add_argument("--cfg", type=float, help="classifier-free guidance scale (default 12)")
    p.add_argument("--eta", type=float, help="DDIM eta (default 1.0)")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
    p.add_argument("--seeds", metavar="LIST", help="several seeds, e.g. 0,1,2: one video each, many per compiled call")
    p.add_argument("--prompts-file", metavar="PATH",
                   help="one prompt a line (# comments): one video per prompt (and seed), many per compiled call")
    p.add_argument("--out-dir", metavar="DIR", help="folder for several videos (default outputs/)")
    p.add_argument("--batch-mode", choices=("exact", "vmap"), default="exact",  # generation.sampling.BATCH_MODES
                   help="several videos: 'exact' runs the items of a call one after another, each bit for bit its "
                        "single run (default); 'vmap' batches them into every UNet call, more videos a minute, each "
                        "equal to its single run within float32 rounding")
    p.add_argument("--fps", type=float, help="fps conditioning of the UNet (default 28)")
    p.add_argument("--save-fps", type=float, default=8.0, help="frame rate of the written video (default 8)")
    p.add_argument("--tar", help="temporal attention regularization: a preset (64D1, 64D1_32D8, ...) or "
                                 "'L0:sigma[:scale],...[@until]'")
    p.add_argument("--synopsis", action="append",
                   help="a visual state (repeat for each, >= 2) or one file (.json/.yaml/.txt) of states")
    p.add_argument("--llm", metavar="URL", help="OpenAI-compatible endpoint that writes the synopsis "
                                                "(or set VSTAR_LLM_URL and pass --llm '')")
    p.add_argument("--llm-model", help="model name for --llm (or VSTAR_LLM_MODEL)")
    p.add_argument("--llm-key", help="API key for --llm (or VSTAR_LLM_API_KEY)")
    p.add_argument("--local-lm", metavar="PATH", help="local transformers causal LM directory for the synopsis")
    p.add_argument("--num-states", type=int, help="states to ask the LLM for (default min(5, frames))")
    p.add_argument("--llm-timeout", type=float, metavar="SECONDS",
                   help="seconds to wait for the LLM's reply (default 60)")
    p.add_argument("--vsp-mode", default="linear", choices=["linear", "same"], help="VSP interpolation")
    p.add_argument("--height", type=int, help="video height in pixels (default: the model's)")
    p.add_argument("--width", type=int, help="video width in pixels (default: the model's)")
    p.add_argument("--frame-batch", type=int, default=16, help="frames per VAE decode batch (default 16)")
    p.add_argument("--out", help="output video (.mp4 or .gif; default outputs/<prompt>-<seed>.mp4)")
    p.add_argument("--gif", action="store_true", help="also write a GIF beside the video")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output video (and its sidecar)")
    p.add_argument("--max-memory", type=float, metavar="GIB",
                   help="refuse a run whose estimated UNet activations exceed this many GiB "
                        "(default: the machine's available memory; 0 = no check)")
    p.add_argument("--attention-png", metavar="PATH",
                   help="record the temporal attention maps and plot them (VSTAR Fig. 4)")
    p.add_argument("--from-sidecar", metavar="JSON", help="regenerate the video a sidecar describes")
    p.add_argument("--mesh", metavar="AXES",
                   help="spread the UNet's work over devices: data=2 (CFG rows; long videos: windows), frames=4 "
                        "(the frames it sees), "
                        "model=2 (FSDP params); e.g. data=2,frames=4; or a mesh config file (configs/mesh.py: "
                        "axes and logical-axis rules)")
    p.add_argument("--long-video", metavar="METHOD[:ARGS]",
                   help="how --frames frames are denoised with a UNet that sees a window of them: genl:16:8 "
                        "(Gen-L-Video, stride 8), blend:24:8 (StreamingT2V randomized blending, overlap 8), "
                        "freenoise:16:4 (FreeNoise, window 16 stride 4), fifo:16:4 (FIFO-Diffusion, window 16, "
                        "4 partitions = 64 DDIM steps), vidrd:16:8 (Reuse and Diffuse, overlap 8), streaming:16:8 "
                        "(StreamingT2V's CAM + APM: chunks of 16 on the last 8; needs a checkpoint with them); settings "
                        "by name too, e.g. vidrd:window=16,overlap=8,pns_alpha=0.5 (default: one pass). On a --mesh, "
                        "genl, blend and fifo run D windows of a step as one UNet call (D = the mesh axis the "
                        "'windows' rule names, data by default); streaming and vidrd are autoregressive over "
                        "chunks and run them serially")
    p.add_argument("--attention-backend", default="auto", metavar="NAME",
                   help="the UNet's attention: auto (default: cuDNN's fused kernel on a GPU in bf16/fp16 and the Pallas "
                        "Triton kernel for its float32 self-attention, the Pallas flash kernel on a TPU, XLA "
                        "elsewhere; on a CPU the same frames as xla), xla, cudnn (GPU "
                        "only) or pallas (TPU only, without TAR or attention maps)")
    p.add_argument("--enhance", metavar="CKPT",
                   help="then refine the video with StreamingT2V's enhancer (vstar-jax enhance) and this refiner "
                        "checkpoint ('demo': the embedded model), written to <out>-enhanced.mp4")
    p.add_argument("--enhance-strength", type=float, metavar="S",
                   help="the enhancer's strength T'/T (default: the refiner's, 0.6; the demo models' 0.3)")
    p.add_argument("--enhance-negative-prompt", metavar="TEXT",
                   help="the enhancer's negative prompt, its CFG's unconditional text (default: the empty prompt)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def _enhance():
    """:mod:`vstar_jax.enhance.cli`, imported when a video is enhanced (as :func:`_pipeline`)."""
    return importlib.import_module("vstar_jax.enhance.cli")


def _mesh_arg(spec: Optional[str]):
    """'frames=4,model=2' -> {"frames": 4, "model": 2}; a ``.py`` mesh config (``configs/mesh.py``: axes and
    logical-axis rules) -> its ConfigDict; None if not given."""
    if not spec:
        return None
    if spec.endswith(".py"):
        if not os.path.isfile(spec):
            raise UsageError(f"--mesh config not found: {spec}")
        mod_spec = importlib.util.spec_from_file_location("_vstar_mesh_config", spec)
        module = importlib.util.module_from_spec(mod_spec)
        try:
            mod_spec.loader.exec_module(module)
            cfg = module.get_config()
        except Exception as e:  # noqa: BLE001 - a user's file: any failure is one line
            raise UsageError(f"--mesh config {spec} cannot be loaded: {type(e).__name__}: {e}") from None
        if "axes" not in cfg:
            raise UsageError(f"--mesh config {spec} has no 'axes'")
        return cfg
    axes = {}
    for part in spec.split(","):
        name, _, n = part.partition("=")
        if name.strip() not in ("frames", "model", "data") or not n.strip().lstrip("-").isdigit():
            raise UsageError(f"bad --mesh {spec!r}: use e.g. frames=4 or frames=4,model=2")
        if name.strip() in axes:
            raise UsageError(f"bad --mesh {spec!r}: axis {name.strip()} given twice")
        if int(n) < 1:
            raise UsageError(f"bad --mesh {spec!r}: {name.strip()} must be >= 1 devices, got {int(n)}")
        axes[name.strip()] = int(n)
    return axes


def _synopsis_arg(values: Optional[list[str]]):
    """--synopsis values -> a list of states or one file path (None if not given)."""
    if not values:
        return None
    if len(values) == 1:
        v = values[0]
        if os.path.isfile(v):
            return v
        if v.lower().endswith(SYNOPSIS_FILE_SUFFIXES):
            raise UsageError(f"synopsis file not found: {v}")
    return list(values)


def _llm_arg(a) -> Optional[dict]:
    if a.local_lm and a.llm is not None:
        raise UsageError("give either --llm or --local-lm, not both")
    if a.local_lm:
        return {"local_path": a.local_lm, "num_states": a.num_states}
    if a.llm is not None:
        llm = {"url": a.llm or None, "model": a.llm_model, "api_key": a.llm_key, "num_states": a.num_states}
        if a.llm_timeout is not None:
            if not a.llm_timeout > 0:
                raise UsageError(f"--llm-timeout must be > 0 seconds, got {a.llm_timeout:g}")
            llm["timeout"] = number("--llm-timeout (seconds)", a.llm_timeout, minimum=0.001, maximum=MAX_LLM_TIMEOUT)
        return llm
    if a.num_states is not None:
        raise UsageError("--num-states needs --llm or --local-lm")
    if a.llm_timeout is not None:
        raise UsageError("--llm-timeout needs --llm")
    return None


def _max_memory_arg(gib: Optional[float]):
    """--max-memory GiB -> bytes (None: the default; 0: no check)."""
    if gib is None:
        return None
    if not gib >= 0:
        raise UsageError(f"--max-memory must be >= 0 GiB, got {gib:g}")
    return int(number("--max-memory (GiB)", gib, minimum=0, maximum=MAX_MEMORY_GIB) * 2**30)


# flags --from-sidecar applies; every other one is the sidecar's to say
SIDECAR_APPLIES = ("from_sidecar", "out", "checkpoint", "gif", "quiet", "attention_png", "overwrite", "max_memory",
                   "mesh")


def _given_flags(parser: argparse.ArgumentParser, a, argv: Sequence[str]) -> list[str]:
    """The option strings of flags given on the command line (or differing from their defaults)."""
    given = []
    for act in parser._actions:  # noqa: SLF001 - argparse keeps no public list
        if not act.option_strings or act.dest in ("help",):
            continue
        named = any(x == o or x.startswith(o + "=") for x in argv for o in act.option_strings)
        if named or getattr(a, act.dest, None) != act.default:
            given.append((act.dest, act.option_strings[-1]))
    return given


def _pipeline():
    """:mod:`vstar_jax.pipeline`, imported when a video is generated: the lazy ``generate`` subcommand
    (``vstar-jax --help`` and the forwarded subcommands do not import JAX)."""
    from vstar_jax import pipeline  # noqa: PLC0415 - the lazy generate subcommand

    return pipeline


def generate_main(argv: Sequence[str]) -> int:
    pl = _pipeline()
    parser = generate_parser()
    a = parser.parse_args(list(argv))
    progress = not a.quiet
    max_memory = _max_memory_arg(a.max_memory)
    if a.from_sidecar:
        if a.prompt is not None:
            raise UsageError("--from-sidecar takes no prompt (the sidecar has it)")
        ignored = [opt for dest, opt in _given_flags(parser, a, argv) if dest not in SIDECAR_APPLIES]
        if ignored:
            raise UsageError(f"--from-sidecar takes its settings from the sidecar; it would ignore "
                             f"{', '.join(ignored)} (it applies only --out, --checkpoint, --gif, --attention-png, "
                             f"--overwrite, --max-memory, --mesh and --quiet)")
        sc = pl.load_sidecar(a.from_sidecar)  # its fields are checked before any compute
        out = a.out or _regen_output(a.from_sidecar, sc, pl.VIDEO_SUFFIXES)
        try:
            res = pl.regenerate(a.from_sidecar, out=out, checkpoint=a.checkpoint, gif=a.gif,
                                attention_png=a.attention_png, progress=progress, verify=pl.regenerates_exactly(sc),
                                keep_video=False, overwrite=a.overwrite, max_memory=max_memory,
                                mesh=_mesh_arg(a.mesh))
        except pl.FramesDiffer as e:  # computed, but not the recorded frames: nothing kept
            print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
            return 1
        if sc.get("batch_mode", "exact") != "exact":
            print(f"note: this video was made in a batch's {sc['batch_mode']} mode; regenerated alone it equals it "
                  f"within float32 rounding, not bit for bit", file=sys.stderr)
        print(f"{res.path}\tidentical frames" if pl.regenerates_exactly(sc) else res.path)
        return 0
    if a.enhance is None and a.enhance_strength is not None:
        raise UsageError("--enhance-strength needs --enhance CKPT")
    if a.enhance is None and a.enhance_negative_prompt is not None:
        raise UsageError("--enhance-negative-prompt needs --enhance CKPT")
    if a.enhance is not None and (a.prompts_file or a.seeds):
        raise UsageError("--enhance is for one video; run vstar-jax enhance on each of several")
    if a.enhance is not None:  # before any compute
        _enhance().check_enhance_stage(a.enhance, a.enhance_strength, a.frames, a.checkpoint)
    if a.prompts_file or a.seeds:
        return _generate_many(a, parser, argv, progress, max_memory)
    if a.out_dir:
        raise UsageError("--out-dir is for several videos (--seeds or --prompts-file); use --out for one")
    if a.batch_mode != "exact":
        raise UsageError("--batch-mode is for several videos (--seeds or --prompts-file)")
    if a.prompt is None or not a.prompt.strip():
        raise UsageError("empty prompt: give a text description of the video")
    out = a.out or pl.default_output(a.prompt, a.seed)
    res = pl.generate_video(
        a.prompt, checkpoint=a.checkpoint, frames=a.frames, steps=a.steps, cfg=a.cfg, eta=a.eta, seed=a.seed,
        fps=a.fps, save_fps=a.save_fps, tar=a.tar, synopsis=_synopsis_arg(a.synopsis), vsp_mode=a.vsp_mode,
        llm=_llm_arg(a), height=a.height, width=a.width, out=out, gif=a.gif, attention_png=a.attention_png,
        frame_batch=a.frame_batch, progress=progress, mesh=_mesh_arg(a.mesh), long_video=a.long_video,
        keep_video=False,  # frames are streamed into the file: memory does not grow with --frames
        overwrite=a.overwrite, max_memory=max_memory, attention_backend=a.attention_backend)
    print(res.path)
    if a.enhance is not None:
        print(_enhance().enhance_generated(res.path, a.prompt, a.enhance, strength=a.enhance_strength, seed=a.seed,
                                           overwrite=a.overwrite, progress=progress,
                                           negative_prompt=a.enhance_negative_prompt))
    return 0


def _generate_many(a, parser, argv, progress: bool, max_memory) -> int:
    """Several videos (prompts x seeds) through ``pipeline.generate_batch``: the items whose compiled
    loop is the same run in one call, split over the mesh's ``data`` axis; one path printed a line."""
    pl = _pipeline()
    if a.prompts_file:
        if a.prompt is not None:
            raise UsageError("give a prompt or --prompts-file, not both")
        try:
            lines = open(a.prompts_file, encoding="utf-8").read().splitlines()
        except OSError as e:
            raise UsageError(f"cannot read --prompts-file {a.prompts_file}: {e.strerror or e}") from None
        prompts = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
        if not prompts:
            raise UsageError(f"--prompts-file {a.prompts_file} has no prompts")
    elif a.prompt is None or not a.prompt.strip():
        raise UsageError("empty prompt: give a text description of the video")
    else:
        prompts = [a.prompt]
    try:
        seeds = [int(v) for v in a.seeds.split(",") if v.strip()] if a.seeds else [a.seed]
    except ValueError:
        raise UsageError(f"--seeds must be comma-separated integers, got {a.seeds!r}") from None
    if not seeds:
        raise UsageError("--seeds is empty")
    given = dict(_given_flags(parser, a, argv))
    for dest in ("out", "gif", "attention_png", "llm", "local_lm", "seed"):
        if dest in given and (dest != "seed" or a.seeds):
            raise UsageError(f"{given[dest]} is for one video; several (--seeds / --prompts-file) are written to "
                             f"--out-dir as <prompt>-<seed>.mp4" + (" and take no LLM synopsis"
                                                                   if dest in ("llm", "local_lm") else ""))
    items = [{"prompt": p, "seed": s} for p in prompts for s in seeds]
    results = pl.generate_batch(
        items, checkpoint=a.checkpoint, out_dir=a.out_dir or "outputs", mesh=_mesh_arg(a.mesh), progress=progress,
        keep_video=False, overwrite=a.overwrite, frames=a.frames, steps=a.steps, cfg=a.cfg, eta=a.eta, fps=a.fps,
        save_fps=a.save_fps, tar=a.tar, synopsis=_synopsis_arg(a.synopsis), vsp_mode=a.vsp_mode, height=a.height,
        width=a.width, frame_batch=a.frame_batch, long_video=a.long_video, max_memory=max_memory,
        attention_backend=a.attention_backend, batch_mode=a.batch_mode)
    for res in results:
        print(res.path)
    return 0


def _regen_output(sidecar_path: str, sc: dict, video_suffixes: Sequence[str]) -> str:
    """Beside the sidecar (never in the directory it recorded): ``<sidecar stem>-regen.<ext>``."""
    src = (sc.get("outputs") or {}).get("video") or ""
    ext = os.path.splitext(src)[1].lower()
    root = os.path.splitext(sidecar_path)[0]
    return f"{root}-regen{ext if ext in video_suffixes else '.mp4'}"


# ---------------------------------------------------------------------------------- main
def _usage() -> str:
    return ("usage: vstar-jax {generate,enhance,convert,verify,sweep,report,metrics} ...\n"
            "  generate PROMPT [--checkpoint DIR] [--frames N] [--steps N] [--cfg S] [--seed N] [--tar PRESET]\n"
            "           [--synopsis STATE ... | --llm URL | --local-lm PATH] [--out video.mp4] [--gif]\n"
            "           [--attention-png PATH] | --from-sidecar JSON   (vstar-jax generate --help)\n"
            "  enhance IN.mp4 --prompt P [--checkpoint DIR] [--strength S] [--chunk 24 --overlap 8]   "
            "(vstar-jax enhance --help)\n"
            "  convert {videocrafter2,diffusers,streamingt2v,msvid2vid} ...   (vstar-jax convert --help)\n"
            "  verify CKPT_DIR --source SOURCE   (check a conversion against its source)\n"
            "  sweep ... | report ... | metrics ...")


def _hold_sigint(restore: bool = False, _saved: dict = {}) -> None:  # noqa: B006 - one per process
    """While an interrupted command winds down, further Ctrl-C are ignored (a second one would cut
    its message or end it in a traceback); the previous handler comes back when ``restore``."""
    if threading.current_thread() is not threading.main_thread():
        return
    if restore:
        if "handler" in _saved:
            signal.signal(signal.SIGINT, _saved.pop("handler"))
    elif "handler" not in _saved:
        _saved["handler"] = signal.signal(signal.SIGINT, signal.SIG_IGN)


def main(argv: Optional[Sequence[str]] = None) -> int:
    rc = _main(argv)
    if argv is not None:  # called from Python (tests, a notebook): give Ctrl-C back
        _hold_sigint(restore=True)
    elif rc == 130:
        _hold_sigint()  # the process is about to exit with 130: keep ignoring a second Ctrl-C
    return rc


def _main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    enable_compile_cache()  # a second run with the same shapes loads compiled programs from disk
    try:
        check_environment()  # VSTAR_JAX_CPU_CONV, before any compute
    except VstarError as e:
        return _error(str(e))
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "generate":
            return generate_main(rest)
        if cmd == "enhance":
            return _enhance().enhance_main(rest)
        if cmd == "convert":
            if rest and rest[0] in ("-h", "--help", "help"):
                print(convert_help())
                return 0
            if not rest or rest[0] not in CONVERTERS:
                got = rest[0] if rest else "nothing"
                return _error(f"convert needs a source layout ({' or '.join(CONVERTERS)}), got {got}")
            module, func = CONVERTERS[rest[0]]
            return _call(module, func, rest[1:], f"convert {rest[0]}")
        if cmd in FORWARD:
            module, func = FORWARD[cmd]
            return _call(module, func, rest, cmd)
        return _error(f"unknown command {cmd!r} (use generate, enhance, convert, verify, sweep, report or metrics)")
    except SystemExit as e:  # --help inside argparse
        return e.code if isinstance(e.code, int) else 0
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, KeyError) as e:
        return _error(str(e).splitlines()[0] if str(e) else type(e).__name__)
    except OSError as e:  # a read-only or not-a-folder output path, ...: the OS's reason and the path
        return _error(_os_error(e))
    except Exception as e:  # noqa: BLE001 - only a checkpoint whose weights do not fit its config is one line
        if type(e).__name__ in PARAM_MISMATCH and type(e).__module__.startswith("flax"):
            first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
            return _error(f"the checkpoint's weights do not fit its config.json (another model's config, or an "
                          f"edited one): {first.split(' (https://')[0]}; convert the checkpoint again")
        raise
    except KeyboardInterrupt:  # sampling stops between UNet calls; temp files were removed
        _hold_sigint()
        _error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
