"""Long videos spread over devices (issue 24): what a denoising step communicates, and how it scales.

    # one point: genl at 64 frames, 2 processes (each on one core) against 1 process on one core
    python benchmarks/clip_parallel.py --methods genl --frames 64 --processes 2 --json out.jsonl
    # the grid (an idle machine: every point is timed)
    python benchmarks/clip_parallel.py --methods genl,blend,freenoise,fifo --frames 64,256 --models demo,tiny \\
        --processes 2 --json out.jsonl
    # bytes only, on 8 simulated devices (no timing: compile, read the program)
    python benchmarks/clip_parallel.py --comm --methods genl,blend,freenoise,fifo --frames 64,256 --json comm.jsonl

Every point drives the public path, ``pipeline.generate_video`` with ``long_video=`` and ``mesh=`` (so a
parallel path for a method is measured as soon as it is in the code); the methods' specs are
``benchmarks/long_video.py``'s (the models' trained window 8) and the lengths its nearest valid ones.

* **Scaling** (``--processes P``): P worker processes join one ``jax.distributed`` run on a loopback
  coordinator (``vstar_jax.parallel.distributed.initialize``: gloo CPU collectives), each pinned to one
  core (``taskset -c i``) with XLA's CPU thread pool off (``--xla_cpu_multi_thread_eigen=false``), on a
  mesh over their P devices (``--mesh``, default ``frames=-1``); the baseline is 1 process on core 0
  without a mesh (the serial path). Each process generates the point and a twin of twice its DDIM steps
  (FIFO, whose steps are fixed: twice its frames), each once to compile and then ``--reps`` times,
  interleaved; ``s_per_step`` is the *marginal* time of a step from the fastest sampling times
  (``sidecar["timing_s"]["sample"]``: the compiled loop only) of the two: (t(2S) - t(S)) / S, the time a
  step takes after compilation without the run's one-time work (``worker``; FIFO: the marginal queue
  iteration times the point's iterations, per DDIM step); ``s_per_step_run`` is the point's whole run over
  its steps (what this benchmark reported before), ``fixed_s`` the one-time part. ``speedup`` = the
  1-process ``s_per_step`` / this one's.
* **Work** (``--work``): one process, ``--processes`` P simulated devices, XLA's thread pool off: the CPU
  seconds of the sampling stage, serial against ``--mesh`` (all P devices' work), marginal per step as
  above; ``work_speedup`` = serial / (mesh / P), what P processes would reach if only the work counted.
  CPU time is the work whatever else runs, so this one holds on a shared machine (``work_points``).
* **Bytes** (``--comm``): on ``--devices`` simulated CPU devices (one process), each mesh of ``--layouts``
  compiles the sampling loop (through ``generate_video``, stopped before it runs) and every collective of
  the compiled program is counted from its HLO (``benchmarks/sharding.py``'s ``collective_bytes``), times
  how often it runs: the enclosing while loops' known trip counts (the step loop, a method's window scan).
  ``comm_bytes_per_step`` = bytes per device of the whole loop / DDIM steps. The timed points report it too.

One JSON line per point (``method``, ``frames``, ``processes``, ``devices``, ``s_per_step``, ``speedup``,
``comm_bytes_per_step``, and ``model``, ``spec``, ``mesh``, ``steps``) on stdout and to ``--json``;
a Markdown table at the end. Bad input: one ``error:`` line, exit 2, before anything runs.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import time

from tqdm.auto import tqdm

ROOT = pathlib.Path(__file__).resolve().parents[1]
for _p in (str(ROOT), str(ROOT / "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from benchmarks.rows import emit as _emit  # noqa: E402  (one JSON-row writer)
from benchmarks.long_video import METHODS  # noqa: E402  (one table of the methods' specs)
from benchmarks.sharding import collective_bytes  # noqa: E402  (one HLO collective counter)

PARALLEL_METHODS = ("genl", "blend", "freenoise", "fifo")
ONE_CORE = "--xla_cpu_multi_thread_eigen=false"  # XLA CPU: no intra-op thread pool
PROMPT = "a red circle moves to the right"


# ------------------------------------------------------------------------------ HLO
def _computations(hlo: str) -> dict:
    """{name: text} of every computation of HLO module text; the entry's name is ``"ENTRY"``."""
    out, name, lines = {}, None, []
    for line in hlo.splitlines():
        head = re.match(r"(ENTRY )?%([\w.\-]+) .*\{$", line)
        if name is None and head:
            name, lines = ("ENTRY" if head.group(1) else head.group(2)), []
        elif name is not None and line.startswith("}"):
            out[name] = "\n".join(lines)
            name = None
        elif name is not None:
            lines.append(line)
    return out


