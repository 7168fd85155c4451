"""The Raft paper's rules (Ongaro & Ousterhout 2014), one test per rule, citing its section.

Also home of ``Net``, a tiny synchronous harness (no faults, FIFO delivery) reused by
test_raft_features.py.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from consensus.config import RaftConfig
from consensus.core import RaftNode
from consensus.types import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    HardState,
    Message,
    ReadState,
    RequestVote,
    RequestVoteResponse,
    Role,
    Snapshot,
)


def make_node(node_id: int, voters: tuple[int, ...] = (1, 2, 3), *, terms: Sequence[int] = (),
              term: int = 0, seed: int = 0, **kw: object) -> RaftNode:
    """A node restarted with a log whose entry ``i+1`` has term ``terms[i]``."""
    entries = [Entry(t, i + 1, data=f"{i + 1}@{t}".encode()) for i, t in enumerate(terms)]
    hs = HardState(term=max([term, *terms], default=0))
    cfg = RaftConfig(id=node_id, voters=voters, **kw)  # type: ignore[arg-type]
    return RaftNode(cfg, random.Random(seed * 1000 + node_id), hard_state=hs, entries=entries)


def log_terms(node: RaftNode) -> list[int | None]:
    return [node.term_at(i) for i in range(1, node.last_index + 1)]


class Net:
    """Runs nodes' Ready loops and delivers every message in FIFO order, synchronously."""

    def __init__(self, nodes: dict[int, RaftNode]) -> None:
        self.nodes = nodes
        self.isolated: set[int] = set()
        self.applied: dict[int, list[Entry]] = {i: [] for i in nodes}
        self.snapshots: dict[int, Snapshot] = {}
        self.reads: dict[int, list[ReadState]] = {i: [] for i in nodes}
        self.sent: list[Message] = []

    @classmethod
    def of(cls, n: int = 3, **kw: object) -> Net:
        ids = tuple(range(1, n + 1))
        return cls({i: make_node(i, ids, **kw) for i in ids})  # type: ignore[arg-type]

    def add(self, node: RaftNode) -> None:
        self.nodes[node.id] = node
        self.applied[node.id] = []
        self.reads[node.id] = []

    def flush(self) -> list[Message]:
        """One Ready round on every node: persist (no-op), collect messages, apply, advance."""
        out: list[Message] = []
        for node_id, node in self.nodes.items():
            if not node.has_ready():
                continue
            rd = node.ready()
            out.extend(rd.messages)
            if rd.snapshot is not None:
                self.snapshots[node_id] = rd.snapshot
                self.applied[node_id] = []
            self.applied[node_id].extend(rd.committed_entries)
            self.reads[node_id].extend(rd.read_states)
            node.advance(rd)
        self.sent.extend(out)
        return out

    def deliver(self, msgs: list[Message]) -> None:
        for m in msgs:
            if m.src in self.isolated or m.dst in self.isolated or m.dst not in self.nodes:
                continue
            self.nodes[m.dst].step(m)

    def pump(self, limit: int = 200) -> None:
        for _ in range(limit):
            msgs = self.flush()
            if not msgs and not any(n.has_ready() for n in self.nodes.values()):
                return
            self.deliver(msgs)
        raise AssertionError("messages still flowing after pump limit")

    def tick_all(self, ticks: int) -> None:
        for _ in range(ticks):
            for node_id, node in self.nodes.items():
                if node_id not in self.isolated:
                    node.tick()
            self.pump()

    def elect(self, node_id: int) -> RaftNode:
        node = self.nodes[node_id]
        for _ in range(4 * node.config.election_ticks):
            if node.role != Role.FOLLOWER:
                break
            node.tick()
        self.pump()
        assert node.role == Role.LEADER, node.status()
        return node

    def leader(self) -> RaftNode:
        leaders = [n for i, n in self.nodes.items() if n.role == Role.LEADER
                   and i not in self.isolated]
        assert len(leaders) == 1, [n.status() for n in self.nodes.values()]
        return leaders[0]


