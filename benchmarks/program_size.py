"""How big each compiled sampling program is, where its operations come from, and what tracing, lowering
and compiling it cost: the numbers behind "compile time dominates short runs" (issue 30).

    python benchmarks/program_size.py --programs single,long,batch --json /tmp/size.jsonl
    python benchmarks/program_size.py --checkpoint CKPT --frames 16 --programs single

For every program (``single``: one plain video; ``long``: ``--long-video`` (default ``genl:8:4``) at
``--long-frames``; ``batch``: ``--items`` videos in one exact-mode batch) it runs the user's own path
(``generate_video`` / ``generate_batch``) up to the sampling stage, then, instead of sampling, traces,
lowers and compiles that stage's program separately and reports:

* ``trace_s``, ``lower_s``, ``compile_s``: wall seconds of each (a compile-cache hit still pays trace and
  lower: it re-attaches this process's progress callback to the stored executable), and ``trace_cpu_s``,
  ``lower_cpu_s``, ``compile_cpu_s``: this process's CPU seconds in each (all threads), which other jobs'
  load on a shared machine changes far less than wall seconds: compare builds by these;
* ``stablehlo_ops``: operations in the lowered StableHLO, and ``by_part``: how many come from each UNet
  part (its Flax module path, level numbers dropped) or from outside the UNet (the sampler's own
  arithmetic), read from the lowering's debug locations;
* ``by_op``: the most frequent operation kinds; ``hlo_instructions``: instructions in the optimised HLO.

``--ablate PART`` measures the programs with one UNet part replaced by the identity (an upper bound on what
that part costs to build; the program is not the model any more, so nothing is sampled from it anyway):
``temporal_transformer``, ``spatial_transformer``, ``transformer_block`` (every block inside both),
``temporal_conv``, ``group_norm_stats`` (the statistics: GroupNorm keeps only its affine) or
``attention`` (every attention core returns its queries). One process per part:

    for p in none temporal_transformer spatial_transformer transformer_block temporal_conv; do
      python benchmarks/program_size.py --programs single --ablate $p; done

The compile cache is off here (every program compiles). One JSON line per program.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = "a red circle moves to the right"
PROGRAMS = ("single", "long", "batch")
ABLATIONS = ("none", "temporal_transformer", "spatial_transformer", "transformer_block", "temporal_conv",
             "group_norm_stats", "attention")
_NOISE = {"while", "body", "cond", "closed_call", "checkpoint", "remat", "jvp", "pjit", "scan"}


class _Measured(Exception):
    """Raised by the replaced sampler stage once its program is measured (nothing is sampled)."""


def _locations(text: str) -> dict:
    """{#locN: its definition} of a StableHLO module printed with debug info."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^(#loc\d+) = loc\((.*)\)$", text, re.M)}


def _name(ref: str, defs: dict, memo: dict, depth: int = 0) -> str:
    """The name stack a location stands for (a call site takes its callee's name, a fused one its first)."""
    if ref in memo:
        return memo[ref]
    d, out = defs.get(ref, ""), ""
    m = re.match(r'^"([^"]*)"', d)
    if m:
        out = m.group(1)
    elif depth < 64:
        refs = re.findall(r"#loc\d+", d)
        for r in refs:
            out = _name(r, defs, memo, depth + 1)
            if out:
                break
    memo[ref] = out
    return out


def part_of(name: str) -> str:
    """The UNet part an operation's name stack is in (module path below the UNet, two levels, level
    numbers dropped: ``up_res/temporal_conv``), or ``outside the UNet``."""
    parts = [p for p in name.split("/") if p not in _NOISE]
    root = next((i for i, p in enumerate(parts) if "UNet" in p), None)
    if root is None:
        return "outside the UNet"
    return re.sub(r"_?\d+", "", "/".join(parts[root + 2:root + 4])) or re.sub(r"_?\d+", "", parts[root + 1])


def measure_lowering(traced) -> dict:
    """Lower and compile a ``jax.jit(...).trace(...)`` result; sizes and seconds (see the module docstring)."""
    t0, c0 = time.perf_counter(), time.process_time()
    lowered = traced.lower()
    t1, c1 = time.perf_counter(), time.process_time()
    compiled = lowered.compile()
    t2, c2 = time.perf_counter(), time.process_time()
    text = lowered.as_text(debug_info=True)
    defs, memo = _locations(text), {}
    parts, kinds = collections.Counter(), collections.Counter()
    for m in re.finditer(r"= (stablehlo\.\w+)\b[^\n]*loc\((#loc\d+)\)\s*$", text, re.M):
        kinds[m.group(1).split(".", 1)[1]] += 1
        parts[part_of(_name(m.group(2), defs, memo))] += 1
    hlo = compiled.as_text() or ""
    return dict(lower_s=round(t1 - t0, 3), compile_s=round(t2 - t1, 3), lower_cpu_s=round(c1 - c0, 3),
                compile_cpu_s=round(c2 - c1, 3), stablehlo_ops=sum(kinds.values()),
                hlo_instructions=sum(1 for ln in hlo.splitlines() if " = " in ln),
                by_part=dict(parts.most_common(12)), by_op=dict(kinds.most_common(8)))


def ablate(part: str) -> None:
    """Replace one UNet part by the identity in this process (see the module docstring)."""
    from vstar_jax.models import layers, unet3d

    identity = lambda self, x, *args, **kwargs: x  # noqa: E731
    if part == "temporal_transformer":
        unet3d.TemporalTransformer.__call__ = identity
    elif part == "spatial_transformer":
        unet3d.SpatialTransformer.__call__ = identity
    elif part == "transformer_block":
        unet3d.TransformerBlock.__call__ = identity
    elif part == "temporal_conv":
        unet3d.TemporalConvBlock.__call__ = identity
    elif part == "group_norm_stats":
        def stats(x, groups):  # any (n, c) mean and var: the first two positions
            rows = x.reshape(x.shape[0], -1, x.shape[-1])
            return rows[:, 0], rows[:, 1]
        layers.group_norm_stats = stats
    elif part == "attention":
        layers.attention = lambda q, k, v, **kwargs: q


def measure_program(program: str, a) -> dict:
    """Run the user's path for ``program`` up to its sampling stage and measure that stage's program."""
    from vstar_jax import pipeline as pl
    from vstar_jax.generation import sampling

    seen = {}

    def stage(unet, plan, args, progress, items=None):
        t0, c0 = time.perf_counter(), time.process_time()
        if items is None:
            traced = sampling.sample_jit.trace(unet, *args, plan=plan)
        else:
            traced = sampling.sample_batch_jit.trace(unet, *args, plan=plan, item_sharding=items.sharding,
                                                     mode=items.mode)
        seen.update(trace_s=round(time.perf_counter() - t0, 3), trace_cpu_s=round(time.process_time() - c0, 3),
                    **measure_lowering(traced))
        raise _Measured

    real, pl._compiled_sampler = pl._compiled_sampler, stage  # the pipeline's sampler stage, measured not run
    common = dict(checkpoint=a.checkpoint, steps=a.steps, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            if program == "batch":
                pl.generate_batch([{"prompt": PROMPT, "seed": s} for s in range(a.items)], frames=a.frames,
                                  out_dir=tmp, **common)
            else:
                long = program == "long"
                pl.generate_video(PROMPT, frames=a.long_frames if long else a.frames,
                                  long_video=a.long if long else None, out=os.path.join(tmp, "v.mp4"), **common)
        except _Measured:
            pass
        finally:
            pl._compiled_sampler = real
    return seen


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--programs", default=",".join(PROGRAMS), help=f"comma-separated, of {', '.join(PROGRAMS)}")
    ap.add_argument("--checkpoint", help="checkpoint folder (default: the embedded demo model)")
    ap.add_argument("--frames", type=int, default=8, help="frames of the single and batch programs (default 8)")
    ap.add_argument("--long", default="genl:8:4", help="the long program's method (default genl:8:4)")
    ap.add_argument("--long-frames", type=int, default=32, help="the long program's frames (default 32)")
    ap.add_argument("--items", type=int, default=4, help="videos in the batch program (default 4)")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--ablate", default="none", choices=ABLATIONS, help="replace one UNet part by the identity")
    ap.add_argument("--json", help="also append the JSON lines here")
    a = ap.parse_args(argv)
    programs = [p.strip() for p in a.programs.split(",") if p.strip()]
    bad = [p for p in programs if p not in PROGRAMS]
    if bad:
        print(f"error: unknown program(s) {', '.join(bad)} (known: {', '.join(PROGRAMS)})", file=sys.stderr)
        return 2
    sizes = {"--frames": a.frames, "--long-frames": a.long_frames, "--items": a.items, "--steps": a.steps}
    wrong = [f"{k} {v}" for k, v in sizes.items() if not 1 <= v <= 100_000]
    if wrong:
        print(f"error: {', '.join(wrong)} out of range (1 to 100000)", file=sys.stderr)
        return 2
    os.environ["VSTAR_JAX_CACHE_DIR"] = "off"
    sys.path[:0] = [REPO]
    from benchmarks.rows import emit  # one JSON-row writer (the repository is on the path from here on)
    ablate(a.ablate)
    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    for program in programs:
        row = dict(kind="program_size", program=program, checkpoint=a.checkpoint or "demo", steps=a.steps,
                   frames=a.long_frames if program == "long" else a.frames,
                   long_video=a.long if program == "long" else None, items=a.items if program == "batch" else 1,
                   ablate=a.ablate, commit=commit, load_avg=round(os.getloadavg()[0], 2), **measure_program(program, a))
        emit(row, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