def program_bytes(hlo: str) -> int:
    """Bytes per device that every collective of a compiled program sends over one run: each
    computation's collectives (:func:`collective_bytes`) times how often it runs (a while body its loop's
    ``known_trip_count`` times its caller's count; a call, fusion or branch once per caller run)."""
    comps = _computations(hlo)
    sites: dict = {}  # callee -> [(caller, times per caller run)]
    for name, text in comps.items():
        for line in text.splitlines():
            m = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', line)
            trips = int(m.group(1)) if m and " while(" in line else 1
            called = [(c, trips if kind == "body" else 1)
                      for kind, c in re.findall(r"(body|condition|calls|to_apply)=%([\w.\-]+)", line)]
            for group in re.findall(r"(?:branch_computations|called_computations)=\{([^}]*)\}", line):
                called += [(c, 1) for c in re.findall(r"%([\w.\-]+)", group)]
            for callee, times in called:
                sites.setdefault(callee, []).append((name, times))
    runs: dict = {"ENTRY": 1}

    def count(name: str) -> int:  # HLO calls form a DAG: each computation's runs from all its call sites
        if name not in runs:
            runs[name] = 0  # (no cycles in HLO; guards a malformed text)
            runs[name] = sum(count(caller) * times for caller, times in sites.get(name, []))
        return runs[name]

    return int(sum(count(name) * sum(b for _, b in collective_bytes(text).values())
                   for name, text in comps.items()))


# ------------------------------------------------------------------------------ one point
def _spec(method: str) -> str:
    """A method's long-video spec: its default (``fifo`` -> ``fifo:8:1``), or a full spec given as the
    method (``fifo:8:4``: FIFO with 4 latent partitions)."""
    return method if ":" in method else METHODS[method]


def _frames_for(method: str, frames: int) -> int:
    from benchmarks.long_video import _valid_frames  # noqa: PLC0415  (imports JAX)

    return _valid_frames(_spec(method), frames)


def _checkpoint(model: str, written=None):
    """None for the embedded demo model; the tiny random checkpoint (``written``: one the parent wrote for
    every worker, as each process of a multi-process run would otherwise write its own, collectively)."""
    if model == "demo":
        return None
    if written:
        return written
    from tiny_checkpoint import shared_tiny_checkpoint  # noqa: PLC0415

    return shared_tiny_checkpoint()


class _Compiled(Exception):
    """Carries the compiled sampling program out of generate_video, before it runs."""


def compiled_program(model: str, method: str, frames: int, steps: int, mesh):
    """The sampling loop ``generate_video`` compiles for this point (it is not run)."""
    from vstar_jax import pipeline as pl  # noqa: PLC0415

    real = pl._compiled_sampler  # the pipeline's sampler stage (tests replace it the same way)

    def grab(*args, **kw):
        raise _Compiled(real(*args, **kw))

    pl._compiled_sampler = grab
    try:
        pl.generate_video(PROMPT, checkpoint=_checkpoint(model), frames=frames, steps=steps, seed=0,
                          long_video=_spec(method), mesh=mesh, progress=False)
    except _Compiled as e:
        return e.args[0]
    finally:
        pl._compiled_sampler = real
    raise RuntimeError("generate_video compiled no sampling loop")


def _steps_of(method: str, steps: int) -> int:
    """The DDIM steps a point runs: ``steps``, or the method's own when it fixes them (FIFO: window x
    partitions)."""
    from vstar_jax.longvideo import parse_strategy  # noqa: PLC0415

    return parse_strategy(_spec(method)).steps_for(None) or steps


def comm_points(args) -> None:
    """--comm, inside the simulated-devices child: one line per (model, method, frames, layout)."""
    import jax  # noqa: PLC0415

    for model in args.models:
        for method in args.methods:
            for want in args.frames:
                frames = _frames_for(method, want)
                steps = _steps_of(method, args.steps)
                for layout in args.layouts:
                    hlo = compiled_program(model, method, frames, steps, _mesh_axes(layout)).as_text()
                    _emit({"model": model, "method": method, "spec": _spec(method), "frames": frames,
                           "processes": 1, "devices": len(jax.devices()), "mesh": layout, "steps": steps,
                           "s_per_step": None, "speedup": None,
                           "comm_bytes_per_step": round(program_bytes(hlo) / steps)}, args.json)


