"""``ProposalCoalescer``: client-side group commit for ``RaftGroup.propose``.

Many threads calling ``propose`` with one command each would otherwise cost one actor call
and one log entry per command, and the group's throughput would be bounded by Ray's per-call
cost. The coalescer appends each command to the open batch and lets at most ``max_inflight``
sender threads drain the batches: each sender takes the oldest batch and submits it as ONE
``propose_batch`` (one actor call, one log entry). While the senders are busy, new commands
accumulate in the open batch (a new one opens when ``max_batch_bytes`` would be exceeded)
and go out together, so the batch size adapts to the load: a lone caller still gets one
command per entry (no added wait).

A batch completes all at once: one event, one result list. Each command's handle is a
``ProposalFuture`` (a batch and an index) rather than a ``concurrent.futures.Future``, whose
per-future Condition cost the client more CPU than everything else of a proposal (measured
in ``bench.raft``: ~20 µs of client CPU per 100 B ``propose_async`` before, see the README).

Exactly-once is unchanged: ``propose_batch`` tags every command with its own seq. Commands of
one batch are applied in queue order; commands of concurrent callers have no order anyway.
A batch that fails (NotLeaderError exhausted, timeout) fails every command in it with the
same exception. No thread runs while nothing is queued.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from consensus.types import Payload

__all__ = ["ProposalCoalescer", "ProposalFuture", "SendBatch"]

log = logging.getLogger(__name__)

SendBatch = Callable[[Sequence[Payload], float], list[Any]]
"""``send(commands, timeout) -> results``: apply ``commands`` as one entry (blocking)."""


class _Batch:
    """Commands that go out as one entry, and their shared outcome."""

    __slots__ = ("callbacks", "commands", "deadline", "done", "error", "results", "size")

    def __init__(self) -> None:
        self.commands: list[Payload] = []
        self.size = 0
        self.deadline = 0.0
        self.done = threading.Event()
        self.results: list[Any] = []
        self.error: BaseException | None = None
        self.callbacks: list[tuple[Callable[[ProposalFuture], object], ProposalFuture]] = []


class ProposalFuture:
    """The outcome of one queued proposal: the ``concurrent.futures.Future`` calls a caller
    needs (``result``, ``exception``, ``done``, ``add_done_callback``). It cannot be
    cancelled: once queued, a command is sent (``cancel`` returns False)."""

    __slots__ = ("_batch", "_index")

    def __init__(self, batch: _Batch, index: int) -> None:
        self._batch, self._index = batch, index

    def done(self) -> bool:
        return self._batch.done.is_set()

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The batch's exception (None on success); TimeoutError if not done in time."""
        if not self._batch.done.wait(timeout):
            raise TimeoutError(f"proposal not answered within {timeout} s")
        return self._batch.error

    def result(self, timeout: float | None = None) -> Any:
        """The state machine's result; raises the batch's exception, or TimeoutError."""
        error = self.exception(timeout)
        if error is not None:
            raise error
        return self._batch.results[self._index]

    def add_done_callback(self, fn: Callable[[ProposalFuture], object]) -> None:
        """Call ``fn(self)`` once done (now, on this thread, if it already is)."""
        batch = self._batch
        with _CALLBACK_LOCK:
            if not batch.done.is_set():
                batch.callbacks.append((fn, self))
                return
        fn(self)


_CALLBACK_LOCK = threading.Lock()  # orders add_done_callback against completion


class ProposalCoalescer:
    """Open batch of single-command proposals drained by up to ``max_inflight`` threads.

    Thread-safe. ``submit`` never blocks; the returned ``ProposalFuture`` completes with the
    command's result (or the batch's exception). ``close`` stops accepting commands and waits
    for the senders to finish what was queued.
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
        self._batches: deque[_Batch] = deque()  # not yet taken by a sender, oldest first
        self._open: _Batch | None = None  # the newest of them, still accepting commands
        self._senders = 0
        self._closed = False
        self._pool = ThreadPoolExecutor(max_inflight, thread_name_prefix="raft-coalesce")
        self.batches_sent = 0
        """Number of ``send`` calls so far (for tests and benchmarks)."""

    def submit(self, command: Payload, timeout: float) -> ProposalFuture:
        """Queue ``command``; its batch is sent with at least ``timeout`` seconds to run.

        Raises RuntimeError after ``close``."""
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._closed:
                raise RuntimeError("the client was shut down; create a new RaftGroup client")
            batch = self._open
            if batch is None or batch.size + len(command) > self._max_batch_bytes:
                batch = self._open = _Batch()
                self._batches.append(batch)
            index = len(batch.commands)
            batch.commands.append(command)
            batch.size += len(command)
            batch.deadline = max(batch.deadline, deadline)
            start = self._senders < self._max_inflight
            if start:
                self._senders += 1
        if start:
            self._pool.submit(self._drain)
        return ProposalFuture(batch, index)

    def _take(self) -> _Batch | None:
        """Pop the oldest batch; None means this sender retires."""
        with self._lock:
            if not self._batches:
                self._senders -= 1
                return None
            batch = self._batches.popleft()
            if batch is self._open:
                self._open = None
            return batch

    def _drain(self) -> None:
        while (batch := self._take()) is not None:
            self.batches_sent += 1
            try:
                timeout = max(0.001, batch.deadline - time.monotonic())
                batch.results = self._send(batch.commands, timeout)
            except Exception as exc:  # every command of the batch shares its fate
                batch.error = exc
            with _CALLBACK_LOCK:
                batch.done.set()
                callbacks, batch.callbacks = batch.callbacks, []
            for fn, future in callbacks:
                try:
                    fn(future)
                except Exception:  # a caller's callback must not stop the sender
                    log.exception("a propose_async done-callback raised")

    def close(self) -> None:
        """Refuse new commands; wait until the queued ones are answered. Idempotent."""
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True)
