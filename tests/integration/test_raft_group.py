"""RaftGroup on a real (embedded) Ray: commit, dedup, reads, failover, catch-up, replace."""

from __future__ import annotations

import dataclasses
import functools
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import ray

from consensus import RaftGroup, RaftGroupConfig, ReplicaContext

FAST = RaftGroupConfig(tick_interval_s=0.02, election_ticks=10, seed=7)


class LogMachine:
    """Appends each command to a list; apply returns the new length (a counter)."""

    def __init__(self) -> None:
        self.log: list[bytes] = []

    def apply(self, command: bytes) -> int:
        self.log.append(command)
        return len(self.log)

    def snapshot(self) -> bytes:
        return b"".join(struct.pack(">I", len(c)) + c for c in self.log)

    def restore(self, data: bytes) -> None:
        self.log, pos = [], 0
        while pos < len(data):
            (size,) = struct.unpack_from(">I", data, pos)
            self.log.append(data[pos + 4:pos + 4 + size])
            pos += 4 + size

    def query(self, query: Any) -> Any:
        return len(self.log) if query == "len" else list(self.log)


class EchoService:
    """A service as the paramserver builds one: proposes locally, watches applies."""

    service_methods = frozenset({"append", "wait_len"})

    def __init__(self, ctx: ReplicaContext) -> None:
        self.ctx = ctx
        self.seen: list[int] = []
        ctx.on_apply(self.seen.append)

    async def append(self, command: bytes) -> Any:
        return await self.ctx.propose(command)

    async def wait_len(self, n: int) -> tuple[int, bool, int]:
        machine = self.ctx.state_machine
        assert isinstance(machine, LogMachine)
        await self.ctx.wait_applied(lambda: len(machine.log) >= n, timeout=5.0)
        return len(machine.log), self.ctx.is_leader(), self.seen[-1]


def decode_log(snapshot: bytes) -> list[bytes]:
    machine = LogMachine()
    machine.restore(snapshot)
    return machine.log


def kill(group: RaftGroup, index: int) -> tuple[int, int]:
    """``ray.kill`` replica ``index`` (Ray restarts it); returns ``(index, its old pid)`` for
    ``wait_converged(restarted=...)``. The kill lands asynchronously: until then the old
    process still answers."""
    pid = next(int(s["pid"]) for s in group.status() if s["index"] == index)
    ray.kill(group.handles()[group.indices().index(index)], no_restart=False)
    return index, pid


