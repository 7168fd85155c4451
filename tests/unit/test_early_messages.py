"""``RaftNode.early_messages``: what may go out while the host still persists or applies a
Ready (so heartbeats never wait behind the fsync or apply of a large entry), and what must
not (anything that claims state the host has not made durable yet)."""

from __future__ import annotations

import pytest

from consensus.core import RaftNode
from consensus.types import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    InstallSnapshotResponse,
    RequestVote,
    RequestVoteResponse,
    Role,
)
from tests.unit.test_raft_paper import Net, make_node

pytestmark = pytest.mark.unit


def _settle(node: RaftNode) -> None:
    """Persist, send and apply everything pending (a host finishing its Ready loop)."""
    while node.has_ready():
        node.advance(node.ready())


def _follower_at_term(term: int = 1) -> RaftNode:
    node = make_node(2, terms=[1, 1], term=term)
    node.step(AppendEntries(1, 2, term, 2, 1, (), 0))  # leader 1 is known
    _settle(node)
    return node


def test_leader_heartbeats_go_out_while_its_ready_is_in_flight() -> None:
    net = Net.of(3, check_quorum=True)
    leader = net.elect(1)
    leader.propose(b"x" * 1000)
    ready = leader.ready()  # the host now syncs this entry to disk
    assert ready.entries
    for _ in range(leader.config.heartbeat_ticks):
        leader.tick()
    early = leader.early_messages()
    assert {m.dst for m in early} == {2, 3}
    assert all(isinstance(m, AppendEntries) for m in early)
    assert leader.early_messages() == []  # handed out once
    leader.advance(ready)


def test_nothing_goes_out_early_while_a_new_term_or_vote_is_unsynced() -> None:
    node = make_node(1)
    for _ in range(2 * node.config.election_ticks):
        node.tick()
    assert node.role in (Role.CANDIDATE, Role.PRE_CANDIDATE)
    ready = node.ready()  # carries the campaign; for a real vote, term and vote change
    node.step(RequestVote(3, 1, node.term + 5, 0, 0))  # a higher term: unsynced new term
    assert node.early_messages() == []
    node.advance(ready)
    assert node.has_ready()  # the refusal waits for the next Ready, after the new term


def test_follower_ack_of_an_unsynced_entry_waits_for_the_next_ready() -> None:
    node = _follower_at_term()
    node.step(AppendEntries(1, 2, 1, 2, 1, (Entry(1, 3, data=b"big"),), 2))
    ready = node.ready()  # persisting entry 3
    node.step(AppendEntries(1, 2, 1, 3, 1, (Entry(1, 4, data=b"more"),), 2))  # meanwhile
    assert node.early_messages() == []  # acks entry 4, which is on no disk yet
    node.advance(ready)
    later = node.ready()
    assert any(isinstance(m, AppendEntriesResponse) and m.match_index == 4
               for m in later.messages)


def test_follower_heartbeat_answer_goes_out_while_an_entry_is_being_written() -> None:
    node = _follower_at_term()
    node.step(AppendEntries(1, 2, 1, 2, 1, (Entry(1, 3, data=b"big"),), 2))
    ready = node.ready()  # the fsync of entry 3 is in flight
    node.step(AppendEntries(1, 2, 1, 2, 1, (), 2))  # a heartbeat at the acked match
    early = node.early_messages()
    assert len(early) == 1 and isinstance(early[0], AppendEntriesResponse)
    assert early[0].success and early[0].match_index == 2  # durable before this Ready
    node.advance(ready)


def test_follower_rejection_goes_out_early() -> None:
    node = _follower_at_term()
    node.step(AppendEntries(1, 2, 1, 2, 1, (Entry(1, 3),), 2))
    ready = node.ready()
    node.step(AppendEntries(1, 2, 1, 9, 1, (), 2))  # a gap: rejected
    early = node.early_messages()
    assert len(early) == 1 and not early[0].success  # type: ignore[union-attr]
    node.advance(ready)


def test_vote_grant_never_goes_out_early_but_a_refusal_does() -> None:
    node = make_node(2, terms=[1], term=3)
    node.step(RequestVote(1, 2, 3, 1, 1))
    ready = node.ready()  # carries the vote for node 1 in term 3 to persist
    node.step(RequestVote(3, 2, 3, 1, 1))  # another candidate, same term: refused
    assert node.early_messages() == []  # the vote of `ready` is not durable yet
    node.advance(ready)
    node.step(RequestVote(3, 2, 3, 1, 1))
    ready = node.ready()
    node.step(RequestVote(3, 2, 3, 1, 1))
    early = node.early_messages()
    assert [type(m) for m in early] == [RequestVoteResponse]
    assert not early[0].granted  # type: ignore[union-attr]
    node.advance(ready)


def test_claims_of_a_follower_are_classified_by_what_they_promise() -> None:
    node = _follower_at_term()
    stable = node.log.stable
    fits = node._claims_nothing_unstable
    assert fits(AppendEntriesResponse(2, 1, 1, True, stable))
    assert not fits(AppendEntriesResponse(2, 1, 1, True, stable + 1))
    node.step(AppendEntries(1, 2, 1, 2, 1, (Entry(1, 3), Entry(1, 4)), 4))  # commit 4
    ready = node.ready()  # entries 3..4 being written; committed already says 4
    assert node.log.committed == 4 and node.log.stable == stable
    assert fits(AppendEntriesResponse(2, 1, 1, True, 4))  # committed: decides nothing
    assert not fits(AppendEntriesResponse(2, 1, 1, True, 5))
    node.advance(ready)
    assert fits(AppendEntriesResponse(2, 1, 1, False, rejected_index=stable + 5))
    assert fits(RequestVoteResponse(2, 1, 1, True, pre_vote=True))
    assert not fits(RequestVoteResponse(2, 1, 1, True))
    assert fits(InstallSnapshotResponse(2, 1, 1, 10, 4096, False))
    assert not fits(InstallSnapshotResponse(2, 1, 1, 10, 4096, True))
