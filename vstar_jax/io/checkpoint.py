"""Converted checkpoints on disk: one directory with an orbax tree and a config.

Layout::

    DIR/config.json      {"format": "vstar-jax/1", "components": [...], "unet": {...}, ...}
    DIR/params/          orbax StandardCheckpointer tree {"unet": ..., "vae": ..., "text": ...}

Writes are atomic (:func:`vstar_jax.io.atomic.atomic_dir`): everything goes to a hidden temporary
directory beside DIR that is renamed into place only when complete, so a failed or interrupted
conversion leaves no partial DIR behind (and an existing DIR untouched). ``overwrite`` replaces only a
previous vstar-jax checkpoint (its config.json marker, nothing else inside), never the source or a
folder holding it.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from typing import Any, Mapping, Optional

import jax

from vstar_jax.errors import VstarError
from vstar_jax.io.atomic import atomic_dir, write_error
from vstar_jax.trees import plain

FORMAT = "vstar-jax/1"


CHECKPOINT_ENTRIES = ("config.json", "params")  # everything save_checkpoint writes into a checkpoint


def is_checkpoint_dir(path) -> bool:
    """A folder save_checkpoint wrote: config.json of format vstar-jax/1 (its marker)."""
    cfg = os.path.join(os.fspath(path), "config.json")
    try:
        with open(cfg, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


def _inside(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip(os.sep) + os.sep)


def check_checkpoint_out(out_dir, *, overwrite: bool = False, sources=()) -> str:
    """Refuse (one line, before any conversion) an output folder that must not be written: the
    source itself or a folder holding it (any source path: a model folder, a checkpoint file, a
    config), an existing one without ``overwrite``, and with ``overwrite`` anything but a previous
    vstar-jax checkpoint (config.json of format vstar-jax/1 beside params/ and nothing else) or an
    empty folder. Returns the absolute output path."""
    out_abs = os.path.abspath(os.fspath(out_dir))
    out_real = os.path.realpath(out_abs)
    for src in sources:
        if src is None:
            continue
        src_real = os.path.realpath(os.fspath(src))
        if _inside(src_real, out_real):
            what = "is the source" if src_real == out_real else f"holds the source {src}"
            raise VstarError(f"--out {out_dir} {what}; converting never writes over its source: "
                             f"choose another --out")
    if not os.path.lexists(out_abs):
        return out_abs
    if not overwrite:
        raise FileExistsError(f"output directory exists: {out_abs} (pass overwrite=True / --overwrite)")
    if os.path.islink(out_abs) or not os.path.isdir(out_abs):
        raise VstarError(f"--out {out_dir} exists and is not a folder; --overwrite replaces only a previous "
                         f"vstar-jax checkpoint: choose another --out")
    entries = sorted(os.listdir(out_abs))
    if not entries:
        return out_abs
    if not is_checkpoint_dir(out_abs):
        raise VstarError(f"--out {out_dir} exists and is not a vstar-jax checkpoint (no config.json of format "
                         f"{FORMAT}); --overwrite replaces only a previous vstar-jax checkpoint, never another "
                         f"folder: choose another --out")
    extra = [e for e in entries if e not in CHECKPOINT_ENTRIES]
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise VstarError(f"--out {out_dir} is a vstar-jax checkpoint holding other files too ({shown}); "
                         f"--overwrite would delete them: move them away or choose another --out")
    return out_abs


def save_checkpoint(out_dir: str, params: Mapping[str, Any], config: Mapping[str, Any], *,
                    overwrite: bool = False, sources=()) -> str:
    """Write ``params`` (a dict of component trees) and ``config`` to ``out_dir`` atomically.

    ``overwrite`` replaces only a previous vstar-jax checkpoint (see :func:`check_checkpoint_out`);
    ``sources``: the paths converted from, which ``out_dir`` must neither be nor hold."""
    import orbax.checkpoint as ocp

    out_dir = check_checkpoint_out(out_dir, overwrite=overwrite, sources=sources)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"cannot write to {parent}")
    cfg = dict(plain(config))
    cfg.setdefault("format", FORMAT)
    cfg["components"] = sorted(params)
    with atomic_dir(out_dir, what="checkpoint") as tmp:
        # Bounded in-flight bytes: a 5.6 GB tree is written without a second full copy.
        ckptr = ocp.Checkpointer(ocp.StandardCheckpointHandler(save_concurrent_gb=1))
        try:
            with _quiet_absl():  # orbax logs each failing writer thread's traceback; the error is raised once
                ckptr.save(os.path.join(tmp, "params"), args=ocp.args.StandardSave(dict(params)))
        except (OSError, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 - tensorstore reports a full disk as ValueError(RESOURCE_EXHAUSTED)
            raise write_error(out_dir, _as_oserror(e), "checkpoint") from None
        cfg[FILES_KEY] = params_files(os.path.join(tmp, "params"))  # checked at every load (check_params_files)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(cfg, f, indent=1, sort_keys=True)
        _user_permissions(str(tmp))
        check_checkpoint_out(out_dir, overwrite=overwrite, sources=sources)  # unchanged while converting
    return out_dir


class _quiet_absl:
    def __enter__(self):
        self.logger = logging.getLogger("absl")
        self.level = self.logger.level
        self.logger.setLevel(logging.CRITICAL)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)


def _as_oserror(e: BaseException) -> OSError:
    text = " ".join(str(e).split())
    if "No space left on device" in text or "os_error_code='28'" in text:
        return OSError(errno.ENOSPC, "No space left on device")
    return OSError(None, f"{type(e).__name__}: {text[:300]}")


FILES_KEY = "params_files"  # config.json: [[path under params/, size, mtime_ns, sha256], ...] at conversion


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def params_files(root: str) -> list:
    """Every file under ``root`` (the params tree) as [relative path, size, mtime_ns, sha256]."""
    out = []
    for dirpath, _, filenames in os.walk(root):
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            st = os.stat(p)
            out.append([os.path.relpath(p, root), st.st_size, st.st_mtime_ns, _sha256(p)])
    return sorted(out)


def check_params_files(ckpt_dir: str, recorded) -> None:
    """Refuse (one-line CheckpointError naming the file) params whose files changed since conversion:
    a missing file or another size at once; a file whose mtime is not the recorded one is hashed and
    compared (so an untouched checkpoint costs a stat per file; ``VSTAR_VERIFY_HASHES=1`` hashes all).
    Checkpoints converted before the hashes were recorded pass."""
    if not recorded:
        return
    root = os.path.join(os.path.abspath(os.fspath(ckpt_dir)), "params")
    force = os.environ.get("VSTAR_VERIFY_HASHES", "") not in ("", "0")
    for entry in recorded:
        rel, size, mtime_ns, digest = entry
        p = os.path.join(root, str(rel))
        try:
            st = os.stat(p)
        except OSError:
            raise CheckpointError(f"{ckpt_dir}: params/{rel} is missing (a damaged checkpoint; convert it again)") from None
        if st.st_size != size:
            raise CheckpointError(f"{ckpt_dir}: params/{rel} is {st.st_size} bytes, {size} at conversion (truncated or "
                                  f"replaced; convert the checkpoint again)")
        if (force or st.st_mtime_ns != mtime_ns) and _sha256(p) != digest:
            raise CheckpointError(f"{ckpt_dir}: params/{rel} changed since conversion (its sha256 differs; "
                                  f"convert the checkpoint again)")


def _user_permissions(root: str) -> None:
    """Directories 0777 and files 0666, less the process umask (what mkdir/open would have given)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(root, 0o777 & ~mask)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o777 & ~mask)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o666 & ~mask)


