"""``RaftNode``: the IO-free Raft core (etcd-raft style), public API for the host.

The host owns all IO. It calls ``tick`` at a fixed period, passes inbound messages to
``step``, and loops ``if has_ready(): rd = ready(); persist; send; apply; advance(rd)``.
Nothing here blocks, sleeps, reads a clock or draws randomness except from the injected
``random.Random``; identical inputs give identical outputs on every machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from consensus.codec import encode_conf_change
from consensus.election import Election
from consensus.errors import ConfigError, NotLeaderError, ProposalDroppedError
from consensus.membership import apply_change, in_force
from consensus.replication import Replication
from consensus.types import (
    AppendEntries,
    AppendEntriesResponse,
    ConfChange,
    Entry,
    EntryKind,
    HardState,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    Payload,
    Ready,
    RequestVote,
    RequestVoteResponse,
    Role,
    Snapshot,
    TimeoutNow,
)

__all__ = ["RaftNode"]


class RaftNode(Election, Replication):
    """One replica of a Raft group. Not thread-safe: one host thread drives it.

    Construct with the durable state read back from disk (``hard_state``, ``snapshot``,
    ``entries`` following ``snapshot.meta.index``) to restart; the state machine must be
    restored from ``snapshot`` by the host, and committed entries after it are handed out
    again in ``ready().committed_entries``.
    """

    # ------------------------------------------------------------ inputs

    def tick(self) -> None:
        """Advance logical time by one tick (elections, heartbeats, check-quorum)."""
        if self.role == Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()

    def step(self, msg: Message) -> None:
        """Process one inbound message. Messages for another node are ignored; terms are
        reconciled first (Figure 2 "Rules for Servers"), then the message is dispatched."""
        if msg.dst != self.id or not self._reconcile_term(msg):
            return
        if isinstance(msg, AppendEntries):
            if self.role != Role.FOLLOWER:
                self._become_follower(self.term, msg.src)
            self._handle_append(msg)
        elif isinstance(msg, AppendEntriesResponse):
            if self.role == Role.LEADER:
                self._handle_append_response(msg)
        elif isinstance(msg, RequestVote):
            self._handle_vote_request(msg)
        elif isinstance(msg, RequestVoteResponse):
            self._handle_vote_response(msg)
        elif isinstance(msg, InstallSnapshot):
            if self.role != Role.FOLLOWER:
                self._become_follower(self.term, msg.src)
            self._handle_snapshot(msg)
        elif isinstance(msg, InstallSnapshotResponse):
            if self.role == Role.LEADER:
                self._handle_snapshot_response(msg)
        elif isinstance(msg, TimeoutNow) and self.role == Role.FOLLOWER:
            self._handle_timeout_now(msg)

    def _reconcile_term(self, m: Message) -> bool:
        """Apply the term rules; False if the message must not be processed further."""
        if m.term > self.term:
            if isinstance(m, RequestVote):
                if not m.transfer and self._in_lease():
                    return False  # leader stickiness (thesis §4.2.3)
                if not m.pre_vote:
                    self._become_follower(m.term, None)
            elif isinstance(m, RequestVoteResponse) and m.pre_vote and m.granted:
                pass  # a granted pre-vote carries the term we would campaign at
            elif isinstance(m, AppendEntries | InstallSnapshot | TimeoutNow):
                self._become_follower(m.term, m.src)
            else:
                self._become_follower(m.term, None)
            return True
        if m.term < self.term:
            if isinstance(m, AppendEntries | InstallSnapshot):
                # tell a stale leader about the newer term so that it steps down
                self._send(AppendEntriesResponse(self.id, m.src, self.term, False))
            elif isinstance(m, RequestVote) and m.pre_vote:
                self._send(RequestVoteResponse(self.id, m.src, self.term, False, True))
            return False
        return True

    def propose(self, data: Payload, kind: EntryKind = EntryKind.NORMAL) -> int:
        """Append an application entry (``NORMAL`` or ``COMMAND``) to the leader's log;
        returns its index (not yet committed).

        Raises NotLeaderError (with a leader hint) on a non-leader and
        ProposalDroppedError while a leadership transfer is in progress.
        """
        if kind not in (EntryKind.NORMAL, EntryKind.COMMAND):
            raise ConfigError(f"propose takes NORMAL or COMMAND entries, not {kind.name}")
        self._check_can_propose()
        return self._append_local(kind, data)

    def propose_conf_change(self, cc: ConfChange) -> int:
        """Propose adding, removing or promoting one member (thesis §4.1); it takes effect
        on append. A learner (``ADD_LEARNER``) receives the log but counts toward no quorum
        until ``PROMOTE``; ``ADD`` makes a node a voter at once.

        Only one change may be uncommitted (unapplied) at a time, and none before the
        leader applied an entry of its own term: otherwise ProposalDroppedError. A change
        that changes nothing (see ``change_in_force``) raises ConfigError.
        """
        self._check_can_propose()
        if self._pending_conf_index > self.log.applied:
            raise ProposalDroppedError(
                f"a membership change (index {self._pending_conf_index}) is still pending; "
                "retry after it is applied")
        voters, learners = apply_change(self.voters, self.learners, cc)
        if not voters or (voters, learners) == (self.voters, self.learners):
            raise ConfigError(f"{cc} would leave voters {voters} and learners {learners}: "
                              "propose a real change")
        index = self._append_local(EntryKind.CONF_CHANGE, encode_conf_change(cc))
        self._pending_conf_index = index
        self._sync_conf(self.log.entries(index, index))
        return index

    def change_in_force(self, cc: ConfChange) -> int | None:
        """If ``cc`` is already done in the current membership (adding a voter, removing a
        non-member, promoting a voter...), the index of the entry that made it so (the
        snapshot's index, or 0, for the initial membership); None if it is not done."""
        if in_force(self.voters, self.learners, cc):
            return self._conf_index()
        return None

    def member_matches(self) -> dict[int, int]:
        """Leader: the highest index known durable on each other member (voter or learner);
        empty on a follower."""
        if self.role != Role.LEADER:
            return {}
        return {v: pr.match for v, pr in self._prs.items()}

    def _check_can_propose(self) -> None:
        if self.role != Role.LEADER:
            raise NotLeaderError(f"node {self.id} is not the leader (term {self.term})",
                                 self.leader)
        if self._transferee is not None:
            raise ProposalDroppedError(
                f"leadership is being transferred to {self._transferee}; retry there")

    def _append_local(self, kind: EntryKind, data: Payload) -> int:
        log = self.log
        index = log.last_index + 1
        log.append((Entry(self.term, index, kind, data),))
        self._need_bcast = True
        return index

    def read_index(self, ctx: bytes) -> None:
        """Start a linearizable read (thesis §6.4); the answer (``ReadState(ctx, index)``)
        appears in a later ``Ready.read_states`` once a quorum confirmed leadership. Reads
        wait until the leader committed an entry of its term. NotLeaderError otherwise."""
        if self.role != Role.LEADER:
            raise NotLeaderError(f"node {self.id} is not the leader", self.leader)
        if self.log.term(self.log.committed) != self.term:
            self._reads_before_commit.append(ctx)
        else:
            self._start_read(ctx)

    def transfer_leadership(self, to: int) -> None:
        """Hand leadership to ``to`` (thesis §3.10): stop proposals, catch it up, TimeoutNow.

        Aborted if not finished within an election timeout."""
        if self.role != Role.LEADER:
            raise NotLeaderError(f"node {self.id} is not the leader", self.leader)
        if to == self.id:
            return
        pr = self._prs.get(to) if to in self.voters else None
        if pr is None:
            raise ConfigError(f"cannot transfer leadership to {to}: not a voter {self.voters}")
        self._transferee = to
        self.election_elapsed = 0
        if pr.match == self.log.last_index:
            self._send(TimeoutNow(self.id, to, self.term))
        else:
            self._send_append(to, pr, allow_empty=True)

    # ------------------------------------------------------------ the Ready loop

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def has_ready(self) -> bool:
        """True if ``ready()`` would return something to do."""
        log = self.log
        return bool(
            self._msgs or self._read_states or self._ready_snapshot is not None
            or self._need_bcast or self._need_commit_bcast or self._need_read_beat
            or log.last_index > log.offered or log.committed > self._applying
            or self._hard_state_changed()
        )

    def _hard_state_changed(self) -> bool:
        prev = self._prev_hs
        return (self.term != prev.term or self.vote != prev.vote
                or self.log.committed != prev.commit)

    def ready(self) -> Ready:
        """Collect work for the host (see ``Ready``). Each item is handed out once; call
        ``advance(rd)`` after doing it, before the next ``ready()``."""
        if self.role == Role.LEADER:
            self._flush_leader()
        else:
            self._need_bcast = self._need_commit_bcast = self._need_read_beat = False
        log = self.log
        rd = Ready(role=self.role, leader=self.leader, term=self.term)
        prev = self._prev_hs
        if self._hard_state_changed():
            rd.hard_state = self._prev_hs = self._hard_state()
        if log.last_index > log.offered:
            rd.entries = log.take_unoffered()
        if self._ready_snapshot is not None:
            rd.snapshot, self._ready_snapshot = self._ready_snapshot, None
        if log.committed > self._applying:
            batch = log.slice(self._applying + 1, self.config.max_apply_bytes)
            if batch[-1].index > log.committed:
                batch = batch[:log.committed - self._applying]
            rd.committed_entries = batch
            self._applying = batch[-1].index
        if self._msgs:
            rd.messages, self._msgs = self._msgs, []
        if self._read_states:
            rd.read_states, self._read_states = self._read_states, []
        rd.send_before_persist = (self.role == Role.LEADER and rd.snapshot is None
                                  and self.term == prev.term and self.vote == prev.vote)
        return rd

    def early_messages(self) -> list[Message]:
        """Messages the host may send NOW, while the Ready it took last is still being
        persisted or applied (before ``advance``): the ones that claim nothing that Ready,
        or any later one, still has to make durable. Heartbeats and their answers then
        never wait behind the fsync or the apply of a large entry.

        Nothing is sent early while the node's term or vote differs from what the last
        advanced Ready made durable (a new term or a vote must be on disk before anyone
        hears of it). Then a leader's messages all qualify (thesis §10.2.1: a leader may
        send entries before its own write is durable; it counts itself toward a quorum only
        up to ``stable``). A follower's qualify when they are a rejection, a success whose
        ``match_index`` is at most its ``stable`` index (already durable) or its commit index
        (durable on a majority, so it decides no commit), a vote or
        pre-vote refusal, a granted pre-vote (pre-votes are never persisted) or a snapshot
        chunk's acknowledgement (chunks are held in memory until the last one). The others
        stay queued, in order, for the next ``ready()``. Returns them in send order."""
        if (self.term, self.vote) != self._durable_vote:
            return []
        if self.role == Role.LEADER:
            self._flush_leader()
            sent, self._msgs = self._msgs, []
            return sent
        early: list[Message] = []
        keep: list[Message] = []
        for msg in self._msgs:
            (early if self._claims_nothing_unstable(msg) else keep).append(msg)
        self._msgs = keep
        return early

    def _claims_nothing_unstable(self, msg: Message) -> bool:
        """Whether a follower's (or candidate's) ``msg`` may go out before ``advance``."""
        if isinstance(msg, AppendEntriesResponse):
            # stable may already count a snapshot still being persisted: take the lower.
            # An index at or below our commit index is committed, so durable on a majority
            # already: acking it decides no commit (a leader commits its own term's entries,
            # above every follower's commit index); an optimistic match is repaired later.
            durable = min(self._durable_index, self.log.stable)
            return not msg.success or msg.match_index <= max(durable, self.log.committed)
        if isinstance(msg, RequestVoteResponse):
            return msg.pre_vote or not msg.granted
        if isinstance(msg, InstallSnapshotResponse):
            return not msg.done
        return False

    def advance(self, ready: Ready) -> None:
        """The host persisted, sent and applied ``ready``: mark entries stable and applied."""
        log = self.log
        if ready.hard_state is not None:
            self._durable_vote = (ready.hard_state.term, ready.hard_state.vote)
        if ready.entries:
            last = ready.entries[-1]
            log.stable_to(last.index, last.term)
        self._durable_index = log.stable
        if ready.committed_entries:
            log.applied = max(log.applied, ready.committed_entries[-1].index)
        elif ready.snapshot is not None:
            log.applied = max(log.applied, ready.snapshot.meta.index)
        if self.role == Role.LEADER and self._maybe_commit():
            self._need_commit_bcast = True

    def release_payloads(self, payloads: Mapping[int, tuple[int, Payload]]) -> int:
        """Hold ``{index: (term, data)}`` in place of the log's own copies of those
        persisted entries' bytes: the host passes read-only views of where it stored them,
        so a large entry's memory is freed once it is on disk, however far the apply lags,
        while the apply and a lagging follower can still read it. Entries not persisted
        yet (``advance``), or whose term or length differs, keep their data. Returns how
        many were replaced."""
        return self.log.swap_payloads(payloads)

    def compact(self, snapshot: Snapshot) -> list[Any]:
        """Discard the log prefix up to ``snapshot.meta.index`` (which the host applied and
        captured in ``snapshot``); lagging followers then get this snapshot instead.
        ``meta.term``, ``meta.voters`` and ``meta.learners`` must equal ``term_at``/
        ``voters_at``/``learners_at`` of that index; a node that does not know its membership
        (started with ``voters=()``, no snapshot received) raises ConfigError.

        Returns what the node let go of (the previous snapshot and the discarded entries):
        the last references to payloads and images of hundreds of MB, whose deallocation
        (an unmap, a free) a host may want to happen off its loop."""
        meta = snapshot.meta
        log = self.log
        if meta.index <= log.snapshot_index:
            return []
        if meta.index > log.applied:
            raise ConfigError(f"snapshot index {meta.index} is beyond applied {log.applied}")
        if log.term(meta.index) != meta.term:
            raise ConfigError(f"snapshot term {meta.term} != log term {log.term(meta.index)} "
                              f"at index {meta.index}")
        if not self._membership_known:
            # started with voters=() and no snapshot since: the membership replayed from the
            # log lacks its base, and a snapshot of it would later be trusted as known
            raise ConfigError(f"node {self.id} does not know its group's membership (started "
                              "with voters=() and no snapshot received): it cannot compact; "
                              "start a joiner with the group's bootstrap voters")
        voters = self.voters_at(meta.index)
        if tuple(sorted(meta.voters)) != voters:
            raise ConfigError(f"snapshot voters {meta.voters} != voters_at({meta.index}) "
                              f"= {voters}; build the meta with RaftNode.voters_at")
        learners = self.learners_at(meta.index)
        if tuple(sorted(meta.learners)) != learners:
            raise ConfigError(f"snapshot learners {meta.learners} != learners_at({meta.index})"
                              f" = {learners}; build the meta with RaftNode.learners_at")
        released: list[Any] = [self._snapshot, log.compact(meta.index)]
        self._snapshot = snapshot
        self._conf_base = voters
        self._learner_base = learners
        self._conf_log = [c for c in self._conf_log if c[0] > meta.index]
        return released

    # ------------------------------------------------------------ queries

    @property
    def commit_index(self) -> int:
        return self.log.committed

    @property
    def last_index(self) -> int:
        return self.log.last_index

    def term_at(self, index: int) -> int | None:
        """The term of the entry at ``index`` (None if compacted away or absent)."""
        return self.log.term(index)

    def status(self) -> dict[str, object]:
        """A plain snapshot of this replica's state for logs and health checks."""
        return {
            "id": self.id, "role": self.role.name, "term": self.term, "leader": self.leader,
            "commit": self.log.committed, "applied": self.log.applied,
            "last_index": self.log.last_index, "snapshot_index": self.log.snapshot_index,
            "voters": self.voters, "learners": self.learners, "transferee": self._transferee,
            "progress": {k: repr(v) for k, v in self._prs.items()},
        }
