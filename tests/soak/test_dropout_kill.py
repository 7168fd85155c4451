"""Kill a shard leader while a BatchNorm + dropout model trains: the same bytes as a run
without the fault (the forward's randomness is a function of seed, round and rank)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from jobs import TrainConfig, train
from jobs.backend import RaftServerBackend
from tests.chaos.test_train_kill import kill_leader_after
from tests.integration.test_buffers_e2e import bn_dropout_mlp

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.chaos]


def config(out: Path, job: str) -> TrainConfig:
    return TrainConfig(data="synthetic:16x4x512x64", workers=2, shards=2, replicas=3,
                       epochs=1, global_batch=32, optimizer="momentum", lr=0.05, seed=9,
                       out=str(out), job=job, checkpoint_every=8, progress=False,
                       timeout_s=120.0)


def test_killing_a_shard_leader_keeps_a_dropout_models_bytes(tmp_path: Path) -> None:
    clean = train(config(tmp_path / "clean", "dropout-clean"), model=bn_dropout_mlp,
                  backend=RaftServerBackend())
    killed: list[str] = []
    job = "dropout-faulty"
    killer = threading.Thread(target=kill_leader_after,
                              args=(tmp_path / "faulty", job, 5, killed))
    killer.start()
    faulty = train(config(tmp_path / "faulty", job), model=bn_dropout_mlp,
                   backend=RaftServerBackend())
    killer.join(timeout=130)
    assert killed, "the leader was never killed; the test proved nothing"
    assert faulty.rounds == clean.rounds == 16
    assert faulty.model_path.read_bytes() == clean.model_path.read_bytes()