def _iterations(method: str, frames: int) -> int:
    """FIFO's queue iterations for ``frames`` output frames (N + L - F)."""
    from vstar_jax.longvideo import parse_strategy  # noqa: PLC0415

    st = parse_strategy(_spec(method))
    return frames + st.queue_steps - st.window


def marginal(t1: float, t2: float, units1: int, units2: int) -> tuple:
    """(seconds per unit, fixed seconds) from two runs of ``units1`` and ``units2`` units (DDIM steps, or FIFO's
    queue iterations) taking ``t1`` and ``t2`` seconds: the difference over the added units is the time a unit
    takes after compilation, without what a run does once (setting up the windows, putting the video together,
    FIFO's base clip, the host's start and end of the loop); the fixed part is the rest of ``t1``."""
    per = (t2 - t1) / (units2 - units1)
    return per, t1 - per * units1


def worker(args) -> None:
    """One process of a timed point (``--worker``): join the run, generate the point and its twice-as-long twin
    (2 x the DDIM steps; FIFO, whose steps are fixed: 2 x the frames) once to compile, then ``--reps`` times each,
    interleaved; process 0 prints the line. ``s_per_step``: the marginal time a DDIM step takes (:func:`marginal`
    of the fastest run of each; FIFO: the marginal queue iteration times the point's iterations, per DDIM step),
    ``s_per_step_run``: the point's whole sampling time over its steps (the number this benchmark reported before
    2026-12-05 15:30, which counts the run's fixed part over only a few steps), ``fixed_s`` the fixed part."""
    from vstar_jax import pipeline as pl  # noqa: PLC0415
    from vstar_jax.parallel import distributed  # noqa: PLC0415
    from vstar_jax.parallel.sharding import make_mesh  # noqa: PLC0415
    from vstar_jax.runtime import runtime  # noqa: PLC0415

    info = distributed.initialize(coordinator=args.coordinator, num_processes=args.num_processes,
                                  process_id=args.process_id, timeout=120)
    mesh = make_mesh(_mesh_axes(args.mesh)) if args.num_processes > 1 else None
    model, method = args.models[0], args.methods[0]
    frames = _frames_for(method, args.frames[0])
    steps = _steps_of(method, args.steps)
    fifo = _spec(method).startswith("fifo")
    twin = dict(frames=_frames_for(method, 2 * frames)) if fifo else dict(steps=2 * steps)
    kw = dict(checkpoint=_checkpoint(model, args.checkpoint), frames=frames, steps=steps, seed=0,
              long_video=_spec(method), mesh=mesh, progress=False, keep_video=False)
    runs = [kw, dict(kw, **twin)]
    for k in runs:
        pl.generate_video(PROMPT, **k)  # compiles
    hlo = list(runtime().compiled.values())[-2].as_text()  # the point's program (the twin compiled last)
    best = [float("inf"), float("inf")]
    for _ in range(args.reps):
        for i, k in enumerate(runs):
            best[i] = min(best[i], pl.generate_video(PROMPT, **k).sidecar["timing_s"]["sample"])
    units = ([_iterations(method, frames), _iterations(method, runs[1]["frames"])] if fifo else [steps, 2 * steps])
    per, fixed = marginal(best[0], best[1], *units)
    if info["process_index"] == 0:
        print(json.dumps({"model": model, "method": method, "spec": _spec(method), "frames": frames,
                          "processes": args.num_processes, "devices": info["devices"],
                          "mesh": args.mesh if mesh is not None else None, "steps": steps,
                          "s_per_step": round(per * units[0] / steps, 5), "s_per_step_run": round(best[0] / steps, 5),
                          "fixed_s": round(fixed, 4), "comm_bytes_per_step": round(program_bytes(hlo) / steps)}),
              flush=True)


