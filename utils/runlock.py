"""One writer per folder: a run dir (main.py) or a prepared tree (prepare.py) is locked while a run writes it.

The lock is an ``flock`` on ``FOLDER/.lock``. The OS drops it when its process ends, however it ends,
so a second start fails at once (naming the holder) only while the holder really runs, and a lock
left by a killed run is taken over with a warning. The file holds the holder's pid, host, start time
and command; a normal release removes it, so a file found with no live holder means its run was killed.

    with hold_run_lock(run_dir, "main.py training"):
        ...  # nothing else can hold this folder's lock until the block ends
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Iterator

from utils.errors import RunError

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"

_held: set[int] = set()  # descriptors of the locks this process holds


class RunLockedError(RunError):
    """Another live process holds the folder's lock."""


def _close_in_child() -> None:
    """A forked child (a DataLoader or pool worker) must not keep its parent's lock alive."""
    for fd in _held:
        os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_close_in_child)


def _read_holder(fd: int) -> dict:
    """What the lock file says about its holder ({} when empty or unreadable)."""
    try:
        return json.loads(os.pread(fd, 65536, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _write_holder(fd: int, what: str) -> None:
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    holder = {"what": what, "pid": os.getpid(), "host": socket.gethostname(), "started": started,
              "command": " ".join(sys.argv)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    os.fsync(fd)


def _describe(holder: dict) -> str:
    """``main.py training (pid 123 on host, started 2026-01-01T10:00:00+00:00)``."""
    if not holder:
        return "another process (starting: it has not written its details yet)"
    return f"{holder.get('what')} (pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')})"


@contextlib.contextmanager
def hold_run_lock(folder: str | Path, what: str) -> Iterator[Path]:
    """Hold ``folder``'s lock for the block; :class:`RunLockedError` at once if a live process has it.

    ``what`` names the holder in the messages of later starts (``"main.py training"``). A failed
    start changes nothing in the folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = _acquire(path, folder)
    try:
        previous = _read_holder(fd)
        if previous:
            logger.warning(f"{folder}: taking over the lock of {_describe(previous)}, which ended without "
                           "releasing it (killed?)")
        _write_holder(fd, what)
        _held.add(fd)
        yield path
    finally:
        _held.discard(fd)
        path.unlink(missing_ok=True)  # still ours: whoever opens it next finds it gone and makes a new one
        os.close(fd)


def _acquire(path: Path, folder: Path) -> int:
    """A descriptor of ``path`` under our exclusive flock (the file as it is named now, not one removed meanwhile)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLockedError(f"{folder} is in use by {_describe(holder)}; wait for it to end or stop "
                                 f"it first (its lock: {path})") from None
        if _names(fd, path):
            return fd
        os.close(fd)  # its holder released and removed it between our open and flock: take the new one


def _names(fd: int, path: Path) -> bool:
    """True when ``path`` still names the file open as ``fd``."""
    try:
        named, held = path.stat(), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)
