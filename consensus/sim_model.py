"""The simulator's model of a server: a tiny KV state machine, durable storage that keeps
exactly what completed persists wrote, and the host holding both around a ``RaftNode``;
plus the committed membership of the whole group, as the applied log describes it."""

from __future__ import annotations

import bisect
import hashlib
import json
from dataclasses import dataclass, field

from consensus.core import RaftNode
from consensus.sim_config import SimResult
from consensus.types import ConfChange, ConfChangeKind, Entry, HardState, Ready, Snapshot


class KVStateMachine:
    """Tiny deterministic KV store: commands are ``b"key=value"``."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def apply(self, command: bytes) -> None:
        key, _, value = command.decode().partition("=")
        self.data[key] = value

    def snapshot(self) -> bytes:
        return json.dumps(self.data, sort_keys=True).encode()

    def restore(self, data: bytes) -> None:
        self.data = json.loads(data.decode()) if data else {}

    def digest(self) -> bytes:
        return hashlib.blake2b(self.snapshot(), digest_size=8).digest()


@dataclass(slots=True)
class Durable:
    """What survives a crash: the result of every completed persist."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)

    def persist(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            self.snapshot = rd.snapshot
            self.entries = []
        if rd.entries:
            base = self.snapshot.meta.index if self.snapshot else 0
            del self.entries[rd.entries[0].index - base - 1:]
            self.entries.extend(rd.entries)
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state

    def compact(self, snap: Snapshot) -> None:
        base = self.snapshot.meta.index if self.snapshot else 0
        del self.entries[:snap.meta.index - base]
        self.snapshot = snap

    def holds(self, index: int, term: int) -> bool:
        base = self.snapshot.meta.index if self.snapshot else 0
        if index <= base:
            return True
        pos = index - base - 1
        return pos < len(self.entries) and self.entries[pos].term == term


@dataclass(slots=True)
class Host:
    """One simulated server: durable state, the volatile node and state machine."""

    id: int
    durable: Durable = field(default_factory=Durable)
    node: RaftNode | None = None
    sm: KVStateMachine = field(default_factory=KVStateMachine)
    applied: int = 0
    torn_next: bool = False
    lost: bool = False  # lost its disk once: runs with RaftConfig.lost_state from then on
    voters: tuple[int, ...] = ()  # its RaftConfig.voters (a spare's is set when it joins)


class MembershipLog:
    """The committed voters and learners, advanced by each committed membership change
    once (every host applies the same entries, in index order). Counts, in a
    ``SimResult``, the promotions and the replacements (a voter removed after some
    learner was promoted) for the workload checks. Its own arithmetic, independent of the
    core's: a voter is never demoted and promoting a non-member changes nothing."""

    def __init__(self, voters: tuple[int, ...]) -> None:
        self.voters: set[int] = set(voters)
        self.learners: set[int] = set()
        self.index = 0  # the last membership change counted
        self.replaced_at = 0  # the index of the last replacement's removal
        self._promoted = False
        self._history: list[tuple[int, tuple[int, ...], tuple[int, ...]]] = [
            (0, tuple(sorted(voters)), ())]

    def at(self, index: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(voters, learners), sorted, in force after the committed entry at ``index``."""
        pos = bisect.bisect_right(self._history, index, key=lambda h: h[0]) - 1
        return self._history[pos][1], self._history[pos][2]

    def commit(self, index: int, cc: ConfChange, result: SimResult) -> None:
        """The membership change ``cc`` at ``index`` was applied (counted once)."""
        if index <= self.index:
            return
        self.index = index
        node = cc.node
        if cc.kind in (ConfChangeKind.ADD, ConfChangeKind.PROMOTE):
            if cc.kind == ConfChangeKind.ADD or node in self.voters | self.learners:
                promoted = node in self.learners
                self.learners.discard(node)
                self.voters.add(node)
                if promoted:
                    result.promotions += 1
                    self._promoted = True
        elif cc.kind == ConfChangeKind.ADD_LEARNER:
            if node not in self.voters:
                self.learners.add(node)
        else:
            if node in self.voters and self._promoted:
                result.replacements += 1
                self.replaced_at = index
            self.voters.discard(node)
            self.learners.discard(node)
        self._history.append((index, tuple(sorted(self.voters)), tuple(sorted(self.learners))))
