"""Deterministic Raft simulator: N ``RaftNode`` hosts, an in-memory network and a model
of durable storage, all driven by one ``random.Random(seed)``. No IO, no clock, no threads.

Faults: partitions (symmetric, asymmetric, isolating the leader), drops, duplicates,
delays/reordering, crash-restart from durable state, including a torn last write (a crash
while persisting a Ready loses all of it; its messages were never sent). Workload: random
proposals, ReadIndex reads, compaction with snapshots, leadership transfers,
(``p_conf``) single-server membership changes and (``p_learner``) learner steps: spare
hosts join as learners, are promoted, old voters are removed, learners are dropped, and
steps already in force must be refused without appending anything. The
``InvariantChecker`` runs after every step, and every commit a leader decides by counting
is checked against the durable logs of its voters; any failure raises
``InvariantViolation`` with the seed and a replay command. Same seed + same ``SimConfig`` ⇒
identical run. The fault and membership steps are in ``consensus.sim_faults``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TypeVar

from consensus.codec import decode_conf_change
from consensus.config import RaftConfig
from consensus.core import RaftNode
from consensus.invariants import InvariantChecker, InvariantViolation
from consensus.sim_config import SimConfig, SimResult
from consensus.sim_faults import FaultInjection, ignore_consensus_errors
from consensus.sim_model import Host, KVStateMachine, MembershipLog
from consensus.types import Entry, EntryKind, Message, Role

NodeFactory = Callable[..., RaftNode]
T = TypeVar("T")

REPLAY_HINT = "RAFTPS_SEED={seed} pytest tests/sim -k replay"


class LivenessError(InvariantViolation):
    """After healing every fault, the cluster did not elect a leader and commit in time."""


class Simulator(FaultInjection):
    """A seeded cluster run. ``step()`` applies random faults and workload, delivers due
    messages, runs every live host's Ready loop and checks the invariants."""

    def __init__(self, seed: int, config: SimConfig | None = None,
                 node_factory: NodeFactory = RaftNode) -> None:
        self.seed = seed
        self.cfg = config or SimConfig()
        self.rng = random.Random(seed)
        self.factory = node_factory
        self.voters0 = tuple(range(1, self.cfg.nodes + 1))  # the bootstrap voters
        self.ids = tuple(range(1, self.cfg.nodes + self.cfg.spares + 1))  # every host
        # spares start with the bootstrap voters, as replicas start joiners: the base the
        # log's membership changes replay from
        self.hosts = {i: Host(i, voters=self.voters0) for i in self.ids}
        self.net: list[tuple[int, Message]] = []
        self.blocked: set[tuple[int, int]] = set()
        self.now = 0
        self.faults = True
        self.checker = InvariantChecker()
        self.result = SimResult(seed, 0)
        self.proposals: dict[bytes, tuple[int, int, int]] = {}  # data -> (node, term, index)
        self.acked: dict[bytes, tuple[int, int, tuple[int, ...]]] = {}  # index, term, voters
        self.max_acked = 0
        self.commit_voters: dict[int, tuple[int, ...]] = {}  # index -> voters at commit
        self.reads: dict[bytes, int] = {}  # ctx -> index it must be at least
        self.members = MembershipLog(self.voters0)
        self._counter = 0
        for host in self.hosts.values():
            self._start(host)

    # ---------------------------------------------------------------- lifecycle

    def _raft_config(self, node_id: int) -> RaftConfig:
        c = self.cfg
        return RaftConfig(
            id=node_id, voters=self.hosts[node_id].voters,
            election_ticks=c.election_ticks,
            pre_vote=c.pre_vote, check_quorum=c.check_quorum, max_msg_bytes=c.max_msg_bytes,
            max_inflight_bytes=c.max_inflight_bytes, snapshot_chunk_bytes=c.snapshot_chunk_bytes,
            lost_state=self.hosts[node_id].lost)

    def _start(self, host: Host) -> None:
        """(Re)start ``host`` from its durable state, as a real process restart would."""
        d = host.durable
        host.node = self.factory(self._raft_config(host.id),
                                 random.Random(self.rng.getrandbits(64)),
                                 hard_state=d.hard_state, snapshot=d.snapshot,
                                 entries=list(d.entries))
        host.sm = KVStateMachine()
        host.applied = 0
        if d.snapshot is not None:
            host.sm.restore(d.snapshot.data)
            host.applied = d.snapshot.meta.index
        host.torn_next = False

    def _crash(self, host: Host, *, torn: bool) -> None:
        host.node = None
        if self.cfg.p_peer_gone > 0:
            for node in self.live():
                if self.rng.random() < self.cfg.p_peer_gone:
                    node.peer_gone(host.id)
                    self.result.gone_hints += 1
        host.torn_next = False
        self.result.crashes += 1
        self.result.torn_writes += int(torn)
        self.check_acked_durable()

    def live(self) -> list[RaftNode]:
        return [h.node for h in self.hosts.values() if h.node is not None]

    def leaders(self) -> list[RaftNode]:
        return [n for n in self.live() if n.role == Role.LEADER]

    # ---------------------------------------------------------------- one step

    def step(self) -> None:
        self.now += 1
        self.result.steps = self.now
        try:
            if self.faults:
                self._faults()
            self._workload()
            self._deliver()
            for host in self.rng.sample(list(self.hosts.values()), len(self.hosts)):
                self._process(host)
            self.checker.check_nodes(self.live())
            for node in self.live():
                if node.role != Role.FOLLOWER:
                    self._check_membership(node)
        except InvariantViolation as exc:
            hint = REPLAY_HINT.format(seed=self.seed)
            raise type(exc)(f"{exc} [seed={self.seed} step={self.now}; replay: {hint}]") from exc

    def run(self, steps: int) -> SimResult:
        for _ in range(steps):
            self.step()
        return self.result

    def _workload(self) -> None:
        c, rng = self.cfg, self.rng
        if rng.random() < c.p_tick:
            for node in self.live():
                node.tick()
        if rng.random() < c.p_propose:
            self.propose()
        if rng.random() < c.p_read:
            leaders = self.leaders()
            if leaders:
                ctx = f"r{self.now}".encode()
                with ignore_consensus_errors():
                    rng.choice(leaders).read_index(ctx)
                    self.reads[ctx] = self.max_acked

    def propose(self) -> bytes | None:
        """Have a (random) leader propose a fresh command; returns it, or None."""
        leaders = self.leaders()
        if not leaders:
            return None
        node = self.rng.choice(leaders)
        self._counter += 1
        data = f"k{self._counter % 7}={self._counter}".encode()
        with ignore_consensus_errors():
            index = node.propose(data)
            self.proposals[data] = (node.id, node.term, index)
            return data
        return None

    # ---------------------------------------------------------------- network

    def _send(self, msg: Message) -> None:
        self.checker.on_send(msg, self.hosts[msg.src].durable.hard_state)
        rng, c = self.rng, self.cfg
        if self.faults and rng.random() < c.p_drop:
            return
        self.net.append((self.now + rng.randint(0, c.max_delay), msg))
        if self.faults and rng.random() < c.p_dup:
            self.net.append((self.now + rng.randint(0, c.max_delay), msg))

    def _deliver(self) -> None:
        now = self.now
        due = [m for t, m in self.net if t <= now]
        if not due:
            return
        self.net = [(t, m) for t, m in self.net if t > now]
        self.rng.shuffle(due)
        for msg in due:
            if (msg.src, msg.dst) in self.blocked:
                continue
            node = self.hosts[msg.dst].node if msg.dst in self.hosts else None
            if node is not None:
                self.result.messages += 1
                self._observe_commit(node, node.step, msg)

    # ---------------------------------------------------------------- the host's Ready loop

    def _process(self, host: Host) -> None:
        """persist → send → restore/apply → answer reads → advance (see ``Ready``)."""
        for _ in range(3):
            node = host.node
            if node is None or not node.has_ready():
                return
            rd = node.ready()
            if self.faults and self.cfg.p_step_in_flight > 0:
                self._while_persisting(host, node)
            if host.torn_next:
                if rd.send_before_persist:  # thesis §10.2.1: sent, then crashed before sync
                    for msg in rd.messages:
                        self._send(msg)
                self._crash(host, torn=True)  # the Ready was never durable
                return
            prev_term = node.term_at(rd.entries[0].index - 1) if rd.entries else None
            host.durable.persist(rd)
            if rd.hard_state is not None:
                self.checker.on_hard_state(host.id, rd.hard_state)
            own = [e for e in rd.entries if e.term == rd.term] if rd.role == Role.LEADER else []
            self.checker.on_persist(node, rd.entries, prev_term, as_leader=False)
            self.checker.on_persist(node, own, node.term_at(own[0].index - 1) if own else None,
                                    as_leader=True)
            for msg in rd.messages:
                self._send(msg)
            if rd.snapshot is not None:
                host.sm.restore(rd.snapshot.data)
                host.applied = rd.snapshot.meta.index
                self.result.snapshots_installed += 1
                self.checker.on_snapshot(host.id, host.applied, host.sm.digest())
            for entry in rd.committed_entries:
                self._apply(host, entry)
            for rs in rd.read_states:
                self._check_read(host, rs.ctx, rs.index)
            self._observe_commit(node, node.advance, rd)

    def _while_persisting(self, host: Host, node: RaftNode) -> None:
        """The host's disk (or apply) thread holds the Ready just taken: meanwhile the core
        is stepped with the messages due to it, may tick, and its early messages go out."""
        if self.rng.random() >= self.cfg.p_step_in_flight:
            return
        now = self.now
        mine = [(t, m) for t, m in self.net
                if t <= now and m.dst == host.id and (m.src, m.dst) not in self.blocked]
        if mine:
            self.net = [item for item in self.net if item not in mine]
        for _, msg in mine:
            self.result.messages += 1
            self._observe_commit(node, node.step, msg)
        if self.rng.random() < 0.5:
            node.tick()
        for msg in node.early_messages():
            self.result.early_messages += 1
            self._send(msg)

    def _observe_commit(self, node: RaftNode, action: Callable[[T], object], arg: T) -> None:
        """Run ``action(arg)``; if it made a leader commit by counting, remember the voters it
        counted (the configuration at commit time, thesis §4.1) for the durability check."""
        was_leader, before = node.role == Role.LEADER, node.commit_index
        action(arg)
        counted = node.role == Role.LEADER or node.id not in node.voters  # removed leader
        if was_leader and counted and node.commit_index > before:
            voters = node.voters
            self._check_commit_quorum(node, voters)
            for index in range(before + 1, node.commit_index + 1):
                self.commit_voters.setdefault(index, voters)

    def _check_membership(self, node: RaftNode) -> None:
        """Membership Agreement: a node that campaigns or leads sees, at its commit index,
        the voters and learners the committed log puts in force there."""
        index = max(min(node.commit_index, self.result.max_commit), node.log.snapshot_index)
        mine = (node.voters_at(index), node.learners_at(index))
        truth = self.members.at(index)
        if mine != truth:
            raise InvariantViolation(
                f"Membership Agreement: node {node.id} is {node.role.name.lower()} in term "
                f"{node.term} seeing voters {mine[0]} and learners {mine[1]} at index {index}, "
                f"where the committed log has voters {truth[0]} and learners {truth[1]}")

    def _check_commit_quorum(self, node: RaftNode, voters: tuple[int, ...]) -> None:
        """Commit Quorum: the entry a leader just committed by counting is durable on a
        quorum of its VOTERS (learners count for nothing), by Log Matching with all before
        it. A voter that lost its disk since it acknowledged is allowed for as in
        ``check_acked_durable``."""
        index = node.commit_index
        term = node.term_at(index)
        held = [v for v in voters if term is not None
                and self.hosts[v].durable.holds(index, term)]
        if len(held) >= len(voters) // 2 + 1:
            return
        if any(self.hosts[v].lost for v in voters):
            kept = [v for v in held if not self.hosts[v].lost]
            if len(kept) >= self._holders_needed(voters):
                return
        raise InvariantViolation(
            f"Commit Quorum: leader {node.id} (term {node.term}) committed index {index} "
            f"(term {term}) held durably by only {held} of its voters {voters} (learners "
            f"{node.learners})")

    def _apply(self, host: Host, entry: Entry) -> None:
        if entry.index != host.applied + 1:
            raise InvariantViolation(
                f"node {host.id} applied index {entry.index} right after {host.applied}")
        host.applied = entry.index
        data = bytes(entry.data)
        if entry.kind == EntryKind.NORMAL:
            host.sm.apply(data)
        self.checker.on_apply(host.id, entry, host.sm.digest())
        self.result.max_commit = max(self.result.max_commit, entry.index)
        if entry.kind == EntryKind.CONF_CHANGE:
            self.members.commit(entry.index, decode_conf_change(data), self.result)
        if self.proposals.get(data) == (host.id, entry.term, entry.index):
            voters = self.commit_voters.get(entry.index, self.voters0)
            self.acked[data] = (entry.index, entry.term, voters)
            self.max_acked = max(self.max_acked, entry.index)
            self.result.acked = len(self.acked)
            if self.members.replaced_at and entry.index > self.members.replaced_at:
                self.result.acked_after_replacement += 1

    def _check_read(self, host: Host, ctx: bytes, index: int) -> None:
        floor = self.reads.pop(ctx, None)
        if floor is not None and index < floor:
            raise InvariantViolation(
                f"ReadIndex linearizability: node {host.id} answered read {ctx!r} at index "
                f"{index}, below write {floor} acknowledged before the read began")
        self.result.reads += 1

    # ---------------------------------------------------------------- end-of-run checks

    def check_acked_durable(self) -> None:
        """No acknowledged proposal is lost: each stays on the durable state of a majority
        of the voters that committed it."""
        for data, (index, term, voters) in self.acked.items():
            holders = sum(1 for v in voters if self.hosts[v].durable.holds(index, term)
                          and not self.hosts[v].lost)
            if holders < self._holders_needed(voters):
                raise InvariantViolation(
                    f"acknowledged proposal {data!r} (index {index}, term {term}) is durable "
                    f"on only {holders} of its voters {voters}")

    def _holders_needed(self, voters: tuple[int, ...]) -> int:
        """Durable copies an acknowledged entry needs among voters that may still vote: a
        majority; with ``lost`` voters (who never vote again), enough that every quorum of
        the others includes one (an election winner then has the entry, §5.4.1)."""
        lost = sum(1 for v in voters if self.hosts[v].lost)
        quorum = len(voters) // 2 + 1
        return quorum if lost == 0 else len(voters) - lost - quorum + 1

    def heal_and_check_liveness(self) -> None:
        """Heal every fault and restart every node; a leader must then commit a fresh entry
        and every node must apply everything acknowledged. Raises LivenessError if not."""
        self.faults = False
        self.blocked.clear()
        for host in self.hosts.values():
            host.torn_next = False
            if host.node is None:
                self._start(host)
        marker: bytes | None = None
        for _ in range(self.cfg.heal_steps):
            self.step()
            if marker is None or (marker not in self.acked and self._proposer_gone(marker)):
                marker = self.propose()
            if marker in self.acked:
                index, _term, voters = self.acked[marker]
                need = max(self.max_acked, index)
                members = (*voters, *self.members.learners)
                if all(self.hosts[v].applied >= need for v in members):
                    break
        else:
            raise LivenessError(
                f"no leader committed a fresh entry on every member within "
                f"{self.cfg.heal_steps} steps after healing (seed={self.seed}; replay: "
                f"{REPLAY_HINT.format(seed=self.seed)}); status: "
                f"{[n.status() for n in self.live()]}")
        self.check_acked_durable()
        self.result.leaders = len(self.checker._leader_of_term)
        self.result.max_term = max((n.term for n in self.live()), default=0)

    def _proposer_gone(self, data: bytes) -> bool:
        node_id, term, _index = self.proposals[data]
        node = self.hosts[node_id].node
        return node is None or node.term != term or node.role != Role.LEADER


def run_seed(seed: int, steps: int = 400, config: SimConfig | None = None,
             node_factory: NodeFactory = RaftNode) -> SimResult:
    """Run one reproducible simulation: ``steps`` faulty steps, then heal and check
    liveness. Raises InvariantViolation (with seed and replay command) on any failure."""
    sim = Simulator(seed, config, node_factory)
    sim.run(steps)
    sim.heal_and_check_liveness()
    return sim.result
