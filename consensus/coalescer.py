"""``ProposalCoalescer``: client-side group commit for ``RaftGroup.propose``.

Many threads calling ``propose`` with one command each would otherwise cost one actor call
and one log entry per command, and the group's throughput would be bounded by Ray's per-call
cost. The coalescer queues each command and lets at most ``max_inflight`` sender threads
drain the queue: each sender takes everything queued (up to ``max_batch_bytes``, at least one
command) and submits it as ONE ``propose_batch`` (one actor call, one log entry). While the
senders are busy, new commands accumulate and go out together in the next batch, so the batch
size adapts to the load: a lone caller still gets one command per entry (no added wait).

Exactly-once is unchanged: ``propose_batch`` tags every command with its own seq. Commands of
one batch are applied in queue order; commands of concurrent callers have no order anyway.
A batch that fails (NotLeaderError exhausted, timeout) fails every command in it with the
same exception. No thread runs while nothing is queued.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

__all__ = ["ProposalCoalescer", "SendBatch"]

SendBatch = Callable[[Sequence[bytes], float], list[Any]]
"""``send(commands, timeout) -> results``: apply ``commands`` as one entry (blocking)."""


@dataclass(slots=True)
class _Pending:
    command: bytes
    deadline: float
    future: Future[Any]


class ProposalCoalescer:
    """Queue of single-command proposals drained in batches by up to ``max_inflight`` threads.

    Thread-safe. ``submit`` never blocks; the returned future completes with the command's
    result (or the batch's exception). ``close`` stops accepting commands and waits for the
    senders to finish what was queued.
    """

    def __init__(self, send: SendBatch, *, max_inflight: int, max_batch_bytes: int) -> None:
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
        if max_batch_bytes < 1:
            raise ValueError(f"max_batch_bytes must be >= 1, got {max_batch_bytes}")
        self._send = send
        self._max_inflight = max_inflight
        self._max_batch_bytes = max_batch_bytes
        self._lock = threading.Lock()
        self._queue: deque[_Pending] = deque()
        self._senders = 0
        self._closed = False
        self._pool = ThreadPoolExecutor(max_inflight, thread_name_prefix="raft-coalesce")
        self.batches_sent = 0
        """Number of ``send`` calls so far (for tests and benchmarks)."""

    def submit(self, command: bytes, timeout: float) -> Future[Any]:
        """Queue ``command``; its batch is sent with at least ``timeout`` seconds to run.

        Raises RuntimeError after ``close``."""
        fut: Future[Any] = Future()
        item = _Pending(command, time.monotonic() + timeout, fut)
        with self._lock:
            if self._closed:
                raise RuntimeError("the client was shut down; create a new RaftGroup client")
            self._queue.append(item)
            start = self._senders < self._max_inflight
            if start:
                self._senders += 1
        if start:
            self._pool.submit(self._drain)
        return fut

    def _take(self) -> list[_Pending]:
        """Pop the next batch (under the lock); empty means this sender retires."""
        with self._lock:
            batch: list[_Pending] = []
            size = 0
            while self._queue and (not batch or size + len(self._queue[0].command)
                                   <= self._max_batch_bytes):
                item = self._queue.popleft()
                size += len(item.command)
                batch.append(item)
            if not batch:
                self._senders -= 1
            return batch

    def _drain(self) -> None:
        while batch := self._take():
            live = [p for p in batch if p.future.set_running_or_notify_cancel()]
            if not live:
                continue
            timeout = max(0.001, max(p.deadline for p in live) - time.monotonic())
            self.batches_sent += 1
            try:
                results = self._send([p.command for p in live], timeout)
            except Exception as exc:  # every command of the batch shares its fate
                for p in live:
                    p.future.set_exception(exc)
                continue
            for p, result in zip(live, results, strict=True):
                p.future.set_result(result)

    def close(self) -> None:
        """Refuse new commands; wait until the queued ones are answered. Idempotent."""
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True)
