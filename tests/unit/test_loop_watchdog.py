"""The loop watchdog names what holds up a loop thread, while it holds it up.

The clock is a fake the test advances; the "loop" is a real thread parked on an Event in a
function with a telling name, so the stack is known and nothing waits on wall-clock time.
"""

from __future__ import annotations

import logging
import threading

import pytest

from consensus.loop_watchdog import LoopWatchdog


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _park_in_a_long_copy(release: threading.Event, parked: threading.Event,
                         out: list[LoopWatchdog], clock: FakeClock) -> None:
    out.append(LoopWatchdog("replica 0 of g/shard-0", 0.5, clock=clock))  # this thread's
    parked.set()
    release.wait()


def test_a_stall_is_reported_once_with_the_blocking_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    release, parked, made = threading.Event(), threading.Event(), []
    loop = threading.Thread(target=_park_in_a_long_copy, args=(release, parked, made, clock))
    loop.start()
    parked.wait()
    watchdog = made[0]
    try:
        assert watchdog.check() is None  # no time passed
        clock.now += 0.4
        assert watchdog.check() is None  # under the threshold
        clock.now += 0.2
        with caplog.at_level(logging.WARNING, logger="consensus.loop_watchdog"):
            stack = watchdog.check()
        assert stack is not None and "_park_in_a_long_copy" in stack
        assert "held up for 0.60 s" in caplog.text and "replica 0 of g/shard-0" in caplog.text
        clock.now += 5.0
        assert watchdog.check() is None and watchdog.reports == 1  # one report per stall
        watchdog.beat()  # the loop ran again
        assert watchdog.check() is None
        clock.now += 0.6
        assert watchdog.check() is not None and watchdog.reports == 2  # a new stall
    finally:
        release.set()
        loop.join()
    watchdog.beat()
    clock.now += 0.6
    assert watchdog.check() is None and watchdog.reports == 2  # the thread is gone


def test_the_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError, match="threshold_s"):
        LoopWatchdog("x", 0.0)
