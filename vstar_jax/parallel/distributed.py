"""Multi-controller set-up: one process per host, one global mesh, JAX's own runtime.

:func:`initialize` calls ``jax.distributed.initialize`` with the coordinator, the process count and
this process's id taken from, in order: explicit arguments (``--coordinator``, ``--num-processes``,
``--process-id``), a torchrun-style environment (``MASTER_ADDR``/``MASTER_PORT``, ``WORLD_SIZE``,
``RANK``), SLURM (``SLURM_NTASKS``, ``SLURM_PROCID``, the first host of ``SLURM_STEP_NODELIST`` /
``SLURM_JOB_NODELIST``), or nothing (a TPU pod slice: JAX finds its peers itself). Every problem is
a one-line :class:`~vstar_jax.errors.VstarError` before compute: counts that disagree with the
environment, a process id out of range, a coordinator that cannot be reached in ``timeout`` seconds,
a coordinator port another program holds (checked on process 0), a process started with another
process count (a handshake in JAX's key-value store right after joining). JAX's join, heartbeat and
shutdown timeouts are all ``timeout``; what the runtime itself aborts on (a duplicate id, a peer
that dies) is turned into one line by :mod:`vstar_jax.parallel.supervise`.
On CPU the collectives go over gloo (``jax_cpu_collectives_implementation``), which is how two
processes on one machine make a real multi-host run.
"""
from __future__ import annotations

import errno
import os
import re
import socket
import sys
from typing import Mapping, Optional

from vstar_jax.errors import VstarError
from vstar_jax.jax_private import private_jax, warn_once
from vstar_jax.validate import number

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


def _check_port_free(address: str) -> None:
    """Process 0 starts the coordinator on ``address``'s port; a port another program holds makes
    JAX's gRPC server crash the process (SIGSEGV), so refuse it in one line first."""
    port = int(address.rpartition(":")[2])
    for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: a TIME_WAIT port is free
                s.bind((host, port))
            return
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                raise VstarError(f"coordinator port {port} is in use on this host ({e.strerror}): another program, "
                                 f"or a second process given --process-id 0, holds it; pick a free port in "
                                 f"--coordinator and give each process its own id") from None
            continue  # this address family is not available here; try the other
    return


def _handshake(settings: dict, timeout: float) -> None:
    """Every process publishes its settings in JAX's key-value store, then reads every other's: a
    process started with another process count, or a duplicate id, is named in one line on every
    process, in ``timeout`` seconds at most (instead of a collective that hangs, then aborts)."""
    import json  # noqa: PLC0415

    import jax  # noqa: PLC0415
    try:
        client = private_jax().distributed_client()  # JAX has no public handle to it yet
    except VstarError as e:
        warn_once("process-count handshake skipped", e)
        return
    if client is None:
        return
    me, count = jax.process_index(), jax.process_count()
    mine = {"num_processes": settings["num_processes"], "host": socket.gethostname(), "pid": os.getpid()}
    client.key_value_set(f"vstar-jax/hello/{me}", json.dumps(mine))
    if settings["num_processes"] is not None and count != settings["num_processes"]:
        raise VstarError(f"this process was given {settings['num_processes']} processes but the coordinator's run "
                         f"has {count}: give every process the same --num-processes")
    for other in range(count):
        if other == me:
            continue
        try:
            theirs = json.loads(client.blocking_key_value_get(f"vstar-jax/hello/{other}", int(timeout * 1000)))
        except Exception:  # noqa: BLE001 - a timeout; the runtime raises its own status type
            raise VstarError(f"process {other} did not report within {timeout:.0f} s after joining "
                             f"(it died or is stuck); see its log") from None
        n = theirs.get("num_processes")
        if n is not None and n != count:
            raise VstarError(f"process {other} (host {theirs.get('host')}) was started with {n} processes, this run "
                             f"has {count}: give every process the same --num-processes")


def initialize(*, coordinator: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, timeout: float = 120.0, env=None) -> dict:
    """``jax.distributed.initialize`` from arguments or the environment (see the module doc); returns
    the settings used plus ``process_index``/``process_count``/``devices``. A single process is a no-op."""
    import jax  # noqa: PLC0415

    timeout = number("--timeout (seconds)", timeout, minimum=1, maximum=7 * 24 * 3600)
    s = settings_from_env(env, coordinator=coordinator, num_processes=num_processes, process_id=process_id)
    if s["num_processes"] == 1:
        return {**s, "process_index": 0, "process_count": 1, "devices": len(jax.devices())}
    # CPU collectives over gloo (the CPU client's only cross-process transport; GPU/TPU ignore it)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kw = {}
    if s["coordinator_address"] is not None:
        _check_reachable(s["coordinator_address"], timeout, s["process_id"] == 0)
        if s["process_id"] == 0:
            _check_port_free(s["coordinator_address"])
        kw = {"coordinator_address": s["coordinator_address"], "num_processes": s["num_processes"],
              "process_id": s["process_id"]}
    # every wait of the runtime is bounded by --timeout: joining, a peer's missing heartbeats, shutdown
    bound = max(5, int(timeout))
    try:
        jax.distributed.initialize(initialization_timeout=max(1, int(timeout)), heartbeat_timeout_seconds=bound,
                                   shutdown_timeout_seconds=bound, **kw)
    except Exception as e:  # noqa: BLE001 - JAX raises several types; all mean the same to a user
        raise VstarError(f"jax.distributed.initialize failed ({s['source']}): {' '.join(str(e).split())[:300]}") \
            from None
    _handshake(s, timeout)
    return {**s, "process_index": jax.process_index(), "process_count": jax.process_count(),
            "devices": len(jax.devices())}


def barrier(name: str, timeout_s: float = 7 * 24 * 3600) -> None:
    """Wait until every process gets here, on the coordination service (no gloo collective, whose
    set-up times out after 30 s when one process comes much later); a peer that dies is caught by
    the runtime's heartbeat timeout instead (``--timeout``)."""
    import jax  # noqa: PLC0415
    if jax.process_count() == 1:
        return
    try:
        client = private_jax().distributed_client()  # JAX has no public handle to it yet
    except VstarError as e:
        warn_once("barrier over JAX's collectives instead of its coordination service", e)
        client = None
    if client is None:  # a runtime without a client of ours (TPU auto-detection still has one)
        from jax.experimental import multihost_utils  # noqa: PLC0415

        multihost_utils.sync_global_devices(name)
        return
    client.wait_at_barrier(name, int(timeout_s * 1000))


def runtime_failure_exit(e: BaseException, kept: str) -> int:
    """For a launcher's last ``except``: the JAX runtime's own exceptions (a peer gone mid-collective)
    become one ``error:`` line and exit status 3; anything else is raised again."""
    if type(e).__name__ not in ("JaxRuntimeError", "XlaRuntimeError"):
        raise e
    print(f"error: the JAX runtime failed ({' '.join(str(e).split())[:300]}); {kept}", file=sys.stderr)
    return 3


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
