"""Names what holds up a replica's event loop while it is held up.

A loop that does not tick for an election timeout lets its peers elect a new leader. The
tick loop notices a stall only once it runs again, when whatever blocked it has returned.
This watchdog runs in its own thread: the loop beats it every tick, and when the beats
stop for longer than ``threshold_s`` it logs the loop thread's stack at that moment, once
per stall. The stack names the call that blocks the loop, or the last Python frame before
a call that waits for the GIL or in the kernel.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable

log = logging.getLogger(__name__)

STACK_FRAMES = 12
"""Innermost frames of the loop thread's stack that a report shows."""


class LoopWatchdog:
    """Reports a loop thread's stack when its beats stop (see the module docstring)."""

    def __init__(self, name: str, threshold_s: float, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if threshold_s <= 0:
            raise ValueError(f"threshold_s must be > 0, got {threshold_s}")
        self.name = name
        self.threshold_s = threshold_s
        self.reports = 0
        self._clock = clock
        self._loop_thread = threading.get_ident()
        self._last_beat = clock()
        self._reported = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        """Called by the loop thread on every tick."""
        self._last_beat = self._clock()
        self._reported = False

    def check(self) -> str | None:
        """The loop thread's stack if its beats stopped for longer than the threshold and
        this stall was not reported yet (it is logged then); None otherwise."""
        late = self._clock() - self._last_beat
        if late <= self.threshold_s or self._reported:
            return None
        frame = sys._current_frames().get(self._loop_thread)
        if frame is None:
            return None
        self._reported = True
        self.reports += 1
        stack = "".join(traceback.format_stack(frame)[-STACK_FRAMES:])
        log.warning("%s: event loop held up for %.2f s so far, in:\n%s", self.name, late, stack)
        return stack

    def start(self) -> None:
        """Check from a daemon thread, twice per threshold, until ``stop``."""
        def watch() -> None:
            while not self._stop.wait(self.threshold_s / 2):
                self.check()

        self._thread = threading.Thread(target=watch, name="loop-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
