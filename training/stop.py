"""Stopping a run gracefully: a signal becomes a request that the training loop honours after a step."""
from __future__ import annotations

import os
import signal
from typing import Any

# Test hook: the process sends itself SIGTERM right after this optimizer update (a real interruption).
INTERRUPT_ENV = "PP_SIGTERM_AT_UPDATE"


class GracefulStop:
    """While active, SIGINT/SIGTERM only set ``requested``; the loop saves and exits after the step."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}
        self._interrupt_at = int(os.environ.get(INTERRUPT_ENV, "0"))

    def __enter__(self) -> "GracefulStop":
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: the user does not want to wait
        self.requested = signal.Signals(signum).name

    def __call__(self, num_updates: int) -> bool:
        """Asked by the training loop after each optimizer update."""
        if num_updates == self._interrupt_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return self.requested is not None
