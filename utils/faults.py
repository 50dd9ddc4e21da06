"""Fault-injection hook for the tests: stop a run at a chosen moment from another process.

With ``PP_PAUSE_AT=POINT`` (or ``POINT#N``, the N-th time this process gets there) a process that
reaches that point prints ``paused at POINT`` and waits (at most a minute) until a signal handler
has run, so that a test can send a real SIGTERM, SIGINT or SIGKILL exactly there. Points:
``start-up`` (main.py holds its run dir's lock, before training), ``update`` (after an optimizer
update), ``validation`` (an epoch's validation begins), ``saved`` (an epoch's files are all written)
and ``writing:NAME`` (file NAME written and synced under its temp name, not yet renamed).
Without the variable a call does nothing.
"""
from __future__ import annotations

import os
import time
from collections import Counter

PAUSE_ENV = "PP_PAUSE_AT"
PAUSED = "paused at"
MAX_PAUSE_S = 60.0

_reached: Counter = Counter()
_signals_handled = 0


def note_signal() -> None:
    """Called by signal handlers: ends a pause."""
    global _signals_handled
    _signals_handled += 1


def pause_at(point: str) -> None:
    """Wait here for a signal when PP_PAUSE_AT names this point (see the module docstring)."""
    wanted = os.environ.get(PAUSE_ENV)
    if not wanted:
        return
    _reached[point] += 1
    if wanted not in (point, f"{point}#{_reached[point]}"):
        return
    handled = _signals_handled
    print(f"{PAUSED} {wanted}", flush=True)
    deadline = time.monotonic() + MAX_PAUSE_S
    # Short sleeps: Python runs a handler between them, whichever thread the OS gave the signal to.
    while _signals_handled == handled and time.monotonic() < deadline:
        time.sleep(0.01)