def read_config(ckpt_dir: str) -> dict:
    path = os.path.join(os.fspath(ckpt_dir), "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"not a vstar-jax checkpoint (no config.json): {ckpt_dir}")
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({' '.join(str(e).split())[:200]}); "
                              f"convert the checkpoint again") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path} holds a JSON {type(cfg).__name__}, not a vstar-jax checkpoint config "
                              f"(an object with format {FORMAT!r}); convert the checkpoint again")
    if cfg.get("format") != FORMAT:
        raise ValueError(f"{ckpt_dir}: unknown checkpoint format {cfg.get('format')!r} (want {FORMAT})")
    import ml_collections

    comps = cfg.get("components")
    if not isinstance(comps, list) or not all(isinstance(cfg.get(c), dict) for c in comps if c in ("unet", "vae", "text")):
        raise CheckpointError(f"{path}: 'components' and each component's settings are missing or malformed; "
                              f"convert the checkpoint again")
    # Component configs as ConfigDicts: the models read them by attribute.
    return {k: ml_collections.ConfigDict(v) if isinstance(v, dict) else v for k, v in cfg.items()}


def load_checkpoint(ckpt_dir: str, shardings: Optional[Any] = None, *,
                    components: Optional[list] = None) -> tuple[dict, dict]:
    """Restore ``(params, config)``.

    ``shardings``: None (host numpy arrays), one ``jax.sharding.Sharding`` for every
    array, a pytree of shardings matching the params, or a callable
    ``(path: tuple[str, ...], shape) -> Sharding`` (e.g. from sharding rules). Each
    array is then restored directly into its sharded layout.
    ``components``: restore only these top-level components.
    """
    import orbax.checkpoint as ocp

    cfg = read_config(ckpt_dir)
    path = os.path.join(os.path.abspath(os.fspath(ckpt_dir)), "params")
    files = cfg.get(FILES_KEY)
    if not os.path.isdir(path):
        raise CheckpointError(f"{ckpt_dir}: no params/ directory (an incomplete or damaged checkpoint; convert it again)")
    if not os.path.isfile(os.path.join(path, "_METADATA")):
        raise CheckpointError(f"{ckpt_dir}: params/_METADATA is missing (an incomplete or damaged checkpoint; "
                              f"convert it again)")
    check_params_files(ckpt_dir, list(files) if isinstance(files, (list, tuple)) else None)
    ckptr = ocp.StandardCheckpointer()
    try:
        meta = ckptr.metadata(path).item_metadata.tree
    except Exception as e:  # noqa: BLE001 - orbax raises many kinds; the user needs one line
        raise CheckpointError(f"{ckpt_dir}: cannot read the params' metadata ({_first_line(e)}); "
                              f"convert the checkpoint again") from None
    try:
        return _restore(ckptr, path, meta, shardings, components, ckpt_dir), cfg
    except (CheckpointError, KeyError):
        raise
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{ckpt_dir}: cannot restore the params ({_first_line(e)}); "
                              f"convert the checkpoint again") from None


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be read (one line, no traceback, from the CLI)."""


def _first_line(e: BaseException) -> str:
    line = next((x.strip() for x in str(e).splitlines() if x.strip()), type(e).__name__)
    return f"{type(e).__name__}: {line[:200]}"


def _restore(ckptr, path, meta, shardings, components, ckpt_dir):
    import orbax.checkpoint as ocp
    if components is not None:
        unknown = sorted(set(components) - set(meta))
        if unknown:
            raise KeyError(f"{ckpt_dir} has no component(s) {unknown}; it has {sorted(meta)}")
    if shardings is None and components is None:
        return ckptr.restore(path)

    def leaf_sharding(kp, m):
        if shardings is None:
            return None
        if isinstance(shardings, jax.sharding.Sharding):
            return shardings
        if callable(shardings):
            return shardings(tuple(getattr(k, "key", k) for k in kp), tuple(m.shape))
        return None

    abstract = jax.tree_util.tree_map_with_path(
        lambda kp, m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=leaf_sharding(kp, m)), meta)
    if shardings is not None and not isinstance(shardings, jax.sharding.Sharding) and not callable(shardings):
        abstract = jax.tree_util.tree_map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    if components is not None:
        abstract = {k: v for k, v in abstract.items() if k in components}
        restore_args = ocp.args.PyTreeRestore(
            item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract), partial_restore=True)
        params = ocp.PyTreeCheckpointer().restore(path, args=restore_args)
    else:
        params = ckptr.restore(path, abstract)
    return params
