"""consensus.replacement: add first (a learner, promoted once caught up), remove last;
refuse a step without a quorum of live, caught-up voters; resume after a lost answer.

``FakeGroup`` stands in for a RaftGroup's replicas with the membership rules of the core
(``consensus.membership``): a change commits only when a quorum of the voters after it
holds every committed entry, and a change already done succeeds (what a replica's
``change_member`` does). No Ray, no sleeps: the clock is the test's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from consensus.core import RaftNode
from consensus.errors import ProposalTimeoutError, QuorumUnsafeError
from consensus.membership import apply_change, in_force
from consensus.replacement import Replacer, due_for_replacement
from consensus.replica_api import ReplicaAPI
from consensus.types import ConfChange, ConfChangeKind
from tests.unit.test_raft_paper import Net

LEARNER, PROMOTE, REMOVE = (ConfChangeKind.ADD_LEARNER, ConfChangeKind.PROMOTE,
                            ConfChangeKind.REMOVE)
COMMIT = 10


class FakeGroup:
    def __init__(self, voters: set[int], leader: int, *, dead: frozenset[int] = frozenset(),
                 lost: frozenset[int] = frozenset(), catch_up_polls: int = 0) -> None:
        self.voters: set[int] = set(voters)
        self.learners: set[int] = set()
        self.leader = leader
        self.alive = set(voters) - set(dead)
        self.lost = set(lost)
        self.match = dict.fromkeys(self.alive, COMMIT)
        self.catch_up_polls = catch_up_polls
        self.next_index = max(voters) + 1
        self.log: list[tuple[str, int]] = []
        self.lose_answer: ConfChangeKind | None = None

    def statuses(self) -> list[dict[str, Any]]:
        for m in self.learners:  # a learner receives the snapshot over a few polls
            if self.match.get(m, 0) < COMMIT:
                self.catch_up_polls -= 1
                if self.catch_up_polls <= 0:
                    self.match[m] = COMMIT
        out: list[dict[str, Any]] = []
        for m in sorted(self.voters | self.learners | self.alive):
            if m not in self.alive:
                out.append({"index": m, "alive": False})
                continue
            status: dict[str, Any] = {
                "index": m, "alive": True, "term": 1, "commit": COMMIT, "last_index": COMMIT,
                "role": "LEADER" if m == self.leader else "FOLLOWER",
                "voters": sorted(self.voters), "learners": sorted(self.learners),
                "lost_state": m in self.lost}
            if m == self.leader:
                status["matches"] = {k: v for k, v in self.match.items()
                                     if k != m and k in self.voters | self.learners}
            out.append(status)
        return out

    def change(self, kind: ConfChangeKind, replica: int, timeout: float) -> None:
        cc = ConfChange(kind, replica)
        voters, learners = tuple(sorted(self.voters)), tuple(sorted(self.learners))
        if in_force(voters, learners, cc):
            self.log.append(("done " + kind.name, replica))
            return
        after, learners_after = apply_change(voters, learners, cc)
        acks = [v for v in after if v in self.alive and self.match.get(v, 0) >= COMMIT]
        if len(acks) < len(after) // 2 + 1:
            raise ProposalTimeoutError(f"{kind.name} {replica} did not commit: group stalled")
        self.voters, self.learners = set(after), set(learners_after)
        self.log.append((kind.name, replica))
        if self.lose_answer == kind:
            self.lose_answer = None
            raise ProposalTimeoutError(f"{kind.name} {replica}: the answer was lost")

    def spawn_joiner(self, like: int, timeout: float) -> int:
        index, self.next_index = self.next_index, self.next_index + 1
        self.alive.add(index)
        self.match[index] = 0
        self.log.append(("spawn", index))
        return index

    def stop(self, replica: int) -> None:
        self.alive.discard(replica)
        self.log.append(("stop", replica))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _replacer(group: FakeGroup) -> Replacer:
    clock = Clock()
    return Replacer(group, "job/shard-0", clock=clock, sleep=clock.sleep)


def test_replacing_a_lost_voter_with_another_voter_down_adds_first() -> None:
    """Voter 0 lost its storage, voter 1 is down: removing 0 first needs {1, 2} and stalls
    (control); adding first commits every step, and the old actor is stopped."""
    control = FakeGroup({0, 1, 2}, leader=2, dead=frozenset({1}), lost=frozenset({0}))
    with pytest.raises(ProposalTimeoutError, match="stalled"):
        control.change(REMOVE, 0, 1.0)

    group = FakeGroup({0, 1, 2}, leader=2, dead=frozenset({1}), lost=frozenset({0}))
    assert _replacer(group).replace(0, timeout=30.0) == 3
    assert group.log == [("spawn", 3), ("ADD_LEARNER", 3), ("PROMOTE", 3), ("REMOVE", 0),
                         ("stop", 0)]
    assert group.voters == {1, 2, 3} and not group.learners and 0 not in group.alive


def test_a_learner_is_promoted_only_once_it_caught_up() -> None:
    group = FakeGroup({0, 1, 2}, leader=1, lost=frozenset({0}), catch_up_polls=5)
    promoted_at: list[int] = []
    change = group.change

    def watch(kind: ConfChangeKind, replica: int, timeout: float) -> None:
        if kind == PROMOTE:
            promoted_at.append(group.match[replica])
        change(kind, replica, timeout)

    group.change = watch  # type: ignore[method-assign]
    assert _replacer(group).replace(0, timeout=30.0) == 3
    assert promoted_at == [COMMIT]


def test_a_change_without_a_quorum_of_live_caught_up_voters_is_refused() -> None:
    """Voters 0 and 1 are down: no step could commit, so none starts (no actor spawned)."""
    group = FakeGroup({0, 1, 2}, leader=2, dead=frozenset({0, 1}))
    with pytest.raises(QuorumUnsafeError, match=r"only \[2\] are live and caught up"):
        _replacer(group).replace(0, timeout=30.0)
    assert group.log == [] and group.voters == {0, 1, 2}


def test_a_learner_that_never_catches_up_times_out_and_is_resumed() -> None:
    group = FakeGroup({0, 1, 2}, leader=2, lost=frozenset({0}), catch_up_polls=10_000)
    replacer = _replacer(group)
    with pytest.raises(ProposalTimeoutError, match="did not catch up"):
        replacer.replace(0, timeout=1.0)
    assert group.voters == {0, 1, 2} and group.learners == {3}
    group.catch_up_polls = 0
    assert replacer.replace(0, timeout=1.0) == 3
    assert [op for op in group.log if op[0] == "spawn"] == [("spawn", 3)]


@pytest.mark.parametrize("lost_step", [LEARNER, PROMOTE, REMOVE])
def test_a_step_whose_answer_was_lost_is_resumed_not_skipped(lost_step: ConfChangeKind) -> None:
    """The step committed but its answer was lost past the deadline: the next call (the
    next heal) finishes the same replacement (same new replica) and stops the old actor."""
    group = FakeGroup({0, 1, 2}, leader=2, lost=frozenset({0}))
    group.lose_answer = lost_step
    replacer = _replacer(group)
    with pytest.raises(ProposalTimeoutError, match="answer was lost"):
        replacer.replace(0, timeout=30.0)
    assert replacer.replace(0, timeout=30.0) == 3
    assert group.voters == {1, 2, 3} and 0 not in group.alive
    assert [op for op in group.log if op[0] == "spawn"] == [("spawn", 3)]
    assert group.log[-1] == ("stop", 0) and not replacer.pending


def _status(index: int, alive: bool = True, lost: bool = False) -> dict[str, Any]:
    return {"index": index, "alive": alive, "lost_state": lost}


def test_due_for_replacement_takes_the_lost_then_the_dead_past_their_grace() -> None:
    statuses = [_status(0), _status(1, lost=True), _status(2, alive=False),
                _status(3, alive=False), _status(4)]
    dead_since = {2: 0.0, 3: 90.0}
    assert due_for_replacement(statuses, [0, 1, 2, 3, 4], dead_since, 100.0, 60.0) == [1, 2]
    assert due_for_replacement(statuses, [0, 1, 2, 3, 4], dead_since, 100.0, None) == [1]
    assert due_for_replacement(statuses, [0, 2, 3, 4], dead_since, 100.0, 5.0) == [2, 3]


class _Replica:
    """The parts of a replica that ``ReplicaAPI.change_member`` uses, over a real core."""

    def __init__(self, node: RaftNode, net: Net) -> None:
        self._node, self._net = node, net
        self.waited: list[int] = []

    def _require_leader(self) -> None:
        pass

    async def wait_applied(self, index: int, timeout: float | None = None) -> None:
        self.waited.append(index)
        assert self._node.log.applied >= index


def test_a_replica_answers_a_retried_change_that_already_committed() -> None:
    """REMOVE 3 committed and its answer was lost; the client retries the same step. The
    replica proposes nothing and answers with the entry that did it (it used to raise
    ConfigError 'would leave voters', and heal then skipped the replica forever)."""
    net = Net.of(3)
    leader = net.elect(1)
    index = leader.propose_conf_change(ConfChange(REMOVE, 3))
    net.pump()
    replica = _Replica(leader, net)
    last = leader.last_index
    answer = asyncio.run(ReplicaAPI.change_member(replica, int(REMOVE), 3, 1.0))  # type: ignore[arg-type]
    assert answer == index and replica.waited == [index] and leader.last_index == last
    answer = asyncio.run(ReplicaAPI.change_member(replica, int(PROMOTE), 2, 1.0))  # type: ignore[arg-type]
    assert answer == index

