"""Large log entries held as views of their stored bytes once they are persisted.

A replica of a large model would otherwise keep in memory every round since its last
snapshot (hundreds of MB each), and every round its apply lags behind. Once an entry is on
disk, the core holds a read-only view of its segment file instead (``Segments.view``): the
page cache has the bytes, the apply and a lagging follower's catch-up read them there.
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence
from typing import Any

from consensus.core import RaftNode
from consensus.storage import SqliteStorage
from consensus.types import Entry

RELEASE_MIN_BYTES = 1 << 20
"""Persisted entries at least this large are held as views of their file."""


def release_persisted(node: RaftNode, storage: SqliteStorage, persisted: Sequence[Entry]) -> int:
    """Swap the core's copies of the large entries in ``persisted`` (just made durable and
    acknowledged with ``RaftNode.advance``) for views of where ``storage`` keeps them;
    returns how many were swapped."""
    large = [e.index for e in persisted
             if len(e.data) >= RELEASE_MIN_BYTES and not is_file_view(e.data)]
    if not large:
        return 0
    return node.release_payloads(storage.payload_views(large[0], large[-1]))


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
