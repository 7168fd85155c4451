"""Client-side group commit (``consensus.coalescer``): deterministic, no sleeps."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from consensus.coalescer import ProposalCoalescer


class _Gate:
    """A fake ``send`` whose first call blocks until released; records every batch."""

    def __init__(self) -> None:
        self.batches: list[list[bytes]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, commands: Sequence[bytes], timeout: float) -> list[int]:
        self.batches.append(list(commands))
        if len(self.batches) == 1:
            self.entered.set()
            assert self.release.wait(10)
        if any(c.startswith(b"boom") for c in commands):
            raise RuntimeError("batch failed")
        return [len(c) for c in commands]


def test_commands_queued_while_a_batch_is_in_flight_share_the_next_entry() -> None:
    gate = _Gate()
    co = ProposalCoalescer(gate, max_inflight=1, max_batch_bytes=1 << 20)
    first = co.submit(b"a", 5.0)
    assert gate.entered.wait(10)
    rest = [co.submit(b"x" * i, 5.0) for i in range(1, 11)]
    gate.release.set()
    assert first.result(10) == 1
    assert [f.result(10) for f in rest] == list(range(1, 11))
    assert gate.batches == [[b"a"], [b"x" * i for i in range(1, 11)]]
    co.close()


def test_batches_respect_max_bytes_and_failures_reach_every_command() -> None:
    gate = _Gate()
    co = ProposalCoalescer(gate, max_inflight=1, max_batch_bytes=10)
    co.submit(b"0", 5.0)
    assert gate.entered.wait(10)
    big = [co.submit(b"y" * 6, 5.0) for _ in range(3)]
    bad = [co.submit(b"boom!", 5.0), co.submit(b"z", 5.0)]
    gate.release.set()
    assert [f.result(10) for f in big] == [6, 6, 6]
    for f in bad:
        with pytest.raises(RuntimeError, match="batch failed"):
            f.result(10)
    assert [len(b) for b in gate.batches] == [1, 1, 1, 1, 2]  # 6+6 > 10, 6+5 > 10, 5+1 <= 10
    co.close()
    with pytest.raises(RuntimeError, match="shut down"):
        co.submit(b"late", 1.0)
