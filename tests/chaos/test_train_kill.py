"""Kill a shard leader while a training job runs: the job finishes with the same bytes.

docs/DESIGN.md ("Determinism"): on CPU, same seed + config ⇒ byte-identical model files,
with or without faults.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Literal

import pytest
import ray

from jobs import TrainConfig, train
from jobs.backend import RaftServerBackend
from tests.chaos.conftest import CleanRun

pytestmark = pytest.mark.usefixtures("ray_session")


def config(out: Path, job: str, durability: Literal["disk", "memory"] = "disk") -> TrainConfig:
    return TrainConfig(model="mlp", data="synthetic:16x4x512x64", workers=2, shards=2,
                       replicas=3, epochs=8, global_batch=32, optimizer="momentum", lr=0.05,
                       seed=5, out=str(out), job=job, checkpoint_every=8, progress=False,
                       timeout_s=120.0, durability=durability)


def wait_for_rounds(out: Path, rounds: int) -> None:
    """Block until the job writing ``out`` has logged ``rounds`` rounds (at most 120 s)."""
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= rounds:
            return
        time.sleep(0.05)  # polling a file written by the job; not a test of logic timing


def kill_leader_after(out: Path, job: str, rounds: int, killed: list[str]) -> None:
    """Wait until ``rounds`` rounds are in metrics.jsonl, then kill shard 0's leader."""
    wait_for_rounds(out, rounds)
    for r in range(3):
        handle = ray.get_actor(f"{job}/shard-0/replica-{r}", namespace=job)
        if ray.get(handle.status.remote(), timeout=10)["role"] == "LEADER":
            ray.kill(handle, no_restart=False)
            killed.append(f"replica-{r}")
            return


@pytest.mark.parametrize("durability", ["disk", "memory"])
def test_killing_a_shard_leader_mid_training_changes_no_byte(
    tmp_path: Path, durability: Literal["disk", "memory"], clean_run: CleanRun,
) -> None:
    """Either durability: the clean run is disk's, so memory must also give its bits."""
    killed: list[str] = []
    job = f"chaos-faulty-{durability}"
    killer = threading.Thread(target=kill_leader_after,
                              args=(tmp_path / "faulty", job, 10, killed))
    killer.start()
    faulty = train(config(tmp_path / "faulty", job, durability), backend=RaftServerBackend())
    killer.join(timeout=130)
    assert killed, "the leader was never killed; the test proved nothing"
    assert faulty.rounds == clean_run.rounds == 128
    assert faulty.model_path.read_bytes() == clean_run.model


def lose_a_follower_disk_after(out: Path, job: str, rounds: int, lost: list[str]) -> None:
    """After ``rounds`` rounds, wipe the storage of a shard-0 follower and kill it: Ray
    restarts it with an empty disk, as on a replacement node."""
    from jobs.raft_storage import group_storage, read_incarnation
    from tests.integration.test_raft_group import wipe_storage

    wait_for_rounds(out, rounds)
    for r in range(3):
        handle = ray.get_actor(f"{job}/shard-0/replica-{r}", namespace=job)
        if ray.get(handle.status.remote(), timeout=10)["role"] == "FOLLOWER":
            root = out.resolve() / "raft"  # the run's logs: <out>/raft/<incarnation>
            wipe_storage(group_storage(root, read_incarnation(root)), f"{job}/shard-0", r)
            ray.kill(handle, no_restart=False)
            lost.append(f"replica-{r}")
            return


def test_losing_a_follower_with_its_disk_mid_training_changes_no_byte(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, clean_run: CleanRun,
) -> None:
    """The follower comes back empty (lost_state: it never votes), training goes on, the
    driver replaces it at the first epoch end after it answers again (an epoch end does
    not wait for a replica Ray is restarting), and the model is byte-identical. Eight
    epochs of 16 short rounds leave epoch ends after the restart (a few seconds)."""
    lost: list[str] = []
    loser = threading.Thread(target=lose_a_follower_disk_after,
                             args=(tmp_path / "faulty", "disk-faulty", 6, lost))
    loser.start()
    with caplog.at_level("WARNING", logger="paramserver.server_health"):
        faulty = train(config(tmp_path / "faulty", "disk-faulty"), backend=RaftServerBackend())
    loser.join(timeout=130)
    assert lost, "no follower lost its disk; the test proved nothing"
    assert any("lost its storage" in r.getMessage() and "replaced by" in r.getMessage()
               for r in caplog.records)
    assert faulty.model_path.read_bytes() == clean_run.model
