"""Small helpers every script shares: atomic files, PNG bytes, coloured logs and the CLI exit convention.

Exit codes of every command: 0 done, 1 the run failed (e.g. a non-finite loss, a full disk, a run
dir in use by another process: one ``error:`` line), 2 bad input (a one-line
``error: <file>: <problem>`` on stderr, like argparse's own usage errors), 130 interrupted
(SIGINT/SIGTERM; the run saved what it had and the same command resumes it).
"""
from __future__ import annotations

import argparse
import errno
import io
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np
from termcolor import colored
from tqdm import tqdm
from yacs.config import CfgNode

from faults import pause_at

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130

# ---------------------------------------------------------------------------------------------
# Atomic writes: a reader (test.py, a resumed run) never sees half a file, even after a crash.
# ---------------------------------------------------------------------------------------------


class RunError(RuntimeError):
    """A run that cannot go on for a reason outside its input: one ``error:`` line, exit code 1."""


class DiskFullError(RunError):
    """No space left while writing a file; the file it was to replace is unchanged."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"no space left on the device while writing {path}; the previous {path.name} (if any) "
                         "is unchanged: free some space and run the same command again")


def _is_disk_full(error: BaseException | None) -> bool:
    """ENOSPC/EDQUOT anywhere in the chain (torch.save wraps the OSError of a failed write in a RuntimeError)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__ or error.__context__
    return False


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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
        if _is_disk_full(error):
            raise DiskFullError(path) from error
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


def png_bytes(picture: Any, dpi: int = 100) -> bytes:
    """A matplotlib Figure, a PIL image or an RGB uint8 array, encoded as PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    if isinstance(picture, np.ndarray):
        picture = Image.fromarray(picture)
    if isinstance(picture, Image.Image):
        picture.save(buffer, format="PNG")
    else:
        picture.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------------------------


class _ColouredFormatter(logging.Formatter):
    """``[12:03:04] message``: green time, yellow/red level name for warnings and errors."""

    _LEVEL_COLOURS = {logging.WARNING: "yellow", logging.ERROR: "red", logging.CRITICAL: "red"}

    def format(self, record: logging.LogRecord) -> str:
        stamp = colored(f"[{self.formatTime(record, '%H:%M:%S')}]", "green")
        message = record.getMessage()
        colour = self._LEVEL_COLOURS.get(record.levelno)
        if colour:
            message = colored(f"{record.levelname}: {message}", colour, attrs=["bold"])
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        return f"{stamp} {message}"


class _TqdmHandler(logging.StreamHandler):
    """Console handler that prints above a running tqdm bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging must never kill training
            self.handleError(record)


def create_logger(output_dir: str | Path, dist_rank: int = 0, name: str = "") -> logging.Logger:
    """Logger with a coloured console on rank 0 and a plain ``output_dir/log.txt`` (appended).

    Other ranks only print warnings and errors. Calling it again replaces the handlers, so a
    second run in the same process does not log twice.
    """
    logger = logging.getLogger(name or "swin_pp")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    console = _TqdmHandler(sys.stdout)
    console.setLevel(logging.INFO if dist_rank == 0 else logging.WARNING)
    console.setFormatter(_ColouredFormatter())
    logger.addHandler(console)
    if dist_rank == 0:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(Path(output_dir) / "log.txt", mode="a")
        file_handler.setFormatter(
            logging.Formatter("[%(asctime)s] %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
        )
        logger.addHandler(file_handler)
    return logger


def short_list(items: list[str], limit: int = 8) -> str:
    """``a, b, c, ... (+12 more)``: long lists stay one readable log line."""
    items = list(items)
    more = f", ... (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


# ---------------------------------------------------------------------------------------------
# Command lines
# ---------------------------------------------------------------------------------------------


def run_cli(main: Callable[[], int | None]) -> None:
    """Exit with ``main()``'s code; bad input (ValueError, FileNotFoundError) is one line and code 2,
    a :class:`RunError` one line and code 1, a KeyboardInterrupt (a second Ctrl-C) one line and 130."""
    try:
        code = main()
    except (ValueError, FileNotFoundError) as error:
        print(colored(f"error: {error}", "red"), file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except RunError as error:
        print(colored(f"error: {error}", "red"), file=sys.stderr)
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt:
        print(colored("interrupted", "yellow"), file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(code or EXIT_OK)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that find a trained run and its checkpoint (test.py, visual.py, ...)."""
    parser.add_argument("--cfg", metavar="FILE", help="config of the run (finds OUTPUT/MODEL.NAME/TAG)")
    parser.add_argument("--opts", nargs="+", default=None, help="KEY VALUE pairs overriding --cfg")
    parser.add_argument("--tag", help="run tag (default: the config's TAG)")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint file (default: the run's ckpt_best.pth)")


def run_dir(config: CfgNode) -> Path:
    """``OUTPUT/MODEL.NAME/TAG``: where a run writes everything."""
    return Path(config.OUTPUT) / config.MODEL.NAME / config.TAG
