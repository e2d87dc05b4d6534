"""Atomic writes and safe path joins: a reader never sees half a file or half a folder, and a
name taken from data never escapes its folder.

The one writer of files (:func:`atomic_open`, :func:`atomic_write_text`,
:func:`atomic_write_json`) and of folders (:func:`atomic_directory`): everything is written
under a temporary name beside its destination and renamed into place. Framework-free: the
trainer's checkpoint IO that uses :func:`atomic_open` lives in :mod:`lavic.training.trainer`.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from lavic.errors import LavicError

log = logging.getLogger(__name__)


def current_umask() -> int:
    """The process umask, read without changing it (``os.umask`` can only be read by setting
    it, which would give files made meanwhile by another thread the wrong mode)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc (macOS): the read-by-setting fallback
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike[str] | int, *, directory: bool = False) -> None:
    """Give a file (path or open descriptor) or folder the mode an ordinary ``open``/``mkdir``
    would: ``mkstemp``/``mkdtemp`` make them 0600/0700 whatever the umask, so an artefact or a
    catalogue written by one user could not be read by a server run as another."""
    mode = (0o777 if directory else 0o666) & ~current_umask()
    if isinstance(path, int):
        os.fchmod(path, mode)
    else:
        os.chmod(path, mode)


def fsync_directory(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename in it) to disk, where the platform allows it."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it onto ``path`` only if the block succeeds.

    The file gets the mode the umask gives (not ``mkstemp``'s 0600); the rename is flushed to
    disk with its folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        apply_umask(fd)
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_directory(path.parent)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:  # e.g. ENOSPC from write/fsync
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def remove_partial_writes(path: str | os.PathLike[str]) -> int:
    """Delete the temporaries a killed :func:`atomic_open` left beside ``path``.

    They are incomplete by construction (a finished write is renamed onto ``path``), so
    nothing is lost. Returns how many were removed.
    """
    path = Path(path)
    removed = 0
    for partial in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
            removed += 1
    return removed


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def safe_join(root: str | os.PathLike[str], name: str) -> Path:
    """Join a file ``name`` taken from data onto ``root``; refuse anything that would leave it.

    Raises:
        LavicError: if ``name`` is empty, absolute, has a path separator or a ``..`` part,
            or resolves (through links) outside ``root``.
    """
    if not name or name in {".", ".."} or "/" in name or "\\" in name or "\x00" in name:
        raise LavicError(f"unsafe file name {name!r}: must be a plain name inside {root}")
    try:
        os.fsencode(name)
    except UnicodeEncodeError:  # e.g. an unpaired surrogate from a JSON escape
        raise LavicError(f"unsafe file name {name!r}: not encodable as a file name") from None
    root_path = Path(root).resolve()
    candidate = (root_path / name).resolve()
    if candidate.parent != root_path:
        raise LavicError(f"unsafe file name {name!r}: resolves outside {root}")
    return candidate


RENAME_EXCHANGE = 2  # linux/fs.h: swap two existing paths atomically


def _exchange(a: Path, b: Path) -> bool:
    """Swap the folders ``a`` and ``b`` in one atomic step; False where the platform or the
    filesystem cannot (then the caller falls back to two renames)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # not Linux / glibc < 2.28
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # e.g. a filesystem without it
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextlib.contextmanager
def atomic_directory(out_dir: str | os.PathLike[str], *, keep_existing: bool = False):
    """Yield a fresh temporary directory beside ``out_dir``; on success it becomes ``out_dir``.

    If ``out_dir`` exists the two folders are exchanged in one atomic step and the old one is
    then deleted; where the filesystem cannot exchange, the old one is moved aside first (two
    renames: for an instant the path is absent, never partial). The folder gets the mode the
    umask gives. On an exception the temporary directory is removed and ``out_dir`` is left as
    it was.

    With ``keep_existing`` an ``out_dir`` that is there when the new folder is ready (another
    process wrote the same content meanwhile, e.g. a shared cache) is kept and the new one
    dropped; the caller checks it is what it wants.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        apply_umask(tmp, directory=True)
        yield tmp
        if keep_existing:
            try:
                os.rename(tmp, out)  # fails on a non-empty out_dir: never replaces one
            except OSError:
                if not out.exists():
                    raise
                log.info("%s was written concurrently; keeping that copy", out)
                shutil.rmtree(tmp, ignore_errors=True)
                return
            fsync_directory(out.parent)
            return
        if out.exists() and _exchange(tmp, out):
            fsync_directory(out.parent)
            shutil.rmtree(tmp, ignore_errors=True)  # now the old folder
            return
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.rmdir(old)
            os.replace(out, old)
        os.replace(tmp, out)
        fsync_directory(out.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
