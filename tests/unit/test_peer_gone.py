"""``RaftNode.peer_gone``: the host saw a peer's process go (its connection closed). A
follower of that peer campaigns within ``election_ticks // 5`` ticks instead of a whole
election timeout; any other hint changes nothing, and a wrong one cannot depose a live
leader."""

from __future__ import annotations

import pytest

from consensus.types import Role
from tests.unit.test_raft_paper import Net

ELECTION = 50  # ticks: a long timeout, so that a campaign within 10 ticks is the hint's


def net_led_by_1(seed: int = 0) -> Net:
    net = Net.of(3, election_ticks=ELECTION, heartbeat_ticks=5, seed=seed)
    net.elect(1)
    return net


def ticks_to_a_new_leader(seed: int, *, hint: bool) -> int:
    net = net_led_by_1(seed)
    net.isolated.add(1)  # killed: it sends nothing more
    if hint:
        for node_id in (2, 3):
            net.nodes[node_id].peer_gone(1)
    for tick in range(1, 4 * ELECTION):
        net.tick_all(1)
        if any(net.nodes[i].role == Role.LEADER for i in (2, 3)):
            assert net.leader().id in (2, 3)
            return tick
    raise AssertionError("no new leader")


@pytest.mark.unit
def test_followers_of_a_leader_that_is_gone_elect_a_new_one_within_a_fifth_of_the_timeout(
) -> None:
    """Two followers that draw the same delay split the vote (about one time in ten) and
    then wait out a normal randomized timeout, as without the hint."""
    ticks = [ticks_to_a_new_leader(seed, hint=True) for seed in range(20)]
    assert sum(t <= ELECTION // 5 + 1 for t in ticks) >= 15, ticks
    assert max(ticks) < 3 * ELECTION, ticks


@pytest.mark.unit
def test_without_the_hint_they_wait_a_whole_election_timeout() -> None:
    assert min(ticks_to_a_new_leader(seed, hint=False) for seed in range(8)) >= ELECTION


@pytest.mark.unit
def test_a_hint_about_a_follower_or_on_the_leader_changes_nothing() -> None:
    net = net_led_by_1()
    net.nodes[2].peer_gone(3)  # not its leader
    net.nodes[1].peer_gone(2)  # a leader has no leader to lose
    before = [(n.role, n.term, n.leader) for n in net.nodes.values()]
    net.tick_all(ELECTION // 2)
    assert [(n.role, n.term, n.leader) for n in net.nodes.values()] == before


@pytest.mark.unit
@pytest.mark.parametrize("seed", range(4))
def test_a_wrong_hint_about_a_live_leader_does_not_depose_it(seed: int) -> None:
    net = net_led_by_1(seed)
    term = net.nodes[1].term
    net.nodes[2].peer_gone(1)  # its connection dropped, yet the leader lives
    net.tick_all(3 * ELECTION)
    assert net.leader().id == 1 and net.nodes[1].term == term
    assert net.nodes[2].leader == 1
