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


def test_rounds_a_killed_writer_logged_are_stamped_no_later_than_its_kill(
    tmp_path: Path,
) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"round": 0}\n')
    clock = StepClock(path, time.monotonic() - 100.0)  # stamps are about 100 s from now on
    try:
        clock.wait_first(10.0)
        with path.open("a") as f:
            f.write('{"round": 1}\n{"round": 2}\n')  # the writer's last lines, then the kill
        clock.settle(50.0)
        assert clock.rounds == [0, 1, 2]
        assert clock.stamps == [50.0, 50.0, 50.0]
        with path.open("a") as f:
            f.write('{"round": 3}\n')  # a resumed writer's round
        _wait_for(clock, 4)
        assert clock.stamps[3] > 50.0
    finally:
        clock.stop()


def test_a_mark_stamps_the_rounds_logged_before_it(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"round": 0}\n')
    clock = StepClock(path, time.monotonic())
    try:
        clock.wait_first(10.0)
        with clock._lock, path.open("a") as f:  # the poller cannot read it before the mark
            f.write('{"round": 1}\n')
        at = clock.mark()
        assert clock.rounds == [0, 1] and clock.stamps[1] == at
    finally:
        clock.stop()