def vote(node: RaftNode, src: int, term: int, last_index: int, last_term: int,
         pre: bool = False) -> RequestVoteResponse:
    node.step(RequestVote(src, node.id, term, last_index, last_term, pre_vote=pre))
    msgs = node.ready().messages
    assert len(msgs) == 1 and isinstance(msgs[0], RequestVoteResponse)
    return msgs[0]


# ---------------------------------------------------------------------- §5.2 elections


def test_one_vote_per_term_5_2() -> None:
    """§5.2: each server votes for at most one candidate in a given term, first-come."""
    node = make_node(1)
    assert vote(node, 2, 1, 0, 0).granted
    assert not vote(node, 3, 1, 0, 0).granted
    assert vote(node, 2, 1, 0, 0).granted  # a retransmitted request gets the same answer
    assert node.vote == 2
    assert vote(node, 3, 2, 0, 0).granted  # a new term frees the vote


def test_vote_survives_restart_5_2() -> None:
    """§5.2/Figure 2: votedFor is persistent, so a restarted node cannot vote twice."""
    node = make_node(1)
    assert vote(node, 2, 1, 0, 0).granted
    restarted = RaftNode(node.config, random.Random(1), hard_state=HardState(1, 2, 0))
    assert not vote(restarted, 3, 1, 0, 0).granted


def test_election_timeouts_are_randomized_and_seeded_5_2() -> None:
    """§5.2: timeouts are drawn from [T, 2T) with the injected RNG, so seeds replay."""
    def first_campaign(seed: int) -> int:
        node = make_node(1, seed=seed)
        for tick in range(1, 100):
            node.tick()
            if node.role != Role.FOLLOWER:
                return tick
        raise AssertionError("never campaigned")

    ticks = [first_campaign(s) for s in range(30)]
    assert all(10 <= t < 20 for t in ticks)
    assert len(set(ticks)) > 3
    assert ticks == [first_campaign(s) for s in range(30)]


# ---------------------------------------------------------------------- §5.4.1 up-to-date


@pytest.mark.parametrize(("last_index", "last_term", "granted"), [
    (2, 2, True),  # identical
    (3, 2, True),  # same last term, longer
    (1, 3, True),  # higher last term wins even if shorter
    (1, 2, False),  # same last term, shorter
    (5, 1, False),  # lower last term loses even if longer
])
def test_up_to_date_check_5_4_1(last_index: int, last_term: int, granted: bool) -> None:
    """§5.4.1: vote only for a candidate whose log is at least as up-to-date as ours."""
    node = make_node(1, terms=(1, 2), term=2)
    assert vote(node, 2, 3, last_index, last_term).granted is granted
    assert node.vote == (2 if granted else None)


# ---------------------------------------------------------------------- §5.3 log matching


def append(node: RaftNode, prev: int, prev_term: int, terms_from: Sequence[tuple[int, int]],
           commit: int = 0, term: int = 5) -> AppendEntriesResponse:
    entries = tuple(Entry(t, i, data=f"{i}@{t}".encode()) for i, t in terms_from)
    node.step(AppendEntries(2, node.id, term, prev, prev_term, entries, commit))
    msgs = node.ready().messages
    assert isinstance(msgs[-1], AppendEntriesResponse)
    return msgs[-1]


def test_log_matching_consistency_check_5_3() -> None:
    """§5.3: a follower refuses entries whose predecessor (index, term) it lacks, and
    replaces a conflicting suffix, but never truncates on a duplicate/reordered append."""
    node = make_node(1, terms=(1, 1, 2))
    rejected = append(node, 3, 3, [(4, 3)])
    assert not rejected.success and rejected.hint_index <= 3
    assert log_terms(node) == [1, 1, 2]
    assert append(node, 2, 1, [(3, 3), (4, 3)]).success  # conflict at 3: replace suffix
    assert log_terms(node) == [1, 1, 3, 3]
    assert append(node, 2, 1, [(3, 3)]).success  # stale duplicate: keep entry 4
    assert log_terms(node) == [1, 1, 3, 3]
    assert append(node, 4, 3, [], commit=9).match_index == 4
    assert node.commit_index == 4  # commit = min(leaderCommit, index of last new entry)


