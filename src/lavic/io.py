"""Atomic file writes and safe path joins: a reader never sees half a file, and a name taken
from data never escapes its folder."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from lavic.errors import LavicError


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


def atomic_checkpoint_io():
    """A Lightning ``CheckpointIO`` that writes each checkpoint beside its path, then renames it.

    Lightning's own stages a checkpoint under ``$TMPDIR`` and *moves* it onto its name: a copy
    when ``$TMPDIR`` is another filesystem (a tmpfs ``/tmp``, outputs on a data disk), so a
    process killed during the copy leaves a truncated ``last.ckpt`` under its final name.
    """
    import torch
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None):
            if storage_options is not None:
                raise TypeError("AtomicCheckpointIO takes no storage_options")
            with atomic_open(path, "wb") as handle:
                torch.save(checkpoint, handle)

    return AtomicCheckpointIO()


def peek_checkpoint(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(epoch, global_step)`` of one of our training checkpoints, read without unpickling
    code (``weights_only=True``); a damaged one is a one-line error (Lightning would raise deep
    inside ``fit``)."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ... here
        raise LavicError(
            f"{path}: unreadable checkpoint ({type(exc).__name__}); delete it to start over"
        ) from None
    if not isinstance(ckpt, dict):
        raise LavicError(f"{path}: not a training checkpoint; delete it to start over")
    return int(ckpt.get("epoch", 0)), int(ckpt.get("global_step", 0))
