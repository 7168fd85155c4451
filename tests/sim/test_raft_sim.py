"""Seeded whole-cluster simulations of the Raft core with every invariant checked after
every step. A failure names its seed; replay it with
``RAFTPS_SEED=<seed> pytest tests/sim -k replay``."""

from __future__ import annotations

import dataclasses
import os
import random

import pytest

from consensus.config import RaftConfig
from consensus.core import RaftNode
from consensus.errors import ConfigError
from consensus.invariants import InvariantChecker, InvariantViolation
from consensus.progress import quorum_index
from consensus.sim import SimConfig, Simulator, run_seed
from consensus.types import (
    ConfChange,
    ConfChangeKind,
    EntryKind,
    HardState,
    Message,
    RequestVote,
    RequestVoteResponse,
    Role,
    Snapshot,
    SnapshotMeta,
)
from tests.unit.test_raft_paper import Net

CI_SEEDS = 300
STEPS = 300

PROFILES: dict[str, SimConfig] = {
    "default": SimConfig(),
    "harsh": SimConfig(p_drop=0.2, p_dup=0.1, p_partition=0.05, p_crash=0.03,
                       p_compact=0.1, p_transfer=0.02, max_delay=8),
    "five": SimConfig(nodes=5, p_crash=0.02, p_partition=0.03, p_compact=0.05),
    "no_prevote": SimConfig(pre_vote=False, check_quorum=False, p_partition=0.03),
    "membership": SimConfig(nodes=5, p_conf=0.03, p_crash=0.01, p_partition=0.02,
                            p_compact=0.05),
    "disk_loss": SimConfig(p_crash=0.03, p_disk_loss=0.5, p_partition=0.02, p_compact=0.05),
    "in_flight": SimConfig(p_step_in_flight=0.6, p_crash=0.05, p_restart=0.1,
                           p_partition=0.02, p_compact=0.05, p_drop=0.1),
    "learners": SimConfig(spares=2, p_learner=0.05, p_crash=0.02,
                          p_partition=0.03, p_compact=0.05, p_transfer=0.01,
                          p_step_in_flight=0.2),
    "peer_gone": SimConfig(p_peer_gone=0.8, p_crash=0.03, p_partition=0.03, p_compact=0.05,
                           p_transfer=0.01, p_step_in_flight=0.2, p_peer_active=0.3),
}
LEARNER_SEEDS = 120


def profile_for(seed: int) -> SimConfig:
    """The fault profile a seed runs under (fixed, so that a seed always replays)."""
    names = sorted(PROFILES)
    return PROFILES[names[seed % len(names)]]


@pytest.mark.parametrize("seed", range(CI_SEEDS), ids=lambda s: f"seed_{s}")
def test_seed_keeps_every_invariant(seed: int) -> None:
    result = run_seed(seed, STEPS, profile_for(seed))
    assert result.steps >= STEPS
    assert result.max_commit > 0  # liveness after healing: something committed


def test_replay() -> None:
    """Replays ``RAFTPS_SEED`` (default 0) exactly as the seeded test and the soak ran it."""
    seed = int(os.environ.get("RAFTPS_SEED", "0"))
    steps = int(os.environ.get("RAFTPS_STEPS", str(STEPS)))
    first = run_seed(seed, steps, profile_for(seed))
    assert first == run_seed(seed, steps, profile_for(seed))  # deterministic


def test_runs_exercise_the_faults_they_claim() -> None:
    """The workload really crashes (torn writes too), snapshots, reads and re-elects;
    otherwise passing seeds would prove little."""
    totals = {"crashes": 0, "torn_writes": 0, "snapshots_installed": 0, "reads": 0,
              "acked": 0, "leaders": 0, "disk_losses": 0}
    for seed in range(12):
        profile = ("default", "harsh", "disk_loss")[seed % 3]
        result = run_seed(seed, STEPS, PROFILES[profile])
        for key in totals:
            totals[key] += getattr(result, key)
    assert all(v > 0 for v in totals.values()), totals
    assert totals["leaders"] > 8  # leadership changed under faults


def test_peer_gone_hints_are_given_for_crashed_and_for_live_peers() -> None:
    """The ``peer_gone`` profile really hints (about crashed leaders, and wrongly about
    live ones; and ``peer_active`` about connected live ones) while every invariant holds."""
    hints = active = leaders = 0
    for seed in range(8):
        result = run_seed(seed, STEPS, PROFILES["peer_gone"])
        hints += result.gone_hints
        active += result.active_hints
        leaders += result.leaders
    assert hints > 20 and active > 200 and leaders > 8, (hints, active, leaders)


