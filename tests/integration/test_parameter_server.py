"""ParameterServer end to end on Ray: 2 shards x 3 replicas, no training, random gradients."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import ray

from consensus import RaftGroupConfig
from paramserver import OptimizerConfig
from paramserver.errors import CheckpointCorruptError, NonFiniteGradientError
from paramserver.server import ParameterServer
from paramserver.server_config import ServerConfig

pytestmark = pytest.mark.usefixtures("ray_session")

SHAPES = {"fc1.weight": (64, 32), "fc1.bias": (64,), "fc2.weight": (10, 64), "fc2.bias": (10,)}
LR, MOMENTUM, WORKERS, ROUNDS = 0.05, 0.9, 2, 50


def initial_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


def round_gradients(round: int, rank: int) -> tuple[int, dict[str, np.ndarray]]:
    """A deterministic (samples, summed gradients) contribution of ``rank`` to ``round``."""
    rng = np.random.default_rng([round, rank])
    samples = 16 + rank
    return samples, {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


def reference(rounds: int) -> dict[str, np.ndarray]:
    """Plain numpy SGD with momentum (torch's formulation) on the mean gradient of each round."""
    params = initial_tensors()
    bufs: dict[str, np.ndarray] = {}
    for r in range(rounds):
        contribs = [round_gradients(r, rank) for rank in range(WORKERS)]
        samples = sum(n for n, _ in contribs)
        for k in params:
            mean = (contribs[0][1][k] + contribs[1][1][k]) / np.float32(samples)
            bufs[k] = mean if k not in bufs else MOMENTUM * bufs[k] + mean
            params[k] = params[k] - np.float32(LR) * bufs[k]
    return params


def make_config(tmp: Path, **overrides: object) -> ServerConfig:
    fields: dict[str, object] = {
        "job": f"pstest-{uuid.uuid4().hex[:8]}", "shards": 2, "replicas": 3, "workers": WORKERS,
        "optimizer": OptimizerConfig(kind="sgd", lr=LR, momentum=MOMENTUM),
        "storage_dir": str(tmp), "split_bytes": 4096,
        "group": RaftGroupConfig(snapshot_every=16, seed=3),
    }
    fields.update(overrides)
    return ServerConfig(**fields)  # type: ignore[arg-type]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ParameterServer]:
    ps = ParameterServer.create(make_config(tmp_path), initial_tensors())
    yield ps
    ps.shutdown()


def push_round(ps: ParameterServer, round: int) -> None:
    for rank in range(WORKERS):
        samples, grads = round_gradients(round, rank)
        parts = ps.plan.split(grads)
        ps.submit(round, rank, [ray.put((samples, part)) for part in parts], round)


def test_fifty_rounds_match_numpy_reference_and_replicas_are_identical(
    server: ParameterServer,
) -> None:
    assert server.plan.shards == 2
    assert any("#" in key for shard in server.layout for key, *_ in shard), "a tensor was split"
    for r in range(ROUNDS):
        push_round(server, r)
        if r % 7 == 3:  # a duplicate contribution is an idempotent no-op
            push_round(server, r)
        server.wait_version(r + 1, timeout=60)
    got = server.state_dict()
    want = reference(ROUNDS)
    for k in SHAPES:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-6)
    for group in server.groups:  # followers learn the last commit a heartbeat later
        ray.get([h.call_service.remote("wait_version", ROUNDS, 30.0, leader_only=False)
                 for h in group.handles()], timeout=60)
        snaps = group.snapshots()
        assert len(snaps) == 3
        assert len(set(snaps.values())) == 1, f"{group.name}: replicas differ"
    statuses = server.status()
    assert [s["version"] for s in statuses] == [ROUNDS, ROUNDS]
    for shard in statuses:
        assert len({r["digest"] for r in shard["replicas"]}) == 1


def test_pull_is_served_by_a_follower_and_shared(server: ParameterServer) -> None:
    push_round(server, 0)
    server.wait_version(1, timeout=60)
    group = server.groups[0]
    leader = group.leader_index()
    follower = next(h for i, h in zip(group.indices(), group.handles(), strict=True)
                    if i != leader)
    version, ref = ray.get(follower.call_service.remote("pull", 1, 30.0, leader_only=False),
                           timeout=60)
    _, again = ray.get(follower.call_service.remote("pull", 1, 30.0, leader_only=False),
                       timeout=60)
    assert version == 1
    assert ref == again, "one object-store copy per version"
    from_follower = ray.get(ref, timeout=30)
    from_leader = ray.get(server.pull(1)[0], timeout=30)
    for key in from_leader:
        np.testing.assert_array_equal(from_follower[key], from_leader[key])


def test_nonfinite_gradient_is_rejected_and_changes_nothing(server: ParameterServer) -> None:
    before = server.state_dict()
    samples, grads = round_gradients(0, 1)
    grads["fc2.bias"][3] = np.nan
    server.submit(0, 1, [ray.put((samples, p)) for p in server.plan.split(grads)], 0)
    with pytest.raises(NonFiniteGradientError) as info:
        server.wait_version(1, timeout=30)
    assert info.value.rank == 1 and info.value.round == 0
    after = server.state_dict()
    for k in SHAPES:
        np.testing.assert_array_equal(before[k], after[k])


