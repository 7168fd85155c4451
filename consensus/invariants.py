"""Raft safety invariants (paper Figure 3) checked by the simulator after every step.

The checker sees only what a host sees (persisted Ready contents, applied entries,
node roles and logs), so it checks any ``RaftNode`` variant, including broken ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from consensus.core import RaftNode
from consensus.errors import ConsensusError
from consensus.types import Entry, EntryKind, Role


class InvariantViolation(ConsensusError):
    """A Raft safety property failed; the message names the property and the evidence."""


@dataclass(frozen=True, slots=True)
class _Seen:
    prev_term: int
    kind: EntryKind
    data: bytes


class InvariantChecker:
    """Incremental checks, each O(1) per event except Leader Completeness (O(committed)
    once per new leader). Mutates only its own records."""

    def __init__(self) -> None:
        self._leader_of_term: dict[int, int] = {}
        self._leader_last: dict[tuple[int, int], tuple[int, int]] = {}
        self._leader_persisted: dict[tuple[int, int], int] = {}
        self._entries: dict[tuple[int, int], _Seen] = {}
        self.applied: dict[int, tuple[int, bytes, bytes]] = {}  # index -> term, data, digest

    # ---------------------------------------------------------------- Election Safety etc.

    def check_nodes(self, nodes: Iterable[RaftNode]) -> None:
        """After every step: Election Safety, Leader Append-Only, Leader Completeness."""
        for node in nodes:
            if node.role != Role.LEADER:
                continue
            term = node.term
            other = self._leader_of_term.setdefault(term, node.id)
            if other != node.id:
                raise InvariantViolation(
                    f"Election Safety: nodes {other} and {node.id} both lead term {term}")
            key = (node.id, term)
            prev = self._leader_last.get(key)
            if prev is None:
                self._check_completeness(node)
            else:
                last, last_term = prev
                held = node.term_at(last)
                if node.last_index < last or (held is not None and held != last_term):
                    raise InvariantViolation(
                        f"Leader Append-Only: leader {node.id} of term {term} lost entry "
                        f"{last} (term {last_term}); log now ends at {node.last_index}")
            self._leader_last[key] = (node.last_index, node.term_at(node.last_index) or 0)

    def _check_completeness(self, node: RaftNode) -> None:
        snap = node.log.snapshot_index
        for index, (term, _data, _digest) in self.applied.items():
            if index <= snap:
                continue
            if node.term_at(index) != term:
                raise InvariantViolation(
                    f"Leader Completeness: new leader {node.id} (term {node.term}) lacks "
                    f"committed entry {index} of term {term} (has {node.term_at(index)})")

    # ---------------------------------------------------------------- Log Matching

    def on_persist(self, node: RaftNode, entries: Sequence[Entry], prev_term: int | None,
                   as_leader: bool) -> None:
        """Entries a node persisted. Log Matching by induction: equal (index, term) must
        mean equal content and an equal predecessor term."""
        if not entries:
            return
        if as_leader:
            key = (node.id, entries[0].term)
            done = self._leader_persisted.get(key, 0)
            if entries[0].index <= done:
                raise InvariantViolation(
                    f"Leader Append-Only: leader {node.id} rewrote entry {entries[0].index} "
                    f"already persisted in its term {entries[0].term}")
            self._leader_persisted[key] = entries[-1].index
        seen = self._entries
        for e in entries:
            record = _Seen(prev_term if prev_term is not None else -1, e.kind, e.data)
            old = seen.setdefault((e.index, e.term), record)
            if old != record and (old.kind != record.kind or old.data != record.data
                                  or -1 not in (old.prev_term, record.prev_term)):
                raise InvariantViolation(
                    f"Log Matching: entry ({e.index}, term {e.term}) on node {node.id} "
                    f"differs from another log's: {old} vs {record}")
            prev_term = e.term

    # ---------------------------------------------------------------- State Machine Safety

    def on_apply(self, node_id: int, entry: Entry, digest: bytes) -> None:
        """Every node applies the same entry, reaching the same state, at each index."""
        record = (entry.term, entry.data, digest)
        old = self.applied.setdefault(entry.index, record)
        if old != record:
            raise InvariantViolation(
                f"State Machine Safety: node {node_id} applied {record[:2]} at index "
                f"{entry.index}, another node applied {old[:2]} (digests {digest.hex()} vs "
                f"{old[2].hex()})")

    def on_snapshot(self, node_id: int, index: int, digest: bytes) -> None:
        """A restored snapshot must equal the state other nodes reached at its index."""
        old = self.applied.get(index)
        if old is not None and old[2] != digest:
            raise InvariantViolation(
                f"State Machine Safety: node {node_id} restored a snapshot at {index} whose "
                f"state differs from the state applied there elsewhere")
