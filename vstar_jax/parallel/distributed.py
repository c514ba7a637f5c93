"""Multi-controller set-up: one process per host, one global mesh, JAX's own runtime.

:func:`initialize` calls ``jax.distributed.initialize`` with the coordinator, the process count and
this process's id taken from, in order: explicit arguments (``--coordinator``, ``--num-processes``,
``--process-id``), a torchrun-style environment (``MASTER_ADDR``/``MASTER_PORT``, ``WORLD_SIZE``,
``RANK``), SLURM (``SLURM_NTASKS``, ``SLURM_PROCID``, the first host of ``SLURM_STEP_NODELIST`` /
``SLURM_JOB_NODELIST``), or nothing (a TPU pod slice: JAX finds its peers itself). Every problem is
a one-line :class:`~vstar_jax.errors.VstarError` before compute: counts that disagree with the
environment, a process id out of range, a coordinator that cannot be reached in ``timeout`` seconds.
On CPU the collectives go over gloo (``jax_cpu_collectives_implementation``), which is how two
processes on one machine make a real multi-host run.
"""
from __future__ import annotations

import os
import re
import socket
from typing import Mapping, Optional

from vstar_jax.errors import VstarError

DEFAULT_PORT = 12355


def _first_slurm_host(nodelist: str) -> str:
    """``node[03-05,9],other`` -> ``node03`` (SLURM's compressed host lists)."""
    m = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise VstarError(f"cannot read the SLURM node list {nodelist!r}")
    if not m.group(3):
        return m.group(1)
    first = m.group(3).split(",")[0].split("-")[0]
    return m.group(1) + first


def settings_from_env(env: Optional[Mapping[str, str]] = None, *, coordinator: Optional[str] = None,
                      num_processes: Optional[int] = None, process_id: Optional[int] = None) -> dict:
    """``{"coordinator_address", "num_processes", "process_id", "source"}`` (values None on a TPU pod,
    where JAX detects them); explicit arguments win, and disagree with the environment only loudly."""
    env = dict(os.environ if env is None else env)
    found, source = {}, "arguments"
    if "WORLD_SIZE" in env and "RANK" in env:
        addr = env.get("MASTER_ADDR")
        port = env.get("MASTER_PORT", str(DEFAULT_PORT))
        found = {"coordinator_address": f"{addr}:{port}" if addr else None,
                 "num_processes": int(env["WORLD_SIZE"]), "process_id": int(env["RANK"])}
        source = "torchrun environment"
    elif "SLURM_NTASKS" in env and "SLURM_PROCID" in env:
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
        port = env.get("VSTAR_COORDINATOR_PORT", str(DEFAULT_PORT))
        found = {"coordinator_address": f"{_first_slurm_host(nodes)}:{port}" if nodes else None,
                 "num_processes": int(env["SLURM_NTASKS"]), "process_id": int(env["SLURM_PROCID"])}
        source = "SLURM environment"
    explicit = {"coordinator_address": coordinator, "num_processes": num_processes, "process_id": process_id}
    names = {"coordinator_address": "coordinator", "num_processes": "number of processes", "process_id": "process id"}
    for k, v in explicit.items():
        if v is None:
            continue
        if found.get(k) is not None and found[k] != v:
            raise VstarError(f"{names[k]} {v} disagrees with the {source} ({found[k]})")
        found[k] = v
    if not found:
        return {"coordinator_address": None, "num_processes": None, "process_id": None, "source": "auto (TPU)"}
    n, pid = found.get("num_processes"), found.get("process_id")
    if n is None or n < 1:
        raise VstarError(f"number of processes must be >= 1, got {n}")
    if pid is None or not 0 <= pid < n:
        raise VstarError(f"process id must be in [0, {n}), got {pid}")
    if n > 1 and not found.get("coordinator_address"):
        raise VstarError("a multi-process run needs a coordinator address (host:port)")
    return {**found, "source": source}


def _check_reachable(address: str, timeout: float, is_coordinator: bool) -> None:
    """Fail fast with one line when a worker cannot reach the coordinator (JAX would wait minutes)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise VstarError(f"coordinator address must be host:port, got {address!r}")
    if is_coordinator:
        return  # process 0 starts the coordinator service itself
    import time  # noqa: PLC0415

    deadline = time.time() + timeout
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=min(2.0, timeout)):
                return
        except OSError as e:
            if time.time() >= deadline:
                raise VstarError(f"coordinator {address} cannot be reached after {timeout:.0f} s "
                                 f"({e.strerror or e})") from None
            time.sleep(0.2)


def initialize(*, coordinator: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, timeout: float = 120.0, env=None) -> dict:
    """``jax.distributed.initialize`` from arguments or the environment (see the module doc); returns
    the settings used plus ``process_index``/``process_count``/``devices``. A single process is a no-op."""
    import jax  # noqa: PLC0415

    s = settings_from_env(env, coordinator=coordinator, num_processes=num_processes, process_id=process_id)
    if s["num_processes"] == 1:
        return {**s, "process_index": 0, "process_count": 1, "devices": len(jax.devices())}
    # CPU collectives over gloo (the CPU client's only cross-process transport; GPU/TPU ignore it)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kw = {}
    if s["coordinator_address"] is not None:
        _check_reachable(s["coordinator_address"], timeout, s["process_id"] == 0)
        kw = {"coordinator_address": s["coordinator_address"], "num_processes": s["num_processes"],
              "process_id": s["process_id"]}
    try:
        jax.distributed.initialize(initialization_timeout=max(1, int(timeout)), **kw)
    except Exception as e:  # noqa: BLE001 - JAX raises several types; all mean the same to a user
        raise VstarError(f"jax.distributed.initialize failed ({s['source']}): {' '.join(str(e).split())[:300]}") \
            from None
    if s["num_processes"] is not None and jax.process_count() != s["num_processes"]:
        raise VstarError(f"JAX sees {jax.process_count()} processes, the {s['source']} says {s['num_processes']}")
    return {**s, "process_index": jax.process_index(), "process_count": jax.process_count(),
            "devices": len(jax.devices())}


def is_writer() -> bool:
    """Only process 0 writes shared files."""
    import jax  # noqa: PLC0415

    return jax.process_index() == 0


def add_launch_arguments(parser) -> None:
    """The multi-process flags every launcher takes (``launch/*_multihost.py``): the coordinator, the
    process count and id (else from the environment), the coordinator timeout and per-process logs."""
    parser.add_argument("--coordinator", help="host:port of process 0's coordinator")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the coordinator")
    parser.add_argument("--log-dir", default=None, help="per-process logs (default: stderr)")