def work_points(args) -> None:
    """--work, inside a child that sees P simulated devices on this process's one core: per point, the CPU
    seconds (``time.process_time``: the work, whatever else loads the machine) of the sampling stage of the
    point and its twin (:func:`worker`'s), serial (no mesh) and on ``--mesh`` over the P devices (all devices'
    work: they share the process), each compiled first and then run ``--reps`` times interleaved, the least
    counting. ``work_speedup`` = serial / (mesh / P): the speedup P processes would reach if only the work
    counted (no collective latency, no waiting in lockstep), from the marginal steps as :func:`marginal`."""
    import jax  # noqa: PLC0415

    from vstar_jax import pipeline as pl  # noqa: PLC0415

    real, cpu = pl.run_sampler, []

    def timed(*a, **k):
        c0 = time.process_time()
        out = real(*a, **k)
        cpu.append(time.process_time() - c0)
        return out

    pl.run_sampler = timed
    p = len(jax.devices())
    try:
        for model in args.models:
            for method in args.methods:
                for want in args.frames:
                    frames = _frames_for(method, want)
                    steps = _steps_of(method, args.steps)
                    fifo = _spec(method).startswith("fifo")
                    twin = dict(frames=_frames_for(method, 2 * frames)) if fifo else dict(steps=2 * steps)
                    base = dict(checkpoint=_checkpoint(model), frames=frames, steps=steps, seed=0,
                                long_video=_spec(method), progress=False, keep_video=False)
                    cases = [dict(base, mesh=m, **t) for m in (None, _mesh_axes(args.mesh)) for t in ({}, twin)]
                    for k in cases:
                        pl.generate_video(PROMPT, **k)  # compiles
                    best = [float("inf")] * len(cases)
                    for _ in range(args.reps):
                        for i, k in enumerate(cases):
                            pl.generate_video(PROMPT, **k)
                            best[i] = min(best[i], cpu[-1])
                    units = ([_iterations(method, frames), _iterations(method, twin["frames"])] if fifo
                             else [steps, 2 * steps])
                    serial, _ = marginal(best[0], best[1], *units)
                    mesh, _ = marginal(best[2], best[3], *units)
                    _emit({"model": model, "method": method, "spec": _spec(method), "frames": frames, "processes": 1,
                           "devices": p, "mesh": args.mesh, "steps": steps,
                           "cpu_s_per_step_serial": round(serial * units[0] / steps, 5),
                           "cpu_s_per_step_mesh": round(mesh * units[0] / steps, 5),
                           "work_speedup": round(serial * p / mesh, 3),
                           "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}, args.json)
    finally:
        pl.run_sampler = real


# ------------------------------------------------------------------------------ the parent
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mesh_axes(spec: str) -> dict:
    axes = {}
    for part in spec.split(","):
        name, _, n = part.partition("=")
        if name.strip() not in ("data", "frames", "model") or not n.strip().lstrip("-").isdigit():
            raise ValueError(f"bad mesh {spec!r}: use e.g. frames=-1 or data=2,frames=4")
        axes[name.strip()] = int(n)
    return axes


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def timed_point(args, model: str, method: str, frames: int, processes: int) -> dict:
    """Run ``processes`` workers (one core each) for one point; the line process 0 printed."""
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=ONE_CORE, PYTHONPATH=str(ROOT))
    for k in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_NTASKS", "SLURM_PROCID"):
        env.pop(k, None)
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(processes))
    procs = []
    for i in range(processes):
        cmd = [sys.executable, __file__, "--worker", "--models", model, "--methods", method, "--frames", str(frames),
               "--steps", str(args.steps), "--mesh", args.mesh, "--coordinator", f"127.0.0.1:{port}",
               "--reps", str(args.reps),
               "--checkpoint", args.checkpoint or "",
               "--num-processes", str(processes), "--process-id", str(i)]
        procs.append(subprocess.Popen(["taskset", "-c", str(cores[i % len(cores)])] + cmd, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env))
    outs = [p.communicate(timeout=args.timeout) for p in procs]
    bad = [(p.returncode, se) for p, (_, se) in zip(procs, outs) if p.returncode]
    lines = [ln for ln in outs[0][0].splitlines() if ln.startswith("{")]
    if bad or not lines:
        err = (bad[0][1] if bad else outs[0][1]).strip().splitlines() or ["?"]
        return {"model": model, "method": method, "frames": frames, "processes": processes, "error": err[-1][:300]}
    return json.loads(lines[-1])


