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
"""

from __future__ import annotations

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
            largest_entry: int) -> bool:
        """Whether to snapshot now: ``entries`` and ``applied_bytes`` since the last one."""
        if entries >= self.every_entries:
            return True
        return applied_bytes >= self.trigger_bytes(state_bytes, largest_entry)
