"""The simulator's model of a server: a tiny KV state machine, durable storage that keeps
exactly what completed persists wrote, and the host holding both around a ``RaftNode``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from consensus.core import RaftNode
from consensus.types import Entry, HardState, Ready, Snapshot


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