def table(rows) -> str:
    head = ("| model | method | frames | processes | devices | mesh | s / step | speedup | comm bytes / step |\n"
            "|---|---|---|---|---|---|---|---|---|\n")
    cell = lambda v, f: "-" if v is None else f.format(v)  # noqa: E731
    body = "".join(
        f"| {r['model']} | {r.get('spec', r['method'])} | {r['frames']} | {r['processes']} | {r.get('devices', '-')} | "
        f"{r.get('mesh') or '-'} | "
        + (f"error: {r['error']} | | |\n" if "error" in r else
           f"{cell(r['s_per_step'], '{:.3f}')} | {cell(r['speedup'], '{:.2f}x')} | "
           f"{r['comm_bytes_per_step'] / 2**20:.2f} MiB |\n")
        for r in rows)
    return head + body


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default=",".join(PARALLEL_METHODS), help="comma-separated (genl,blend,freenoise,fifo), or full specs (fifo:8:4)")
    p.add_argument("--frames", default="64,256", help="comma-separated video lengths (each method's nearest valid)")
    p.add_argument("--models", "--model", default="demo", help="demo (the embedded model) and/or tiny")
    p.add_argument("--processes", default="2", help="comma-separated process counts to time against 1 process")
    p.add_argument("--steps", type=int, default=4, help="DDIM steps (default 4; FIFO: its own)")
    p.add_argument("--mesh", default="frames=-1", help="mesh over the processes' devices (default frames=-1)")
    p.add_argument("--comm", action="store_true", help="bytes per step on --devices simulated devices, no timing")
    p.add_argument("--work", action="store_true", help="CPU seconds of the work, serial against --mesh on "
                   "--processes simulated devices in one process (robust to other load; no collective latency)")
    p.add_argument("--devices", type=int, default=8, help="--comm: simulated CPU devices (default 8)")
    p.add_argument("--layouts", default="frames=8;data=2,frames=4;data=8", help="--comm: ';'-separated meshes")
    p.add_argument("--json", help="append the JSON lines to this file")
    p.add_argument("--timeout", type=float, default=7200, help="seconds per point")
    p.add_argument("--reps", type=int, default=2, help="timed runs of each length per point (the fastest counts)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--comm-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--work-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--coordinator", help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", default="", help=argparse.SUPPRESS)
    p.add_argument("--num-processes", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--process-id", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m.split(":")[0] not in PARALLEL_METHODS]
    if unknown or not args.methods:
        raise ValueError(f"--methods takes {', '.join(PARALLEL_METHODS)}; got {unknown or 'none'}")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.models or any(m not in ("demo", "tiny") for m in args.models):
        raise ValueError(f"--models takes demo and/or tiny; got {args.models}")
    try:
        args.frames = [int(f) for f in args.frames.split(",") if f.strip()]
        args.processes = [int(n) for n in args.processes.split(",") if n.strip()]
    except ValueError:
        raise ValueError("--frames and --processes are comma-separated integers") from None
    if not args.frames or min(args.frames) < 1 or not args.processes or min(args.processes) < 1:
        raise ValueError("--frames and --processes must be positive")
    if max(args.frames) > 65536:
        raise ValueError(f"--frames {max(args.frames)} is more than 65536")
    if args.reps < 1:
        raise ValueError(f"--reps must be >= 1, got {args.reps}")
    if args.reps > 100:
        raise ValueError(f"--reps must be at most 100, got {args.reps}")
    if not (args.comm or args.work) and not args.worker and max(args.processes) > _cores():
        raise ValueError(f"--processes {max(args.processes)} needs as many cores, this machine gives {_cores()}")
    args.layouts = [s.strip() for s in args.layouts.split(";") if s.strip()]
    for spec in args.layouts + [args.mesh]:
        _mesh_axes(spec)
    return args


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.worker:
        worker(args)
        return 0
    if args.comm_child:
        comm_points(args)
        return 0
    if args.work_child:
        work_points(args)
        return 0
    if args.work:  # one process, P simulated devices on one core, XLA's thread pool off
        env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={max(args.processes)} {ONE_CORE}")
        cmd = [sys.executable, __file__, "--work-child"] + [a for a in (argv or sys.argv[1:]) if a != "--work"]
        return subprocess.run(cmd, env=env, timeout=args.timeout).returncode
    if args.comm:  # a child that sees --devices simulated devices (XLA_FLAGS is read when JAX starts)
        env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={args.devices}")
        cmd = [sys.executable, __file__, "--comm-child"] + [a for a in (argv or sys.argv[1:]) if a != "--comm"]
        r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, timeout=args.timeout)
        rows = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]
        print(table(rows))
        return r.returncode
    rows = []
    points = [(m, meth, f) for m in args.models for meth in args.methods for f in args.frames]
    if "tiny" in args.models:  # written once here: the workers of a multi-process run read the same files
        from tiny_checkpoint import shared_tiny_checkpoint  # noqa: PLC0415

        args.checkpoint = shared_tiny_checkpoint()
    for model, method, want in tqdm(points, desc="points", file=sys.stderr):
        base = timed_point(args, model, method, want, 1)
        _emit(dict(base, speedup=1.0 if "error" not in base else None), args.json)
        rows.append(dict(base, speedup=1.0))
        for n in args.processes:
            if n == 1:
                continue
            row = timed_point(args, model, method, want, n)
            if "error" not in row and "error" not in base:
                row["speedup"] = round(base["s_per_step"] / row["s_per_step"], 3)
            _emit(row, args.json)
            rows.append(row)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