def wait_converged(group: RaftGroup, timeout: float = 15.0, members: int | None = None,
                   restarted: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """Poll (no fixed sleeps) until every live member applied the same index as the leader;
    with ``members``, until that many are live (a restarted replica that does not answer
    yet must not be left out of the check and then be read); with ``restarted`` (from
    ``kill``), until that replica answers from a new process."""
    deadline = time.monotonic() + timeout
    while True:
        statuses = [s for s in group.status() if s["alive"]]
        applied = {s["applied"] for s in statuses}
        enough = members is None or len(statuses) == members
        fresh = restarted is None or any(
            s["index"] == restarted[0] and s["pid"] != restarted[1] for s in statuses)
        if (enough and fresh and len(applied) == 1
                and any(s["role"] == "LEADER" for s in statuses)):
            return statuses
        assert time.monotonic() < deadline, f"replicas did not converge: {statuses}"
        time.sleep(0.05)


def assert_identical(group: RaftGroup, members: int,
                     restarted: tuple[int, int] | None = None) -> list[bytes]:
    wait_converged(group, timeout=60.0, members=members, restarted=restarted)
    snaps = group.snapshots()
    assert len(snaps) == members
    assert len(set(snaps.values())) == 1, "replica snapshots differ"
    return decode_log(next(iter(snaps.values())))


def test_commit_read_and_same_seq_retry(ray_session: None, tmp_path: Path) -> None:
    group = RaftGroup.create("it/commit", 3, LogMachine, tmp_path, config=FAST,
                             service=EchoService)
    try:
        results = [group.propose(f"c{i}".encode()) for i in range(10)]
        assert results == list(range(1, 11))
        assert group.read("len") == 10  # linearizable: sees every acknowledged write
        assert group.propose_batch([b"b1", b"b2", b"b3"]) == [11, 12, 13]
        assert group.read("len") == 13
        leader = group.leader()
        first = ray.get(leader.propose.remote(group.secret, "retry-client", 1, b"once", 5.0),
                        timeout=10)
        again = ray.get(leader.propose.remote(group.secret, "retry-client", 1, b"once", 5.0),
                        timeout=10)
        assert first == again == 14
        assert group.call_service("append", b"svc") == 15
        length, is_leader, last_seen = group.call_service("wait_len", 15, leader_only=False)
        assert length == 15 and last_seen >= 15  # on_apply saw the index of the entry
        assert isinstance(is_leader, bool)
        log = assert_identical(group, 3)
        assert log.count(b"once") == 1 and log[-1] == b"svc"
        target = next(i for i in group.indices() if i != group.leader_index())
        group.transfer_leadership(target)
        assert group.leader_index() == target
        assert group.propose(b"after-transfer") == 16
        statuses = group.status()
        assert sorted(s["role"] for s in statuses) == ["FOLLOWER", "FOLLOWER", "LEADER"]
        assert {s["name"] for s in statuses} == {f"it/commit/replica-{r}" for r in range(3)}
        before = assert_identical(group, 3)
    finally:
        group.shutdown()
    # Whole-group restart: fresh actors reload term, vote, log and replay the commands (a
    # follower may answer before it has replayed: wait until all three converged)
    again = RaftGroup.create("it/commit", 3, LogMachine, tmp_path, config=FAST)
    try:
        assert again.read("len") == 16
        assert assert_identical(again, 3) == before
    finally:
        again.shutdown()


def _stream(group: RaftGroup, n: int, acked: list[bytes], errors: list[BaseException]) -> None:
    for i in range(n):
        cmd = f"s{i}".encode()
        try:
            group.propose(cmd, timeout=20.0)
            acked.append(cmd)
        except BaseException as exc:  # surfaced by the test thread
            errors.append(exc)
            return


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_leader_kill_mid_stream_then_follower_restart(ray_session: None, tmp_path: Path) -> None:
    group = RaftGroup.create("it/failover", 3, LogMachine, tmp_path, config=FAST)
    try:
        acked: list[bytes] = []
        errors: list[BaseException] = []
        writer = threading.Thread(target=_stream, args=(group, 150, acked, errors))
        old_leader = group.leader_index()
        writer.start()
        _wait_for(lambda: len(acked) >= 40, 20, "40 acknowledged proposals")
        killed_at, acked_at_kill = time.monotonic(), len(acked)
        killed = kill(group, old_leader)
        _wait_for(lambda: len(acked) > acked_at_kill + 1 or errors, 20, "progress after kill")
        failover_s = time.monotonic() - killed_at
        writer.join(timeout=60)
        assert not errors, errors
        assert len(acked) == 150
        print(f"\nfailover (kill -> next acknowledged proposal): {failover_s * 1000:.0f} ms")
        log = assert_identical(group, 3, killed)  # the killed leader restarted, caught up
        assert sorted(log) == sorted(acked) and len(set(log)) == len(log)  # exactly once

        follower = next(s["index"] for s in group.status() if s["role"] == "FOLLOWER")
        killed = kill(group, follower)
        group.propose_batch([f"after{i}".encode() for i in range(20)])
        log = assert_identical(group, 3, killed)  # restarted: reloaded storage, caught up
        assert log[-20:] == [f"after{i}".encode() for i in range(20)]
    finally:
        group.shutdown()


def test_compaction_restart_and_replace_catch_up_by_snapshot(
    ray_session: None, tmp_path: Path
) -> None:
    config = RaftGroupConfig(tick_interval_s=0.02, snapshot_every=16, seed=11)
    group = RaftGroup.create("it/replace", 3, LogMachine, tmp_path, config=config)
    try:
        for i in range(40):
            group.propose(f"a{i}".encode())
        leader = group.leader_index()
        follower = next(i for i in group.indices() if i != leader)
        killed = kill(group, follower)
        for i in range(40):
            group.propose(f"b{i}".encode())
        assert_identical(group, 3, killed)
        statuses = {s["index"]: s for s in group.status()}
        assert statuses[leader]["snapshot_index"] >= 32  # compaction ran

        victim = next(i for i in group.indices() if i not in (leader,))
        new_index = group.replace(victim)
        assert new_index == 3 and victim not in group.indices()
        group.propose(b"after-replace")
        log = assert_identical(group, 3)
        assert log[:40] == [f"a{i}".encode() for i in range(40)]
        assert log[-1] == b"after-replace" and len(log) == 81
        new = next(s for s in group.status() if s["index"] == new_index)
        # An empty replica reached an index whose entries the leader had compacted away:
        # only an InstallSnapshot can have brought it there.
        assert new["snapshot_index"] >= 16 and new["applied"] == new["commit"]
        assert sorted(new["voters"]) == sorted(group.indices())
    finally:
        group.shutdown()


@pytest.mark.parametrize("bad", [{"snapshot_every": 0}, {"tick_interval_s": 0.0}])
def test_group_config_rejects_bad_values(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        RaftGroupConfig(**bad)


def test_a_relative_storage_dir_means_the_callers_directory(
    ray_session: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Actors run in another working directory: a relative storage_dir must still land (and
    be reloaded from) under the caller's directory, or two jobs would share one Raft log."""
    from consensus.replica import storage_path

    monkeypatch.chdir(tmp_path)
    group = RaftGroup.create("reldir", replicas=1, state_machine=LogMachine,
                             storage_dir="rel/raft")
    try:
        assert group.propose(b"x", timeout=30) == 1
    finally:
        group.shutdown()
    assert storage_path(tmp_path / "rel/raft", "reldir", 0).exists()


def test_the_group_config_sets_every_replicas_storage_layout(
    ray_session: None, tmp_path: Path,
) -> None:
    """``RaftGroupConfig.storage`` reaches the replicas: with ``inline_max_bytes=16`` a 1 KB
    command lands in segment files on every replica; with the default (64 KB) it stays in
    sqlite and no segment is written."""
    from consensus import StorageConfig
    from consensus.replica import storage_path

    def segments(root: Path, name: str) -> list[int]:  # segment bytes written, per replica
        return [sum(p.stat().st_size
                    for p in Path(f"{storage_path(root, name, i)}.segments").glob("*.seg"))
                for i in range(3)]

    for name, storage, expect_segments in (("it/seg-small", StorageConfig(inline_max_bytes=16),
                                            True),
                                           ("it/seg-default", StorageConfig(), False)):
        group = RaftGroup.create(name, 3, LogMachine, tmp_path,
                                 config=dataclasses.replace(FAST, storage=storage))
        try:
            assert group.propose(b"p" * 1024, timeout=30) == 1
            wait_converged(group)
        finally:
            group.shutdown()
        counts = segments(tmp_path, name)
        assert all(c > 0 for c in counts) if expect_segments else counts == [0, 0, 0], counts


def wipe_storage(root: Path, group: str, index: int) -> None:
    """Delete a replica's database, WAL and segments (the running process keeps its open
    files; a restart finds nothing: a node with a new disk)."""
    import shutil

    from consensus.replica import storage_path

    db = storage_path(root, group, index)
    for path in db.parent.glob(db.name + "*"):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def test_a_replica_restarted_without_its_disk_never_votes_until_replaced(
    ray_session: None, tmp_path: Path,
) -> None:
    """Ray restarts a follower whose storage is gone: it comes back flagged ``lost_state``
    (never votes or campaigns), the group keeps committing, and ``heal`` replaces it (and
    only it) with a full member holding every command."""
    group = RaftGroup.create("it/disk-loss", 3, LogMachine, tmp_path, config=FAST)
    try:
        for i in range(10):
            group.propose(f"a{i}".encode(), timeout=30)
        leader = group.leader_index()
        victim = next(i for i in group.indices() if i != leader)
        wipe_storage(tmp_path, "it/disk-loss", victim)
        ray.kill(group.handles()[group.indices().index(victim)], no_restart=False)
        deadline = time.monotonic() + 30
        while True:  # poll (no fixed sleep) until the restarted replica answers
            statuses = {s["index"]: s for s in group.status() if s.get("alive")}
            if statuses.get(victim, {}).get("lost_state"):
                break
            assert time.monotonic() < deadline, statuses
            time.sleep(0.05)
        assert not statuses[leader]["lost_state"]
        for i in range(10):
            group.propose(f"b{i}".encode(), timeout=30)
        healed = group.heal()
        assert list(healed) == [victim] and group.heal() == {}
        new_index = healed[victim]
        group.propose(b"after-replace", timeout=30)
        log = assert_identical(group, 3)
        assert log == [f"a{i}".encode() for i in range(10)] + [
            f"b{i}".encode() for i in range(10)] + [b"after-replace"]
        assert not any(s["lost_state"] for s in group.status() if s["index"] == new_index)
    finally:
        group.shutdown()
    # Re-created over the same storage, the group starts the members its log names (the
    # replacement, not the removed victim), so it is whole again and nothing is flagged.
    group = RaftGroup.create("it/disk-loss", 3, LogMachine, tmp_path, config=FAST)
    try:
        assert sorted(group.indices()) == sorted([*(set(range(3)) - {victim}), new_index])
        group.propose(b"after-recreate", timeout=30)
        assert group.heal() == {}
        assert not any(s.get("lost_state") for s in group.status())
        assert assert_identical(group, 3)[-1] == b"after-recreate"
    finally:
        group.shutdown()


def test_a_re_created_group_flags_a_replica_placed_without_its_database(
    ray_session: None, tmp_path: Path,
) -> None:
    """Re-creating a group over existing storage (a new driver, ``--resume``) may put a
    replica on a node that lacks its database. That start is not a Ray restart, so only its
    peers can tell: it must not vote as a fresh member (its empty log could elect a leader
    missing committed entries); it comes up flagged and ``heal`` replaces it. A brand-new
    group flags nobody."""
    def settled(group: RaftGroup) -> dict[int, dict[str, Any]]:
        """Poll (no fixed sleep) until every replica has finished asking its peers."""
        deadline = time.monotonic() + 30
        while True:
            statuses = {s["index"]: s for s in group.status() if s.get("alive")}
            if len(statuses) == 3 and not any(s.get("confirming_fresh") for s in statuses.values()):
                return statuses
            assert time.monotonic() < deadline, statuses
            time.sleep(0.05)

    name = "it/recreate"
    group = RaftGroup.create(name, 3, LogMachine, tmp_path, config=FAST)
    try:
        for i in range(10):
            group.propose(f"a{i}".encode(), timeout=30)
        assert not any(s["lost_state"] for s in settled(group).values())
        wait_converged(group)
    finally:
        group.shutdown()
    wipe_storage(tmp_path, name, 2)
    group = RaftGroup.create(name, 3, LogMachine, tmp_path, config=FAST)
    try:
        statuses = settled(group)
        assert statuses[2]["lost_state"] and not statuses[0]["lost_state"]
        group.propose(b"b", timeout=30)
        healed = group.heal()
        assert list(healed) == [2]
        log = assert_identical(group, 3)
        assert log == [f"a{i}".encode() for i in range(10)] + [b"b"]
    finally:
        group.shutdown()


class BigInitMachine(LogMachine):
    """A LogMachine whose factory carries ~1 MB, like a shard's initial parameters."""

    def __init__(self, blob: bytes) -> None:
        super().__init__()
        self.blob_len = len(blob)


def test_a_replica_with_a_large_factory_restarts_after_a_crash(
    ray_session: None, tmp_path: Path
) -> None:
    """Ray promotes large constructor arguments to an object it frees after the first start;
    the group keeps its factories in the object store itself, so a restart still finds them."""
    factory = functools.partial(BigInitMachine, b"\x01" * (1 << 20))
    group = RaftGroup.create("it/bigfactory", 3, factory, tmp_path, config=FAST)
    try:
        group.propose_batch([f"before{i}".encode() for i in range(5)])
        follower = next(s["index"] for s in group.status() if s["role"] == "FOLLOWER")
        killed = kill(group, follower)
        group.propose_batch([f"after{i}".encode() for i in range(5)])
        log = assert_identical(group, 3, killed)  # the killed follower came back from storage
        assert log[-5:] == [f"after{i}".encode() for i in range(5)]
    finally:
        group.shutdown()


@pytest.mark.parametrize("num_cpus", [0.0, 0.5])
def test_replica_bundles_reserve_exactly_the_replicas_cpus(
    ray_session: None, tmp_path: Path, num_cpus: float,
) -> None:
    """A group's placement group holds no sliver of CPU (0.001 CPU on a node would leave
    room for one 1-CPU task fewer there), and replicas that ask for CPUs get them."""
    from ray.util import placement_group_table

    group = RaftGroup.create(f"it/bundles-{num_cpus}", 3, LogMachine, tmp_path, config=FAST,
                             num_cpus=num_cpus, ready_timeout=60)
    try:
        assert group.propose(b"x", timeout=30) == 1
        bundles = placement_group_table(group._pg)["bundles"]
        assert [b.get("CPU", 0.0) for b in bundles.values()] == [num_cpus] * 3
    finally:
        group.shutdown()