class VotesTwice(RaftNode):
    """A broken node: grants every (pre-)vote, even a second one in the same term."""

    def _handle_vote_request(self, m: RequestVote) -> None:
        self._send(RequestVoteResponse(self.id, m.src, m.term, True, m.pre_vote))


def test_checker_catches_a_node_that_votes_twice() -> None:
    """The invariants are not vacuous: a double-voting node is caught within a few seeds
    and the message says how to replay it."""
    caught: list[str] = []
    for seed in range(30):
        try:
            run_seed(seed, STEPS, PROFILES["default"], node_factory=VotesTwice)
        except InvariantViolation as exc:
            caught.append(str(exc))
            break
    assert caught, "a node voting twice went unnoticed"
    assert "seed=" in caught[0] and "RAFTPS_SEED=" in caught[0]
    assert any(p in caught[0] for p in ("Election Safety", "Election Quorum",
                                        "Vote Durability", "Leader Completeness",
                                        "State Machine Safety", "Log Matching"))


def test_checker_flags_two_leaders_in_one_term() -> None:
    checker = InvariantChecker()

    class Fake:
        def __init__(self, node_id: int) -> None:
            self.id, self.role, self.term, self.last_index = node_id, Role.LEADER, 3, 0
            self.voters, self.learners = (1, 2, 3), ()

        def term_at(self, index: int) -> int | None:
            return 0

        log = type("L", (), {"snapshot_index": 0})()

    checker.on_hard_state(1, HardState(3, 1, 0))
    checker.on_send(RequestVoteResponse(2, 1, 3, True, False), HardState(3, 1, 0))
    with pytest.raises(InvariantViolation, match="Election Safety"):
        checker.check_nodes([Fake(1), Fake(2)])  # type: ignore[list-item]


def test_liveness_after_isolating_the_leader_and_healing() -> None:
    sim = Simulator(7, SimConfig(p_partition=0, p_crash=0))
    sim.run(150)
    leaders = sim.leaders()
    assert leaders
    old = leaders[0].id
    sim.blocked = {(old, x) for x in sim.ids} | {(x, old) for x in sim.ids}
    acked = len(sim.acked)
    sim.faults = False
    for _ in range(400):
        sim.step()
    assert any(n.role == Role.LEADER and n.id != old for n in sim.live())
    assert len(sim.acked) > acked  # the majority side made progress
    sim.heal_and_check_liveness()
    assert all(h.applied >= sim.max_acked for h in sim.hosts.values())


def _forgets_lost_state(config: RaftConfig, rng: random.Random, **kw: object) -> RaftNode:
    """A broken host: restarts a node that lost its disk as if nothing happened."""
    return RaftNode(dataclasses.replace(config, lost_state=False), rng, **kw)  # type: ignore[arg-type]


def test_checker_catches_a_node_that_votes_after_losing_its_disk() -> None:
    """Without ``lost_state`` an amnesiac's empty log lets a candidate that lacks committed
    entries win; the simulator must find that within a few seeds of the disk_loss profile
    (and the real node, flagged, passes those same seeds in the seeded test)."""
    caught = []
    for seed in range(20):
        try:
            run_seed(seed, STEPS, PROFILES["disk_loss"], node_factory=_forgets_lost_state)
        except InvariantViolation as exc:
            caught.append(str(exc))
    assert any("Leader Completeness" in c or "durable" in c for c in caught), caught
    for seed in range(20):
        assert run_seed(seed, STEPS, PROFILES["disk_loss"]).max_commit > 0


class _SendsEverythingEarly(RaftNode):
    """A broken host contract: every queued message goes out before the Ready is durable
    (vote grants and acknowledgements of entries still being written included)."""

    def early_messages(self) -> list[Message]:
        early, self._msgs = self._msgs, []
        return early


def test_in_flight_profile_sends_early_messages_and_keeps_invariants() -> None:
    """Seeds of the in_flight profile do step nodes mid-persist and send early messages."""
    early = 0
    for seed in range(5):
        result = run_seed(seed, STEPS, PROFILES["in_flight"])
        early += result.early_messages
        assert result.max_commit > 0
    assert early > 30


def test_checker_catches_messages_sent_early_that_claim_unstable_state() -> None:
    """The in_flight profile is not vacuous: a node that sends every message before its
    Ready is durable (acks of unsynced entries, votes not yet on disk) loses acknowledged
    entries or elects two leaders within a few hundred seeds (the first is seed 287)."""
    with pytest.raises(InvariantViolation):
        for seed in range(400):
            run_seed(seed, STEPS, PROFILES["in_flight"], node_factory=_SendsEverythingEarly)


