"""The in-memory Raft log of one replica: the entries after its latest snapshot.

Positions: ``stable`` (entries up to it are on the host's disk), ``committed`` and
``applied`` (handed to the host for application). ``stable`` may exceed ``committed``
and vice versa. Payload sizes are kept as prefix sums so a byte-bounded slice is a
binary search, never a walk over the entries.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import replace

from consensus.types import Entry, Payload

ENTRY_OVERHEAD = 16
"""Bytes counted per entry on top of its data (term and index on the wire)."""


class RaftLog:
    """Entries ``(snapshot_index, last_index]`` plus the position of the snapshot.

    Mutated only by ``RaftNode``; not thread-safe. Every method is O(1) or
    O(log n + k) in the number ``k`` of entries it touches.
    """

    __slots__ = ("_cum", "_entries", "applied", "committed", "offered", "snapshot_index",
                 "snapshot_term", "stable")

    def __init__(self, snapshot_index: int = 0, snapshot_term: int = 0,
                 entries: Sequence[Entry] = ()) -> None:
        self.snapshot_index = snapshot_index
        self.snapshot_term = snapshot_term
        self._entries: list[Entry] = []
        self._cum: list[int] = [0]
        self.committed = snapshot_index
        self.applied = snapshot_index
        self.stable = snapshot_index
        self.append(entries)
        self.stable = self.last_index
        self.offered = self.last_index
        # entries up to ``offered`` were handed to the host in a Ready (offered >= stable)

    # ------------------------------------------------------------------ queries

    @property
    def last_index(self) -> int:
        return self.snapshot_index + len(self._entries)

    @property
    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else self.snapshot_term

    def term(self, index: int) -> int | None:
        """The term of the entry at ``index``, or None if compacted away or beyond the log."""
        if index == self.snapshot_index:
            return self.snapshot_term
        pos = index - self.snapshot_index - 1
        if pos < 0 or pos >= len(self._entries):
            return None
        return self._entries[pos].term

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """§5.4.1: a log ending at (last_index, last_term) is at least as up-to-date as ours."""
        my_term = self.last_term
        return last_term > my_term or (last_term == my_term and last_index >= self.last_index)

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries ``[lo, hi]`` (inclusive); both must be held (not compacted)."""
        off = self.snapshot_index + 1
        return self._entries[lo - off:hi - off + 1]

    def slice(self, lo: int, max_bytes: int) -> list[Entry]:
        """Entries from ``lo`` on, at most ``max_bytes`` of payload but at least one entry."""
        a = lo - self.snapshot_index - 1
        n = len(self._entries)
        if a >= n:
            return []
        b = bisect_right(self._cum, self._cum[a] + max_bytes, a + 1, n + 1) - 1
        return self._entries[a:max(b, a + 1)]

    def size_between(self, lo: int, hi: int) -> int:
        """Payload bytes of entries ``[lo, hi]``."""
        off = self.snapshot_index + 1
        return self._cum[hi - off + 1] - self._cum[lo - off]

    def take_unoffered(self) -> list[Entry]:
        """Entries after ``offered`` (not yet handed to the host); marks them offered."""
        entries = self._entries[self.offered - self.snapshot_index:]
        self.offered = self.last_index
        return entries

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """The largest index ``<= index`` whose term is ``<= term`` (at least the snapshot index).

        Used for fast backtracking: every entry after the result has a term above ``term``
        and so cannot match the other log there.
        """
        index = min(index, self.last_index)
        if index <= self.snapshot_index:
            return index
        while index > self.snapshot_index:
            t = self._entries[index - self.snapshot_index - 1].term
            if t <= term:
                return index
            index -= 1
        return self.snapshot_index

    # ------------------------------------------------------------------ mutations

    def append(self, entries: Sequence[Entry]) -> None:
        """Append ``entries``; the first must follow ``last_index`` directly."""
        if not entries:
            return
        if entries[0].index != self.last_index + 1:
            raise ValueError(f"entry {entries[0].index} does not follow {self.last_index}")
        cum = self._cum
        total = cum[-1]
        for e in entries:
            total += len(e.data) + ENTRY_OVERHEAD
            cum.append(total)
        self._entries.extend(entries)

    def truncate_after(self, index: int) -> None:
        """Drop entries after ``index`` (never committed ones)."""
        if index < self.committed:
            raise ValueError(f"cannot truncate committed entries after {index}")
        pos = index - self.snapshot_index
        del self._entries[pos:]
        del self._cum[pos + 1:]
        self.stable = min(self.stable, index)
        self.offered = min(self.offered, index)

    def maybe_append(self, prev_index: int, prev_term: int,
                     entries: Sequence[Entry]) -> int | None:
        """§5.3 receiver rules 2-4: returns the index of the last new entry, None on mismatch.

        Entries already present with the same term are kept (a duplicate or reordered
        AppendEntries never truncates); from the first conflict on, ours are replaced.
        """
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        if not entries:
            return last_new
        start = 0
        if entries[0].index <= self.last_index:
            start = self._first_conflict(entries)
            if start == len(entries):
                return last_new
            conflict = entries[start].index
            if conflict <= self.last_index:
                self.truncate_after(conflict - 1)
        self.append(entries[start:] if start else entries)
        return last_new

    def _first_conflict(self, entries: Sequence[Entry]) -> int:
        for pos, e in enumerate(entries):
            if e.index <= self.snapshot_index:
                continue
            if self.term(e.index) != e.term:
                return pos
        return len(entries)

    def swap_payloads(self, payloads: Mapping[int, tuple[int, Payload]]) -> int:
        """Replace the data of held, persisted entries by ``{index: (term, same bytes)}``
        (say, views of where the host stored them: an (index, term) names one entry, Log
        Matching); an index not held or beyond ``stable``, a term or a length that differs,
        is skipped. Returns how many were swapped."""
        swapped = 0
        for index, (term, data) in payloads.items():
            pos = index - self.snapshot_index - 1
            if index > self.stable or pos < 0 or pos >= len(self._entries):
                continue
            old = self._entries[pos]
            if old.term != term or len(old.data) != len(data):
                continue
            self._entries[pos] = replace(old, data=data)
            swapped += 1
        return swapped

    def commit_to(self, index: int) -> bool:
        if index > self.committed:
            self.committed = min(index, self.last_index)
            return True
        return False

    def stable_to(self, index: int, term: int) -> None:
        """The host persisted entries up to ``index`` (ignored if since truncated)."""
        if index > self.stable and self.term(index) == term:
            self.stable = index

    def compact(self, index: int) -> list[Entry]:
        """Discard entries up to ``index`` (which must be held); it becomes the snapshot point.
        Returns the discarded entries (a host may let go of large payloads elsewhere)."""
        term = self.term(index)
        if term is None or index <= self.snapshot_index:
            raise ValueError(f"cannot compact to {index}")
        pos = index - self.snapshot_index
        discarded = self._entries[:pos]
        del self._entries[:pos]
        del self._cum[:pos]
        self.snapshot_index = index
        self.snapshot_term = term
        return discarded

    def restore(self, index: int, term: int) -> None:
        """Reset to an empty log after a snapshot at ``(index, term)`` received from a leader."""
        self._entries = []
        self._cum = [0]
        self.snapshot_index = index
        self.snapshot_term = term
        self.committed = index
        self.applied = index
        self.stable = index
        self.offered = index