# ---------------------------------------------------------------------- §5.4 completeness


def test_leader_completeness_5_4() -> None:
    """§5.4: a node missing committed entries cannot be elected; the elected leader has
    every committed entry."""
    net = Net.of(3)
    net.elect(1)
    net.isolated.add(3)
    for i in range(5):
        net.nodes[1].propose(f"c{i}".encode())
    net.pump()
    committed = net.nodes[1].commit_index
    assert committed == 6  # NOOP + 5
    net.isolated = {1}
    node3 = net.nodes[3]
    for _ in range(60):  # node 3 times out repeatedly but node 2 refuses it
        node3.tick()
        net.pump()
    assert node3.role != Role.LEADER
    net.nodes[2].tick()
    for _ in range(60):
        if net.nodes[2].role == Role.LEADER:
            break
        net.tick_all(1)
    leader = net.leader()
    assert leader.id == 2
    assert all(leader.term_at(i) == net.nodes[1].term_at(i) for i in range(1, committed + 1))


# ---------------------------------------------------------------------- §5.4.2 Figure 8


def _lead(node: RaftNode, voters: Sequence[int]) -> None:
    """Make ``node`` leader by feeding it granted (pre-)votes from ``voters``."""
    for _ in range(4 * node.config.election_ticks):
        node.tick()
        if node.role != Role.FOLLOWER:
            break
    for _ in range(2):
        pre = node.role == Role.PRE_CANDIDATE
        term = node.term + 1 if pre else node.term
        for v in voters:
            node.step(RequestVoteResponse(v, node.id, term, True, pre))
    assert node.role == Role.LEADER


def test_commit_only_current_term_by_counting_5_4_2_figure_8() -> None:
    """§5.4.2/Figure 8: an entry of an earlier term on a majority is NOT committed by
    counting; it commits once an entry of the leader's term is on a majority."""
    leader = make_node(1, terms=(1, 2), term=3)
    _lead(leader, [2])
    term = leader.term
    assert leader.term_at(3) == term  # the NOOP of the new term (§8)
    rd = leader.ready()
    leader.advance(rd)
    leader.step(AppendEntriesResponse(2, 1, term, True, 2))
    assert leader.commit_index == 0  # index 2 (term 2) is on 2 of 3, yet not committed
    leader.step(AppendEntriesResponse(2, 1, term, True, 3))
    assert leader.commit_index == 3  # committing the NOOP commits 1..2 indirectly


# ---------------------------------------------------------------------- §5.3 Figure 7

FIGURE_7_LEADER = (1, 1, 1, 4, 4, 5, 5, 6, 6, 6)


@pytest.mark.parametrize(("case", "terms"), [
    ("a", (1, 1, 1, 4, 4, 5, 5, 6, 6)),
    ("b", (1, 1, 1, 4)),
    ("c", (1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6)),
    ("d", (1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7)),
    ("e", (1, 1, 1, 4, 4, 4, 4)),
    ("f", (1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3)),
])
def test_leader_repairs_follower_logs_figure_7(case: str, terms: tuple[int, ...]) -> None:
    """§5.3/Figure 7 (a)-(f): whatever the follower's log, the leader of term 8 makes it
    identical to its own, with few round trips thanks to the conflict-term hint."""
    net = Net({
        1: make_node(1, terms=FIGURE_7_LEADER, term=7),
        2: make_node(2, terms=terms, term=7),
        3: make_node(3, terms=FIGURE_7_LEADER, term=7),
    })
    net.isolated.add(2)
    leader = net.elect(1)
    net.isolated.clear()
    net.tick_all(1)
    follower = net.nodes[2]
    assert log_terms(follower) == log_terms(leader) == [*FIGURE_7_LEADER, leader.term]
    rejections = [m for m in net.sent if isinstance(m, AppendEntriesResponse)
                  and m.src == 2 and not m.success]
    assert len(rejections) <= 3, f"case {case}: {len(rejections)} rejections"
    assert follower.commit_index == leader.commit_index == 11
