"""Learners (non-voting members that catch up first) and membership changes that are
already done: the core side of replacing a replica safely."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from consensus.config import RaftConfig
from consensus.core import RaftNode
from consensus.errors import ConfigError
from consensus.membership import apply_change, in_force
from consensus.storage import SqliteStorage
from consensus.types import ConfChange, ConfChangeKind, HardState, Role, Snapshot, SnapshotMeta
from tests.unit.test_raft_paper import Net

ADD, REMOVE = ConfChangeKind.ADD, ConfChangeKind.REMOVE
LEARNER, PROMOTE = ConfChangeKind.ADD_LEARNER, ConfChangeKind.PROMOTE


def _joiner(node_id: int) -> RaftNode:
    return RaftNode(RaftConfig(id=node_id, voters=()), random.Random(node_id))


def _compacted(net: Net, leader: RaftNode, entries: int = 12) -> int:
    for i in range(entries):
        leader.propose(f"v{i}".encode())
    net.pump()
    index = leader.commit_index
    meta = SnapshotMeta(index, leader.term, leader.voters_at(index), leader.learners_at(index))
    leader.compact(Snapshot(meta, b"state"))
    return index


@pytest.mark.parametrize(("voters", "learners", "cc", "after", "done"), [
    ((1, 2), (), ConfChange(ADD, 3), ((1, 2, 3), ()), False),
    ((1, 2), (), ConfChange(ADD, 2), ((1, 2), ()), True),
    ((1, 2), (), ConfChange(REMOVE, 3), ((1, 2), ()), True),
    ((1, 2), (3,), ConfChange(REMOVE, 3), ((1, 2), ()), False),
    ((1, 2), (), ConfChange(LEARNER, 3), ((1, 2), (3,)), False),
    ((1, 2), (), ConfChange(LEARNER, 2), ((1, 2), ()), True),  # a voter is never demoted
    ((1, 2), (3,), ConfChange(PROMOTE, 3), ((1, 2, 3), ()), False),
    ((1, 2, 3), (), ConfChange(PROMOTE, 3), ((1, 2, 3), ()), True),
    ((1, 2), (3,), ConfChange(ADD, 3), ((1, 2, 3), ()), False),
])
def test_membership_arithmetic(voters: tuple[int, ...], learners: tuple[int, ...],
                               cc: ConfChange, after: tuple[tuple[int, ...], tuple[int, ...]],
                               done: bool) -> None:
    assert apply_change(voters, learners, cc) == after
    assert in_force(voters, learners, cc) is done


def test_promoting_a_stranger_says_to_add_it_as_a_learner_first() -> None:
    with pytest.raises(ConfigError, match="add it as a learner first"):
        apply_change((1, 2), (), ConfChange(PROMOTE, 9))
    assert not in_force((1, 2), (), ConfChange(PROMOTE, 9))


def test_a_learner_catches_up_by_snapshot_without_changing_the_quorum() -> None:
    """Thesis §4.2.1: the new server receives the state as a non-voter; until promoted it
    counts toward no quorum (the leader alone with it cannot commit) and never campaigns."""
    net = Net.of(3)
    leader = net.elect(1)
    _compacted(net, leader)
    net.add(_joiner(4))
    leader.propose_conf_change(ConfChange(LEARNER, 4))
    net.pump()
    learner = net.nodes[4]
    assert leader.voters == (1, 2, 3) and leader.learners == (4,)
    assert net.snapshots[4].data == b"state"  # it caught up by snapshot
    assert learner.last_index == leader.last_index and learner.learners == (4,)
    assert leader.member_matches()[4] == leader.last_index

    net.isolated = {2, 3}
    index = leader.propose(b"needs a voter quorum")
    net.pump()
    assert leader.commit_index < index  # 1 voter of 3 plus a learner is no quorum

    net.isolated = {1, 2, 3}
    for _ in range(100):
        learner.tick()
        net.pump()
    assert learner.role == Role.FOLLOWER and learner.term == leader.term


def test_promote_after_catch_up_then_remove_commits_with_another_voter_down() -> None:
    """Add first: with voter 3 down, learner 4 is promoted ({1,2,3,4}: 1, 2, 4 are a quorum)
    and then voter 2 removed ({1,3,4}: 1, 4). Removing 2 first cannot commit ({1,3}: only
    1 is up), which is the stall add-first avoids."""
    control = Net.of(3)
    old = control.elect(1)
    control.isolated.add(3)
    index = old.propose_conf_change(ConfChange(REMOVE, 2))
    control.pump()
    assert old.commit_index < index

    net = Net.of(3)
    leader = net.elect(1)
    _compacted(net, leader)
    net.isolated.add(3)
    net.add(_joiner(4))
    leader.propose_conf_change(ConfChange(LEARNER, 4))
    net.pump()
    index = leader.propose_conf_change(ConfChange(PROMOTE, 4))
    net.pump()
    assert leader.commit_index >= index and net.nodes[4].voters == (1, 2, 3, 4)
    joined = net.nodes[4]
    index = leader.propose_conf_change(ConfChange(REMOVE, 2))
    net.pump()
    assert leader.commit_index >= index and leader.voters == (1, 3, 4)
    assert joined.voters == (1, 3, 4)


def test_a_done_change_reports_the_entry_that_did_it_and_proposes_nothing() -> None:
    """A retry of a committed REMOVE (its answer lost) finds the change in force: the index
    of the entry that made it so, no new entry. Proposing it again is still an error."""
    net = Net.of(3)
    leader = net.elect(1)
    assert leader.change_in_force(ConfChange(ADD, 2)) == 0  # the initial membership
    assert leader.change_in_force(ConfChange(REMOVE, 3)) is None
    index = leader.propose_conf_change(ConfChange(REMOVE, 3))
    net.pump()
    last = leader.last_index
    assert leader.change_in_force(ConfChange(REMOVE, 3)) == index
    assert leader.change_in_force(ConfChange(PROMOTE, 2)) == index
    assert leader.last_index == last
    with pytest.raises(ConfigError, match="real change"):
        leader.propose_conf_change(ConfChange(REMOVE, 3))


def test_leadership_is_never_transferred_to_a_learner() -> None:
    net = Net.of(3)
    leader = net.elect(1)
    net.add(_joiner(4))
    leader.propose_conf_change(ConfChange(LEARNER, 4))
    net.pump()
    with pytest.raises(ConfigError, match="not a voter"):
        leader.transfer_leadership(4)


def test_learners_survive_compaction_restart_and_storage(tmp_path: Path) -> None:
    """The snapshot's meta names the learners: a leader that compacted past the learner's
    entry keeps replicating to it, and a replica restarted from storage knows it."""
    net = Net.of(3)
    leader = net.elect(1)
    net.add(_joiner(4))
    leader.propose_conf_change(ConfChange(LEARNER, 4))
    net.pump()
    index = _compacted(net, leader)
    assert leader.learners == (4,) and 4 in leader.member_matches()

    storage = SqliteStorage(tmp_path / "r.db")
    meta = SnapshotMeta(index, leader.term, leader.voters_at(index), leader.learners_at(index))
    storage.save(HardState(leader.term, 1, index), [], Snapshot(meta, b"state"))
    storage.close()
    _hs, snap, _entries = SqliteStorage(tmp_path / "r.db").load()
    assert snap is not None and snap.meta == meta and snap.meta.learners == (4,)
    restarted = RaftNode(RaftConfig(id=2, voters=(1, 2, 3)), random.Random(2),
                         hard_state=HardState(leader.term, 1, index), snapshot=snap)
    assert restarted.voters == (1, 2, 3) and restarted.learners == (4,)
