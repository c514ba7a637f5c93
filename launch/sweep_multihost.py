"""Run one benchmark sweep on many hosts at once: one process per host, JAX's multi-controller runtime.

Every process runs this same script on the same sweep folder (a shared file system across hosts).
``jax.distributed.initialize`` gets its coordinator, process count and id as in
``launch/generate_multihost.py`` (flags, torchrun-style or SLURM variables, or a TPU pod slice finding
its peers). Process i takes every n-th run of the grid from the i-th (``vstar_jax.sweep.run_sweep``
with ``shard=(i, n)``) and runs it on its own devices: with ``batch: N`` in the config (or
``--set batch=N``), up to N runs of one method and length per compiled call, split over the local
devices (a ``data`` mesh axis). Each finished run is written once, atomically, by the process that
ran it (``rows/<run_id>.json``, its video under ``videos/``); the results table (Parquet + CSV) is
rewritten after every run and, when every process is done, once more by process 0. A process that
dies loses only its runs in progress: start the same job again and it continues with the runs that
have no row.

    # one host, 8 GPUs, one process (all local devices split the batches)
    python launch/sweep_multihost.py configs/sweep_demo.py --out out/sweeps/demo --set batch=8
    # N hosts under SLURM (one task per host)
    srun --ntasks-per-node=1 python launch/sweep_multihost.py configs/sweep_demo.py --out /shared/sweeps/demo
    # explicitly, on host i of N
    python launch/sweep_multihost.py CONFIG --out DIR --coordinator host0:12355 --num-processes N --process-id i
    # a TPU pod slice
    gcloud compute tpus tpu-vm ssh NAME --zone ZONE --worker=all \\
        --command "cd vstar-jax && python launch/sweep_multihost.py configs/sweep_demo.py --out /mnt/shared/demo"

Bad input is one line on stderr, exit 2; Ctrl-C exits 130 (finished runs are kept).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# JAX-free modules only: the supervising parent never imports JAX (see vstar_jax.parallel.supervise);
# the worker imports vstar_jax.sweep in _sweep()
from vstar_jax.errors import VstarError  # noqa: E402
from vstar_jax.parallel import distributed  # noqa: E402
from vstar_jax.parallel.supervise import supervised  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config", help="sweep config (Python file with get_config())")
    p.add_argument("--out", help="the sweep folder, shared by every process (default out/sweeps/<name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="override key=value")
    p.add_argument("--retry-errors", action="store_true", help="rerun runs that failed before")
    distributed.add_launch_arguments(p)
    return p.parse_args(argv)


def _sweep():
    """:mod:`vstar_jax.sweep`, imported in the worker only (it imports JAX)."""
    from vstar_jax import sweep  # noqa: PLC0415 - after the supervisor: its parent never imports JAX

    return sweep


def main(argv=None) -> int:
    args = parse_args(argv)
    if argv is None:  # the script: the work runs in a child, a runtime abort becomes one line here
        rc = supervised()
        if rc is not None:
            return rc
    sweep = _sweep()
    try:
        config, config_dir = sweep.load_config(args.config, args.overrides)  # a bad config fails before start-up
        info = distributed.initialize(coordinator=args.coordinator, num_processes=args.num_processes,
                                      process_id=args.process_id, timeout=args.timeout)
        return run(args, info, config, config_dir)
    except KeyboardInterrupt as e:
        print(f"error: {e or 'interrupted'}", file=sys.stderr)
        return 130
    except (VstarError, ValueError, FileNotFoundError, PermissionError) as e:
        print(f"error: {' '.join(str(e).split()) or type(e).__name__}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the JAX runtime's errors become one line; the rest is raised
        return distributed.runtime_failure_exit(e, "finished runs are kept, rerun to continue")


def run(args, info: dict, config, config_dir) -> int:
    import contextlib

    import jax

    from vstar_jax.parallel.sharding import make_mesh  # noqa: PLC0415 - the worker's (JAX) imports

    sweep = _sweep()
    rank, count = jax.process_index(), jax.process_count()
    log = sys.stderr
    if args.log_dir:
        os.makedirs(args.log_dir, exist_ok=True)
        log = open(os.path.join(args.log_dir, f"process-{rank}.log"), "a", buffering=1)  # noqa: SIM115
    out = args.out or os.path.join("out", "sweeps", sweep._get(config, "name", "sweep"))
    local = jax.local_devices()
    mesh = make_mesh({"data": len(local)}, local) if len(local) > 1 else None
    print(f"[process {rank}/{count}] {info['source']}: {len(local)} local device(s); sweep {out}, "
          f"every {count}th run from the {rank}th", file=log, flush=True)
    t0 = time.time()
    with contextlib.redirect_stderr(log):
        rows = sweep.run_sweep(config, out, config_dir, retry_errors=args.retry_errors, progress=rank == 0,
                               shard=(rank, count), mesh=mesh)
    mine = [r for r in rows if r.get("process") == rank]
    print(f"[process {rank}] {len(mine)} run(s) in {time.time() - t0:.1f} s", file=log, flush=True)
    if count > 1:  # on the coordinator's barrier, not a gloo collective (whose set-up times out in 30 s)
        distributed.barrier("vstar-jax sweep done")
    if rank == 0:  # every process is done: the table of every row, once more
        rows = list(sweep.read_rows(out).values())
        sweep.write_table(rows, out)
        n_err = sum(r.get("status") == "error" for r in rows)
        print(f"{len(rows)} runs in {out} ({n_err} failed)")
        if rows and n_err == len(rows):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
