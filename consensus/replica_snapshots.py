"""``ReplicaSnapshots``: one replica's snapshots, log size and disk room.

What the replica's drive loop needs to compact its log: the counters the compaction
policy reads (entries and bytes applied since the last snapshot, the largest entry, the
last snapshot's size), the image's encoding and durable write (in the disk thread), the
most bytes its log held on disk, and whether the disk can still hold its next snapshot.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from consensus.compaction import CompactionPolicy
from consensus.errors import StorageFullError
from consensus.session import image_parts
from consensus.storage import SqliteStorage
from consensus.types import Entry, Snapshot, SnapshotMeta

log = logging.getLogger(__name__)


class ReplicaSnapshots:
    """Snapshot bookkeeping of one replica (used by one thread at a time: the loop, or the
    disk thread while the loop awaits it)."""

    def __init__(self, storage: SqliteStorage, policy: CompactionPolicy, name: str,
                 snapshot: Snapshot | None, early: float = 0.0) -> None:
        self._storage = storage
        self._policy = policy
        self._name = name
        self._early = early
        """How early (a fraction of the cycle: ``compaction.stagger``) the next snapshot
        comes; 0 once one was taken early with the state's size known."""
        self.index = snapshot.meta.index if snapshot is not None else 0
        self.bytes = len(snapshot.data) if snapshot is not None else 0
        """The last snapshot's size: about the state's (parameters plus optimizer state)."""
        self._applied_bytes = self._largest = 0
        self.peak_log_bytes = 0
        self.storage_full: StorageFullError | None = None

    def restored(self, index: int) -> None:
        """A snapshot up to ``index`` was installed (received or loaded)."""
        self.index = index

    def applied(self, entries: Sequence[Entry]) -> None:
        """``entries`` were applied (counted toward the next snapshot)."""
        for entry in entries:
            self._applied_bytes += len(entry.data)
            self._largest = max(self._largest, len(entry.data))

    def due(self, applied_index: int) -> bool:
        """Whether to snapshot at ``applied_index`` (``consensus.compaction``)."""
        return self._policy.due(entries=applied_index - self.index,
                                applied_bytes=self._applied_bytes, state_bytes=self.bytes,
                                largest_entry=self._largest,
                                early=self._early if self.bytes else 0.0)

    def write(self, meta: SnapshotMeta, sessions: bytes, state_machine: Any) -> Snapshot:
        """(disk thread) Encode the image and make it the durable snapshot; returns it as a
        read-only mapping of its file (the page cache holds it, not this process; the core
        reads chunks of it only for a follower that needs a snapshot). A state machine with
        ``snapshot_parts()`` (buffers valid until its next apply) is written part by part,
        never assembled: a copy of a large shard's image would double the replica's memory
        for as long as the write takes. Raises StorageFullError, having changed nothing."""
        parts_of = getattr(state_machine, "snapshot_parts", None)
        user = parts_of() if callable(parts_of) else [state_machine.snapshot()]
        path = self._storage.compact_parts(meta, image_parts(sessions, user))
        mapped = self._storage.map_image(path)
        return Snapshot(meta=meta, data=mapped)  # type: ignore[arg-type]  # bytes-like

    def compacted(self, snapshot: Snapshot) -> None:
        """``snapshot`` is durable and the log before it gone: reset the counters, and
        check the disk can hold the next cycle (a snapshot plus the log before it)."""
        if self.bytes:  # this cycle knew the state's size: its early start is in place
            self._early = 0.0
        self.index = snapshot.meta.index
        self.bytes = len(snapshot.data)
        self._applied_bytes = self._largest = 0
        try:
            self._storage.check_space(3 * self.bytes)
            self.storage_full = None
        except StorageFullError as exc:
            self.disk_full(exc)

    def disk_full(self, exc: StorageFullError) -> None:
        """Remember (and log once) that the disk cannot hold the next snapshot: the replica
        refuses proposals with it from now on, so the job stops with this error instead of
        filling the disk and crash-looping."""
        if self.storage_full is None:
            log.error("replica %s: %s", self._name, exc)
        self.storage_full = exc

    def note_disk(self) -> None:
        """Track the most bytes the log (sqlite and segments) held on disk."""
        self.peak_log_bytes = max(self.peak_log_bytes, self._storage.log_bytes())
