"""Generate videos on many hosts at once: one process per host, one global mesh, JAX's own runtime.

Every process runs this same script. ``jax.distributed.initialize`` gets its coordinator, process
count and id from the flags, a torchrun-style or SLURM environment, or (TPU pod slices) finds them
itself (``vstar_jax.parallel.distributed``). The mesh spans every device of every host
(``--mesh frames=-1`` by default: the frames the UNet sees, split over all of them); the UNet's
arrays are restored from the orbax checkpoint straight into their places on that mesh; each item is
one SPMD program over that mesh; only process 0 decodes and writes files; each process logs to
``--log-dir/process-<i>.log``.

    # one 8-GPU host
    python launch/generate_multihost.py "a lighthouse at dusk" --checkpoint ckpt/vc2 --frames 64 \\
        --long-video genl:16:8 --mesh data=2,frames=4 --out out/lighthouse.mp4
    # N GPU hosts (SLURM: one task per host)
    srun --ntasks-per-node=1 python launch/generate_multihost.py ... --mesh frames=-1
    # torchrun-style variables (MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK) on each host, or explicitly:
    python launch/generate_multihost.py ... --coordinator host0:12355 --num-processes 2 --process-id $I
    # a TPU v5e/v5p pod slice (every worker at once)
    gcloud compute tpus tpu-vm ssh NAME --zone ZONE --worker=all \\
        --command "cd vstar-jax && python launch/generate_multihost.py '...' --checkpoint gs-fuse/vc2 --mesh frames=-1"

``--prompts-file`` (one prompt a line) and ``--seeds 0,1,2`` make several items; each is written to
``--out-dir/<prompt-slug>-<seed>.mp4`` with its sidecar. ``--batch`` runs them all in one compiled call
with the items split over the mesh's ``data`` axis (``--mesh data=N``: over the processes too), each
equal to its single-item run. Bad input is one line on stderr, exit 2.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# JAX-free modules only: the supervising parent never imports JAX (see vstar_jax.parallel.supervise);
# the worker's imports are in run()
from vstar_jax.errors import VstarError  # noqa: E402
from vstar_jax.parallel import distributed  # noqa: E402
from vstar_jax.parallel.supervise import supervised  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("prompt", nargs="?", help="the video prompt (or --prompts-file)")
    p.add_argument("--prompts-file", help="one prompt a line (# comments)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--checkpoint", help="converted checkpoint directory (default: the embedded demo model)")
    p.add_argument("--frames", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--tar")
    p.add_argument("--long-video")
    p.add_argument("--mesh", default="frames=-1", help="mesh axes over all devices of all hosts (default frames=-1)")
    p.add_argument("--out", help="output video for a single item")
    p.add_argument("--out-dir", default="outputs", help="folder for several items")
    p.add_argument("--save-latents", action="store_true", help="also write each item's latents (.npy)")
    p.add_argument("--batch", action="store_true",
                   help="all items in one compiled call, split over the mesh's data axis (pipeline.generate_batch)")
    distributed.add_launch_arguments(p)
    return p.parse_args(argv)


def _mesh_axes(spec: str) -> dict:
    axes = {}
    for part in spec.split(","):
        name, _, n = part.partition("=")
        name = name.strip()
        if name not in ("data", "frames", "model") or not n.strip().lstrip("-").isdigit():
            raise VstarError(f"bad --mesh {spec!r}: use e.g. frames=-1 or data=2,frames=4")
        axes[name] = int(n)
        if axes[name] == 0 or axes[name] < -1:
            raise VstarError(f"--mesh {name} must be a positive size or -1, got {n}")
    return axes


def items(args) -> list[tuple[str, int]]:
    if args.prompts_file:
        lines = pathlib.Path(args.prompts_file).read_text(encoding="utf-8").splitlines()
        prompts = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    elif args.prompt:
        prompts = [args.prompt]
    else:
        raise VstarError("give a prompt or --prompts-file")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise VstarError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    return [(p, s) for p in prompts for s in seeds]


def main(argv=None) -> int:
    args = parse_args(argv)
    if argv is None:  # the script: the work runs in a child, a runtime abort becomes one line here
        rc = supervised()
        if rc is not None:
            return rc
    try:
        info = distributed.initialize(coordinator=args.coordinator, num_processes=args.num_processes,
                                      process_id=args.process_id, timeout=args.timeout)
        return run(args, info)
    except VstarError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the JAX runtime's errors become one line; the rest is raised
        return distributed.runtime_failure_exit(e, "files already written are kept")


def run(args, info: dict) -> int:
    import jax
    import numpy as np

    from vstar_jax import pipeline as pl  # noqa: PLC0415 - the worker's (JAX) imports, after the supervisor
    from vstar_jax.parallel.sharding import make_mesh, params_sharding_rule  # noqa: PLC0415

    rank = jax.process_index()
    log = sys.stderr
    if args.log_dir:
        os.makedirs(args.log_dir, exist_ok=True)
        log = open(os.path.join(args.log_dir, f"process-{rank}.log"), "a", buffering=1)  # noqa: SIM115
    todo = items(args)
    if args.out and len(todo) > 1:
        raise VstarError("--out names one video; use --out-dir for several prompts or seeds")
    try:
        mesh = make_mesh(_mesh_axes(args.mesh))
    except ValueError as e:
        raise VstarError(str(e)) from None
    print(f"[process {rank}/{jax.process_count()}] {info['source']}: {len(jax.devices())} devices in all, "
          f"{jax.local_device_count()} here; mesh {dict(mesh.shape)}; {len(todo)} item(s)", file=log, flush=True)
    writer = distributed.is_writer()
    pipeline = None
    if args.checkpoint:  # the UNet's arrays restored straight into their places on the global mesh
        pipeline = pl.Pipeline.from_checkpoint(args.checkpoint, unet_sharding=params_sharding_rule(mesh))
    if args.batch and len(todo) > 1:  # one program for all items, each process's devices take their share
        t0 = time.time()
        batch_items = [{"prompt": p, "seed": s} for p, s in todo]
        with contextlib.redirect_stderr(log):
            results = pl.generate_batch(batch_items, checkpoint=args.checkpoint, pipeline=pipeline, mesh=mesh,
                                        out_dir=args.out_dir if writer else None, progress=writer, keep_video=False,
                                        frames=args.frames, steps=args.steps, tar=args.tar,
                                        long_video=args.long_video)
        print(f"[process {rank}] {len(batch_items)} items in one call: {time.time() - t0:.1f} s", file=log, flush=True)
        for res in results:
            if writer and args.save_latents:
                np.save(os.path.splitext(res.path)[0] + ".latents.npy", res.latents)
            if writer:
                print(res.path)
        return 0
    for prompt, seed in todo:
        out = args.out or pl.default_output(prompt, seed, args.out_dir)
        t0 = time.time()
        with contextlib.redirect_stderr(log):
            res = pl.generate_video(prompt, checkpoint=args.checkpoint, pipeline=pipeline, frames=args.frames,
                                    steps=args.steps, seed=seed, tar=args.tar, long_video=args.long_video, mesh=mesh,
                                    out=out if writer else None, progress=writer, keep_video=False)
        if writer and args.save_latents:
            np.save(os.path.splitext(out)[0] + ".latents.npy", res.latents)
        print(f"[process {rank}] {prompt!r} seed {seed}: {time.time() - t0:.1f} s"
              + (f" -> {res.path}" if res.path else " (process 0 writes)"), file=log, flush=True)
        if writer:
            print(res.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
