"""Raft features beyond the basic paper: pre-vote, check-quorum, stickiness, batching,
pipelining, flow control, chunked snapshots, transfer, ReadIndex, membership, restart."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from consensus.codec import decode_conf_change, encode_conf_change
from consensus.config import RaftConfig
from consensus.core import RaftNode
from consensus.errors import ConfigError, NotLeaderError, ProposalDroppedError
from consensus.raft_log import ENTRY_OVERHEAD
from consensus.types import (
    AppendEntries,
    ConfChange,
    ConfChangeKind,
    Entry,
    EntryKind,
    HardState,
    InstallSnapshot,
    InstallSnapshotResponse,
    RequestVote,
    Role,
    Snapshot,
    SnapshotMeta,
    TimeoutNow,
)
from tests.unit.test_raft_paper import Net, make_node


def test_config_validation_says_what_to_change() -> None:
    with pytest.raises(ConfigError, match="election_ticks"):
        RaftConfig(id=1, voters=(1,), election_ticks=1, heartbeat_ticks=1)
    with pytest.raises(ConfigError, match="distinct"):
        RaftConfig(id=1, voters=(1, 1))
    with pytest.raises(ConfigError, match="max_inflight_bytes"):
        RaftConfig(id=1, voters=(1,), max_msg_bytes=10, max_inflight_bytes=5)


def test_conf_change_codec_round_trips_and_rejects_garbage() -> None:
    cc = ConfChange(ConfChangeKind.REMOVE, 7)
    assert decode_conf_change(encode_conf_change(cc)) == cc
    with pytest.raises(ConfigError):
        decode_conf_change(b"nope")


@pytest.mark.parametrize("pre_vote", [True, False])
def test_pre_vote_keeps_rejoining_node_from_disrupting_term(pre_vote: bool) -> None:
    """Thesis §9.6: a partitioned node does not inflate its term, so on rejoining it does
    not depose the leader. Without pre-vote (control) it does."""
    net = Net.of(3, pre_vote=pre_vote, check_quorum=False)
    leader = net.elect(1)
    term = leader.term
    net.isolated.add(3)
    for _ in range(100):
        net.nodes[3].tick()
        net.pump()
    net.isolated.clear()
    net.tick_all(3)
    if pre_vote:
        assert net.nodes[3].term == term and leader.role == Role.LEADER and leader.term == term
    else:
        assert net.nodes[3].term > term and leader.term > term


@pytest.mark.parametrize("check_quorum", [True, False])
def test_check_quorum_isolated_leader_steps_down(check_quorum: bool) -> None:
    """Thesis §6.2: a leader that heard from no quorum for an election timeout steps down."""
    net = Net.of(3, check_quorum=check_quorum)
    leader = net.elect(1)
    net.isolated.add(1)
    for _ in range(2 * leader.config.election_ticks):
        leader.tick()
        net.pump()
    assert (leader.role == Role.FOLLOWER) is check_quorum


def test_leader_stickiness_ignores_votes_unless_transfer() -> None:
    """Thesis §4.2.3: a follower that heard from its leader recently ignores RequestVote
    (no term bump, no answer) unless it is a leadership-transfer election."""
    net = Net.of(3)
    net.elect(1)
    follower = net.nodes[2]
    term = follower.term
    follower.step(RequestVote(3, 2, term + 5, 99, term))
    assert follower.term == term and not follower.ready().messages
    follower.step(RequestVote(3, 2, term + 5, 99, term, transfer=True))
    assert follower.term == term + 5 and follower.ready().messages[0].granted  # type: ignore
    loose = Net.of(3, check_quorum=False)
    loose.elect(1)
    loose.nodes[2].step(RequestVote(3, 2, term + 5, 99, term))
    assert loose.nodes[2].term == term + 5  # control: no stickiness without check-quorum


def _appends(msgs: Sequence[object], dst: int) -> list[AppendEntries]:
    return [m for m in msgs if isinstance(m, AppendEntries) and m.dst == dst and m.entries]


def test_batching_packs_many_proposals_per_append_up_to_max_msg_bytes() -> None:
    """Proposals between two Ready rounds travel in few AppendEntries, each within
    max_msg_bytes of payload."""
    net = Net.of(3, max_msg_bytes=1000)
    leader = net.elect(1)
    for i in range(40):
        leader.propose(bytes([i]) * 100)
    msgs = _appends(leader.ready().messages, 2)
    sizes = [sum(len(e.data) + ENTRY_OVERHEAD for e in m.entries) for m in msgs]
    assert sum(len(m.entries) for m in msgs) == 40
    assert len(msgs) == 5 and all(s <= 1000 for s in sizes)
    assert [m.prev_log_index for m in msgs] == [1, 9, 17, 25, 33]  # pipelined, no ack yet


def test_flow_control_caps_bytes_in_flight_then_resumes_on_ack() -> None:
    """Unacknowledged entry bytes to one follower never exceed max_inflight_bytes."""
    net = Net.of(3, max_msg_bytes=1000, max_inflight_bytes=2000)
    leader = net.elect(1)
    for i in range(40):
        leader.propose(bytes([i]) * 100)
    rd = leader.ready()
    leader.advance(rd)
    first = _appends(rd.messages, 2)
    in_flight = sum(len(e.data) + ENTRY_OVERHEAD for m in first for e in m.entries)
    assert 1000 < in_flight <= 2000
    assert first[-1].entries[-1].index < 41  # the rest waits for acks
    net.deliver([m for m in rd.messages if m.dst == 2])
    rd2 = net.nodes[2].ready()
    net.nodes[2].advance(rd2)
    net.deliver(rd2.messages)  # acks free the window
    rd = leader.ready()
    leader.advance(rd)
    more = _appends(rd.messages, 2)
    assert more and more[0].prev_log_index == first[-1].entries[-1].index
    net.deliver(rd.messages)
    net.pump()
    assert net.nodes[2].last_index == leader.last_index == 41


def test_lost_pipelined_appends_are_retried_after_stall() -> None:
    net = Net.of(3)
    leader = net.elect(1)
    leader.propose(b"x")
    leader.advance(leader.ready())  # the append to both followers is lost
    for _ in range(5):
        net.tick_all(1)
    assert net.nodes[2].last_index == net.nodes[3].last_index == 2
    assert leader.commit_index == 2


def test_a_large_entry_in_flight_gets_time_before_it_is_resent() -> None:
    """A follower still writing a 40 MB entry answers heartbeats without acking it; the
    leader waits 3 + 40 MB / stall_beat_bytes beats before resending it (resending after 3
    beats, as for small entries, flooded slow followers with copies)."""
    net = Net.of(3, stall_beat_bytes=4 << 20, max_msg_bytes=64 << 20,
                 max_inflight_bytes=64 << 20)
    leader = net.elect(1)
    leader.propose(b"w" * (40 << 20))
    first = leader.ready()  # the append goes out ... and is lost
    assert any(isinstance(m, AppendEntries) and m.entries for m in first.messages)
    leader.advance(first)

    def resent() -> bool:
        rd = leader.ready()
        leader.advance(rd)
        return any(isinstance(m, AppendEntries) and m.entries for m in rd.messages)

    beats = 0
    while not resent():
        for _ in range(leader.config.heartbeat_ticks):
            leader.tick()
        beats += 1
        assert beats < 100
    assert beats == 3 + (40 << 20) // (4 << 20)


def _compacted_cluster(chunk: int) -> tuple[Net, RaftNode]:
    net = Net.of(3, snapshot_chunk_bytes=chunk)
    leader = net.elect(1)
    net.isolated.add(3)
    for i in range(20):
        leader.propose(f"v{i}".encode())
    net.pump()
    index = leader.commit_index
    snap = Snapshot(SnapshotMeta(index, leader.term, leader.voters_at(index)), b"S" * 250)
    leader.compact(snap)
    assert leader.term_at(5) is None  # the prefix is gone
    return net, leader


def test_chunked_snapshot_install_for_lagging_follower() -> None:
    """§7: a follower behind the leader's compacted prefix gets the snapshot in chunks and
    then normal appends."""
    net, leader = _compacted_cluster(chunk=64)
    net.isolated.clear()
    net.tick_all(3)
    chunks = [m for m in net.sent if isinstance(m, InstallSnapshot) and m.dst == 3]
    assert len({m.offset for m in chunks}) == 4  # 250 bytes in 64-byte chunks
    assert net.snapshots[3].data == b"S" * 250
    node3 = net.nodes[3]
    assert node3.last_index == leader.last_index and node3.commit_index == leader.commit_index


def test_snapshot_chunk_gap_restarts_from_expected_offset() -> None:
    node = make_node(3)
    meta = SnapshotMeta(10, 1, (1, 2, 3))
    node.step(InstallSnapshot(1, 3, 1, meta, 0, b"a" * 4, False))
    node.step(InstallSnapshot(1, 3, 1, meta, 8, b"c" * 4, False))  # chunk at 4 lost
    node.step(InstallSnapshot(1, 3, 1, SnapshotMeta(12, 1, (1, 2, 3)), 4, b"x", False))
    replies = [m for m in node.ready().messages if isinstance(m, InstallSnapshotResponse)]
    assert [(r.next_offset, r.done) for r in replies] == [(4, False), (4, False), (0, False)]
    node.step(InstallSnapshot(1, 3, 1, meta, 0, b"a" * 4, False))
    node.step(InstallSnapshot(1, 3, 1, meta, 4, b"b" * 4, True))
    rd = node.ready()
    assert rd.snapshot == Snapshot(meta, b"aaaabbbb") and node.commit_index == 10


def test_leadership_transfer_catches_up_then_hands_over() -> None:
    """Thesis §3.10: proposals stop, the target is caught up, then TimeoutNow."""
    net = Net.of(3)
    leader = net.elect(1)
    net.isolated.add(2)
    leader.propose(b"x")
    net.pump()
    net.isolated.clear()
    leader.transfer_leadership(2)
    with pytest.raises(ProposalDroppedError):
        leader.propose(b"y")
    net.pump()
    assert any(isinstance(m, TimeoutNow) and m.dst == 2 for m in net.sent)
    assert net.leader().id == 2 and leader.role == Role.FOLLOWER
    assert net.nodes[2].term_at(2) is not None


def test_read_index_needs_quorum_heartbeat_and_current_term_commit() -> None:
    """Thesis §6.4: answered at the commit index only after a quorum confirms leadership."""
    net = Net.of(3)
    leader = net.elect(1)
    leader.read_index(b"r1")
    rd = leader.ready()
    assert not rd.read_states  # not before a heartbeat round
    beats = [m for m in rd.messages if isinstance(m, AppendEntries) and m.ctx > 0]
    assert {m.dst for m in beats} == {2, 3}
    leader.advance(rd)
    net.deliver(rd.messages)
    net.pump()
    assert [(rs.ctx, rs.index) for rs in net.reads[1]] == [(b"r1", leader.commit_index)]
    net.isolated.add(1)
    leader.read_index(b"r2")
    for _ in range(3):
        leader.tick()
        net.pump()
    assert len(net.reads[1]) == 1  # no quorum: r2 is never answered
    with pytest.raises(NotLeaderError):
        net.nodes[2].read_index(b"r3")


def test_new_leader_defers_reads_until_it_commits_in_its_term() -> None:
    leader = make_node(1, terms=(1, 1), term=1)
    for _ in range(40):
        leader.tick()
        if leader.role != Role.FOLLOWER:
            break
    from tests.unit.test_raft_paper import _lead
    if leader.role != Role.LEADER:
        _lead(leader, [2])
    leader.read_index(b"early")
    assert leader._pending_reads == type(leader._pending_reads)()
    assert leader._reads_before_commit == [b"early"]


def test_not_leader_error_carries_leader_hint() -> None:
    net = Net.of(3)
    net.elect(1)
    with pytest.raises(NotLeaderError) as info:
        net.nodes[2].propose(b"x")
    assert info.value.leader_hint == 1


def test_add_member_then_remove_the_leader() -> None:
    """Thesis §4.1: single-server changes take effect on append; a removed leader steps
    down once its removal commits and the rest elect a new leader."""
    net = Net.of(3)
    leader = net.elect(1)
    net.pump()
    net.add(RaftNode(RaftConfig(id=4, voters=(1, 2, 3)), random.Random(4)))  # joiner
    leader.propose_conf_change(ConfChange(ConfChangeKind.ADD, 4))
    assert leader.voters == (1, 2, 3, 4)
    with pytest.raises(ProposalDroppedError):
        leader.propose_conf_change(ConfChange(ConfChangeKind.ADD, 5))  # one at a time
    net.pump()
    assert net.nodes[4].voters == (1, 2, 3, 4) and net.nodes[4].last_index == leader.last_index
    leader.propose_conf_change(ConfChange(ConfChangeKind.REMOVE, 1))
    net.pump()
    assert leader.role == Role.FOLLOWER and net.nodes[1].voters == (2, 3, 4)
    net.isolated.add(1)
    for _ in range(60):
        net.tick_all(1)
        if any(n.role == Role.LEADER for i, n in net.nodes.items() if i != 1):
            break
    new = net.leader()
    new.propose(b"after")
    net.pump()
    assert new.id != 1 and new.commit_index == new.last_index
    assert net.applied[4][-1].data == b"after"


def test_restart_from_durable_state() -> None:
    """Restart: term, vote and commit from HardState, membership from conf entries in the
    log after the snapshot, entries numbered from the snapshot."""
    cc = encode_conf_change(ConfChange(ConfChangeKind.ADD, 4))
    snap = Snapshot(SnapshotMeta(5, 2, (1, 2, 3)), b"state")
    entries = [Entry(2, 6), Entry(3, 7, EntryKind.CONF_CHANGE, cc), Entry(3, 8, data=b"x")]
    node = RaftNode(RaftConfig(id=1, voters=(1, 2)), random.Random(0),
                    hard_state=HardState(3, 2, 7), snapshot=snap, entries=entries)
    assert (node.term, node.vote, node.commit_index, node.last_index) == (3, 2, 7, 8)
    assert node.voters == (1, 2, 3, 4) and node.voters_at(6) == (1, 2, 3)
    rd = node.ready()
    assert [e.index for e in rd.committed_entries] == [6, 7]  # re-applied after restore
    assert rd.hard_state is None and not rd.entries  # nothing new to persist
    with pytest.raises(ConfigError):
        RaftNode(RaftConfig(id=1, voters=(1,)), random.Random(0),
                 hard_state=HardState(3, None, 9), snapshot=snap, entries=entries)


def test_single_node_group_commits_alone() -> None:
    node = make_node(1, voters=(1,))
    for _ in range(20):
        node.tick()
    assert node.role == Role.LEADER
    index = node.propose(b"solo")
    committed: list[Entry] = []
    for _ in range(3):
        rd = node.ready()
        committed += rd.committed_entries
        node.advance(rd)
    assert committed[-1].index == index and committed[-1].data == b"solo"


def test_bad_compact_or_conf_change_raises_and_changes_nothing() -> None:
    net = Net.of(3)
    leader = net.elect(1)
    leader.propose(b"x")
    net.pump()
    before = leader.status()
    with pytest.raises(ConfigError, match="voters_at"):
        leader.compact(Snapshot(SnapshotMeta(2, leader.term, (1, 2)), b""))
    with pytest.raises(ConfigError, match="beyond applied"):
        leader.compact(Snapshot(SnapshotMeta(9, leader.term, (1, 2, 3)), b""))
    with pytest.raises(ConfigError):
        leader.propose_conf_change(ConfChange(ConfChangeKind.ADD, 2))  # already a voter
    assert leader.status() == before and leader.term_at(1) is not None


def test_joiner_without_known_membership_never_elects_itself() -> None:
    """A joiner started with voters=() sees only ``ADD self`` in the log; it must not
    conclude it is a one-node group and elect itself (split brain)."""
    net = Net.of(3)
    leader = net.elect(1)
    net.add(RaftNode(RaftConfig(id=4, voters=()), random.Random(4)))
    leader.propose_conf_change(ConfChange(ConfChangeKind.ADD, 4))
    net.pump()
    joiner = net.nodes[4]
    assert joiner.last_index == leader.last_index
    net.isolated = {1, 2, 3}
    for _ in range(100):
        joiner.tick()
        net.pump()
    assert joiner.role == Role.FOLLOWER and joiner.term == leader.term


def test_committed_entries_are_handed_out_in_bounded_batches() -> None:
    entries = [Entry(1, i, data=b"x" * 100) for i in range(1, 11)]
    node = RaftNode(RaftConfig(id=1, voters=(1, 2, 3), max_apply_bytes=300),
                    random.Random(0), hard_state=HardState(1, None, 8), entries=entries)
    batches = []
    while node.has_ready():
        rd = node.ready()
        batches.append([e.index for e in rd.committed_entries])
        node.advance(rd)
    assert batches == [[1, 2], [3, 4], [5, 6], [7, 8]]  # 2 x 116 bytes <= 300, stop at commit


@pytest.mark.parametrize("lost_state", [False, True])
def test_a_replica_that_lost_its_disk_cannot_elect_a_leader_missing_committed_entries(
    lost_state: bool,
) -> None:
    """Node 3 acknowledges entry e (committed by leader 1 with 3's ack, node 2 cut off), then
    restarts under its old id with an EMPTY log (its disk is gone) while leader 1 is down.
    Node 2, which lacks e, campaigns. An amnesiac voter grants it (its empty log is "less up
    to date"), so a leader without a committed entry would be elected: e is lost. Flagged
    ``lost_state``, node 3 refuses every (pre-)vote and node 2 cannot win; once node 1 is back,
    e is committed everywhere."""
    net = Net.of(3)
    leader = net.elect(1)
    net.isolated = {2}
    index = leader.propose(b"e")
    net.pump()
    assert leader.commit_index >= index and net.nodes[3].last_index >= index
    net.nodes[3] = make_node(3, lost_state=lost_state, seed=3)  # restarted on a new disk
    net.isolated = {1}
    candidate = net.nodes[2]
    for _ in range(6 * candidate.config.election_ticks):
        candidate.tick()
        net.pump()
    if not lost_state:  # the hazard the flag exists for
        assert candidate.role == Role.LEADER and candidate.term_at(index) != leader.term
        return
    assert candidate.role != Role.LEADER and net.nodes[3].role == Role.FOLLOWER
    net.isolated = set()
    net.tick_all(6 * leader.config.election_ticks)
    current = net.leader()
    assert current.id in (1, 2) and current.term_at(index) == leader.term_at(index)
    later = current.propose(b"after")  # the amnesiac's reject makes the leader repair it
    net.pump()
    for node in net.nodes.values():
        assert node.term_at(index) == leader.term_at(index), node.status()
        assert node.commit_index >= later, node.status()
