"""Wire and storage types of the Raft core.

Messages follow the Raft paper (Ongaro & Ousterhout, 2014), Figure 2, and the thesis
(Ongaro 2014) for pre-vote (§9.6), leadership transfer (§3.10), ReadIndex (§6.4) and
single-server membership change (§4.1). Every type is a frozen, slotted dataclass so
that it can be pickled by Ray and compared by value in tests.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class EntryKind(enum.IntEnum):
    """What an entry's ``data`` holds."""

    NORMAL = 0  # an application command (opaque bytes)
    NOOP = 1  # appended by a new leader to commit entries of earlier terms (§5.4.2, §8)
    CONF_CHANGE = 2  # a ConfChange encoded with ``encode_conf_change`` (§4.1)
    COMMAND = 3  # one state-machine command as it is: no session envelope, no client dedup


Payload = bytes | memoryview
"""An entry's bytes: its own copy, or a read-only view of the same bytes where the host
stored them (``RaftNode.release_payloads``)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry (Figure 2: "log[]")."""

    term: int
    index: int
    kind: EntryKind = EntryKind.NORMAL
    data: Payload = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """State that must be on stable storage before answering any RPC (Figure 2)."""

    term: int = 0
    vote: int | None = None
    commit: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """The position and membership a snapshot covers (§7)."""

    index: int
    term: int
    voters: tuple[int, ...]
    learners: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A state-machine image covering every entry up to ``meta.index``."""

    meta: SnapshotMeta
    data: bytes


class ConfChangeKind(enum.IntEnum):
    ADD = 0  # make the node a voter (a learner is promoted)
    REMOVE = 1  # drop the node, voter or learner
    ADD_LEARNER = 2  # replicate to the node without counting it in any quorum
    PROMOTE = 3  # make a learner a voter (it must be a learner or a voter already)


@dataclass(frozen=True, slots=True)
class ConfChange:
    """Add, remove or promote one member (single-server change, thesis §4.1; learners, thesis
    §4.2.1: a new server catches up as a non-voting member first)."""

    kind: ConfChangeKind
    node: int


@dataclass(frozen=True, slots=True)
class ReadState:
    """A ReadIndex answer: ``ctx`` may be served once the state machine applied ``index``."""

    ctx: bytes
    index: int


class Role(enum.IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


# ---------------------------------------------------------------- messages (Figure 2)


@dataclass(frozen=True, slots=True)
class RequestVote:
    """RequestVote RPC (§5.2); ``pre_vote`` marks a pre-vote probe (thesis §9.6)."""

    src: int
    dst: int
    term: int
    last_log_index: int
    last_log_term: int
    pre_vote: bool = False
    transfer: bool = False  # sent after TimeoutNow: followers must not ignore it (§3.10)


@dataclass(frozen=True, slots=True)
class RequestVoteResponse:
    src: int
    dst: int
    term: int
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True)
class AppendEntries:
    """AppendEntries RPC (§5.3); also the heartbeat. ``ctx`` carries ReadIndex rounds."""

    src: int
    dst: int
    term: int
    prev_log_index: int
    prev_log_term: int
    entries: tuple[Entry, ...]
    leader_commit: int
    ctx: int = 0


@dataclass(frozen=True, slots=True)
class AppendEntriesResponse:
    """Answer to AppendEntries: an acceptance names the index up to which the follower's log
    now matches the leader's (``match_index``); a rejection names the ``prev_log_index`` it
    could not match (``rejected_index``) and, to speed backtracking, its last entry at or
    below it whose term is at most the leader's ``prev_log_term`` (``hint_index``,
    ``hint_term``)."""

    src: int
    dst: int
    term: int
    success: bool
    match_index: int = 0
    """Acceptance: the follower's log matches the leader's up to here (0 on a rejection)."""
    hint_index: int = 0
    hint_term: int = 0
    ctx: int = 0
    rejected_index: int = 0
    """Rejection: the ``prev_log_index`` the follower could not match (0 on acceptance)."""


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """InstallSnapshot RPC (§7), sent in chunks of ``data`` starting at ``offset``."""

    src: int
    dst: int
    term: int
    meta: SnapshotMeta
    offset: int
    data: bytes
    done: bool


@dataclass(frozen=True, slots=True)
class InstallSnapshotResponse:
    src: int
    dst: int
    term: int
    meta_index: int
    next_offset: int
    done: bool


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Leadership transfer: the target starts an election at once (thesis §3.10)."""

    src: int
    dst: int
    term: int


Message = (
    RequestVote
    | RequestVoteResponse
    | AppendEntries
    | AppendEntriesResponse
    | InstallSnapshot
    | InstallSnapshotResponse
    | TimeoutNow
)


@dataclass(slots=True)
class Ready:
    """Everything the host must do, in this order (persist before send):

    1. persist ``hard_state`` (if not None), ``entries`` (replacing any stored entries
       with the same or higher index) and ``snapshot`` (if not None), durably (fsync);
    2. send ``messages``;
    3. restore ``snapshot`` into the state machine (if not None), then apply
       ``committed_entries`` in order;
    4. answer ``read_states`` once the state machine has applied their index;
    5. call ``advance(ready)``.

    Exception (Raft thesis §10.2.1): when ``send_before_persist`` is True the host may send
    ``messages`` (and apply ``committed_entries``) before or while it persists ``entries`` and
    ``hard_state``; it must still persist them durably before ``advance``. The core sets it
    only for a leader whose Ready changes neither term nor vote and holds no snapshot, and the
    leader counts its own log toward the commit quorum only up to what ``advance`` marked
    stable, so an entry is never committed on the strength of the leader's unsynced write.
    """

    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    committed_entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    role: Role = Role.FOLLOWER
    leader: int | None = None
    term: int = 0
    send_before_persist: bool = False
