"""Exit codes of every command and the errors that map onto them; the lowest layer, imported by all.

Exit codes: 0 done, 1 the run failed (e.g. a non-finite loss, a full disk, a run dir in use by another
process: one ``error:`` line), 2 bad input (a one-line ``error: <file>: <problem>`` on stderr, like
argparse's own usage errors), 130 interrupted (SIGINT/SIGTERM; the run saved what it had and the same
command resumes it).
"""
from __future__ import annotations

import errno

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
