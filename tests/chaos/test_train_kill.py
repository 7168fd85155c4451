"""Kill a shard leader while a training job runs: the job finishes with the same bytes.

docs/DESIGN.md ("Determinism"): on CPU, same seed + config ⇒ byte-identical model files,
with or without faults.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Literal

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


def lose_a_follower_disk_after(out: Path, job: str, rounds: int, lost: list[str],
                               back: threading.Event) -> None:
    """After ``rounds`` rounds, wipe the storage of a shard-0 follower and kill it: Ray
    restarts it with an empty disk, as on a replacement node. Sets ``back`` once the
    restarted replica answers a status call and reports ``lost_state``."""
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
            if answers_again(handle).get("lost_state"):
                back.set()
            return


def answers_again(handle: Any) -> dict[str, Any]:
    """The status of a replica Ray is restarting, once its new process answers (at most
    120 s): a call that reached the old process fails with ActorUnavailableError."""
    deadline = time.monotonic() + 120
    while True:
        try:
            status: dict[str, Any] = ray.get(handle.status.remote(), timeout=10)
            return status
        except (ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)  # polling a process Ray restarts; not a test of logic timing


class HealAfterRestart(RaftServerBackend):
    """The real backend, whose server's ``heal`` first waits (at most 120 s) for ``back``
    once a replica was lost. How long Ray takes to restart a process (seconds, on a loaded
    machine) is then not raced against how many epoch ends the job has left: the test is
    of what the driver does at the first epoch end after the replica answers again."""

    def __init__(self, lost: list[str], back: threading.Event) -> None:
        self.lost, self.back = lost, back

    def create(self, config: TrainConfig, initial: Any) -> Any:
        server = super().create(config, initial)
        heal = server.heal

        def gated() -> list[tuple[int, int, int]]:
            if self.lost:
                assert self.back.wait(timeout=120), "the lost replica never answered again"
            return heal()

        server.heal = gated  # type: ignore[method-assign]
        return server


def test_losing_a_follower_with_its_disk_mid_training_changes_no_byte(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, clean_run: CleanRun,
) -> None:
    """The follower comes back empty (lost_state: it never votes), training goes on, the
    driver replaces it at the first epoch end after it answers again, and the model is
    byte-identical."""
    lost: list[str] = []
    back = threading.Event()
    loser = threading.Thread(target=lose_a_follower_disk_after,
                             args=(tmp_path / "faulty", "disk-faulty", 6, lost, back))
    loser.start()
    with caplog.at_level("WARNING", logger="paramserver.server_health"):
        faulty = train(config(tmp_path / "faulty", "disk-faulty"),
                       backend=HealAfterRestart(lost, back))
    loser.join(timeout=130)
    assert lost, "no follower lost its disk; the test proved nothing"
    assert back.is_set(), "the restarted replica did not report lost_state"
    assert any("lost its storage" in r.getMessage() and "replaced by" in r.getMessage()
               for r in caplog.records)
    assert faulty.model_path.read_bytes() == clean_run.model
