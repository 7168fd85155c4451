"""``RaftNode.peer_active``: bytes of a large frame moved between this node and a peer.

A large entry can take longer than an election timeout to cross a busy host, and every
message sent after it, heartbeats included, queues behind it. The transport reports such a
frame's progress; a follower then keeps its leader's lease and a leader counts that
follower active for check-quorum, as heartbeats would have. Only timers change."""

from __future__ import annotations

import pytest

from consensus.types import Role
from tests.unit.test_raft_paper import Net

pytestmark = pytest.mark.unit
ELECTION = 20


def _led_by_1() -> Net:
    net = Net.of(3, election_ticks=ELECTION, heartbeat_ticks=2, seed=1)
    net.elect(1)
    return net


def _frame_crossing(net: Net, ticks: int, *, hints: bool) -> None:
    """Every node ticks while nothing is delivered (all of it waits behind the frame)."""
    for _ in range(ticks):
        for node in net.nodes.values():
            node.tick()
        if hints:
            for follower in (2, 3):
                net.nodes[follower].peer_active(1)  # receiving the leader's frame
                net.nodes[1].peer_active(follower)  # the follower takes the leader's bytes
        net.flush()  # what the nodes send is not delivered yet


def test_without_progress_reports_a_long_frame_deposes_the_leader() -> None:
    net = _led_by_1()
    _frame_crossing(net, 3 * ELECTION, hints=False)
    assert net.nodes[1].role != Role.LEADER  # check-quorum stepped it down
    assert any(net.nodes[i].role != Role.FOLLOWER or net.nodes[i].leader != 1 for i in (2, 3))


def test_progress_reports_keep_the_leader_and_its_followers_leases() -> None:
    net = _led_by_1()
    term = net.nodes[1].term
    _frame_crossing(net, 3 * ELECTION, hints=True)
    assert net.nodes[1].role == Role.LEADER and net.nodes[1].term == term
    for i in (2, 3):
        assert net.nodes[i].role == Role.FOLLOWER and net.nodes[i].leader == 1
        assert net.nodes[i].term == term
    net.tick_all(2)  # the frame arrived: messages flow again, nothing to repair
    assert net.leader().id == 1 and net.nodes[1].term == term


def test_a_report_about_another_peer_keeps_no_lease() -> None:
    """A follower hearing of bytes from a fellow follower still times out its leader."""
    net = _led_by_1()
    for _ in range(3 * ELECTION):
        for node in net.nodes.values():
            node.tick()
        net.nodes[2].peer_active(3)
        net.nodes[3].peer_active(2)
        net.flush()
    assert net.nodes[1].role != Role.LEADER or any(
        net.nodes[i].role != Role.FOLLOWER for i in (2, 3))
    assert any(net.nodes[i].role != Role.FOLLOWER or net.nodes[i].leader != 1 for i in (2, 3))
