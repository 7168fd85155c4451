"""State shared by every role of a Raft replica, and the role transitions.

``RaftNode`` (core.py) is assembled from this base plus the election and replication
concerns; roles switch behaviour by ``self.role``, never by swapping classes.
"""

from __future__ import annotations

import contextlib
import random
from collections import deque
from collections.abc import Sequence

from consensus.codec import decode_conf_change
from consensus.config import RaftConfig
from consensus.errors import ConfigError
from consensus.membership import apply_change
from consensus.progress import Progress, quorum_index
from consensus.raft_log import RaftLog
from consensus.types import (
    Entry,
    EntryKind,
    HardState,
    Message,
    ReadState,
    Role,
    Snapshot,
    SnapshotMeta,
)

_EMPTY_HARD_STATE = HardState()


class NodeState:
    """Fields and transitions of one replica. Mutated only by the host's single thread.

    Durable (must match the host's disk after ``advance``): ``term``, ``vote``, the log.
    Everything else is volatile and rebuilt on restart.
    """

    def __init__(self, config: RaftConfig, rng: random.Random, *,
                 hard_state: HardState = _EMPTY_HARD_STATE, snapshot: Snapshot | None = None,
                 entries: Sequence[Entry] = ()) -> None:
        self.config = config
        self.id = config.id
        self._rng = rng
        snap_index = snapshot.meta.index if snapshot else 0
        snap_term = snapshot.meta.term if snapshot else 0
        for offset, entry in enumerate(entries):
            if entry.index != snap_index + 1 + offset:
                raise ConfigError(
                    f"restart entries must be contiguous from {snap_index + 1}; "
                    f"entry #{offset} has index {entry.index}")
        self.log = RaftLog(snap_index, snap_term, entries)
        if hard_state.commit > self.log.last_index:
            raise ConfigError(
                f"hard_state.commit={hard_state.commit} is beyond the last persisted entry "
                f"{self.log.last_index}: the durable state is inconsistent")
        self.log.committed = max(hard_state.commit, snap_index)
        self.term = hard_state.term
        self.vote = hard_state.vote
        self.role = Role.FOLLOWER
        self.leader: int | None = None
        self._snapshot = snapshot
        base = snapshot.meta.voters if snapshot else config.voters
        self._conf_base: tuple[int, ...] = tuple(sorted(base))
        self._learner_base: tuple[int, ...] = tuple(sorted(snapshot.meta.learners)) if (
            snapshot) else ()
        # a joiner started with voters=() and no snapshot cannot know the bootstrap
        # membership: replaying conf changes from () would give a too-small quorum
        self._membership_known = bool(self._conf_base)
        # (index, term, voters, learners) of each membership change after the base
        self._conf_log: list[tuple[int, int, tuple[int, ...], tuple[int, ...]]] = []
        self.voters: tuple[int, ...] = self._conf_base
        self.learners: tuple[int, ...] = self._learner_base
        self._sync_conf(entries)
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._randomized_timeout = self._draw_timeout()
        self._votes: dict[int, bool] = {}
        self._prs: dict[int, Progress] = {}
        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._pending_reads: deque[tuple[int, bytes, int]] = deque()  # (seq, ctx, index)
        self._reads_before_commit: list[bytes] = []
        self._read_seq = 0
        self._transferee: int | None = None
        self._pending_conf_index = 0
        self._recv_snap: tuple[SnapshotMeta, bytearray] | None = None
        self._ready_snapshot: Snapshot | None = None
        self._prev_hs = HardState(self.term, self.vote, self.log.committed)
        # (term, vote) as of the last advanced Ready: what the host has made durable
        self._durable_vote: tuple[int, int | None] = (self.term, self.vote)
        self._durable_index = self.log.stable  # log.stable as of the last advanced Ready
        self._applying = self.log.applied
        self._need_bcast = False
        self._need_commit_bcast = False
        self._need_read_beat = False

    # ------------------------------------------------------------ helpers

    def _draw_timeout(self) -> int:
        et = self.config.election_ticks
        return self._rng.randrange(et, 2 * et)

    def _send(self, msg: Message) -> None:
        self._msgs.append(msg)

    def _bcast_heartbeat(self) -> None:
        raise NotImplementedError  # provided by Replication

    def _promotable(self) -> bool:
        """May campaign: a voter whose full membership is known (see RaftConfig.voters)
        and whose durable state was not lost (see RaftConfig.lost_state)."""
        return self._membership_known and self.id in self.voters and not self.config.lost_state

    def _quorum(self) -> int:
        return len(self.voters) // 2 + 1

    # ------------------------------------------------------------ membership

    def voters_at(self, index: int) -> tuple[int, ...]:
        """The voter set in force after appending the entry at ``index`` (sorted)."""
        return self._members_at(index)[0]

    def learners_at(self, index: int) -> tuple[int, ...]:
        """The learners in force after appending the entry at ``index`` (sorted)."""
        return self._members_at(index)[1]

    def _members_at(self, index: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        members = (self._conf_base, self._learner_base)
        for conf_index, _term, conf_voters, conf_learners in self._conf_log:
            if conf_index > index:
                break
            members = (conf_voters, conf_learners)
        return members

    def _conf_index(self) -> int:
        """The index of the entry that put the current membership in force (the snapshot's
        index, or 0, when no change followed the base)."""
        return self._conf_log[-1][0] if self._conf_log else self.log.snapshot_index

    def _sync_conf(self, entries: Sequence[Entry]) -> None:
        """Membership follows the log (thesis §4.1): drop truncated changes, add new ones."""
        log, conf_log = self.log, self._conf_log
        changed = False
        while conf_log and log.term(conf_log[-1][0]) != conf_log[-1][1]:
            conf_log.pop()
            changed = True
        last_conf = conf_log[-1][0] if conf_log else log.snapshot_index
        for e in entries:
            if e.kind == EntryKind.CONF_CHANGE and e.index > last_conf:
                voters, learners = (conf_log[-1][2], conf_log[-1][3]) if conf_log else (
                    self._conf_base, self._learner_base)
                # a change that cannot apply (promoting a non-member) changes nothing,
                # the same way on every replica
                with contextlib.suppress(ConfigError):
                    voters, learners = apply_change(voters, learners,
                                                    decode_conf_change(e.data))
                conf_log.append((e.index, e.term, voters, learners))
                last_conf = e.index
                changed = True
        if changed:
            if conf_log:
                self._set_voters(conf_log[-1][2], conf_log[-1][3])
            else:
                self._set_voters(self._conf_base, self._learner_base)

    def _set_voters(self, voters: tuple[int, ...], learners: tuple[int, ...] = ()) -> None:
        self.voters = voters
        self.learners = learners
        if self.role != Role.LEADER:
            return
        members = (*voters, *learners)
        for v in members:
            if v != self.id and v not in self._prs:
                self._prs[v] = Progress(self.log.last_index + 1)
        for v in [v for v in self._prs if v not in members]:
            del self._prs[v]
        if self._transferee is not None and self._transferee not in voters:
            self._transferee = None
        self._maybe_commit()

    # ------------------------------------------------------------ commit (§5.3, §5.4.2)

    def _maybe_commit(self) -> bool:
        """Leader: advance ``committed`` to the quorum match if that entry is of this term.

        Only entries of the current term commit by counting replicas (§5.4.2, Figure 8);
        earlier ones commit indirectly. The leader counts itself only up to ``stable``.
        """
        matches = [pr.match for v, pr in self._prs.items() if v in self.voters]
        if self.id in self.voters:
            matches.append(self.log.stable)
        if not matches:
            return False
        index = quorum_index(matches)
        log = self.log
        if index <= log.committed or log.term(index) != self.term:
            return False
        log.commit_to(index)
        self._on_commit()
        return True

    def _on_commit(self) -> None:
        if self._reads_before_commit:
            pending, self._reads_before_commit = self._reads_before_commit, []
            for ctx in pending:
                self._start_read(ctx)
        if self.id not in self.voters:
            removal = self._conf_log[-1][0] if self._conf_log else 0
            if self.log.committed >= removal:
                self._become_follower(self.term, None)  # removed leader steps down (§4.2.2)

    def _start_read(self, ctx: bytes) -> None:
        """Leader: register a ReadIndex request at the current commit index (thesis §6.4)."""
        if self.voters == (self.id,):
            self._read_states.append(ReadState(ctx, self.log.committed))
            return
        self._read_seq += 1
        self._pending_reads.append((self._read_seq, ctx, self.log.committed))
        self._need_read_beat = True

    def _release_reads(self) -> None:
        """Answer pending reads whose heartbeat round a quorum has acknowledged."""
        acks = [pr.read_ack for v, pr in self._prs.items() if v in self.voters]
        if self.id in self.voters:
            acks.append(self._read_seq)
        if not acks:
            return
        confirmed = quorum_index(acks)
        reads = self._pending_reads
        while reads and reads[0][0] <= confirmed:
            _seq, ctx, index = reads.popleft()
            self._read_states.append(ReadState(ctx, index))

    # ------------------------------------------------------------ role transitions

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = None
        self.leader = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._randomized_timeout = self._draw_timeout()
        self._votes.clear()
        self._prs = {}
        self._transferee = None
        self._pending_reads.clear()
        self._reads_before_commit.clear()
        self._need_bcast = self._need_commit_bcast = self._need_read_beat = False

    def _become_follower(self, term: int, leader: int | None) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader = leader

    def _become_pre_candidate(self) -> None:
        self._reset(self.term)
        self.role = Role.PRE_CANDIDATE

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        """Win an election: probe every follower and append a NOOP of this term (§5.4.2)."""
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader = self.id
        log = self.log
        for v in (*self.voters, *self.learners):
            if v != self.id:
                self._prs[v] = Progress(log.last_index + 1)
        noop = Entry(self.term, log.last_index + 1, EntryKind.NOOP, b"")
        log.append((noop,))
        self._pending_conf_index = noop.index  # no conf change before a commit of this term
        self._need_bcast = True
        self._maybe_commit()
