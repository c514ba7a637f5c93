"""The one way every output reaches its final name: a temporary file in the same folder, the
writer's success checked, fsync, rename. On any failure the temporary file is removed and the
file that was there before (if any) is left exactly as it was.

    with atomic_path("out/clip.mp4") as tmp:     # a writer that takes a path (ffmpeg, PIL, numpy...)
        writer(tmp)                              # raise on failure -> tmp removed, clip.mp4 untouched
    write_text("out/clip.json", text)            # bytes / text in one call
    with Staging() as st:                        # several files that appear together (video + GIF + sidecar)
        writer(st.path("out/clip.mp4")); st.write_text("out/clip.json", text); st.commit()
    with atomic_dir("ckpt/vc2") as tmp: ...      # a whole directory (converted checkpoints)

Temporary names are short (``.<8 hex>.tmp<suffix>``) so a final name near the file system's
255-byte limit still has a temporary one; the suffix is kept because writers pick the format
from it (ffmpeg, matplotlib, numpy's ``.npz``). An ``OSError`` while writing (a full disk, a
read-only folder) becomes :class:`WriteError`, one line for the command line.

This module is the lowest layer of ``vstar_jax``: it imports nothing from the package but the
error type.
"""
from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import secrets
import shutil
from typing import Iterator, Optional

from vstar_jax.errors import VstarError

TMP_MARK = ".tmp"
_SUFFIX_MAX = 16  # longer suffixes are not kept in the temporary name (writers need only .mp4, .npz, ...)


class WriteError(VstarError):
    """An output could not be written; nothing was changed (one line, exit status 2)."""


def temp_path(final, *, suffix: Optional[str] = None) -> pathlib.Path:
    """A fresh temporary name beside ``final``: ``.<8 hex>.tmp<suffix>`` (suffix: final's)."""
    p = pathlib.Path(final)
    sfx = p.suffix if suffix is None else suffix
    if len(sfx) > _SUFFIX_MAX:
        sfx = ""
    return p.with_name(f".{secrets.token_hex(4)}{TMP_MARK}{sfx}")


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one of this module's temporary names (for stale-file cleanup)."""
    return (name.startswith(".") and len(name) >= 13 and name[9:13] == TMP_MARK
            and all(c in "0123456789abcdef" for c in name[1:9]))


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError):
        if e.errno == errno.ENOSPC:
            return "no space left on device"
        return e.strerror or " ".join(str(e).split()) or type(e).__name__
    return " ".join(str(e).split()) or type(e).__name__


def write_error(final, e: BaseException, what: str = "") -> WriteError:
    """The one-line error for a failed write of ``final`` (whose old content is untouched)."""
    return WriteError(f"cannot write {what + ' ' if what else ''}{final}: {_describe(e)} "
                      f"(nothing was changed: no file was replaced and no partial file is left)")


