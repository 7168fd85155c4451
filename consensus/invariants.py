"""Raft safety invariants (paper Figure 3) checked by the simulator after every step.

The checker sees only what a host sees (persisted Ready contents, applied entries,
node roles, memberships and logs), so it checks any ``RaftNode`` variant, including broken
ones. Beyond Figure 3 it checks that learners stay inert (a node campaigns or leads only
while a voter of its own membership, never as a learner) and that every leader won a quorum
of durable votes among its voters.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from consensus.core import RaftNode
from consensus.errors import ConsensusError
from consensus.types import Entry, EntryKind, HardState, Message, RequestVoteResponse, Role

_CAMPAIGNING = (Role.PRE_CANDIDATE, Role.CANDIDATE)


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
        self._votes: dict[tuple[int, int], int] = {}  # (term, voter) -> candidate, durable
        self._grants: dict[tuple[int, int], set[int]] = {}  # (term, candidate) -> voters

    # ---------------------------------------------------------------- Election Safety etc.

    def check_nodes(self, nodes: Iterable[RaftNode]) -> None:
        """After every step: Election Safety, Leader Append-Only, Leader Completeness,
        Learner Inertness, Election Quorum."""
        for node in nodes:
            if node.role in _CAMPAIGNING:
                self._check_may_campaign(node, node.role.name.lower())
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
                self._check_may_campaign(node, "leader")
                self._check_election_quorum(node)
                self._check_completeness(node)
            else:
                last, last_term = prev
                held = node.term_at(last)
                if node.last_index < last or (held is not None and held != last_term):
                    raise InvariantViolation(
                        f"Leader Append-Only: leader {node.id} of term {term} lost entry "
                        f"{last} (term {last_term}); log now ends at {node.last_index}")
            self._leader_last[key] = (node.last_index, node.term_at(node.last_index) or 0)

    def _check_may_campaign(self, node: RaftNode, role: str) -> None:
        """Learner Inertness: only a voter of its own membership campaigns or wins; a
        learner never does (a leader is checked when first seen, before any change of its
        own could take it out of the voters)."""
        if node.id in node.learners or node.id not in node.voters:
            raise InvariantViolation(
                f"Learner Inertness: node {node.id} is {role} in term {node.term} although "
                f"its membership has voters {node.voters} and learners {node.learners}")

    def _check_election_quorum(self, node: RaftNode) -> None:
        """A new leader won the votes of a quorum of its voters in its term: its own durable
        vote plus the grants they sent it; votes of learners or non-members count for
        nothing."""
        term = node.term
        grants = self._grants.get((term, node.id), set())
        granted = sorted(v for v in node.voters if v in grants
                         or (v == node.id and self._votes.get((term, v)) == v))
        need = len(node.voters) // 2 + 1
        if len(granted) < need:
            raise InvariantViolation(
                f"Election Quorum: node {node.id} leads term {term} with the votes of only "
                f"{granted} among its voters {node.voters} (a quorum needs {need})")

    def on_send(self, msg: Message, durable: HardState) -> None:
        """``msg`` leaves its sender, whose durable hard state is ``durable``. A granted
        vote must already be durable: the sender recorded that vote, or a later term (in
        which it can no longer vote in the old one)."""
        if not isinstance(msg, RequestVoteResponse) or not msg.granted or msg.pre_vote:
            return
        if durable.term < msg.term or (durable.term == msg.term and durable.vote != msg.dst):
            raise InvariantViolation(
                f"Vote Durability: node {msg.src} granted its term-{msg.term} vote to "
                f"{msg.dst} while its durable state says term {durable.term}, vote "
                f"{durable.vote}")
        self._grants.setdefault((msg.term, msg.dst), set()).add(msg.src)

    def on_hard_state(self, node_id: int, hard_state: HardState) -> None:
        """A node made ``hard_state`` durable: remember its vote. A durable vote is never
        taken back within a term (the node restarts with it)."""
        if hard_state.vote is None:
            return
        key = (hard_state.term, node_id)
        old = self._votes.setdefault(key, hard_state.vote)
        if old != hard_state.vote:
            raise InvariantViolation(
                f"Election Safety: node {node_id} durably voted for {old} and then for "
                f"{hard_state.vote} in term {hard_state.term}")

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
            record = _Seen(prev_term if prev_term is not None else -1, e.kind, bytes(e.data))
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
        record = (entry.term, bytes(entry.data), digest)
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
