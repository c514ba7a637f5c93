"""Benchmark sweeps: prompts x methods x frame counts x seeds -> one results table.

``vstar-jax sweep CONFIG [--out DIR]``. CONFIG is a Python file with ``get_config()`` returning
an ``ml_collections.ConfigDict``:

- ``name``: sweep name (default out dir ``out/sweeps/<name>``).
- ``prompts`` (list), ``prompts_file`` (text file, one prompt a line, ``#`` comments) and/or
  ``prompts_tfds`` (``name``, ``data_dir``, ``split``, ``key``, ``limit``: a dataset already on
  disk; nothing is downloaded).
- ``methods``: name -> dict of keyword arguments for the generator (``tar``, ``synopsis``,
  ``vsp_mode``, a long-video strategy, ...). A string in a ``synopsis`` list is formatted with
  ``{prompt}``; ``synopsis: "per_prompt"`` takes the states from the config's ``synopses``
  table (prompt -> list of states).
- ``frames``, ``seeds``: lists. ``generate``: keyword arguments shared by every run.
- ``checkpoint``: the model folder ("" = the embedded default model).
- ``run_fn``: dotted path (``pkg.module.fn`` or ``pkg.module:fn``) of ``fn(run, out_dir, config)
  -> dict`` of results; default ``vstar_jax.sweep.generate_and_score``.
- ``metrics``: ``flow_model`` (``dis``, ``raft:PATH``, ...), ``mawe_size``, ``clip_checkpoint``
  (optional), ``fps`` (SCuts), ``band_width`` (band score, when the generator returns attention maps).
- ``run_fn_keys``: names of extra top-level keys a custom ``run_fn`` reads. Any other unknown
  top-level key, and a ``--set`` of a key that does not exist (outside the open tables
  ``methods``, ``generate`` and ``synopses``), is an error: a typo never goes unnoticed.

A config that cannot be loaded, a bad ``--set`` value and an empty grid are one-line errors
(exit status 2). A sweep whose runs all failed exits with status 1. Ctrl-C stops the run in
progress (sampling stops between UNet calls), which is not recorded; the table keeps every
finished run and the sweep exits with status 130; running it again resumes with the runs left.

Each run has a stable id (hash of its settings and checkpoint). A finished run is written once, atomically,
as ``rows/<run_id>.json`` (atomically: :mod:`vstar_jax.io.atomic`), and then the whole table is rewritten the same
way, as Parquet and CSV, so a killed sweep loses at most the runs in progress; on restart finished ids
(the row files and the table) are skipped. A run that raises is recorded with ``status="error"`` and
its message, and the sweep goes on. Every row has the run's wall time (``elapsed_s``), the devices it
ran on (``devices``), the process that ran it (``process``) and the size of its batch (``batch``).

A sweep folder is locked (``flock`` on ``.sweep.lock``, naming the holder) by the process running in
it: a second sweep there is refused in one line, and the lock of a process that died is taken over.
With the default run_fn every distinct run's settings are checked (``make_request``) before the folder
is touched, so a bad ``--set generate.cfg=...`` is one line, not a table of failed runs.

Many runs per compiled call: ``batch: N`` (default 1) runs up to N runs that share a method and a
frame count in one call (``pipeline.generate_batch``: each equals its single run), their item axis
split over the ``data`` axis of ``mesh`` (the devices given, e.g. all local devices). Many processes:
``run_sweep(..., shard=(i, n))`` takes every n-th run of the grid from the i-th, so n processes
(``launch/sweep_multihost.py``, one per host on JAX's multi-controller runtime) share one sweep
folder, each writing only its own runs; a process that dies loses only its runs in progress, and
the job started again continues with the runs that have no row.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import importlib
import importlib.util
import io
import json
import os
import pathlib
import sys
import time
import traceback
from typing import Callable

from vstar_jax.errors import VstarError
from vstar_jax.generation.model import model_info
from vstar_jax.generation.request import MAX_FRAMES, make_request, number
from vstar_jax.io.atomic import atomic_path, is_temp_name, write_text
from vstar_jax.metrics import compute_metrics
from vstar_jax.metrics.band import attention_band_score
from vstar_jax.metrics.cli import check_settings
from vstar_jax.metrics.clip_score import ClipScorer
from vstar_jax.pipeline import generate_batch, generate_video
from vstar_jax.runtime import runtime
from vstar_jax.trees import plain

RESULTS_PARQUET = "results.parquet"
RESULTS_CSV = "results.csv"
SETTING_COLUMNS = ("run_id", "status", "error", "prompt", "method", "frames", "seed")
DEFAULT_RUN_FN = "vstar_jax.sweep.generate_and_score"
KNOWN_KEYS = ("name", "prompts", "prompts_file", "prompts_tfds", "methods", "frames", "seeds", "generate",
              "checkpoint", "run_fn", "metrics", "synopses", "run_fn_keys", "batch")
ROWS_DIR = "rows"  # one JSON file per finished run, written once, atomically: the record a restart reads
OPEN_TABLES = ("methods", "generate", "synopses")  # --set may add new entries under these
MAX_BATCH = 4096


# --- config --------------------------------------------------------------------------------

def load_config(path: str, overrides: list[str] = ()):
    """Load ``get_config()`` from a Python file; apply ``key.sub=value`` overrides (YAML values)."""
    import yaml

    path = str(path)
    if not os.path.isfile(path):
        raise ValueError(f"sweep config not found: {path}")
    spec = importlib.util.spec_from_file_location("_vstar_sweep_config", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"sweep config {path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise ValueError(f"sweep config {path} has no get_config()")
        config = module.get_config()
    except SyntaxError as e:
        raise ValueError(f"sweep config {path} line {e.lineno}: syntax error: {e.msg}") from None
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's file: report it in one line
        raise ValueError(f"sweep config {path} failed to load: {type(e).__name__}: {e}") from None
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override must be key=value, got {item!r}")
        key, value = item.split("=", 1)
        _set(config, key.strip(), value)
    config_dir = os.path.dirname(os.path.abspath(path))
    check_config(config)
    return config, config_dir


def _set(config, key: str, text: str) -> None:
    """Apply one ``--set key=value`` (a YAML value); unknown keys are errors outside open tables."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"--set {key}={text}: not a YAML value ({str(e).splitlines()[0]})") from None
    *parents, leaf = key.split(".")
    target = config
    extra = set(_get(config, "run_fn_keys", []) or [])
    for i, p in enumerate(parents):
        try:
            target = target[p]
        except (KeyError, TypeError, AttributeError):
            raise ValueError(f"--set {key}: the config has no {'.'.join(parents[:i + 1])!r}") from None
    open_table = bool(parents) and parents[0] in OPEN_TABLES
    if not open_table and (leaf not in target if parents else leaf not in set(KNOWN_KEYS) | extra | set(config)):
        raise ValueError(f"--set {key}: unknown key {key!r}" + ("" if parents else
                         f" (sweep keys: {', '.join(KNOWN_KEYS)})"))
    try:
        target[leaf] = value
    except (TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"--set {key}={text}: {' '.join(str(e).split())}") from None


