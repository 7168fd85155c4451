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


def test_proposal_futures_report_results_errors_timeouts_and_callbacks() -> None:
    gate = _Gate()
    co = ProposalCoalescer(gate, max_inflight=1, max_batch_bytes=1 << 20)
    first = co.submit(b"abc", 5.0)
    assert gate.entered.wait(10)
    ok, bad = co.submit(b"xy", 5.0), co.submit(b"boom", 5.0)  # one batch: both fail
    seen: list[tuple[str, object]] = []
    first.add_done_callback(lambda f: seen.append(("first", f.result())))
    ok.add_done_callback(lambda f: seen.append(("ok", type(f.exception()).__name__)))
    assert not first.done() and not first.cancel() and not first.cancelled()
    with pytest.raises(TimeoutError):
        first.result(timeout=0)  # still in flight: a timeout, not a wrong answer
    gate.release.set()
    assert first.result(10) == 3 and first.exception(10) is None and first.done()
    with pytest.raises(RuntimeError, match="batch failed"):
        bad.result(10)
    assert isinstance(ok.exception(10), RuntimeError)
    late: list[object] = []
    first.add_done_callback(lambda f: late.append(f.result()))  # already done: runs now
    co.close()
    assert sorted(seen) == [("first", 3), ("ok", "RuntimeError")]
    assert late == [3]


def test_a_raising_callback_does_not_stop_the_sender() -> None:
    gate = _Gate()
    co = ProposalCoalescer(gate, max_inflight=1, max_batch_bytes=1 << 20)
    first = co.submit(b"a", 5.0)
    assert gate.entered.wait(10)
    first.add_done_callback(lambda f: 1 / 0)
    after = co.submit(b"bb", 5.0)
    gate.release.set()
    assert after.result(10) == 2
    co.close()