# ---------------------------------------------------------------- learners


def _learner_seeds(count: int, start: int = CI_SEEDS) -> list[int]:
    """Seeds from ``start`` on that ``profile_for`` runs under the learners profile, so that
    the replay command in a failure message replays them."""
    seeds = [s for s in range(start, start + count * len(PROFILES))
             if profile_for(s) is PROFILES["learners"]]
    return seeds[:count]


@pytest.mark.parametrize("seed", _learner_seeds(LEARNER_SEEDS), ids=lambda s: f"seed_{s}")
def test_learner_seed_keeps_every_invariant(seed: int) -> None:
    """Learners join, are promoted, old voters leave, learners are dropped, in-force steps
    are refused, under crashes, partitions, drops and transfers (to learners too)."""
    result = run_seed(seed, STEPS, profile_for(seed))
    assert result.max_commit > 0


def test_learner_runs_replace_voters_and_keep_committing() -> None:
    """The learners profile really runs whole add-first replacements (learner, promote,
    remove an old voter), refuses steps already in force, and commits after replacing."""
    totals = {"learner_steps": 0, "refused_steps": 0, "promotions": 0, "replacements": 0,
              "acked_after_replacement": 0, "crashes": 0}
    for seed in _learner_seeds(10, start=0):
        result = run_seed(seed, STEPS, profile_for(seed))
        for key in totals:
            totals[key] += getattr(result, key)
    assert all(v > 0 for v in totals.values()), totals
    assert totals["replacements"] >= 5 and totals["acked_after_replacement"] >= 50, totals


def _first_violation(factory: type[RaftNode], seeds: int = 60) -> str:
    for seed in _learner_seeds(seeds, start=0):
        try:
            run_seed(seed, STEPS, PROFILES["learners"], node_factory=factory)
        except InvariantViolation as exc:
            return str(exc)
    return ""


class _CountsLearnersInCommits(RaftNode):
    """A broken leader: learners' matches count toward the commit quorum."""

    def _maybe_commit(self) -> bool:
        matches = [pr.match for pr in self._prs.values()]
        if self.id in self.voters:
            matches.append(self.log.stable)
        index = quorum_index(matches)
        if index <= self.log.committed or self.log.term(index) != self.term:
            return False
        self.log.commit_to(index)
        self._on_commit()
        return True


class _LearnerCampaigns(RaftNode):
    """A broken learner: it campaigns like a voter."""

    def _promotable(self) -> bool:
        member = self.id in self.voters or self.id in self.learners
        return self._membership_known and member and not self.config.lost_state


class _TransfersToLearners(RaftNode):
    """A broken leader: it starts a leadership transfer to a learner."""

    def transfer_leadership(self, to: int) -> None:
        if to in self.learners:
            self._transferee = to
            return
        super().transfer_leadership(to)


class _AppendsChangesInForce(RaftNode):
    """A broken leader: a membership step already in force still appends an entry."""

    def propose_conf_change(self, cc: ConfChange) -> int:
        if self.change_in_force(cc) is not None:
            return self._append_local(EntryKind.NOOP, b"")
        return super().propose_conf_change(cc)


@pytest.mark.parametrize(("factory", "caught_as"), [
    (_CountsLearnersInCommits, "Commit Quorum"),
    (_LearnerCampaigns, "Learner Inertness"),
    (_TransfersToLearners, "leadership transfer to"),
    (_AppendsChangesInForce, "changes nothing"),
], ids=["counts_learners", "learner_campaigns", "transfer_to_learner", "appends_in_force"])
def test_learner_checks_catch_a_broken_core(factory: type[RaftNode], caught_as: str) -> None:
    """The learner invariants are not vacuous: each broken variant is caught within a few
    learner seeds, by the named check, with a replayable seed in the message."""
    message = _first_violation(factory)
    assert caught_as in message, message
    assert "seed=" in message and "RAFTPS_SEED=" in message


def test_checker_flags_a_learner_that_campaigns_or_leads() -> None:
    class Node:
        id, term, last_index = 4, 2, 0
        voters, learners = (1, 2, 3), (4,)
        log = type("L", (), {"snapshot_index": 0})()

        def __init__(self, role: Role) -> None:
            self.role = role

        def term_at(self, index: int) -> int | None:
            return 0

    for role in (Role.PRE_CANDIDATE, Role.CANDIDATE, Role.LEADER):
        with pytest.raises(InvariantViolation, match="Learner Inertness"):
            InvariantChecker().check_nodes([Node(role)])  # type: ignore[list-item]