def check_config(config) -> None:
    """Unknown top-level keys (typos) are errors; a custom run_fn's own keys go in ``run_fn_keys``."""
    try:
        keys = list(config.keys())
    except AttributeError:
        raise ValueError(f"get_config() must return a ConfigDict or dict, got {type(config).__name__}") from None
    extra = set(_get(config, "run_fn_keys", []) or [])
    unknown = sorted(k for k in keys if k not in KNOWN_KEYS and k not in extra)
    if unknown:
        raise ValueError(f"sweep config has unknown key(s) {unknown} (sweep keys: {', '.join(KNOWN_KEYS)}; "
                         f"list a custom run_fn's own keys in run_fn_keys)")


def _get(config, key, default=None):
    try:
        value = config[key]
    except (KeyError, AttributeError):
        return default
    return default if value is None else value


# --- prompts -------------------------------------------------------------------------------

def read_prompts_file(path: str, base_dir: str | None = None) -> list[str]:
    """Prompts from a text file: one a line; blank lines and lines starting with ``#`` skipped."""
    p = pathlib.Path(path)
    if not p.is_absolute() and not p.exists() and base_dir is not None:
        p = pathlib.Path(base_dir) / p
    if not p.is_file():
        raise ValueError(f"prompts file not found: {path}")
    lines = (line.strip() for line in p.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def read_prompts_tfds(name: str, data_dir: str | None = None, split: str = "train", key: str = "caption", limit: int = 0) -> list[str]:
    """Prompts from a tensorflow-datasets dataset that is already on disk (never downloaded)."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # unknown dataset name
        raise ValueError(f"tfds dataset {name!r} unknown: {e}") from None
    if not builder.is_prepared():
        raise ValueError(
            f"tfds dataset {name!r} is not prepared in data_dir {builder.data_dir!r}; "
            "prepare it first (tfds build), sweeps never download"
        )
    limit = int(limit or 0)
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        examples = (source[i] for i in range(len(source) if not limit else min(limit, len(source))))
    except NotImplementedError:  # tfrecord format: needs tensorflow
        ds = tfds.load(name, split=split, data_dir=data_dir, download=False)
        examples = tfds.as_numpy(ds.take(limit) if limit else ds)
    prompts = []
    for ex in examples:
        value = ex
        for part in key.split("/"):
            value = value[part]
        if hasattr(value, "tolist"):
            value = value.tolist()
        values = value if isinstance(value, list) else [value]
        prompts.append(values[0].decode("utf-8") if isinstance(values[0], bytes) else str(values[0]))
    return prompts


def collect_prompts(config, config_dir: str | None = None) -> list[str]:
    prompts = list(_get(config, "prompts", []) or [])
    if _get(config, "prompts_file", ""):
        prompts += read_prompts_file(config.prompts_file, config_dir)
    tf_cfg = _get(config, "prompts_tfds", None)
    if tf_cfg is not None and _get(tf_cfg, "name", ""):
        prompts += read_prompts_tfds(
            tf_cfg.name,
            data_dir=_get(tf_cfg, "data_dir", None) or None,
            split=_get(tf_cfg, "split", "train"),
            key=_get(tf_cfg, "key", "caption"),
            limit=_get(tf_cfg, "limit", 0),
        )
    if not prompts:
        raise ValueError("sweep config has no prompts (prompts, prompts_file or prompts_tfds)")
    return prompts


# --- runs ----------------------------------------------------------------------------------

def run_id(settings: dict) -> str:
    """Stable id of a run: hash of its settings (JSON, sorted keys)."""
    blob = json.dumps(plain(settings), sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()[:16]


def _format_method(kwargs: dict, prompt: str, synopses: dict | None = None) -> dict:
    kwargs = dict(kwargs)
    if kwargs.get("synopsis") == "per_prompt":  # the config's `synopses` table: prompt -> states
        if not synopses or prompt not in synopses:
            raise ValueError(f"method asks for a per-prompt synopsis but `synopses` has none for {prompt!r}")
        kwargs["synopsis"] = list(synopses[prompt])
    elif isinstance(kwargs.get("synopsis"), list):
        kwargs["synopsis"] = [s.format(prompt=prompt) if isinstance(s, str) else s for s in kwargs["synopsis"]]
    return kwargs


def expand_runs(config, config_dir: str | None = None) -> list[dict]:
    """The grid as a list of unique runs: {"run_id", "prompt", "method", "frames", "seed",
    "checkpoint", "kwargs"}; the id hashes all of them (not the metric settings)."""
    methods = plain(_get(config, "methods", {}))
    if not methods:
        raise ValueError("sweep config has no methods")
    frames_list = _int_list(config, "frames", [16], 2, MAX_FRAMES)
    seeds = _int_list(config, "seeds", [0], 0, 2**32 - 1)
    shared = plain(_get(config, "generate", {}))
    checkpoint = str(_get(config, "checkpoint", "") or "")
    synopses = plain(_get(config, "synopses", {}) or {})
    runs = {}
    for prompt in collect_prompts(config, config_dir):
        for method, mkwargs in methods.items():
            for frames in frames_list:
                for seed in seeds:
                    kwargs = {**shared, **_format_method(mkwargs or {}, prompt, synopses)}
                    settings = {"prompt": prompt, "method": method, "frames": int(frames), "seed": int(seed),
                                "checkpoint": checkpoint, "kwargs": kwargs}
                    runs.setdefault(run_id(settings), settings)
    return [{"run_id": rid, **settings} for rid, settings in runs.items()]


def _int_list(config, key: str, default: list, minimum: int, maximum: int) -> list[int]:
    value = _get(config, key, default)
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        value = [value]
    out = []
    for v in list(value):
        if isinstance(v, bool) or not isinstance(v, int) and not (isinstance(v, str) and v.strip().isdigit()):
            raise ValueError(f"sweep {key} must be a list of integers, got {v!r}")
        if int(v) < minimum:
            raise ValueError(f"sweep {key} must be >= {minimum}, got {v!r}")
        out.append(number(f"sweep {key}", v, integer=True, minimum=minimum, maximum=maximum))
    if not out:
        raise ValueError(f"sweep {key} is empty")
    return out


def resolve_fn(path: str) -> Callable:
    """Import ``pkg.module.fn`` or ``pkg.module:fn``."""
    module_name, _, attr = path.rpartition(":") if ":" in path else path.rpartition(".")
    if not module_name:
        raise ValueError(f"run_fn must be a dotted path, got {path!r}")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import run_fn {path!r}: {e}") from None


def _clip_scorer(config):
    path = _get(_get(config, "metrics", {}), "clip_checkpoint", "")
    if not path:
        return None
    cache = runtime().models
    if ("clip", path) not in cache:
        cache[("clip", path)] = ClipScorer.load(path)
    return cache[("clip", path)]


def score_video(video, prompt: str, config) -> dict:
    """The metrics of one video as the sweep config asks for them."""
    mcfg = _get(config, "metrics", {})
    size = _get(mcfg, "mawe_size", (720, 720))
    return compute_metrics(
        video,
        prompt=prompt,
        clip_scorer=_clip_scorer(config),
        flow_model=_get(mcfg, "flow_model", "dis"),
        mawe_size=tuple(size) if size else None,
        fps=float(_get(mcfg, "fps", 8.0)),
    )


def generate_and_score(run: dict, out_dir: str, config) -> dict:
    """Default run_fn: ``vstar_jax.pipeline.generate_video`` then the metrics of its video."""
    video_rel = os.path.join("videos", run["run_id"] + ".mp4")
    result = generate_video(
        run["prompt"],
        checkpoint=run["checkpoint"] or None,
        frames=run["frames"],
        seed=run["seed"],
        out=os.path.join(out_dir, video_rel),
        **run["kwargs"],
    )
    out = {"video": video_rel, **score_video(result.video, run["prompt"], config)}
    maps = getattr(result, "attention", None)  # captured temporal attention maps, if the run kept them
    if maps is not None:
        out["band_score"] = attention_band_score(maps, int(_get(_get(config, "metrics", {}), "band_width", 1)))
    return out


# --- the table -----------------------------------------------------------------------------

def _columns(rows: list[dict]) -> list[str]:
    cols = list(SETTING_COLUMNS)
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


def _arrow_table(rows: list[dict]):
    import pyarrow as pa

    cols = _columns(rows)
    arrays = {}
    for c in cols:
        values = [r.get(c) for r in rows]
        try:
            arrays[c] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arrays[c] = pa.array([None if v is None else str(v) for v in values], pa.string())
    return pa.table(arrays)


def write_table(rows: list[dict], out_dir: str) -> None:
    """Write ``rows`` as results.parquet then results.csv, each atomically (:mod:`vstar_jax.io.atomic`)."""
    import pyarrow.parquet as pq

    out = pathlib.Path(out_dir)
    with atomic_path(out / RESULTS_PARQUET) as tmp:
        pq.write_table(_arrow_table(rows), tmp)
    cols = _columns(rows)
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    write_text(out / RESULTS_CSV, text.getvalue())


def read_table(out_dir: str) -> list[dict]:
    """Rows of a sweep's results.parquet (the table of record); [] if there is none."""
    import pyarrow.parquet as pq

    path = pathlib.Path(out_dir) / RESULTS_PARQUET
    if not path.exists():
        return []
    return pq.read_table(path).to_pylist()


def _flat_result(result: dict) -> dict:
    """Scalars kept as columns; lists/dicts JSON-encoded."""
    out = {}
    for k, v in (result or {}).items():
        if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
            v = v.item()
        out[k] = v if v is None or isinstance(v, (bool, int, float, str)) else json.dumps(plain(v))
    return out


@contextlib.contextmanager
def _sigint_deferred():
    """Hold SIGINT back (delivered right after) while the block runs, on the main thread."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _ignore_sigint():
    """Ignore further Ctrl-C (main thread only) while a stopped sweep winds down; returns the handler."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        return signal.signal(signal.SIGINT, signal.SIG_IGN)
    return None


def _restore_sigint(previous) -> None:
    import signal

    if previous is not None:
        signal.signal(signal.SIGINT, previous)


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a sweep; ``done`` of ``total`` runs are in its table."""

    def __init__(self, done: int, total: int):
        super().__init__(f"interrupted: {done} of {total} runs done; run the sweep again to resume")
        self.done, self.total = done, total


def read_rows(out_dir: str) -> dict:
    """{run_id: row} of every finished run's row file (the table's rows under them)."""
    rows = {r["run_id"]: r for r in read_table(out_dir)}
    folder = pathlib.Path(out_dir) / ROWS_DIR
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            row = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # not a finished row file: the run is pending
            continue
        rows[row["run_id"]] = row
    return rows


def write_row(row: dict, out_dir: str) -> None:
    """One finished run, atomically (:mod:`vstar_jax.io.atomic`)."""
    folder = pathlib.Path(out_dir) / ROWS_DIR
    folder.mkdir(parents=True, exist_ok=True)

    write_text(folder / f"{row['run_id']}.json", json.dumps(row, default=str))


def _row(run: dict) -> dict:
    return {"run_id": run["run_id"], "prompt": run["prompt"], "method": run["method"], "frames": run["frames"],
            "seed": run["seed"], "checkpoint": run["checkpoint"], "settings": json.dumps(run["kwargs"], sort_keys=True)}


def _chunks(runs: list[dict], size: int) -> list[list[dict]]:
    """Runs in groups of up to ``size`` that share a compiled program (checkpoint, method, frames)."""
    if size <= 1:
        return [[r] for r in runs]
    groups: dict = {}
    for r in runs:
        groups.setdefault((r["checkpoint"], r["method"], r["frames"]), []).append(r)
    return [g[i:i + size] for g in groups.values() for i in range(0, len(g), size)]


def _mesh_devices(mesh) -> int:
    if mesh is None:
        return 1
    return int(mesh.devices.size) if hasattr(mesh, "devices") else int(__import__("math").prod(dict(mesh).values()))


def generate_and_score_batch(runs: list[dict], out_dir: str, config, mesh=None) -> list[dict]:
    """The default run_fn for many runs in one call (``pipeline.generate_batch``); the item axis is split
    over the mesh's ``data`` axis when the batch divides it."""
    common = dict(runs[0]["kwargs"])
    items = [{"prompt": r["prompt"], "seed": r["seed"], "out": os.path.join(out_dir, "videos", r["run_id"] + ".mp4")}
             for r in runs]
    common.pop("record_attention", None)  # not available in a batch (no band score)
    data = dict(mesh.shape).get("data", 1) if mesh is not None else 1
    use_mesh = mesh if data > 1 and len(runs) % data == 0 else None
    results = generate_batch(items, checkpoint=runs[0]["checkpoint"] or None, frames=runs[0]["frames"],
                             mesh=use_mesh, **common)
    return [{"video": os.path.join("videos", r["run_id"] + ".mp4"), **score_video(res.video, r["prompt"], config)}
            for r, res in zip(runs, results)]


