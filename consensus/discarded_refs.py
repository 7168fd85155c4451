"""Refs whose values nobody needs any more, read once they settle.

Ray logs every error object that is freed without having been read ("Unhandled error").
A failover leaves such refs behind: the answers of a leader that died, the calls a replay
supersedes, a status asked of a replica that is down. Waiting for them on the spot would
make the failover as slow as Ray is to notice the death (about a second or more), so a
``DiscardedRefs`` keeps them and reads each one later, when it is ready anyway: every
``add`` and ``poll`` reads the ready ones without blocking, and ``drain`` waits a bounded
time for the rest (at the end of a run), then cancels those still pending and reads them
too: a task Ray re-runs after its node went can wait longer than any run's end for an input
that died with the node, and its error, freed unread at exit, would be logged after all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import ray

__all__ = ["DiscardedRefs"]


class DiscardedRefs:
    """A set of unwanted refs, read (their errors retrieved and dropped) once ready."""

    def __init__(self) -> None:
        self._refs: dict[Any, None] = {}  # insertion-ordered set

    def __len__(self) -> int:
        return len(self._refs)

    def add(self, refs: Iterable[Any]) -> None:
        """Keep ``refs`` until they settle; reads those ready now (never blocks)."""
        for ref in refs:
            self._refs[ref] = None
        self.poll()

    def poll(self) -> int:
        """Read the refs that are ready now; returns how many are still pending."""
        return self._read(0.0)

    def drain(self, timeout: float, cancel_wait: float = 2.0) -> int:
        """Wait up to ``timeout`` seconds for the rest, then cancel what is still pending
        and wait up to ``cancel_wait`` seconds for the cancellations; returns how many never
        settled."""
        if not self._read(timeout):
            return 0
        for ref in self._refs:
            with contextlib.suppress(Exception):  # finished meanwhile, or not cancellable
                ray.cancel(ref)
        return self._read(cancel_wait)

    def _read(self, timeout: float) -> int:
        if not self._refs:
            return 0
        refs = list(self._refs)
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout, fetch_local=False)
        for ref in ready:
            with contextlib.suppress(Exception):  # the failure was handled by whoever dropped it
                ray.get(ref, timeout=0)
            del self._refs[ref]
        return len(self._refs)