def test_checker_flags_a_leader_without_a_quorum_of_durable_votes() -> None:
    """Votes of a learner (4) or of a non-member (5) make no quorum of voters (1, 2, 3); a
    grant sent before the vote is durable, or a second durable vote in a term, is flagged."""
    class Leader:
        id, role, term, last_index = 1, Role.LEADER, 5, 0
        voters, learners = (1, 2, 3), (4,)
        log = type("L", (), {"snapshot_index": 0})()

        def term_at(self, index: int) -> int | None:
            return 0

    checker = InvariantChecker()
    voted = HardState(5, 1, 0)
    checker.on_hard_state(1, voted)
    for node in (4, 5):
        checker.on_send(RequestVoteResponse(node, 1, 5, True, False), voted)
    with pytest.raises(InvariantViolation, match=r"Election Quorum.*only \[1\]"):
        checker.check_nodes([Leader()])  # type: ignore[list-item]
    checker.on_hard_state(3, voted)
    checker.on_send(RequestVoteResponse(3, 1, 5, True, False), voted)
    checker.check_nodes([Leader()])  # type: ignore[list-item]
    with pytest.raises(InvariantViolation, match="Vote Durability: node 2 granted"):
        checker.on_send(RequestVoteResponse(2, 1, 5, True, False), HardState(4, None, 0))
    with pytest.raises(InvariantViolation, match="durably voted for 1 and then for 2"):
        checker.on_hard_state(3, HardState(5, 2, 0))


# A joiner that catches up by entries, not by a snapshot, replays the log's membership
# changes from its RaftConfig.voters. Started with voters=() it would believe, promoted, that
# the voters are e.g. (4,) or (4, 5); a snapshot of that belief, trusted after a restart,
# let it campaign (and win) in a group of its own (seeds 6 and 28 of the learners profile
# did). So replicas start joiners with the group's bootstrap voters, and a node that does
# not know its membership refuses to compact.


def _promoted_joiner(voters: tuple[int, ...]) -> tuple[RaftNode, RaftNode]:
    net = Net.of(3)
    leader = net.elect(1)
    joiner = RaftNode(RaftConfig(id=4, voters=voters), random.Random(4))
    net.add(joiner)
    leader.propose_conf_change(ConfChange(ConfChangeKind.ADD_LEARNER, 4))
    net.pump()
    leader.propose_conf_change(ConfChange(ConfChangeKind.PROMOTE, 4))
    net.pump()
    assert leader.voters == (1, 2, 3, 4) and joiner.log.applied == leader.commit_index
    return leader, joiner


def test_a_joiner_that_caught_up_by_entries_never_leads_alone_after_a_restart() -> None:
    leader, joiner = _promoted_joiner((1, 2, 3))  # the bootstrap voters, as replicas do
    assert joiner.voters == leader.voters
    index = joiner.log.applied
    meta = SnapshotMeta(index, joiner.term_at(index) or 0, joiner.voters_at(index),
                        joiner.learners_at(index))
    joiner.compact(Snapshot(meta, b""))  # the host's regular compaction
    restarted = RaftNode(RaftConfig(id=4, voters=(1, 2, 3)), random.Random(5),
                         hard_state=HardState(joiner.term, joiner.vote, index),
                         snapshot=Snapshot(meta, b""))
    assert restarted.voters == (1, 2, 3, 4)
    for _ in range(40):  # cut off from the group, as after a crash on a partitioned node
        restarted.tick()
        if restarted.has_ready():
            restarted.advance(restarted.ready())
    assert restarted.role != Role.LEADER, (
        f"restarted joiner leads term {restarted.term} alone with voters "
        f"{restarted.voters}; the group's voters are {leader.voters}")


def test_a_joiner_that_knows_no_voters_refuses_to_compact() -> None:
    _leader, joiner = _promoted_joiner(())
    index = joiner.log.applied
    meta = SnapshotMeta(index, joiner.term_at(index) or 0, joiner.voters_at(index),
                        joiner.learners_at(index))
    with pytest.raises(ConfigError, match="does not know its group's membership"):
        joiner.compact(Snapshot(meta, b""))
    assert joiner.log.snapshot_index == 0


@pytest.mark.parametrize("seed", [6, 28], ids=lambda s: f"seed_{s}")
def test_learner_seeds_that_once_let_a_joiner_lead_in_its_own_membership(seed: int) -> None:
    """Seed 6 broke Membership Agreement and seed 28 State Machine Safety while joiners
    started with voters=()."""
    run_seed(seed, STEPS, PROFILES["learners"])
