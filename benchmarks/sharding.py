"""What one denoising step communicates on each mesh layout, and what the sharded path costs.

    python benchmarks/sharding.py                      # tiny UNet, 8 simulated CPU devices
    python benchmarks/sharding.py --shape 2,4,16,16,16 --devices 8 --reps 5 --json out.jsonl

For every mesh layout (frames 8, data 2 x frames 4, data 8, frames 4 x model 2 (FSDP params), ...)
the UNet call on the (2 CFG rows, c, F, h, w) latents is compiled with the project's activation
layout (``vstar_jax.parallel.sharding.activation_layout``) and the collectives of the compiled program
are read from its HLO: count and bytes per device of every all-to-all, collective-permute (the
temporal convs' halos), all-reduce (GroupNorm statistics) and all-gather (FSDP weights). That is
what one sampler step sends per device (a DDIM step is one such call plus element-wise work).

Overhead of the sharded path: the same call on one device, plain (no mesh) against the sharded code
path given a one-device mesh (the path a user takes with ``--mesh frames=1``), interleaved in one
process, median of ``--reps``; and, on the simulated devices, each layout's call time beside the
one-device call in the same process. Simulated devices share this machine's cores, so those times
show the partitioner's overhead, not a speed-up; on real devices run it with ``--devices 0`` (use
what is there). Prints one JSON line per measurement and a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

LAYOUTS = ["frames=8", "data=2,frames=4", "data=8", "frames=4,model=2", "frames=2", "data=2"]
COLLECTIVES = ("all-to-all", "collective-permute", "all-reduce", "all-gather", "reduce-scatter")
DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1, "f64": 8, "s8": 1, "u8": 1}


def collective_bytes(hlo: str, source: str | None = None) -> dict:
    """{op: (count, bytes per device)} of the collectives in a compiled program's HLO text (a result
    tuple counts every element; async -start/-done pairs count once). ``source``: only the collectives
    whose ``op_name`` (the jax code that made them) matches this regex, e.g. ``"UNet3D"`` for those of the
    UNet's layers."""
    out = {op: [0, 0] for op in COLLECTIVES}
    for line in hlo.splitlines():
        if source is not None:
            name = re.search(r'op_name="([^"]*)"', line)
            if not re.search(source, name.group(1) if name else ""):
                continue
        for op in COLLECTIVES:
            m = re.search(r"= (.*?) " + op + r"(-start)?\(", line)
            if not m:
                continue
            size = 0
            for dt, dims in re.findall(r"(\w+)\[([\d,]*)\]", m.group(1)):
                n = 1
                for d in filter(None, dims.split(",")):
                    n *= int(d)
                size += n * DTYPE_BYTES.get(dt, 4)
            if m.group(2):  # an async start's result tuple holds the operand and the result: count half
                size //= 2
            out[op][0] += 1
            out[op][1] += size
    return {k: tuple(v) for k, v in out.items()}


def executed_collective_bytes(hlo: str) -> dict:
    """:func:`collective_bytes` as the program runs: each computation's collectives times how often it
    runs, a while loop's body ``known_trip_count`` times (the step loop, a long video's loop over window
    groups), a called or conditional computation once. {op: (count, bytes per device)} executed; divide
    by the steps for bytes per step. A loop without a known trip count counts once."""
    comps, total = _executed(hlo)
    return total(comps.get("__entry__", ""))


def loop_body_collectives(hlo: str, trips: int, source: str | None = None) -> list:
    """What ONE run of a loop body sends: for each while loop of ``trips`` known trips, {op: (count, bytes
    per device)} of its body and what it calls (inner loops times their trips). FIFO's queue iteration,
    a method's step. ``source``: as :func:`collective_bytes`'s."""
    comps, total = _executed(hlo, source)
    return [total(body) for text in comps.values() for line in text.splitlines() if " while(" in line
            and re.search(r'"known_trip_count":\{"n":"%d"' % trips, line)
            for body in re.findall(r"body=%([\w.\-]+)", line)]


