"""``vstar-jax enhance IN.mp4 --prompt P [--checkpoint CKPT] ...`` (run through ``vstar_jax.cli``, whose
one-line error handling applies) and the ``--enhance`` stage of ``vstar-jax generate``."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from vstar_jax.enhance.job import (CHUNK_CLOCKS, DEFAULTS, REFERENCE_SAMPLER, enhance_video, load_enhance_sidecar,
                                   regenerate_enhanced)
from vstar_jax.errors import VstarError
from vstar_jax.generation.builtin import DEFAULT, DEMO_SOURCE
from vstar_jax.generation.model import model_info
from vstar_jax.generation.outputs import FramesDiffer
from vstar_jax.validate import number

DEMO_NAMES = (DEFAULT, DEMO_SOURCE)  # --checkpoint demo / --enhance demo: the embedded demo model as refiner
FROM_SIDECAR_APPLIES = ("from_sidecar", "out", "checkpoint", "overwrite", "quiet")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # noqa: D401 - argparse hook: one line, as every vstar-jax error
        raise VstarError(f"{self.prog}: {message}")


def refiner_arg(value):
    """A refiner checkpoint from the command line: None (the demo model) for ``demo``."""
    return None if value is None or value in DEMO_NAMES else value


def enhance_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    p = _Parser(prog="vstar-jax enhance",
                description="Refine a (long) video with a text-to-video model: StreamingT2V's enhancer (chunked "
                            "SDEdit with shared noise and randomized blending).")
    p.add_argument("input", nargs="?", help="the video to enhance (.mp4 or .gif)")
    p.add_argument("--prompt", help="the video's text (the refiner is conditioned on it)")
    p.add_argument("--checkpoint", help="the refiner: a converted checkpoint directory (default: the embedded demo "
                                        "model, 'demo')")
    p.add_argument("--strength", type=float, help=f"SDEdit strength T'/T in (0, 1] (default: the refiner's; "
                                                  f"{d['strength']}, the reference's, unless its config sets "
                                                  f"diffusion.sdedit_strength: the demo models' 0.3)")
    p.add_argument("--chunk", type=int, help=f"frames per chunk (default {d['chunk']})")
    p.add_argument("--overlap", type=int, help=f"frames two chunks share (default {d['overlap']})")
    p.add_argument("--size", metavar="HxW", help="the refiner's frame size (default: its own)")
    r = REFERENCE_SAMPLER
    p.add_argument("--solver", choices=("ddim", "dpmpp_2m_sde"),
                   help=f"the sampler's solver (default: {r['solver']} with an MS-Vid2Vid-XL refiner, the "
                        f"reference's; {d['solver']} otherwise, e.g. the demo model)")
    p.add_argument("--steps", type=int, help=f"ddim: steps over the whole schedule, those at or below T' run "
                                             f"(default {d['steps']}: 30 at strength 0.6); dpmpp_2m_sde: steps "
                                             f"from T' (default {r['steps']})")
    p.add_argument("--cfg", type=float, help=f"classifier-free guidance scale (default {d['cfg']})")
    p.add_argument("--guide-rescale", type=float, metavar="X",
                   help=f"the reference's CFG std rescale in [0, 1], 0 = plain CFG (default {r['guide_rescale']} "
                        f"with an MS-Vid2Vid-XL refiner, {d['guide_rescale']} otherwise)")
    p.add_argument("--negative-prompt", metavar="TEXT",
                   help="the unconditional text of CFG (default: the empty prompt, as the reference's "
                        "--negative_prompt_enhancer; its config's long negative text is not used at inference)")
    p.add_argument("--eta", type=float, help="ddim: DDIM eta (default: the refiner's); dpmpp_2m_sde: the SDE's "
                                             "eta (default 1)")
    p.add_argument("--seed", type=int, help="PRNG seed (default 0)")
    p.add_argument("--fps", type=float, help="the refiner's fps conditioning (default: its own)")
    p.add_argument("--save-fps", type=float, help="frame rate of the written video (default 8)")
    p.add_argument("--frame-batch", type=int, help="frames read, encoded and decoded at a time (default 16)")
    p.add_argument("--no-shared-noise", action="store_true",
                   help="each chunk from its own noise (the paper's naive chunking, for comparison)")
    p.add_argument("--no-blend", action="store_true",
                   help="no randomized blending: each chunk takes its whole overlap (a hard cut)")
    p.add_argument("--chunk-clock", choices=CHUNK_CLOCKS,
                   help=f"the frame clock each chunk is shown where the refiner has one (the demo models' frame "
                        f"position): 'video', its frames' places in the whole video; 'chunk', its own, as if "
                        f"each chunk were a whole clip (an ablation: it re-imposes the motion in every chunk). "
                        f"No effect on refiners without a clock (MS-Vid2Vid-XL, zeroscope) "
                        f"(default {d['chunk_clock']})")
    p.add_argument("--out", help="output video (default: <input>-enhanced.mp4 beside the input)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output (and its sidecar)")
    p.add_argument("--from-sidecar", metavar="JSON", help="enhance again what an enhancer sidecar describes")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def enhance_main(argv: Sequence[str]) -> int:
    parser = enhance_parser()
    a = parser.parse_args(list(argv))
    progress = not a.quiet
    if a.from_sidecar:
        given = [act.option_strings[-1] if act.option_strings else act.dest for act in parser._actions  # noqa: SLF001
                 if act.dest not in FROM_SIDECAR_APPLIES + ("help",) and getattr(a, act.dest, None) not in (None, False)]
        if given:
            raise VstarError(f"--from-sidecar takes its settings from the sidecar; it would ignore {', '.join(given)} "
                             f"(it applies only --out, --checkpoint, --overwrite and --quiet)")
        sc = load_enhance_sidecar(a.from_sidecar)
        out = a.out or str(a.from_sidecar).rsplit(".", 1)[0] + "-regen.mp4"
        try:
            res = regenerate_enhanced(a.from_sidecar, out=out, checkpoint=refiner_arg(a.checkpoint) if a.checkpoint
                                      else None, progress=progress, overwrite=a.overwrite,
                                      verify=bool(sc.get("frames_sha256")))
        except FramesDiffer as e:
            print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
            return 1
        print(f"{res.path}\tidentical frames")
        return 0
    if a.input is None:
        raise VstarError("vstar-jax enhance: give the video to enhance (IN.mp4) or --from-sidecar JSON")
    res = enhance_video(a.input, a.prompt if a.prompt is not None else "", out=a.out,
                        checkpoint=refiner_arg(a.checkpoint), progress=progress, overwrite=a.overwrite,
                        strength=a.strength, chunk=a.chunk, overlap=a.overlap, size=a.size, steps=a.steps, cfg=a.cfg,
                        eta=a.eta, seed=a.seed, fps=a.fps, save_fps=a.save_fps, frame_batch=a.frame_batch,
                        shared_noise=not a.no_shared_noise, blend=not a.no_blend, solver=a.solver,
                        guide_rescale=a.guide_rescale, negative_prompt=a.negative_prompt, chunk_clock=a.chunk_clock)
    print(res.path)
    return 0


def check_enhance_stage(checkpoint, strength, frames, generator=None) -> None:
    """``generate --enhance``'s settings, checked before the video is generated (one-line errors): the
    strength, the refiner's checkpoint, and a length (``frames``, else the generator's default) of at least
    one chunk."""
    if strength is not None:
        s = number("--enhance-strength", strength)
        if not 0.0 < s <= 1.0:
            raise VstarError(f"--enhance-strength must be in (0, 1], got {strength}")
    model_info(refiner_arg(checkpoint))
    if frames is None:
        frames = model_info(generator).diffusion.get("default_frames", 16)
    if int(frames) < DEFAULTS["chunk"]:
        raise VstarError(f"--enhance refines chunks of {DEFAULTS['chunk']} frames: generate at least that many "
                         f"(--frames {DEFAULTS['chunk']}), or run vstar-jax enhance with a smaller --chunk")


def enhance_generated(video_path: str, prompt: str, checkpoint, *, strength=None, seed=None, overwrite=False,
                      progress=True, negative_prompt=None) -> str:
    """``generate ... --enhance CKPT``: the generated video enhanced into ``<video>-enhanced.mp4``
    (``negative_prompt``: ``--enhance-negative-prompt``, None the refiner's default)."""
    return enhance_video(video_path, prompt, checkpoint=refiner_arg(checkpoint), strength=strength, seed=seed,
                         overwrite=overwrite, progress=progress, negative_prompt=negative_prompt).path