def fsync_file(path) -> None:
    fd = os.open(os.fspath(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path) -> None:
    """Make a rename durable; a file system that cannot fsync a directory is not an error."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink(p) -> None:
    with contextlib.suppress(OSError):
        pathlib.Path(p).unlink(missing_ok=True)


class Staging:
    """Temporary files that replace their final names together at :meth:`commit` (in the order they
    were staged; stage the file whose presence means "complete", such as a sidecar, last).

    Used as a context manager, an exception (or leaving without commit) removes every temporary file
    and replaces nothing."""

    def __init__(self):
        self.items: list[tuple[pathlib.Path, pathlib.Path]] = []  # (tmp, final)
        self.committed = False

    def path(self, final, *, suffix: Optional[str] = None) -> pathlib.Path:
        """A temporary path for ``final`` (its folder created); the caller's writer creates the file."""
        final = pathlib.Path(final)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(final, e) from None
        tmp = temp_path(final, suffix=suffix)
        for t, f in self.items:  # a second write of the same file wins
            if f == final:
                _unlink(t)
        self.items = [(t, f) for t, f in self.items if f != final]
        self.items.append((tmp, final))
        return tmp

    def write_bytes(self, final, data: bytes) -> pathlib.Path:
        tmp = self.path(final)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            _unlink(tmp)
            raise write_error(final, e) from None
        return tmp

    def write_text(self, final, text: str, encoding: str = "utf-8") -> pathlib.Path:
        return self.write_bytes(final, text.encode(encoding))

    def commit(self) -> None:
        """fsync every temporary file (each must exist and have been written), then rename each into
        place. A failure before the first rename changes nothing."""
        try:
            for tmp, final in self.items:
                if not tmp.is_file():
                    raise write_error(final, OSError(errno.EIO, "the writer produced no file"))
                fsync_file(tmp)
        except WriteError:
            self.abort()
            raise
        except OSError as e:
            self.abort()
            raise write_error(final, e) from None
        done = set()
        for tmp, final in self.items:
            try:
                os.replace(tmp, final)
            except OSError as e:
                self.abort()
                raise write_error(final, e) from None
            done.add(final.parent)
        for d in done:
            fsync_dir(d)
        self.committed = True
        self.items = []

    def abort(self) -> None:
        for tmp, _ in self.items:
            _unlink(tmp)
        self.items = []

    def __enter__(self) -> "Staging":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.committed:
            self.abort()


@contextlib.contextmanager
def atomic_path(final, *, what: str = "", suffix: Optional[str] = None) -> Iterator[pathlib.Path]:
    """Yield a temporary path beside ``final``; when the block ends without an exception, the file
    written there replaces ``final`` (fsync + rename). An exception removes it; an ``OSError`` is
    raised as :class:`WriteError`, anything else as it was."""
    with Staging() as st:
        tmp = st.path(final, suffix=suffix)
        try:
            yield tmp
        except OSError as e:
            raise write_error(final, e, what) from None
        st.commit()


def write_bytes(final, data: bytes) -> pathlib.Path:
    """``data`` as the file ``final``, atomically."""
    with Staging() as st:
        st.write_bytes(final, data)
        st.commit()
    return pathlib.Path(final)


def write_text(final, text: str, encoding: str = "utf-8") -> pathlib.Path:
    return write_bytes(final, text.encode(encoding))


def append_text(final, text: str, encoding: str = "utf-8") -> pathlib.Path:
    """``final`` with ``text`` added at its end, atomically: the old content and the new are written to a
    temporary file that replaces ``final`` (for small logs, e.g. a benchmark's JSON lines: a failed write
    leaves the file as it was, never a torn last line)."""
    try:
        old = pathlib.Path(final).read_bytes()
    except FileNotFoundError:
        old = b""
    return write_bytes(final, old + text.encode(encoding))


@contextlib.contextmanager
def atomic_dir(final, *, what: str = "") -> Iterator[pathlib.Path]:
    """Yield a new temporary directory beside ``final``; when the block ends without an exception it
    replaces ``final`` (an existing ``final`` is moved aside, the new one renamed in, the old one then
    deleted; if the second rename fails the old one is put back). Whether ``final`` may be replaced at
    all is the caller's decision, made before."""
    final = pathlib.Path(os.path.abspath(os.fspath(final)))
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(final, suffix="")
        os.mkdir(tmp)
    except OSError as e:
        raise write_error(final, e, what) from None
    try:
        try:
            yield tmp
            for dirpath, _, filenames in os.walk(tmp):
                for name in filenames:
                    fsync_file(os.path.join(dirpath, name))
                fsync_dir(dirpath)
        except OSError as e:
            raise write_error(final, e, what) from None
        if os.path.lexists(final):
            old = temp_path(final, suffix=".old")
            try:
                os.replace(final, old)
            except OSError as e:
                raise write_error(final, e, what) from None
            try:
                os.replace(tmp, final)
            except OSError as e:
                os.replace(old, final)
                raise write_error(final, e, what) from None
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                _unlink(old)
        else:
            try:
                os.replace(tmp, final)
            except OSError as e:
                raise write_error(final, e, what) from None
        fsync_dir(final.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
