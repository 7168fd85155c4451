"""``RaftNode.peer_gone``: the host saw a peer's process go (its connection closed). A
follower of that peer campaigns a few ticks later (in rank order) instead of a whole
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
def test_followers_of_a_leader_that_is_gone_elect_a_new_one_at_once_without_a_split_vote(
) -> None:
    """They campaign in rank order (1 tick, then 2 more per rank), so two of them never
    grant each other's pre-votes and split the real vote, which then waits out a whole
    randomized timeout (a random delay of 1 or 2 ticks did that for 3 seeds in 20)."""
    ticks = [ticks_to_a_new_leader(seed, hint=True) for seed in range(20)]
    assert max(ticks) <= ELECTION // 5, ticks


@pytest.mark.unit
def test_a_lower_ranked_follower_that_is_gone_too_delays_the_next_by_two_ticks() -> None:
    """Five replicas; the leader (1) and the first-ranked follower (2) go together: 3 is
    next in rank and campaigns at tick 3, with 4 and 5 out of the lease too."""
    net = Net.of(5, election_ticks=ELECTION, heartbeat_ticks=5, seed=0)
    net.elect(1)
    net.isolated |= {1, 2}
    for node_id in (3, 4, 5):
        net.nodes[node_id].peer_gone(1)
    ticks = 0
    while net.nodes[3].role != Role.LEADER and ticks < ELECTION:
        net.tick_all(1)
        ticks += 1
    assert net.nodes[3].role == Role.LEADER and ticks == 3, ticks


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
