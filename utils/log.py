"""Logging: a coloured console above tqdm bars, a plain ``log.txt`` per run, one-line lists."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from termcolor import colored
from tqdm import tqdm


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
    logger = logging.getLogger(name or "train")
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


class _ConsoleHandler(logging.Handler):
    """Info lines on stdout as they are; warnings and errors on stderr as ``warning: ...``/``error: ...`` in
    colour; above any tqdm bar. The streams are looked up at each line, so a redirected one is followed."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.levelno < logging.WARNING:
                tqdm.write(message, file=sys.stdout)
                return
            colour = "red" if record.levelno >= logging.ERROR else "yellow"
            tqdm.write(colored(f"{record.levelname.lower()}: {message}", colour), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never kill the work it reports on
            self.handleError(record)


def console_logger(name: str) -> logging.Logger:
    """The logger ``name`` of a command without a run dir (process/prepare.py): plain lines on the console,
    warnings on stderr; calling it again replaces the handler."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.addHandler(_ConsoleHandler())
    return logger


def short_list(items: list[str], limit: int = 8) -> str:
    """``a, b, c, ... (+12 more)``: long lists stay one readable log line."""
    items = list(items)
    more = f", ... (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
