"""When a replica snapshots and compacts its log: by entry count and by bytes.

Counting entries alone lets a large model's log grow to hundreds of GB before its first
compaction (a round of a 100M-parameter model is hundreds of MB). So a replica also
compacts once the entries it applied since its last snapshot hold twice that snapshot's
bytes plus one entry, less the few entries that stay in the log past the compaction point
(persisted but not applied yet: the rounds a pipelined driver keeps in flight, and the one
that crossed the mark). The log on disk then stays below twice the state's size plus one
entry, whatever the model, and no snapshot is written sooner than that bound needs: every
snapshot is the whole state, so at model scale they are as many disk bytes as the entries
(a 20M-parameter shard with Adam: 120 MB of state, 40 MB entries, a snapshot every four
rounds rather than three).

A replica's drive loop waits while it writes a snapshot: it persists, acknowledges and
sends nothing new meanwhile. The replicas of a group apply the same entries, so with one
trigger they would all snapshot at the same round, every group at once on a machine that
hosts several: the group stalls until the slowest write ends, and the writes share the
disk. So each replica's first snapshot once its state's size is known comes early by its
own fraction of a cycle (``stagger``): the replicas of a group are spread evenly over the
cycle, and groups are offset from each other by their names, so a majority of each group
keeps committing while one replica writes. Coming early only ever shortens the log.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

MIN_TRIGGER_BYTES = 64 << 20
"""Never compact more often than every this many applied bytes (small states)."""
IN_FLIGHT_ENTRIES = 3
"""Entries assumed to remain past the compaction point: up to two pipelined rounds
persisted but not applied, and the one that crossed the mark."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CompactionPolicy:
    """A replica's compaction settings (``RaftGroupConfig.snapshot_every`` /
    ``snapshot_log_bytes``)."""

    every_entries: int
    """Compact once this many entries applied since the last snapshot."""
    every_bytes: int | None = None
    """Compact once the entries applied since the last snapshot hold this many bytes; None:
    derived from the state's size (``trigger_bytes``)."""

    def trigger_bytes(self, state_bytes: int, largest_entry: int) -> int:
        """Applied entry bytes that trigger the next snapshot, given the last snapshot's
        size and the largest entry applied since."""
        if self.every_bytes is not None:
            return self.every_bytes
        spare = 2 * state_bytes + largest_entry - IN_FLIGHT_ENTRIES * largest_entry
        return max(spare, state_bytes, MIN_TRIGGER_BYTES)

    def due(self, *, entries: int, applied_bytes: int, state_bytes: int,
            largest_entry: int, early: float = 0.0) -> bool:
        """Whether to snapshot now: ``entries`` and ``applied_bytes`` since the last one.
        ``early`` (in [0, 1)): that fraction of either trigger sooner (``stagger``)."""
        if not 0.0 <= early < 1.0:
            raise ValueError(f"early must be in [0, 1), got {early}")
        keep = 1.0 - early
        if entries >= max(1, math.ceil(self.every_entries * keep)):
            return True
        return applied_bytes >= self.trigger_bytes(state_bytes, largest_entry) * keep


def stagger(group: str, index: int, replicas: int) -> float:
    """The fraction of a cycle by which replica ``index`` of ``group`` (``replicas`` in all;
    a replacement's index may be past that count) snapshots early the first time:
    ``index / replicas`` plus an offset of less than one replica's share taken from the
    group's name, so that the groups a machine hosts do not line up either. Deterministic:
    the same replica always gets the same fraction."""
    if replicas < 1 or index < 0:
        raise ValueError(f"replica {index} of {replicas}: need index >= 0 and replicas >= 1")
    digest = hashlib.sha256(group.encode()).digest()
    offset = int.from_bytes(digest[:8], "big") / 2.0**64  # in [0, 1)
    return ((index + offset) / replicas) % 1.0
