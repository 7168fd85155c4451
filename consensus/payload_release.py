"""Large log entries held as views of their stored bytes once they are persisted and applied.

A replica of a large model would otherwise keep in memory every round since its last
snapshot (hundreds of MB each). Once an entry is on disk and applied, the core holds a
read-only view of its segment file instead (``Segments.view``): only a lagging follower's
catch-up reads it there. Until it is applied the entry keeps its own bytes, which the apply
reads: a large payload is written past the page cache
(``consensus.segments``), and a view would read it back from the disk. At most
``HOLD_UNAPPLIED`` persisted entries wait so (the rounds a pipelined driver keeps in
flight); beyond that the oldest become views anyway, so a follower whose apply lags far
behind holds no more than those in memory.
"""

from __future__ import annotations

import mmap
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

from consensus.core import RaftNode
from consensus.storage import SqliteStorage
from consensus.types import Entry

RELEASE_MIN_BYTES = 1 << 20
"""Persisted entries at least this large are held as views of their file once applied."""
HOLD_UNAPPLIED = 3
"""Persisted large entries not applied yet that keep their own bytes, at most."""


class PayloadRelease:
    """One replica's persisted large entries that still hold their own bytes, oldest first,
    and their swap for views (loop thread only)."""

    def __init__(self, hold: int = HOLD_UNAPPLIED) -> None:
        self._hold = hold
        self._held: list[int] = []

    def persisted(self, entries: Sequence[Entry]) -> None:
        """``entries`` were just made durable and acknowledged (``RaftNode.advance``)."""
        for entry in entries:
            if len(entry.data) >= RELEASE_MIN_BYTES and not is_file_view(entry.data):
                if self._held and entry.index <= self._held[-1]:  # a rewritten suffix
                    del self._held[bisect_right(self._held, entry.index - 1):]
                self._held.append(entry.index)

    def due(self, applied: int) -> bool:
        """Whether ``release`` at ``applied`` would swap anything."""
        return bool(self._held) and (self._held[0] <= applied
                                     or len(self._held) > self._hold)

    def release(self, node: RaftNode, storage: SqliteStorage, applied: int) -> int:
        """Swap the core's copies of the held entries up to ``applied``, and of the oldest
        beyond ``hold`` unapplied ones, for views of where ``storage`` keeps them; returns
        how many were swapped."""
        cut = max(bisect_right(self._held, applied), len(self._held) - self._hold)
        if cut <= 0:
            return 0
        due, self._held = self._held[:cut], self._held[cut:]
        return node.release_payloads(storage.payload_views(due[0], due[-1]))


def is_file_view(data: Any) -> bool:
    """Whether ``data`` is already a view of a mapped file (``Segments.view``). Other
    buffers hold their own memory: ``bytes``, and views of a received frame (``wire``) or of
    a proposer's gathered command (``consensus.buffers.gather``)."""
    return isinstance(data, memoryview) and isinstance(data.obj, mmap.mmap)


def private_bytes() -> int | None:
    """This process's private resident memory (``RssAnon``: what it alone costs, without
    the object store's shared pages or the page cache); None where /proc does not say."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
