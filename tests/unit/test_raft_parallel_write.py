"""The leader's parallel log write (Raft thesis §10.2.1): ``Ready.send_before_persist``."""

from __future__ import annotations

from consensus.types import AppendEntries, AppendEntriesResponse, Role
from tests.unit.test_raft_paper import Net


def test_leader_may_send_before_persist_but_counts_itself_only_once_durable() -> None:
    """5 voters: the leader's append goes out before its own write; one follower's ack is not
    a quorum without the leader's durable copy, and ``advance`` (write done) commits it."""
    net = Net.of(5)
    leader = net.elect(1)
    index = leader.propose(b"cmd")
    rd = leader.ready()
    assert rd.send_before_persist and rd.role == Role.LEADER
    assert [e.index for e in rd.entries] == [index]
    appends = [m for m in rd.messages if isinstance(m, AppendEntries) and m.entries]
    assert {m.dst for m in appends} == {2, 3, 4, 5}
    # followers 2 and 3 persist and ack while the leader's own write is still in progress
    net.deliver([m for m in appends if m.dst in (2, 3)])
    acks = [m for m in net.flush() if isinstance(m, AppendEntriesResponse) and m.dst == 1]
    assert len(acks) == 2
    net.deliver(acks)
    assert leader.commit_index < index  # 2 of 5 durable: no quorum yet
    leader.advance(rd)  # the host's write finished: now 3 of 5
    assert leader.commit_index == index


def test_three_voters_commit_on_two_durable_followers_without_leader_copy() -> None:
    """With 3 voters both followers form a quorum on their own (safe: both are durable)."""
    net = Net.of(3)
    leader = net.elect(1)
    index = leader.propose(b"cmd")
    rd = leader.ready()
    net.deliver(rd.messages)
    net.deliver(net.flush())
    assert leader.commit_index == index
    assert leader.log.stable < index  # the leader's own write was not counted
    leader.advance(rd)
    assert leader.log.stable == index


def test_vote_and_term_changes_must_persist_before_sending() -> None:
    """A candidate's or a voter's Ready carries a new term/vote: persist first (flag off)."""
    net = Net.of(3)
    cand = net.nodes[1]
    for _ in range(4 * cand.config.election_ticks):
        if cand.role != Role.FOLLOWER:
            break
        cand.tick()
    seen_candidate = False
    durable = {i: (n.term, n.vote) for i, n in net.nodes.items()}
    for _ in range(10):
        for node_id, node in net.nodes.items():
            if not node.has_ready():
                continue
            rd = node.ready()
            hs = rd.hard_state
            if hs is not None and (hs.term, hs.vote) != durable[node_id]:
                assert not rd.send_before_persist, (node_id, rd.role, hs)
                durable[node_id] = (hs.term, hs.vote)
            seen_candidate |= rd.role == Role.CANDIDATE
            node.advance(rd)
            net.deliver(rd.messages)
    assert seen_candidate and cand.role == Role.LEADER
