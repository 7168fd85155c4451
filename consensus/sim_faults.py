"""Fault injection of the Raft simulator (``consensus.sim``): per step, with the
``SimConfig`` probabilities, partitions (symmetric, asymmetric, isolating the leader),
crashes (torn writes too) and disk loss, wrong and right ``peer_gone`` hints,
``peer_active`` hints, restarts, compaction, single-server membership changes, learner
steps (with steps already in force, which must be refused), and leadership transfers,
which must go only to a voter.

Every draw comes from the simulator's one ``random.Random``, in a fixed order, so a seed
replays exactly.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from consensus.core import RaftNode
from consensus.errors import ConfigError, ConsensusError, ProposalDroppedError
from consensus.invariants import InvariantViolation
from consensus.sim_config import SimConfig, SimResult
from consensus.sim_model import Durable, Host
from consensus.types import ConfChange, ConfChangeKind, Snapshot, SnapshotMeta

T = TypeVar("T")


class FaultInjection:
    """The fault and membership steps of ``consensus.sim.Simulator``, which mixes them in
    and provides the state and the host operations declared here."""

    cfg: SimConfig
    rng: random.Random
    ids: tuple[int, ...]
    hosts: dict[int, Host]
    blocked: set[tuple[int, int]]
    result: SimResult

    if TYPE_CHECKING:
        def live(self) -> list[RaftNode]: ...
        def leaders(self) -> list[RaftNode]: ...
        def _start(self, host: Host) -> None: ...
        def _crash(self, host: Host, *, torn: bool) -> None: ...
        def _observe_commit(self, node: RaftNode, action: Callable[[T], object],
                            arg: T) -> None: ...

    def _faults(self) -> None:
        c, rng = self.cfg, self.rng
        if rng.random() < c.p_partition:
            self._repartition()
        if rng.random() < c.p_crash:
            up = [h for h in self.hosts.values() if h.node is not None]
            if up:
                host = rng.choice(up)
                if rng.random() < 0.5:
                    host.torn_next = True
                else:
                    self._crash(host, torn=False)
                    if rng.random() < c.p_disk_loss and self._may_lose_a_disk():
                        host.durable, host.lost = Durable(), True
                        self.result.disk_losses += 1
        if c.p_peer_gone > 0 and rng.random() < c.p_peer_gone / 10:
            live = self.live()
            if live:
                node = rng.choice(live)
                node.peer_gone(rng.choice(self.ids))
                self.result.gone_hints += 1
        if c.p_peer_active > 0 and rng.random() < c.p_peer_active:
            self._hint_active()
        if rng.random() < c.p_restart:
            down = [h for h in self.hosts.values() if h.node is None]
            if down:
                self._start(rng.choice(down))
        if rng.random() < c.p_compact:
            self._compact(rng.choice(list(self.hosts.values())))
        if rng.random() < c.p_conf:
            self._change_membership()
        if c.p_learner > 0 and rng.random() < c.p_learner:  # no draw at 0: old seeds replay
            leaders = self.leaders()
            if leaders:
                self._learner_step(leaders[0])
        if rng.random() < c.p_transfer:
            leaders = self.leaders()
            if leaders:
                self._transfer(leaders[0], rng.choice(self.ids))

    def _may_lose_a_disk(self) -> bool:
        return sum(h.lost for h in self.hosts.values()) < (self.cfg.nodes - 1) // 2

    def _hint_active(self) -> None:
        """A live node hears that bytes moved between it and a live, connected peer."""
        live = self.live()
        if len(live) < 2:
            return
        node = self.rng.choice(live)
        peers = [n.id for n in live if n.id != node.id and (n.id, node.id) not in self.blocked
                 and (node.id, n.id) not in self.blocked]
        if peers:
            node.peer_active(self.rng.choice(peers))
            self.result.active_hints += 1

    def _repartition(self) -> None:
        rng, ids = self.rng, self.ids
        kind = rng.randrange(4)
        self.blocked.clear()
        if kind == 1 and len(ids) > 1:
            side = set(rng.sample(ids, rng.randrange(1, len(ids))))
            self.blocked = {(a, b) for a in ids for b in ids if (a in side) != (b in side)}
        elif kind == 2 and len(ids) > 1:
            a, b = rng.sample(ids, 2)
            self.blocked = {(a, b)}
        elif kind == 3:
            leaders = self.leaders()
            if leaders:
                lid = leaders[0].id
                self.blocked = {(lid, x) for x in ids} | {(x, lid) for x in ids}

    def _change_membership(self) -> None:
        leaders = self.leaders()
        if not leaders:
            return
        leader = leaders[0]
        outside = [i for i in self.ids if i not in leader.voters]
        if outside and (len(leader.voters) <= 3 or self.rng.random() < 0.5):
            cc = ConfChange(ConfChangeKind.ADD, self.rng.choice(outside))
        elif len(leader.voters) > 3:
            cc = ConfChange(ConfChangeKind.REMOVE, self.rng.choice(leader.voters))
        else:
            return
        with ignore_consensus_errors():
            self._observe_commit(leader, leader.propose_conf_change, cc)

    def _learner_step(self, leader: RaftNode) -> None:
        """One step of adding a server the safe way (learner, promote, remove an old voter),
        or dropping a learner, or a step already in force, which must change nothing."""
        rng = self.rng
        voters, learners = leader.voters, leader.learners
        outside = [i for i in self.ids if i not in voters and i not in learners]
        matches = leader.member_matches()
        caught_up = [i for i in learners if matches.get(i, 0) >= leader.commit_index]
        steps: list[tuple[ConfChangeKind, list[int], int]] = [
            (ConfChangeKind.ADD_LEARNER, outside, 3),
            (ConfChangeKind.PROMOTE, caught_up or list(learners), 3),
            (ConfChangeKind.REMOVE, list(voters) if len(voters) > 3 else [], 3),
            (ConfChangeKind.REMOVE, list(learners), 1),
        ]
        possible = [(kind, pool) for kind, pool, _w in steps if pool]
        weights = [w for _kind, pool, w in steps if pool]
        if not possible or rng.random() < 0.15:
            self._refused_step(leader, outside)
            return
        kind, pool = rng.choices(possible, weights)[0]
        cc = ConfChange(kind, rng.choice(pool))
        with ignore_consensus_errors():
            self._observe_commit(leader, leader.propose_conf_change, cc)
            self.result.learner_steps += 1

    def _refused_step(self, leader: RaftNode, outside: list[int]) -> None:
        """Propose a step already in force (promote or add as learner a voter, remove a
        non-member) or an impossible one (promote a non-member): it must be refused and
        leave the log and the membership as they were."""
        rng = self.rng
        steps = [ConfChange(ConfChangeKind.PROMOTE, rng.choice(leader.voters)),
                 ConfChange(ConfChangeKind.ADD_LEARNER, rng.choice(leader.voters))]
        if outside:
            steps += [ConfChange(ConfChangeKind.REMOVE, rng.choice(outside)),
                      ConfChange(ConfChangeKind.PROMOTE, rng.choice(outside))]
        cc = rng.choice(steps)
        done = leader.change_in_force(cc)
        impossible = cc.kind == ConfChangeKind.PROMOTE and cc.node in outside
        if (done is None) != impossible:
            raise InvariantViolation(
                f"Membership: change_in_force({cc}) = {done} with voters {leader.voters} and "
                f"learners {leader.learners}")
        before = (leader.last_index, leader.voters, leader.learners)
        try:
            index = leader.propose_conf_change(cc)
        except (ConfigError, ProposalDroppedError):  # the documented refusals
            index = None
        after = (leader.last_index, leader.voters, leader.learners)
        if index is not None or after != before:
            raise InvariantViolation(
                f"Membership: {cc} changes nothing (voters {before[1]}, learners "
                f"{before[2]}) yet leader {leader.id} accepted it: index {index}, "
                f"(last index, voters, learners) {before} -> {after}")
        self.result.refused_steps += 1

    def _transfer(self, leader: RaftNode, to: int) -> None:
        """Leadership goes only to a voter: a transfer to a learner or a non-member must be
        refused."""
        refused = False
        try:
            leader.transfer_leadership(to)
        except ConsensusError:
            refused = True
        if not refused and to != leader.id and to not in leader.voters:
            raise InvariantViolation(
                f"Membership: leader {leader.id} accepted a leadership transfer to {to}, "
                f"which is not among its voters {leader.voters} (learners {leader.learners})")

    def _compact(self, host: Host) -> None:
        node = host.node
        if node is None or host.applied <= node.log.snapshot_index + 2:
            return
        term = node.term_at(host.applied)
        if term is None:
            return
        meta = SnapshotMeta(host.applied, term, node.voters_at(host.applied),
                            node.learners_at(host.applied))
        snap = Snapshot(meta, host.sm.snapshot())
        node.compact(snap)
        host.durable.compact(snap)


class ignore_consensus_errors:
    """Suppress the errors a real client would retry (not leader, dropped, bad transfer)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> bool:
        return exc_type is not None and issubclass(exc_type, ConsensusError) and not issubclass(
            exc_type, InvariantViolation)
