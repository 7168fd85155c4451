"""A leader's view of one follower's log (replication progress and flow control)."""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.IntEnum):
    PROBE = 0  # one AppendEntries at a time until the match point is found
    REPLICATE = 1  # optimistic pipelining: next advances as entries are sent
    SNAPSHOT = 2  # an InstallSnapshot transfer is under way


class Progress:
    """Replication state of one peer as tracked by the leader (mutable, leader-local).

    ``match``: highest index known to be on the peer's disk. ``next``: next index to send.
    ``inflight``: ``(last_index, bytes)`` of AppendEntries sent and not yet acknowledged;
    flow control pauses sending when either the count or the byte sum reaches its cap.
    """

    __slots__ = ("inflight", "inflight_bytes", "match", "next", "probe_sent", "read_ack",
                 "recent_active", "snapshot_index", "snapshot_offset", "stalled_beats", "state")

    def __init__(self, next_index: int, match: int = 0) -> None:
        self.match = match
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.recent_active = True
        self.inflight: deque[tuple[int, int]] = deque()
        self.inflight_bytes = 0
        self.snapshot_index = 0
        self.snapshot_offset = 0
        self.read_ack = 0
        self.stalled_beats = 0

    def __repr__(self) -> str:
        return (f"Progress(state={self.state.name}, match={self.match}, next={self.next}, "
                f"inflight={len(self.inflight)}/{self.inflight_bytes}B)")

    def _reset_inflight(self) -> None:
        self.inflight.clear()
        self.inflight_bytes = 0
        self.stalled_beats = 0

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.snapshot_index + 1)
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self._reset_inflight()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self._reset_inflight()

    def become_snapshot(self, index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.snapshot_index = index
        self.snapshot_offset = 0
        self.probe_sent = False
        self._reset_inflight()

    def maybe_update(self, index: int) -> bool:
        """Record an acknowledgement of ``index``; True if ``match`` advanced."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        self._free_to(index)
        return updated

    def _free_to(self, index: int) -> None:
        inflight = self.inflight
        while inflight and inflight[0][0] <= index:
            self.inflight_bytes -= inflight.popleft()[1]

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """Handle a rejection of the append at ``rejected``; False if the rejection is stale."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        if match_hint < self.match:
            # The follower's log ends before entries it acknowledged: it restarted without
            # its durable state (RaftConfig.lost_state), or this is a duplicate of an old
            # reply. Repair from its actual log. A lower match only delays later commits;
            # it never un-commits anything.
            self.match = match_hint
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def is_paused(self, max_msgs: int, max_bytes: int) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return len(self.inflight) >= max_msgs or self.inflight_bytes >= max_bytes
        return True

    def sent_entries(self, last_index: int, nbytes: int) -> None:
        """An AppendEntries carrying entries up to ``last_index`` went out."""
        if self.state == ProgressState.REPLICATE:
            self.next = last_index + 1
            self.inflight.append((last_index, nbytes))
            self.inflight_bytes += nbytes
        else:
            self.probe_sent = True


def quorum_index(values: list[int]) -> int:
    """The largest value that a majority of ``values`` is at or above."""
    values.sort(reverse=True)
    return values[len(values) // 2]
