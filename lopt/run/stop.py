"""Stopping a run cleanly: a signal asks it to stop after the current outer step."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

log = logging.getLogger("lopt.train")


class StopRequest:
    """Turns SIGINT (Ctrl-C) and SIGTERM into a request to stop after the current outer step.

    The run can then write a checkpoint and its summary; a second signal interrupts at once.
    Outside the ``with`` block the previous handlers are back. In a thread other than the
    main one no handler is installed.

    Attributes:
        signal: the first signal received, or None.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    @property
    def requested(self) -> bool:
        """Whether a signal was received."""
        return self.signal is not None

    @property
    def signal_name(self) -> str | None:
        """The name of the signal received (``"SIGINT"``, ...), or None."""
        return None if self.signal is None else signal.Signals(self.signal).name

    def _handle(self, number: int, frame: Any) -> None:
        del frame
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = number
        log.warning(
            "%s received: finishing the current outer step, then writing a checkpoint and the "
            "summary (send it again to stop at once)",
            signal.Signals(number).name,
        )