SWEEP_SNAPSHOT = "sweep_config.json"  # written first: marks a folder as a vstar-jax sweep


def check_sweep_dir(out_dir: str) -> None:
    """A sweep resumes (and rewrites the tables of) its own folder only: a folder holding a results table,
    rows/ or videos/ without the sweep's sweep_config.json is someone else's and is refused (one line)."""
    if os.path.isfile(os.path.join(out_dir, SWEEP_SNAPSHOT)):
        return
    taken = [n for n in (RESULTS_PARQUET, RESULTS_CSV, ROWS_DIR, "videos") if os.path.lexists(os.path.join(out_dir, n))]
    if taken:
        raise ValueError(f"sweep folder {out_dir} holds {', '.join(taken)} but no {SWEEP_SNAPSHOT}: not a vstar-jax "
                         f"sweep, and a sweep never replaces them: choose another --out")


class SweepLocked(ValueError):
    """Another live process is running a sweep in this folder (one line, exit status 2)."""


LOCK_FILE = ".sweep.lock"


@contextlib.contextmanager
def folder_lock(out_dir: str, name: str = LOCK_FILE):
    """Hold ``out_dir/name`` locked (``flock``, released by the OS when the process dies, so a stale lock
    from a dead process is simply taken over) while a sweep runs there; a second sweep on the same folder
    is refused in one line naming the holder. The file stays (emptied) after: removing it would let a
    process that opened it meanwhile lock a file no one else sees."""
    import fcntl
    import socket

    path = os.path.join(out_dir, name)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise PermissionError(f"cannot lock the sweep folder {out_dir}: {e.strerror or e}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 300, 0).decode("utf-8", "replace").strip() or "another process"
            raise SweepLocked(f"sweep folder {out_dir} is in use by {holder}; wait for that sweep to end (or stop "
                              f"it), or give this one another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def check_runs(runs: list[dict]) -> None:
    """Every distinct run setting through :func:`~vstar_jax.generation.request.make_request` before the
    folder is touched (the model's config only, no params): a ``--set generate.cfg=1e30`` or a method's
    bad TAR spec is one line naming the method, not a table of failed runs."""
    import inspect

    accepted = set(inspect.signature(make_request).parameters) - {"prompt", "info", "frames", "seed"}
    infos: dict = {}
    seen = set()
    for r in runs:
        kw = {k: v for k, v in r["kwargs"].items() if k in accepted}
        key = json.dumps([r["checkpoint"], r["frames"], kw], sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        ck = r["checkpoint"] or None
        if ck not in infos:
            infos[ck] = model_info(ck)
        try:
            make_request(r["prompt"], infos[ck], frames=r["frames"], seed=r["seed"], **kw)
        except (VstarError, TypeError) as e:
            raise VstarError(f"sweep method {r['method']!r} ({r['frames']} frames): {' '.join(str(e).split())}") \
                from None


def run_sweep(config, out_dir: str, config_dir: str | None = None, retry_errors: bool = False, progress: bool = True,
              *, shard: tuple = (0, 1), mesh=None) -> list[dict]:
    """Run every pending run of the grid (of this ``shard`` = (index, count) of processes: every
    count-th run from the index-th); returns the table's rows. ``mesh``: the devices a batch of runs
    is split over (its ``data`` axis; ``batch`` in the config)."""
    index, count = (int(v) for v in shard)
    if not 0 <= index < count:
        raise ValueError(f"sweep shard {index} of {count} does not exist")
    runs = expand_runs(config, config_dir)

    mcfg = _get(config, "metrics", {})
    check_settings(plain(_get(mcfg, "mawe_size", None)), _get(mcfg, "fps", None), where="sweep metrics.")
    run_fn_name = _get(config, "run_fn", DEFAULT_RUN_FN)
    run_fn = resolve_fn(run_fn_name)
    batch = _get(config, "batch", 1)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer (runs per compiled call), got {batch!r}")
    batch = number("sweep batch (runs per compiled call)", batch, integer=True, minimum=1, maximum=MAX_BATCH)
    if batch > 1 and run_fn_name != DEFAULT_RUN_FN:
        raise ValueError(f"batch {batch} needs the default run_fn ({DEFAULT_RUN_FN}), not {run_fn_name}")
    if run_fn_name == DEFAULT_RUN_FN:
        check_runs(runs)
    check_sweep_dir(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    with folder_lock(out_dir, LOCK_FILE if count == 1 else f".sweep-{index}-of-{count}.lock"):
        return _run_locked(config, out_dir, runs, run_fn, batch, retry_errors, progress, index, count, mesh)


def _run_locked(config, out_dir, runs, run_fn, batch, retry_errors, progress, index, count, mesh):
    from tqdm import tqdm

    for stale in [p for folder in (pathlib.Path(out_dir), pathlib.Path(out_dir) / ROWS_DIR) if folder.is_dir()
                  for p in folder.iterdir() if is_temp_name(p.name)]:
        # alone: every leftover is stale; beside other processes only old ones (another may be mid-write)
        with contextlib.suppress(OSError):
            if count == 1 or time.time() - stale.stat().st_mtime > 600:
                stale.unlink(missing_ok=True)
    if index == 0:
        snapshot = os.path.join(out_dir, SWEEP_SNAPSHOT)

        write_text(snapshot, json.dumps(plain(config), indent=1, default=str))

    known = read_rows(out_dir)
    if retry_errors:
        known = {k: r for k, r in known.items() if r.get("status") != "error"}
    if index == 0:
        write_table(list(known.values()), out_dir)  # the CSV catches up with the Parquet if a kill fell between
    mine = [r for k, r in enumerate(runs) if k % count == index]
    pending = [r for r in mine if r["run_id"] not in known]
    devices = _mesh_devices(mesh)
    bar = tqdm(total=len(mine), initial=len(mine) - len(pending), desc="sweep" + (f" {index}/{count}" if count > 1
               else ""), disable=not progress)
    try:
        for chunk in _chunks(pending, batch):
            start = time.time()
            rows = [_row(r) for r in chunk]
            try:
                if len(chunk) == 1 and batch <= 1:
                    results = [run_fn(chunk[0], out_dir, config)]
                else:
                    results = generate_and_score_batch(chunk, out_dir, config, mesh)
                for row, result in zip(rows, results):
                    row.update(status="ok", error=None, **_flat_result(result))
            except Exception as e:  # a failed run (or batch) is recorded, the sweep goes on
                tb = traceback.format_exc(limit=5)
                for row in rows:
                    row.update(status="error", error=f"{type(e).__name__}: {e}", traceback=tb[-2000:])
            elapsed = (time.time() - start) / len(chunk)
            with _sigint_deferred():  # row files, then Parquet and CSV together, never one without the other
                for row in rows:
                    row.update(elapsed_s=elapsed, devices=devices, process=index, batch=len(chunk))
                    write_row(row, out_dir)
                    known[row["run_id"]] = row
                known.update(read_rows(out_dir))  # other processes' rows too
                write_table(list(known.values()), out_dir)
            bar.update(len(chunk))
    except KeyboardInterrupt:  # Ctrl-C: the runs in progress are not recorded (they rerun on resume)
        previous = _ignore_sigint()  # a second Ctrl-C while it winds down would cut it short (or traceback)
        try:
            bar.close()
            done = len(read_rows(out_dir))
        finally:
            _restore_sigint(previous)
        raise SweepInterrupted(done, len(runs)) from None
    bar.close()
    return list(known.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vstar-jax sweep", description="Run a benchmark sweep.")
    parser.add_argument("config", help="Python config file with get_config()")
    parser.add_argument("--out", default=None, help="sweep directory (default out/sweeps/<name>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override key=value")
    parser.add_argument("--retry-errors", action="store_true", help="rerun runs that failed before")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        config, config_dir = load_config(args.config, args.overrides)
        out = args.out or os.path.join("out", "sweeps", _get(config, "name", "sweep"))
        rows = run_sweep(config, out, config_dir, retry_errors=args.retry_errors, progress=not args.no_progress)
    except KeyboardInterrupt as e:  # the table holds every finished run
        previous = _ignore_sigint()
        try:
            msg = str(e) if isinstance(e, SweepInterrupted) else "interrupted"
            print(f"error: {msg}", file=sys.stderr)
        finally:
            _restore_sigint(previous)
        return 130
    except (ValueError, FileNotFoundError, PermissionError, KeyError, OSError) as e:
        line = " ".join(str(e).split()) or type(e).__name__
        print(f"error: {line}", file=sys.stderr)
        return 2
    n_err = sum(r.get("status") == "error" for r in rows)
    print(f"{len(rows)} runs in {out} ({n_err} failed)")
    if rows and n_err == len(rows):
        errors = sorted({str(r.get("error")) for r in rows})
        print(f"error: every run failed, e.g. {errors[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
