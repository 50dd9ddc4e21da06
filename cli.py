"""Command-line plumbing every script shares: exit codes, ``run_cli``, the options that find a run,
child commands that pass a stop on.

Exit codes of every command: 0 done, 1 the run failed (e.g. a non-finite loss, a full disk, a run
dir in use by another process: one ``error:`` line), 2 bad input (a one-line
``error: <file>: <problem>`` on stderr, like argparse's own usage errors), 130 interrupted
(SIGINT/SIGTERM; the run saved what it had and the same command resumes it).
"""
from __future__ import annotations

import argparse
import errno
import logging
import signal
import subprocess
import sys
from argparse import Namespace
from pathlib import Path
from typing import Any, Callable

from termcolor import colored

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class RunError(RuntimeError):
    """A run that cannot go on for a reason outside its input: one ``error:`` line, exit code 1."""


# Files that cannot be read or written as named (unreadable, unwritable, a folder where a file is wanted,
# a file where a folder is, a name too long): bad input, exit 2, as a missing file (FileNotFoundError) is.
BAD_PATH_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR, errno.ENOTDIR, errno.EEXIST,
                             errno.ENAMETOOLONG})


# What the system's words mean where a file or a folder was wanted (mkdir raises EEXIST for a file in the way)
_PATH_PROBLEMS = {errno.EEXIST: "exists and is not a folder", errno.EISDIR: "is a folder, not a file",
                  errno.ENOTDIR: "a part of this path is a file, not a folder"}


def error_line(error: BaseException) -> str:
    """``<file>: <problem>`` for an OSError that names its file (open, mkdir, ...), else the error's own text."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        problem = _PATH_PROBLEMS.get(error.errno, error.strerror[0].lower() + error.strerror[1:])
        return f"{error.filename}: {problem}"
    return str(error)


def _fail(error: BaseException, code: int) -> None:
    """One red ``error:`` line on stderr, then exit with ``code``: what a user needs, no traceback."""
    print(colored(f"error: {error_line(error)}", "red"), file=sys.stderr)
    sys.exit(code)


def run_cli(main: Callable[[], int | None]) -> None:
    """Exit with ``main()``'s code; bad input (ValueError, FileNotFoundError, a file that cannot be read or
    written as named) is one line and code 2, a :class:`RunError` or a full disk one line and code 1, a
    KeyboardInterrupt (a second Ctrl-C) one line and 130."""
    from utils import disk_full_errno  # utils imports this module

    try:
        code = main()
    except (ValueError, FileNotFoundError) as error:
        _fail(error, EXIT_BAD_INPUT)
    except RunError as error:
        _fail(error, EXIT_FAILED)
    except OSError as error:
        if error.errno in BAD_PATH_ERRNOS and error.filename is not None:
            _fail(error, EXIT_BAD_INPUT)
        if disk_full_errno(error) is not None and error.filename is not None:  # a write outside utils.atomic_write
            _fail(error, EXIT_FAILED)
        raise
    except KeyboardInterrupt:
        print(colored("interrupted", "yellow"), file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(code or EXIT_OK)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that find a trained run and its checkpoint (test.py, visual.py, export.py, app.py)."""
    parser.add_argument("--cfg", metavar="FILE", help="config of the run (finds OUTPUT/MODEL.NAME/TAG)")
    parser.add_argument("--opts", nargs="+", default=None, help="KEY VALUE pairs overriding --cfg")
    parser.add_argument("--tag", help="run tag (default: the config's TAG)")
    parser.add_argument("--checkpoint", "--resume", dest="checkpoint", type=Path,
                        help="checkpoint file (default: the run's ckpt_best.pth); --resume is the upstream fork's name")


def find_checkpoint(args: Namespace) -> Path:
    """``args.checkpoint``, else the best checkpoint of the run named by ``args.cfg``/``opts``/``tag``."""
    from config import get_config
    from rundir import RunDir

    if args.checkpoint:
        return Path(args.checkpoint)
    config = get_config(Namespace(cfg=args.cfg, opts=args.opts, tag=args.tag))
    path = RunDir.of(config).best_checkpoint
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint (train with main.py first, or give --checkpoint FILE)")
    return path


def run_child(command: list[str], stop: Any, logger: logging.Logger, env: dict | None = None) -> int:
    """Run ``command`` and return its exit code; a stop request is passed on to it as SIGTERM.

    main.py saves its position on SIGTERM and exits 130; a stop before the child started returns 130.
    ``stop`` is a ``training.stop.GracefulStop`` (anything with ``requested``).
    """
    if stop.requested:
        return EXIT_INTERRUPTED
    logger.info("$ " + " ".join(command))
    with subprocess.Popen(command, env=env) as child:
        forwarded = False
        while True:
            try:
                code = child.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if stop.requested and not forwarded:
                    child.send_signal(signal.SIGTERM)
                    forwarded = True
    return EXIT_INTERRUPTED if stop.requested and code != EXIT_OK else code
