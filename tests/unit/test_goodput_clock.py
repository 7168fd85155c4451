"""``bench.goodput_raftps.StepClock``: it stamps the rounds metrics.jsonl gains while the
job writes it, so it may read a line the writer is half way through. It must wait for the
rest of that line, not fail on it (its thread would die and every later round go
unstamped, which makes the faulted wall time look shorter than it was). A fault's time
(``mark``) and a killed writer (``settle``) bound the stamps of the rounds logged before
them, so a round read late never counts as the first one after a fault."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

from bench.goodput_raftps import StepClock


@contextlib.contextmanager
def _clock(path: Path, first_line: str, ago_s: float = 0.0) -> Iterator[StepClock]:
    """A clock on ``path`` (started ``ago_s`` seconds back), once it stamped a first round."""
    path.write_text(first_line)
    clock = StepClock(path, time.monotonic() - ago_s)
    try:
        clock.wait_first(10.0)
        yield clock
    finally:
        clock.stop()


def _append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


def _wait_for(clock: StepClock, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(clock.stamps) < count and time.monotonic() < deadline:
        clock._stop.wait(0.01)


def test_a_half_written_line_is_read_once_it_is_whole(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    with _clock(path, '{"round": 0, "loss": 1.5}\n{"round": 1, "lo') as clock:
        _append(path, 'ss": 1.2}\n')
        _wait_for(clock, 2)
        assert clock._thread.is_alive()
        assert clock.rounds == [0, 1]


def test_rounds_a_killed_writer_logged_are_stamped_no_later_than_its_kill(
    tmp_path: Path,
) -> None:
    path = tmp_path / "metrics.jsonl"
    with _clock(path, '{"round": 0}\n', ago_s=100.0) as clock:  # stamps are about 100 s
        _append(path, '{"round": 1}\n{"round": 2}\n')  # the writer's last lines, then the kill
        clock.settle(50.0)
        assert clock.rounds == [0, 1, 2]
        assert clock.stamps == [50.0, 50.0, 50.0]
        _append(path, '{"round": 3}\n')  # a resumed writer's round
        _wait_for(clock, 4)
        assert clock.stamps[3] > 50.0


def test_a_mark_stamps_the_rounds_logged_before_it(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    with _clock(path, '{"round": 0}\n') as clock:
        with clock._lock:  # the poller cannot read the line before the mark does
            _append(path, '{"round": 1}\n')
        at = clock.mark()
        assert clock.rounds == [0, 1] and clock.stamps[1] == at
