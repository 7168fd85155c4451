"""A 20M-parameter model (80 MB; Adam triples a shard's state) for 30 rounds on 2 shards x
3 replicas: no leader change in a healthy run, a Raft log on disk bounded by the shard's
state, and the same bits with 1 replica, with ``durability="memory"`` and after a shard
leader is killed mid-training.

About 3.5 minutes on 2 cores, so it runs with the soak tier (``make soak``) and with the
chaos tests (``make chaos``), not in ``make test``; ``tests/integration/test_big_entries.py``
keeps the leader-stability mechanism under test there."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from jobs import TrainConfig, TrainResult, train
from jobs.backend import RaftServerBackend
from tests.chaos.test_train_kill import kill_leader_after

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.chaos]

DATA = "synthetic:784x10x7680x256"  # 30 rounds of 256 = one epoch
ROUNDS = 30


def mlp20m() -> torch.nn.Module:
    """784-4096-4096-10: 20.0M parameters (the product's first real-size target)."""
    return torch.nn.Sequential(torch.nn.Linear(784, 4096), torch.nn.ReLU(),
                               torch.nn.Linear(4096, 4096), torch.nn.ReLU(),
                               torch.nn.Linear(4096, 10))


def run(out: Path, job: str, **changes: Any) -> tuple[TrainResult, dict[str, Any]]:
    import json

    fields: dict[str, Any] = {
        "model": "mlp", "data": DATA, "workers": 2, "shards": 2, "replicas": 3, "epochs": 1,
        "global_batch": 256, "optimizer": "adam", "lr": 1e-3, "seed": 3, "out": str(out),
        "job": job, "checkpoint_every": 0, "progress": False, "timeout_s": 300.0,
        "keep_raft_log": True}
    cfg = TrainConfig(**{**fields, **changes})
    result = train(cfg, model=mlp20m, backend=RaftServerBackend())
    return result, json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def disk_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainResult, dict[str, Any]]:
    """The reference: 3 replicas, disk durability, no fault."""
    return run(tmp_path_factory.mktemp("big") / "disk", "big-disk")


def test_a_20m_model_trains_stably_on_bounded_disk_with_the_same_bits(
    tmp_path: Path, disk_run: tuple[TrainResult, dict[str, Any]]
) -> None:
    disk, summary = disk_run
    assert disk.rounds == ROUNDS
    assert summary["leader_changes"] == [0, 0] and summary["failovers"] == 0
    entry = 4 * 10_100_000  # one round's gradient for a shard of about 10M floats
    for shard in summary["replicas"]:
        assert len(shard) == 3
        for replica in shard:
            state = replica["snapshot_bytes"]  # the last snapshot: params + Adam state
            assert state > 3 * 4 * 9_000_000
            assert replica["peak_log_bytes"] <= 2 * state + entry, replica
    one, _ = run(tmp_path / "r1", "big-r1", replicas=1)
    memory, summary = run(tmp_path / "memory", "big-memory", durability="memory")
    assert summary["leader_changes"] == [0, 0]
    model = disk.model_path.read_bytes()
    assert one.model_path.read_bytes() == model
    assert memory.model_path.read_bytes() == model


def test_killing_a_shard_leader_of_a_20m_model_changes_no_byte(
    tmp_path: Path, disk_run: tuple[TrainResult, dict[str, Any]]
) -> None:
    killed: list[str] = []
    killer = threading.Thread(target=kill_leader_after,
                              args=(tmp_path / "faulty", "big-faulty", 10, killed))
    killer.start()
    faulty, summary = run(tmp_path / "faulty", "big-faulty")
    killer.join(timeout=300)
    assert killed, "the leader was never killed; the test proved nothing"
    assert summary["failovers"] >= 1
    assert faulty.model_path.read_bytes() == disk_run[0].model_path.read_bytes()
