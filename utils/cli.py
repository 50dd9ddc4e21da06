"""Command-line plumbing every script shares: ``run_cli`` (an exception to one ``error:`` line and its exit
code, see :mod:`utils.errors`), child commands that pass a stop on, and jobs of them with a finished marker
(scripts/cv.py's folds, scripts/experiments.py's runs).
"""
from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from termcolor import colored

from utils.errors import BAD_PATH_ERRNOS, EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, RunError, error_line
from utils.files import atomic_write_text, disk_full_errno


def _fail(error: BaseException, code: int) -> None:
    """One red ``error:`` line on stderr, then exit with ``code``: what a user needs, no traceback."""
    print(colored(f"error: {error_line(error)}", "red"), file=sys.stderr)
    sys.exit(code)


def run_cli(main: Callable[[], int | None]) -> None:
    """Exit with ``main()``'s code; bad input (ValueError, FileNotFoundError, a file that cannot be read or
    written as named) is one line and code 2, a :class:`RunError` or a full disk one line and code 1, a
    KeyboardInterrupt (a second Ctrl-C) one line and 130."""
    try:
        code = main()
    except (ValueError, FileNotFoundError) as error:
        _fail(error, EXIT_BAD_INPUT)
    except RunError as error:
        _fail(error, EXIT_FAILED)
    except OSError as error:
        if error.errno in BAD_PATH_ERRNOS and error.filename is not None:
            _fail(error, EXIT_BAD_INPUT)
        if disk_full_errno(error) is not None and error.filename is not None:  # not through atomic_write
            _fail(error, EXIT_FAILED)
        raise
    except KeyboardInterrupt:
        print(colored("interrupted", "yellow"), file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(code or EXIT_OK)


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


def run_job(commands: Sequence[list[str]], record: Callable[[], dict], finished: Path, stop: Any,
            logger: logging.Logger, env: dict | None = None) -> int:
    """Run ``commands`` one after another as children (main.py, then test.py); when every one exits 0, write
    ``record()`` as JSON to ``finished``, the marker that lets the same command skip the job next time.

    Returns the first non-zero exit code (no marker then), else 0.
    """
    for command in commands:
        code = run_child(command, stop, logger, env)
        if code != EXIT_OK:
            return code
    atomic_write_text(json.dumps(record(), indent=2) + "\n", finished)
    return EXIT_OK