def _executed(hlo: str, source: str | None = None):
    """(computations {name: text} with "__entry__" naming the entry, total(name) -> executed collectives)."""
    comps, name, lines = {}, None, []
    for line in hlo.splitlines():
        m = re.match(r"(?:ENTRY )?%([\w.\-]+) .*\{$", line)
        if m and not line.startswith(" "):
            name, lines = m.group(1), []
            if line.startswith("ENTRY"):
                comps["__entry__"] = name
        elif line.startswith("}") and name is not None:
            comps[name] = "\n".join(lines)
            name = None
        elif name is not None:
            lines.append(line)
    memo: dict = {}

    def total(comp: str) -> dict:
        if comp in memo:
            return memo[comp]
        text = comps.get(comp, "")
        out = {k: list(v) for k, v in collective_bytes(text, source).items()}
        for line in text.splitlines():
            trips = 1
            called = re.findall(r"(?:body|to_apply|true_computation|false_computation|branch_computations=\{[^}]*)"
                                r"=%([\w.\-]+)", line) if (" while(" in line or " call(" in line
                                                            or " conditional(" in line) else []
            if " while(" in line:
                t = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
                trips = int(t.group(1)) if t else 1
            for c in called:
                for k, (n, b) in total(c).items():
                    out[k][0] += trips * n
                    out[k][1] += trips * b
        memo[comp] = {k: tuple(v) for k, v in out.items()}
        return memo[comp]

    return comps, total


def _parse_mesh(spec: str) -> dict:
    return {k: int(v) for k, v in (p.split("=") for p in spec.split(","))}


def _model(shape):
    import jax
    import numpy as np

    from vstar_jax.configs import unet_tiny
    from vstar_jax.models.unet3d import UNet3D

    model = UNet3D(unet_tiny.get_config())
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    t = np.full((shape[0],), 500)
    ctx = rng.standard_normal((shape[0], 77, 32)).astype(np.float32)
    params = model.init(jax.random.PRNGKey(0), x[:, :, :2, :8, :8], t, ctx)["params"]
    return model, params, x, t, ctx


def _timed(fn, args, reps):
    import jax

    jax.block_until_ready(fn(*args))  # compile + warm
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        out.append(time.perf_counter() - t0)
    return out


