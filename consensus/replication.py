"""Log replication (§5.3), fast backtracking, pipelining and flow control, heartbeats,
and chunked InstallSnapshot (§7) — both the leader and the follower side."""

from __future__ import annotations

from consensus.node_state import NodeState
from consensus.progress import Progress, ProgressState
from consensus.types import (
    AppendEntries,
    AppendEntriesResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    Snapshot,
    TimeoutNow,
)

STALL_BEATS = 3
"""Heartbeats without progress after which a pipelined follower is re-probed (lost appends)."""


class Replication(NodeState):
    """Leader: send entries/snapshots and digest answers. Follower: accept them."""

    # ------------------------------------------------------------ leader: sending

    def _send_append(self, to: int, pr: Progress, *, allow_empty: bool) -> bool:
        """Send the next batch to ``to`` unless paused by flow control; True if sent."""
        cfg = self.config
        if pr.is_paused(cfg.max_inflight_msgs, cfg.max_inflight_bytes):
            return False
        log = self.log
        prev = pr.next - 1
        prev_term = log.term(prev)
        if prev_term is None:
            return self._start_snapshot(to, pr)
        budget = min(cfg.max_msg_bytes, cfg.max_inflight_bytes - pr.inflight_bytes)
        entries = log.slice(pr.next, budget)
        nbytes = log.size_between(entries[0].index, entries[-1].index) if entries else 0
        if nbytes > budget and pr.inflight:
            return False  # the next entry alone would overflow the window: wait for acks
        if not entries and not allow_empty:
            return False
        self._send(AppendEntries(self.id, to, self.term, prev, prev_term, tuple(entries),
                                 log.committed, self._read_seq))
        if entries:
            pr.sent_entries(entries[-1].index, nbytes)
        elif pr.state == ProgressState.PROBE:
            pr.probe_sent = True
        return True

    def _send_all(self, to: int, pr: Progress) -> None:
        """Pipeline batches to ``to`` until caught up or flow control pauses it."""
        while pr.next <= self.log.last_index and self._send_append(to, pr, allow_empty=False):
            if pr.state != ProgressState.REPLICATE:
                break

    def _flush_leader(self) -> None:
        """Send what proposals, commits and reads since the last Ready made necessary."""
        commit, read = self._need_commit_bcast, self._need_read_beat
        if self._need_bcast or commit:
            for to, pr in self._prs.items():
                if commit and pr.next > self.log.last_index:
                    self._send_append(to, pr, allow_empty=True)
                else:
                    self._send_all(to, pr)
        if read:
            for to, pr in self._prs.items():
                self._send_heartbeat(to, pr)
        self._need_bcast = self._need_commit_bcast = self._need_read_beat = False

    def _send_heartbeat(self, to: int, pr: Progress) -> None:
        prev = pr.match
        prev_term = self.log.term(prev)
        if prev_term is None:
            prev, prev_term = 0, 0
        self._send(AppendEntries(self.id, to, self.term, prev, prev_term, (),
                                 self.log.committed, self._read_seq))

    def _bcast_heartbeat(self) -> None:
        """Heartbeat tick: keep followers' timers reset and retry stalled transfers."""
        for to, pr in self._prs.items():
            if pr.state == ProgressState.SNAPSHOT:
                self._send_snapshot_chunk(to, pr)
                continue
            if pr.state == ProgressState.PROBE:
                pr.probe_sent = False
                self._send_append(to, pr, allow_empty=True)
                continue
            if pr.inflight:
                pr.stalled_beats += 1
                allowance = STALL_BEATS + pr.inflight_bytes // self.config.stall_beat_bytes
                if pr.stalled_beats >= allowance:
                    pr.become_probe()
                    self._send_append(to, pr, allow_empty=True)
                    continue
            self._send_heartbeat(to, pr)
        self._need_read_beat = False

    def _start_snapshot(self, to: int, pr: Progress) -> bool:
        snap = self._snapshot
        if snap is None:
            return False
        pr.become_snapshot(snap.meta.index)
        self._send_snapshot_chunk(to, pr)
        return True

    def _send_snapshot_chunk(self, to: int, pr: Progress) -> None:
        snap = self._snapshot
        if snap is None:
            return
        if snap.meta.index != pr.snapshot_index:
            pr.become_snapshot(snap.meta.index)  # a newer snapshot replaces the transfer
        off = pr.snapshot_offset
        chunk = bytes(snap.data[off:off + self.config.snapshot_chunk_bytes])  # may be a view
        done = off + len(chunk) >= len(snap.data)
        self._send(InstallSnapshot(self.id, to, self.term, snap.meta, off, chunk, done))

    # ------------------------------------------------------------ leader: answers

    def _handle_append_response(self, m: AppendEntriesResponse) -> None:
        pr = self._prs.get(m.src)
        if pr is None:
            return
        pr.recent_active = True
        if m.ctx > pr.read_ack:
            pr.read_ack = m.ctx
            if self._pending_reads:
                self._release_reads()
        if not m.success:
            hint = m.hint_index
            if m.hint_term > 0:
                hint = self.log.find_conflict_by_term(m.hint_index, m.hint_term)
            if pr.maybe_decr_to(m.rejected_index, hint):
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.src, pr, allow_empty=True)
            return
        if not pr.maybe_update(m.match_index):
            return
        pr.stalled_beats = 0
        if pr.state == ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state == ProgressState.SNAPSHOT and pr.match >= pr.snapshot_index:
            pr.become_probe()
        if self._maybe_commit():
            self._need_commit_bcast = True
        if self._transferee == m.src and pr.match == self.log.last_index:
            self._send(TimeoutNow(self.id, m.src, self.term))
        self._send_all(m.src, pr)

    def _handle_snapshot_response(self, m: InstallSnapshotResponse) -> None:
        pr = self._prs.get(m.src)
        if pr is None:
            return
        pr.recent_active = True
        if m.done:
            if pr.maybe_update(m.meta_index):
                pr.stalled_beats = 0
            if pr.state == ProgressState.SNAPSHOT:
                pr.become_probe()
                self._send_append(m.src, pr, allow_empty=True)
            if self._maybe_commit():
                self._need_commit_bcast = True
            return
        if (pr.state == ProgressState.SNAPSHOT and m.meta_index == pr.snapshot_index
                and m.next_offset != pr.snapshot_offset):
            pr.snapshot_offset = m.next_offset
            self._send_snapshot_chunk(m.src, pr)

    # ------------------------------------------------------------ follower

    def _handle_append(self, m: AppendEntries) -> None:
        """§5.3 AppendEntries receiver. A rejection names the rejected ``prev_log_index``
        (``rejected_index``) and sets ``hint_index``/``hint_term`` to our last entry at or
        below it whose term is <= ``prev_log_term`` (the leader skips whole conflicting
        terms)."""
        self.election_elapsed = 0
        self.leader = m.src
        log = self.log
        if m.prev_log_index < log.committed:
            self._send(AppendEntriesResponse(self.id, m.src, self.term, True, log.committed,
                                             ctx=m.ctx))
            return
        last_new = log.maybe_append(m.prev_log_index, m.prev_log_term, m.entries)
        if last_new is None:
            hint = log.find_conflict_by_term(min(m.prev_log_index, log.last_index),
                                             m.prev_log_term)
            self._send(AppendEntriesResponse(self.id, m.src, self.term, False,
                                             hint_index=hint, hint_term=log.term(hint) or 0,
                                             ctx=m.ctx, rejected_index=m.prev_log_index))
            return
        if m.entries:
            self._sync_conf(m.entries)
        log.commit_to(min(m.leader_commit, last_new))
        self._send(AppendEntriesResponse(self.id, m.src, self.term, True, last_new, ctx=m.ctx))

    def _handle_snapshot(self, m: InstallSnapshot) -> None:
        """Reassemble chunks in order; a gap or another snapshot restarts the transfer."""
        self.election_elapsed = 0
        self.leader = m.src
        meta = m.meta
        if meta.index <= self.log.committed:
            self._send(InstallSnapshotResponse(self.id, m.src, self.term, meta.index,
                                               m.offset + len(m.data), True))
            return
        buf = self._recv_snap
        if m.offset == 0:
            buf = (meta, bytearray())
        if buf is None or buf[0] != meta or len(buf[1]) != m.offset:
            same = buf is not None and buf[0] == meta
            expected = len(buf[1]) if buf is not None and same else 0
            if not same:
                self._recv_snap = None
            self._send(InstallSnapshotResponse(self.id, m.src, self.term, meta.index,
                                               expected, False))
            return
        buf[1].extend(m.data)
        self._recv_snap = buf
        size = len(buf[1])
        if m.done:
            self._recv_snap = None
            self._restore(Snapshot(meta, bytes(buf[1])))
        self._send(InstallSnapshotResponse(self.id, m.src, self.term, meta.index, size,
                                           m.done))

    def _restore(self, snap: Snapshot) -> None:
        """Install a received snapshot: the log restarts after it, membership from its meta."""
        meta = snap.meta
        log = self.log
        if log.match_term(meta.index, meta.term):
            log.commit_to(meta.index)  # we already hold that prefix: just commit it
            return
        log.restore(meta.index, meta.term)
        self._snapshot = snap
        self._ready_snapshot = snap
        self._applying = meta.index
        self._conf_base = tuple(sorted(meta.voters))
        self._learner_base = tuple(sorted(meta.learners))
        self._membership_known = True
        self._conf_log = []
        self._set_voters(self._conf_base, self._learner_base)
