"""Refs whose values nobody needs any more, read once they settle.

Ray logs every error object that is freed without having been read ("Unhandled error").
A failover leaves such refs behind: the answers of a leader that died, the calls a replay
supersedes, a status asked of a replica that is down. Waiting for them on the spot would
make the failover as slow as Ray is to notice the death (about a second or more), so a
``DiscardedRefs`` keeps them and reads each one later, when it is ready anyway: every
``add`` and ``poll`` reads the ready ones without blocking, and ``drain`` waits a bounded
time for the rest (at the end of a run).
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

    def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for the rest; returns how many never settled."""
        return self._read(timeout)

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