def run(shape, layouts, reps, emit):
    import jax
    import numpy as np

    from vstar_jax.generation.sampling import row_sharding
    from vstar_jax.models.denoiser import DenoiserSpec, make_denoiser
    from vstar_jax.parallel.sharding import (CONTEXT_AXES, LATENT_AXES, activation_layout, make_mesh, named,
                                             shard_params)

    model, params, x, t, ctx = _model(shape)
    ac = np.linspace(0.999, 0.01, 1000)
    plain = jax.jit(lambda p, x, t, c: make_denoiser(model, p, DenoiserSpec(), alphas_cumprod=ac)(x, t, c, 0))
    base = {"shape": list(shape), "devices": len(jax.devices()), "platform": jax.devices()[0].platform}

    # the sharded code path on a one-device mesh against the plain call, interleaved
    one = make_mesh({"frames": 1}, jax.devices()[:1])
    spec1 = DenoiserSpec(latent_sharding=row_sharding(one, shape[2], shape[0]))  # the --mesh frames=1 path
    path1 = jax.jit(lambda p, x, t, c: make_denoiser(model, p, spec1, alphas_cumprod=ac)(x, t, c, 0))
    args1 = (shard_params(params, one), jax.device_put(x, named(one, LATENT_AXES)), t,
             jax.device_put(ctx, named(one, CONTEXT_AXES)))
    plain_args = (params, x, t, ctx)
    jax.block_until_ready(plain(*plain_args))
    jax.block_until_ready(path1(*args1))
    tp, ts = [], []
    for _ in range(max(reps, 15)):  # cheap: more repetitions against load noise
        tp += _timed(plain, plain_args, 1)
        ts += _timed(path1, args1, 1)
    emit(dict(base, what="one-device overhead", plain_s=statistics.median(tp), sharded_path_s=statistics.median(ts),
              overhead=statistics.median(ts) / statistics.median(tp) - 1))

    for spec in layouts:
        mesh_axes = _parse_mesh(spec)
        try:
            mesh = make_mesh(mesh_axes)
        except ValueError as e:
            emit(dict(base, what="layout", mesh=spec, error=str(e)))
            continue
        layout = activation_layout(mesh, shape[0], shape[2])
        lmesh = layout.mesh if layout is not None else mesh
        # the denoiser users run: the rows' layout, the UNet's activation layout, FSDP weights gathered
        dspec = DenoiserSpec(latent_sharding=row_sharding(mesh, shape[2], shape[0]))
        fn = jax.jit(lambda p, x, t, c, dspec=dspec: make_denoiser(model, p, dspec, alphas_cumprod=ac)(x, t, c, 0),
                     out_shardings=named(lmesh, LATENT_AXES))
        fsdp = mesh_axes.get("model", 1) > 1
        p = shard_params(params, lmesh) if fsdp else jax.device_put(params, named(lmesh, ()))
        args = (p, jax.device_put(x, named(lmesh, LATENT_AXES)), t, jax.device_put(ctx, named(lmesh, CONTEXT_AXES)))
        t0 = time.perf_counter()
        compiled = fn.lower(*args).compile()
        compile_s = time.perf_counter() - t0
        coll = collective_bytes(compiled.as_text())
        tl, tq = [], []
        for _ in range(reps):
            tq += _timed(plain, plain_args, 1)
            tl += _timed(fn, args, 1)
        err = float(abs(jax.device_get(fn(*args)) - jax.device_get(plain(*plain_args))).max())
        emit(dict(base, what="layout", mesh=spec, grid=dict(lmesh.shape) if layout is not None else None,
                  compile_s=round(compile_s, 2), max_abs_diff=err,
                  collectives={k: {"count": c, "bytes": b} for k, (c, b) in coll.items() if c},
                  bytes_per_device=sum(b for _, b in coll.values()),
                  activation_bytes=int(x.nbytes), step_s=statistics.median(tl),
                  one_device_s=statistics.median(tq)))


def table(rows) -> str:
    lines = ["| mesh | grid (rows x frames) | all-to-all | halo (coll.-permute) | all-reduce | all-gather | "
             "bytes/device/step | sharded / 1-device time |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("what") != "layout" or "error" in r:
            continue
        c = r["collectives"]
        cell = lambda k: f"{c[k]['count']} / {c[k]['bytes'] / 1024:.0f} KiB" if k in c else "-"  # noqa: E731
        grid = "x".join(str(v) for v in (r["grid"] or {}).values()) or "-"
        lines.append(f"| {r['mesh']} | {grid} | {cell('all-to-all')} | {cell('collective-permute')} | "
                     f"{cell('all-reduce')} | {cell('all-gather')} | {r['bytes_per_device'] / 2**20:.2f} MiB | "
                     f"{r['step_s'] / r['one_device_s']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="2,4,16,16,16", help="latents (rows, c, frames, h, w)")
    ap.add_argument("--devices", type=int, default=8, help="simulated CPU devices (0: the real ones)")
    ap.add_argument("--layouts", default=";".join(LAYOUTS), help="mesh layouts, ';'-separated")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", help="also write the JSON lines here")
    a = ap.parse_args(argv)
    if a.devices and os.environ.get("_VSTAR_SHARDING_CHILD") != "1":
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={a.devices}",
                   JAX_PLATFORMS="cpu", _VSTAR_SHARDING_CHILD="1")
        return subprocess.call([sys.executable, os.path.abspath(__file__)] + (argv or sys.argv[1:]), env=env)
    rows = []

    def emit(row):
        rows.append(row)
        print(json.dumps(row), flush=True)

    run(tuple(int(v) for v in a.shape.split(",")), a.layouts.split(";"), a.reps, emit)
    if a.json:
        from vstar_jax.io.atomic import write_text  # the one atomic writer (imported here, after the device flags)
        write_text(a.json, "".join(json.dumps(r) + "\n" for r in rows))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
