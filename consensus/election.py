"""Leader election (§5.2), pre-vote (thesis §9.6), check-quorum and stickiness (§6.2),
and the election side of leadership transfer (§3.10)."""

from __future__ import annotations

from consensus.node_state import NodeState
from consensus.types import (
    RequestVote,
    RequestVoteResponse,
    Role,
    TimeoutNow,
)

_WON, _LOST, _PENDING = 1, -1, 0


class Election(NodeState):
    """Timers and voting. Mutates term/vote/role; every change is reported in the next Ready."""

    def _tick_election(self) -> None:
        """Follower/candidate tick: campaign once the randomized timeout elapsed."""
        self.election_elapsed += 1
        if self.election_elapsed >= self._randomized_timeout and self._promotable():
            self.election_elapsed = 0
            self._campaign(pre=self.config.pre_vote, transfer=False)

    def _tick_leader(self) -> None:
        """Leader tick: check-quorum every election timeout, heartbeats every heartbeat."""
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.config.election_ticks:
            self.election_elapsed = 0
            if self.config.check_quorum and not self._quorum_active():
                self._become_follower(self.term, None)
                return
            self._transferee = None  # a transfer that did not finish in time is aborted
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._bcast_heartbeat()

    def _quorum_active(self) -> bool:
        """True if a quorum was heard from since the last check; resets the marks."""
        active = 1 if self.id in self.voters else 0
        for v, pr in self._prs.items():
            if pr.recent_active and v in self.voters:
                active += 1
            pr.recent_active = False
        return active >= self._quorum()

    def peer_gone(self, node_id: int) -> None:
        """The host saw ``node_id``'s process go (the connection it sent on closed). A
        follower whose leader that was stops waiting a whole election timeout: it leaves
        the leader's lease, so it grants pre-votes, and campaigns after a short delay set
        by its rank among the other voters (by node id): 1 tick for the first, 2 more for
        each next one. Followers that all got the hint thus campaign one after the other,
        never together: two that campaign within one round trip grant each other's
        pre-votes, split the real vote and wait out a whole randomized timeout (a random
        delay of 1 or 2 ticks did that half the time). The first campaign's pre-vote and
        vote take two round trips, well within the 2 ticks before the next; a vote granted
        restarts the granter's timer. Only timing changes: a wrong hint about a live leader
        costs at most a pre-vote round, which the leader itself and every follower still
        in its lease reject, and the next heartbeat restores the leader."""
        if self.role != Role.FOLLOWER or self.leader != node_id:
            return
        self.leader = None
        others = sorted(v for v in self.voters if v != node_id)
        rank = others.index(self.id) if self.id in others else len(others)
        soon = 1 + 2 * rank
        self.election_elapsed = max(self.election_elapsed, self._randomized_timeout - soon)

    def peer_active(self, node_id: int) -> None:
        """The host saw bytes of a frame move between this node and ``node_id`` just now (a
        large entry being received from it, or taken by it while sent): that node is alive
        and connected, though the frame's messages are not complete yet. A follower whose
        leader that is keeps its lease as a heartbeat would (its election timer restarts);
        a leader counts that follower active for check-quorum. Only timing changes, like
        ``peer_gone``: a large entry that takes longer than an election timeout to cross
        would otherwise depose a healthy leader, since the heartbeats queue behind it."""
        if self.role == Role.FOLLOWER and self.leader == node_id:
            self.election_elapsed = 0
        elif self.role == Role.LEADER and node_id in self._prs:  # peers only, never self
            self._prs[node_id].recent_active = True

    def _in_lease(self) -> bool:
        """Leader stickiness: we heard from a live leader within the minimum timeout.

        Tied to check_quorum (as in etcd): only then does a leader that lost its quorum
        step down, so sticky followers cannot keep a dead-ended leader alive forever."""
        return (self.config.check_quorum and self.leader is not None
                and self.election_elapsed < self.config.election_ticks)

    def _campaign(self, *, pre: bool, transfer: bool) -> None:
        """Start a (pre-)election: pre-vote asks for ``term+1`` without incrementing ``term``."""
        if pre:
            self._become_pre_candidate()
            term = self.term + 1
        else:
            self._become_candidate()
            term = self.term
        self._votes[self.id] = True
        if self._poll() == _WON:
            self._win(pre)
            return
        log = self.log
        last_index, last_term = log.last_index, log.last_term
        for v in self.voters:
            if v != self.id:
                self._send(RequestVote(self.id, v, term, last_index, last_term,
                                       pre_vote=pre, transfer=transfer))

    def _win(self, pre: bool) -> None:
        if pre:
            self._campaign(pre=False, transfer=False)
        else:
            self._become_leader()

    def _poll(self) -> int:
        granted = sum(1 for v in self.voters if self._votes.get(v) is True)
        rejected = sum(1 for v in self.voters if self._votes.get(v) is False)
        quorum = self._quorum()
        if granted >= quorum:
            return _WON
        if rejected >= quorum:
            return _LOST
        return _PENDING

    def _handle_vote_request(self, m: RequestVote) -> None:
        """§5.2 one vote per term and §5.4.1 up-to-date check; pre-votes record nothing.
        A replica that lost its durable state never votes (RaftConfig.lost_state)."""
        can_vote = not self.config.lost_state and (
            self.vote == m.src
            or (self.vote is None and self.leader is None)
            or (m.pre_vote and m.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(m.last_log_index, m.last_log_term):
            self._send(RequestVoteResponse(self.id, m.src, m.term, True, m.pre_vote))
            if not m.pre_vote:
                self.vote = m.src
                self.election_elapsed = 0
        else:
            self._send(RequestVoteResponse(self.id, m.src, self.term, False, m.pre_vote))

    def _handle_vote_response(self, m: RequestVoteResponse) -> None:
        if self.role == Role.PRE_CANDIDATE:
            if not m.pre_vote or (m.granted and m.term != self.term + 1):
                return
        elif self.role == Role.CANDIDATE:
            if m.pre_vote or m.term != self.term:
                return
        else:
            return
        if m.src not in self.voters:
            return
        self._votes.setdefault(m.src, m.granted)
        result = self._poll()
        if result == _WON:
            self._win(self.role == Role.PRE_CANDIDATE)
        elif result == _LOST:
            self._become_follower(self.term, None)

    def _handle_timeout_now(self, m: TimeoutNow) -> None:
        """Transfer target: campaign at once, skipping pre-vote and stickiness (§3.10)."""
        if self._promotable():
            self._campaign(pre=False, transfer=True)
