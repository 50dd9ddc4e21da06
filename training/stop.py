"""Stopping a run gracefully: a signal becomes a request that the training loop honours after a step."""
from __future__ import annotations

import contextlib
import signal
from typing import Any, Iterator

from utils.faults import note_signal, pause_at


def _interrupt(signum: int, frame: Any) -> None:
    note_signal()
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does, wherever :class:`GracefulStop` is not active
    (start-up, the final report): the run unwinds, releases its lock and exits 130 instead of dying
    with 143 and leaving its ``.lock``."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class GracefulStop:
    """While active, SIGINT/SIGTERM only set ``requested``; the loop saves and exits after the step.

    DataLoader workers are forked inside it and inherit these handlers, so a Ctrl-C sent to the
    whole process group (a terminal's) does not kill them under the main process.
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "GracefulStop":
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        note_signal()
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: the user does not want to wait
        self.requested = signal.Signals(signum).name

    def __call__(self) -> bool:
        """Asked by the training loop after each optimizer update."""
        pause_at("update")
        return self.requested is not None
