"""Atomic files: a reader (test.py, a resumed run) never sees half a file, even after a crash or a kill.

Every output of the toolkit is written to a temp file in the same folder, synced, then renamed
over its name; checkpoints also sync the folder. A full disk (or quota, or ``ulimit -f``) is a
:class:`DiskFullError` (exit 1) and leaves the previous file unchanged.
"""
from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

from utils.errors import RunError
from utils.faults import pause_at

# Writes that fail for lack of room: (what happened, what to do) for a full disk, a full quota, the file
# size limit of ``ulimit -f``
DISK_FULL_REASONS = {
    errno.ENOSPC: ("no space left on the device", "free some space"),
    errno.EDQUOT: ("disk quota exceeded", "free some space"),
    errno.EFBIG: ("file size limit exceeded (ulimit -f)", "raise the limit"),
}


class DiskFullError(RunError):
    """No room left while writing a file (``code``: the errno); the file it was to replace is unchanged."""

    def __init__(self, path: Path, code: int = errno.ENOSPC) -> None:
        reason, remedy = DISK_FULL_REASONS[code]
        super().__init__(f"{reason} while writing {path}; the previous {path.name} (if any) is unchanged: "
                         f"{remedy} and run the same command again")


def disk_full_errno(error: BaseException | None) -> int | None:
    """The errno of DISK_FULL_REASONS anywhere in the chain (torch.save wraps the OSError of a failed write
    in a RuntimeError), else None."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in DISK_FULL_REASONS:
            return error.errno
        error = error.__cause__ or error.__context__
    return None


def _sync_folder(folder: Path) -> None:
    """fsync a directory, so that a rename inside it survives a power cut."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None], keep_previous: Path | None = None,
                 durable: bool = False) -> None:
    """Write through ``write(file)`` into a temp file of the same folder, fsync, then rename over ``path``.

    ``keep_previous``: the file being replaced is renamed there first. ``durable``: the folder is
    synced after the rename too (checkpoints). A full disk raises :class:`DiskFullError`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:  # named after the file being written, not its temp name
        code = disk_full_errno(error)
        if code is not None:
            raise DiskFullError(path, code) from error
        raise type(error)(error.errno, error.strerror, str(path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs should be readable like any other file
        pause_at(f"writing:{path.name}")
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
        if durable:
            _sync_folder(path.parent)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        code = disk_full_errno(error)
        if code is not None:
            raise DiskFullError(path, code) from error
        raise


def remove_partial_writes(folder: Path) -> list[Path]:
    """Delete the temp files of atomic writes cut short by a kill in ``folder``; only safe under its run lock."""
    partial = sorted(path for path in folder.glob(".*.tmp") if path.is_file())
    for path in partial:
        path.unlink(missing_ok=True)
    return partial


def atomic_save(obj: Any, path: str | Path, keep_previous: Path | None = None) -> None:
    """``torch.save`` that replaces ``path`` only once the whole file is written and synced, folder included."""
    import torch

    atomic_write(path, lambda f: torch.save(obj, f), keep_previous, durable=True)


def atomic_write_text(text: str, path: str | Path) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_bytes(data: bytes, path: str | Path) -> None:
    """Replace ``path`` with ``data`` atomically (figures rendered in memory)."""
    atomic_write(path, lambda f: f.write(data))


def read_json(path: str | Path, what: str) -> Any:
    """The JSON value in ``path``; a file that cannot be read or parsed is one ValueError naming it as ``what``."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable {what} ({err})") from None
