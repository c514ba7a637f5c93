"""One line, never a C++ stack: the multi-host launchers run their work in a child process.

JAX's distributed runtime ends a process from C++ (``LOG(FATAL)``: SIGABRT, exit 134; a coordinator
port held by another program: SIGSEGV) when a peer dies, registers twice, never shows up or stops
sending heartbeats. Python cannot catch that, so ``launch/*_multihost.py`` start themselves again as a
child (:func:`supervised`) and this parent, which never imports JAX:

- passes the child's stdout through and its stderr too, except the runtime's own log lines (glog
  ``[IWEF]MMDD hh:mm:ss``, RPC names, the stack trace after ``*** Check failure stack trace ***``);
  those go to ``--log-dir/process-<i>.runtime.log`` when there is a log folder, so nothing is lost;
- when the child dies from a signal or the runtime's abort, prints **one** line,
  ``error: process <i>: <what happened> (<what to do>)``, read from what the runtime logged, and exits
  with status 3 (a child's own ``error:`` line and status are passed on unchanged);
- forwards SIGTERM / SIGINT to the child and waits for it, so a scheduler's stop still lets the
  child's own handlers run.

How long a survivor waits is bounded by ``--timeout``: :func:`vstar_jax.parallel.distributed.initialize`
sets JAX's registration, heartbeat and shutdown timeouts from it.
"""
from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import threading
from typing import Optional

from vstar_jax.parallel.distributed import settings_from_env

CHILD_ENV = "VSTAR_SUPERVISED_CHILD"
_GLOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ \S+:\d+\]")
_OWN = re.compile(r"^(\[vstar-jax\]|\[process |error:|warning:|Traceback|denoising|decoding|usage:)")
_RUNTIME = re.compile(r"^(RPC: /|\*\*\* (Check failure|SIGSEGV|SIGABRT|Aborted)|PC: @|\s+@\s+0x|\[type\.googleapis)")

# (pattern in what the runtime logged, what happened, what to do); the first match wins
DIAGNOSES = (
    (r"more recent barrier call for \[Init\]|Duplicate task registration|already registered",
     "two processes registered with the same process id",
     "give every process its own --process-id in [0, N)"),
    (r"Failed to add port to server|Address already in use",
     "the coordinator port is held by another program",
     "pick a free port in --coordinator"),
    (r"RegisterTask.*DEADLINE_EXCEEDED|DEADLINE_EXCEEDED.*\n?.*RegisterTask|Deadline Exceeded[\s\S]*RegisterTask",
     "not every process joined the coordinator within --timeout",
     "start all N processes with the same --coordinator and --num-processes, or raise --timeout"),
    (r"heartbeat|[Hh]eartbeat|UNAVAILABLE|failed to connect|Socket closed|Connection reset",
     "another process of the run stopped (it died or was killed)",
     "see the other processes' logs; finished outputs are kept, rerun to continue"),
    (r"detected fatal errors|another task died",
     "the JAX distributed service stopped the run after another process failed",
     "see the other processes' logs"),
)


def _is_runtime_line(line: str) -> bool:
    return bool(_GLOG.match(line) or _RUNTIME.match(line))


def diagnose(runtime_lines, returncode: int) -> str:
    """What the runtime's log says happened, in a few words (and what to do)."""
    text = "\n".join(runtime_lines)
    dead = re.search(r"unhealthy \(stopped sending heartbeats\):\s*\n(?:[^\n]*task:)?(\d+)\s*$", text, re.M)
    if dead:
        return (f"process {dead.group(1)} stopped sending heartbeats: it died or was killed (see its log; finished "
                f"outputs are kept, rerun to continue)")
    for pattern, what, todo in DIAGNOSES:
        if re.search(pattern, text):
            return f"{what} ({todo})"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"stopped by {name}"
    fatal = [ln for ln in runtime_lines if ln[:1] in "FE" and _GLOG.match(ln)]
    if fatal:
        return "the JAX runtime failed: " + " ".join(_GLOG.sub("", fatal[-1]).split())[:200]
    return f"exited with status {returncode}"


def _process_label(argv) -> str:
    """This process's id from the flags or the environment (the parent does not start JAX)."""
    pid = None
    if "--process-id" in argv:
        i = argv.index("--process-id")
        pid = argv[i + 1] if i + 1 < len(argv) else None
    else:
        pid = next((a.split("=", 1)[1] for a in argv if a.startswith("--process-id=")), None)
    if pid is None:
        try:
            pid = settings_from_env().get("process_id")
        except Exception:  # noqa: BLE001 - the child will say what is wrong with the settings
            pid = None
    return "?" if pid is None else str(pid)


def _log_dir(argv) -> Optional[str]:
    if "--log-dir" in argv:
        i = argv.index("--log-dir")
        return argv[i + 1] if i + 1 < len(argv) else None
    return next((a.split("=", 1)[1] for a in argv if a.startswith("--log-dir=")), None)


def _die_with_parent() -> None:
    """In the child, before exec: killed with the parent (``kill -9`` of a launcher stops its work)."""
    if sys.platform.startswith("linux"):
        import ctypes  # noqa: PLC0415

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def supervised(argv=None) -> Optional[int]:
    """In the child: None (go on with the work). In the parent: run the child, return its exit status."""
    if os.environ.get(CHILD_ENV) == "1":
        return None
    argv = list(sys.argv[1:] if argv is None else argv)
    label = _process_label(argv)
    env = dict(os.environ, **{CHILD_ENV: "1"})
    child = subprocess.Popen([sys.executable, sys.argv[0], *argv], stderr=subprocess.PIPE, env=env,
                             text=True, errors="replace", bufsize=1, preexec_fn=_die_with_parent)

    def forward(signum, frame):  # noqa: ARG001 - signal API
        if child.poll() is None:
            child.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    runtime = collections.deque(maxlen=400)
    last_own: list = []
    log_dir = _log_dir(argv)
    runtime_log = None

    def pump():
        nonlocal runtime_log
        in_stack, in_message, blank = False, False, 0
        for line in child.stderr:
            line = line.rstrip("\n")
            in_stack = in_stack or line.startswith("*** Check failure stack trace")
            if not line.strip() and not in_stack:
                blank += 1  # kept only when the child's own output follows (the runtime pads its messages)
                continue
            glog = _GLOG.match(line)
            if glog:  # an error's message may go on over several lines: they are the runtime's too
                in_message = line[:1] in "EF"
            elif in_message and _OWN.match(line):
                in_message = False
            if in_stack or in_message or _is_runtime_line(line):
                blank = 0
                runtime.append(line)
                if log_dir:
                    if runtime_log is None:
                        os.makedirs(log_dir, exist_ok=True)
                        runtime_log = open(os.path.join(log_dir, f"process-{label}.runtime.log"), "a",  # noqa: SIM115
                                           encoding="utf-8")
                    runtime_log.write(line + "\n")
                continue
            last_own[:] = [line]
            print("\n" * blank + line, file=sys.stderr, flush=True)
            blank = 0

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    try:
        rc = child.wait()
    finally:
        t.join(timeout=10)
        for s, h in old.items():
            signal.signal(s, h)
        if runtime_log is not None:
            runtime_log.close()
    if rc == 0:
        return 0
    if rc > 0 and last_own and last_own[0].startswith("error:") and rc not in (134, 139):
        return rc  # the child said what went wrong, in its own line
    where = f"; the runtime's log: {os.path.join(log_dir, f'process-{label}.runtime.log')}" if log_dir else ""
    print(f"error: process {label}: {diagnose(list(runtime), rc)}{where}", file=sys.stderr, flush=True)
    return 3
