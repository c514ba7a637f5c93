"""Helpers of the hostile-input tests: run ``vstar-jax`` as a user types it (a subprocess) and check
that a refusal is one line (``error: ...``, no traceback, non-zero exit) that leaves the output
folder exactly as it was (every file's content hash)."""
from __future__ import annotations

import concurrent.futures
import hashlib
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def env(**extra) -> dict:
    e = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]), **extra)
    e.setdefault("JAX_PLATFORMS", "cpu")
    e.setdefault("VSTAR_JAX_CACHE_DIR", "off")
    return e


def run_cli(args, *, cwd, timeout: float = 180, stdin=None, **extra_env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vstar_jax.cli", *map(str, args)], cwd=str(cwd), env=env(**extra_env),
                          capture_output=True, text=True, timeout=timeout, stdin=stdin)


def run_many(cases: dict, *, workers: int = 4, timeout: float = 180) -> dict:
    """{name: (args, cwd)} -> {name: CompletedProcess}, a few at a time (refusals are mostly import time)."""
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futs = {name: pool.submit(run_cli, args, cwd=cwd, timeout=timeout) for name, (args, cwd) in cases.items()}
        return {name: f.result() for name, f in futs.items()}


def snapshot(folder) -> dict:
    """{relative path: sha256} of every file under ``folder`` (and the folders, as None)."""
    folder = pathlib.Path(folder)
    out = {}
    if not folder.exists():
        return out
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
    return out


def assert_one_line_refusal(r: subprocess.CompletedProcess, match: str | None = None, *, code: int | None = None):
    """Non-zero exit, stderr's last line ``error: ...`` (containing ``match``), no traceback."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode != 0, f"exit 0; stderr: {r.stderr[-1500:]}"
    if code is not None:
        assert r.returncode == code, (r.returncode, r.stderr[-1500:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert lines and lines[-1].startswith("error:"), r.stderr[-1500:]
    if match is not None:
        assert match in lines[-1], (match, lines[-1])
    return lines[-1]
