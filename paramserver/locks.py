"""Per-layer reader/writer locks with optimistic (seqlock) reads.

Each layer (piece key) has a version counter that is odd while a write is in progress and a
reader/writer lock that prefers writers. A reader takes ``stamp(key)``, copies the layer and
``validate(key, stamp)``s it; if a write overlapped it falls back to the read lock. Readers
never wait for writers of other layers. Multi-layer writes lock their layers in sorted key
order with a deadline, so they cannot deadlock, and release everything taken on a timeout.

:class:`VersionGate` is the same seqlock and lock for a whole state made of several layers:
its writers hold it around every change, so its stamp tells readers whether a read that
spanned many layers saw one version of all of them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from paramserver.errors import LockTimeoutError, UnknownLayerError

T = TypeVar("T")


class _LayerLock:
    """One layer's reader/writer lock (writer preference) and seqlock version."""

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.readers = 0
        self.writer = False
        self.waiting_writers = 0
        self.version = 0  # even: stable; odd: a write is in progress

    def acquire_read(self, deadline: float | None) -> bool:
        with self.cond:
            while self.writer or self.waiting_writers:
                if not self._wait(deadline):
                    return False
            self.readers += 1
            return True

    def release_read(self) -> None:
        with self.cond:
            self.readers -= 1
            if self.readers == 0:
                self.cond.notify_all()

    def acquire_write(self, deadline: float | None) -> bool:
        with self.cond:
            self.waiting_writers += 1
            try:
                while self.writer or self.readers:
                    if not self._wait(deadline):
                        return False
            finally:
                self.waiting_writers -= 1
            self.writer = True
            self.version += 1
            return True

    def release_write(self) -> None:
        with self.cond:
            self.version += 1
            self.writer = False
            self.cond.notify_all()

    def _wait(self, deadline: float | None) -> bool:
        if deadline is None:
            self.cond.wait()
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            self.cond.notify_all()  # a writer giving up may unblock waiting readers
            return False
        self.cond.wait(remaining)
        return True


class LayerLocks:
    """Locks for a fixed set of layer keys. Thread-safe; holds no data itself."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._locks = {key: _LayerLock() for key in keys}

    def _get(self, key: str) -> _LayerLock:
        lock = self._locks.get(key)
        if lock is None:
            raise UnknownLayerError(f"layer {key!r} has no lock; known: {sorted(self._locks)}")
        return lock

    def stamp(self, key: str) -> int:
        """The layer's current version; odd means a write is in progress (do not trust a copy)."""
        return self._get(key).version

    def validate(self, key: str, stamp: int) -> bool:
        """True if no write started or ran since ``stamp`` was taken (and none was running)."""
        return stamp % 2 == 0 and self._get(key).version == stamp

    def version(self, key: str) -> int:
        """Completed writes of the layer (the seqlock version halved)."""
        return self._get(key).version // 2

    def read(self, key: str, copy_fn: Callable[[], T], timeout: float | None = None) -> T:
        """Run ``copy_fn`` optimistically; if a write overlapped, rerun it under the read lock.

        ``copy_fn`` must copy (not view) the layer. Blocks only when a write on this layer
        overlapped; raises LockTimeoutError if the read lock is not had within ``timeout``.
        """
        stamp = self.stamp(key)
        if stamp % 2 == 0:
            value = copy_fn()
            if self.validate(key, stamp):
                return value
        with self.read_lock(key, timeout):
            return copy_fn()

    @contextmanager
    def read_lock(self, key: str, timeout: float | None = None) -> Iterator[None]:
        """Hold the layer's read lock (waits while a writer holds or waits for it)."""
        lock = self._get(key)
        deadline = None if timeout is None else time.monotonic() + timeout
        if not lock.acquire_read(deadline):
            raise LockTimeoutError(f"read lock on layer {key!r} not acquired in {timeout} s")
        try:
            yield
        finally:
            lock.release_read()

    @contextmanager
    def write(self, keys: Iterable[str], timeout: float | None = None) -> Iterator[None]:
        """Hold the write locks of ``keys``, taken in sorted order before a shared deadline.

        On timeout, releases the locks already taken and raises LockTimeoutError. While held,
        each layer's version is odd, so overlapping optimistic reads fail validation.
        """
        ordered = sorted(set(keys))
        locks = [self._get(key) for key in ordered]
        deadline = None if timeout is None else time.monotonic() + timeout
        taken: list[_LayerLock] = []
        try:
            for key, lock in zip(ordered, locks, strict=True):
                if not lock.acquire_write(deadline):
                    raise LockTimeoutError(
                        f"write lock on layer {key!r} not acquired within {timeout} s; a long "
                        "read or write holds it: retry, or raise the timeout"
                    )
                taken.append(lock)
            yield
        finally:
            for lock in reversed(taken):
                lock.release_write()


def remaining(deadline: float | None) -> float | None:
    """Seconds until the ``time.monotonic()`` ``deadline`` (never negative); None: none."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class VersionGate:
    """A seqlock and reader/writer lock (writer preference) for one whole state.

    Writers hold :meth:`write` while they change the state: the stamp is odd meanwhile and
    grows by 2 per writer. :meth:`read` gives readers a consistent view without blocking
    writers in the common case. Thread-safe; holds no data itself.
    """

    def __init__(self) -> None:
        self._lock = _LayerLock()

    @property
    def stamp(self) -> int:
        """Odd while a writer holds the gate; equal stamps mean no writer came in between."""
        return self._lock.version

    @contextmanager
    def write(self, timeout: float | None = None) -> Iterator[None]:
        """Hold the gate exclusively; LockTimeoutError if not had within ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._lock.acquire_write(deadline):
            raise LockTimeoutError(f"the state's write gate was not acquired within {timeout} s;"
                                   " a long read or write holds it: retry, or raise the timeout")
        try:
            yield
        finally:
            self._lock.release_write()

    @contextmanager
    def read_lock(self, timeout: float | None = None) -> Iterator[None]:
        """Hold the gate shared (waits while a writer holds or waits for it)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._lock.acquire_read(deadline):
            raise LockTimeoutError(f"the state's read gate was not acquired within {timeout} s")
        try:
            yield
        finally:
            self._lock.release_read()

    def read(self, fn: Callable[[float | None, bool], T], timeout: float | None = None,
             tries: int = 2) -> T:
        """``fn(deadline, locked)`` computed while no writer changed the state.

        Up to ``tries`` optimistic runs (``locked`` False: a writer may run meanwhile; the
        result, or an exception, is discarded when the stamp moved; a run that would start
        while a writer is in waits for it first), then one run holding the read lock
        (``locked`` True: no writer runs, at most one waits). ``deadline`` is the shared
        ``time.monotonic()`` deadline for ``fn``'s own waits; LockTimeoutError once it passed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        for _ in range(tries):
            stamp = self._lock.version
            if stamp % 2:  # a writer is in: wait for it to leave, then try again
                with self.read_lock(remaining(deadline)):
                    continue
            try:
                value = fn(deadline, False)
            except Exception:
                if self._lock.version == stamp:
                    raise
                continue
            if self._lock.version == stamp:
                return value
        with self.read_lock(remaining(deadline)):
            return fn(deadline, True)