def test_checkpoint_restores_into_a_fresh_server(server: ParameterServer, tmp_path: Path) -> None:
    for r in range(5):
        push_round(server, r)
        server.wait_version(r + 1, timeout=60)
    path = server.checkpoint(tmp_path / "out", 5)
    saved = server.state_dict()
    fresh = ParameterServer.create(make_config(tmp_path / "fresh"), initial_tensors())
    try:
        assert fresh.restore(path) == 5
        restored = fresh.state_dict()
        for k in SHAPES:
            np.testing.assert_array_equal(saved[k], restored[k])
        push_round(fresh, 5)
        fresh.wait_version(6, timeout=60)
        shard_file = path / "shard-0.safetensors"
        shard_file.write_bytes(shard_file.read_bytes()[:-8] + b"\0" * 8)
        with pytest.raises(CheckpointCorruptError, match=r"shard-0\.safetensors"):
            fresh.restore(path)
        assert fresh.version == 6
    finally:
        fresh.shutdown()


def test_backup_workers_complete_a_closed_round_over_the_samples_received(
    tmp_path: Path,
) -> None:
    """Sync with N=3, b=1: after close_round, the round commits with 2 contributions and the
    step uses their mean over the samples actually received."""
    ps = ParameterServer.create(make_config(tmp_path, workers=3, backup_workers=1,
                                            optimizer=OptimizerConfig(kind="sgd", lr=LR)),
                                initial_tensors())
    try:
        before = ps.state_dict()
        contribs = [round_gradients(0, rank) for rank in range(2)]
        for rank, (samples, grads) in enumerate(contribs):
            ps.submit(0, rank, [ray.put((samples, p)) for p in ps.plan.split(grads)], 0)
        with pytest.raises(TimeoutError):
            ps.wait_version(1, timeout=2)  # 2 of 3 is not enough before the deadline
        ps.close_round(0)
        ps.wait_version(1, timeout=60)
        after = ps.state_dict()
        total = contribs[0][0] + contribs[1][0]
        for k in SHAPES:
            mean = (contribs[0][1][k] + contribs[1][1][k]) / np.float32(total)
            np.testing.assert_allclose(after[k], before[k] - np.float32(LR) * mean,
                                       rtol=1e-6, atol=1e-6)
    finally:
        ps.shutdown()


def test_replayed_contributions_of_a_round_already_committed_are_not_errors(
    server: ParameterServer,
) -> None:
    """A leader commits round 0 and dies before the driver hears of it; the facade replays the
    round to the next leader, which rejects it as stale. That is success, not an error."""
    push_round(server, 0)
    group = server.groups[0]
    ray.get([h.call_service.remote("wait_version", 1, 30.0, leader_only=False)
             for h in group.handles()], timeout=60)
    old = group.leader_index()
    group.transfer_leadership(next(i for i in group.indices() if i != old))
    server._resubmit(0)  # what a failover does: replay every pending contribution
    server.wait_version(1, timeout=60)
    push_round(server, 1)
    server.wait_version(2, timeout=60)
    assert [s["version"] for s in server.status()] == [2, 2]


def test_status_reports_a_dead_replica_instead_of_failing(server: ParameterServer) -> None:
    push_round(server, 0)
    server.wait_version(1, timeout=60)
    group = server.groups[1]
    leader = group.leader_index()
    victim = next(i for i in group.indices() if i != leader)
    ray.kill(group.handles()[group.indices().index(victim)], no_restart=True)
    shard = server.status()[1]
    dead = [r for r in shard["replicas"] if r["index"] == victim]
    assert dead and dead[0]["alive"] is False and "digest" not in dead[0]
    assert shard["version"] == 1 and shard["leader"] == leader


def test_initial_parameters_are_the_first_log_entry_and_survive_a_recreate(
    tmp_path: Path,
) -> None:
    """Replicas start blank and get the initial parameters through Raft (so Ray can restart
    a replica without the driver's copy); a server re-created over the same storage keeps
    its rounds instead of being seeded again."""
    config = make_config(tmp_path)
    first = ParameterServer.create(config, initial_tensors())
    try:
        for k, v in first.state_dict().items():
            np.testing.assert_array_equal(v, initial_tensors()[k])
        for r in range(3):
            push_round(first, r)
            first.wait_version(r + 1, timeout=60)
        after = first.state_dict()
    finally:
        first.shutdown()
    again = ParameterServer.create(config, initial_tensors())
    try:
        again.wait_version(3, timeout=60)
        assert again.version == 3
        for k, v in again.state_dict().items():
            np.testing.assert_array_equal(v, after[k])
    finally:
        again.shutdown()


@ray.remote(num_cpus=0)
class _Publisher:
    """Owns what it puts, as a replica owns the parameters it publishes."""

    def publish(self, value: object) -> list[object]:
        return [ray.put(value)]


def test_state_dict_reads_again_when_the_replica_that_published_it_died(
    server: ParameterServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A node lost between ``pull`` and the read takes the published values with it
    (``OwnerDiedError``); ``state_dict`` pulls again from a live replica."""
    push_round(server, 0)
    server.wait_version(1, timeout=60)
    expected = server.state_dict()
    publisher = _Publisher.remote()  # type: ignore[attr-defined]
    probe, *dead = [ray.get(publisher.publish.remote({"stale": np.zeros(1 << 18)}))[0]
                    for _ in range(3)]
    ray.kill(publisher, no_restart=True)
    deadline = time.monotonic() + 60
    while True:  # until this process learned that the owner died (once per owner)
        try:
            ray.get(probe, timeout=5)
        except ray.exceptions.OwnerDiedError:
            break
        assert time.monotonic() < deadline, "the killed owner's objects stayed readable"
        time.sleep(0.05)
    real_pull, calls = server.pull, []

    def pull_once_from_the_dead(min_version: int) -> list[object]:
        calls.append(min_version)
        return dead if len(calls) == 1 else real_pull(min_version)

    monkeypatch.setattr(server, "pull", pull_once_from_the_dead)
    got = server.state_dict()
    assert calls == [1, 1]
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value)
