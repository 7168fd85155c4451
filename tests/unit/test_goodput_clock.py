"""``bench.goodput_raftps.StepClock``: it stamps the rounds metrics.jsonl gains while the
job writes it, so it may read a line the writer is half way through. It must wait for the
rest of that line, not fail on it (its thread would die and every later round go
unstamped, which makes the faulted wall time look shorter than it was)."""

from __future__ import annotations

import time
from pathlib import Path

from bench.goodput_raftps import StepClock


def _wait_for(clock: StepClock, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(clock.stamps) < count and time.monotonic() < deadline:
        clock._stop.wait(0.01)


def test_a_half_written_line_is_read_once_it_is_whole(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"round": 0, "loss": 1.5}\n{"round": 1, "lo')
    clock = StepClock(path, time.monotonic())
    try:
        clock.wait_first(10.0)
        with path.open("a") as f:
            f.write('ss": 1.2}\n')
        _wait_for(clock, 2)
        assert clock._thread.is_alive()
        assert clock.rounds == [0, 1]
    finally:
        clock.stop()
