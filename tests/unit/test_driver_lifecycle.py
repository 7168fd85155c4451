"""The driver's lifecycle against an in-process fake server (the ``jobs.backend`` seam).

No Ray: ``ensure_ray`` is stubbed and the round loop (``Driver._train``) is replaced, so these
tests cover what happens around the rounds: the Raft storage is deleted after a clean finish
(kept with ``keep_raft_log`` and after a failure), ``shards="auto"`` is resolved before the
server is created, and the config that reaches the real backend's ``ServerConfig``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jobs import driver as driver_mod
from jobs.backend import RaftServerBackend
from jobs.config import TrainConfig
from jobs.driver import Driver, remove_raft_log
from jobs.errors import TrainingError
from workers.model_state import ModelState

DATA = "synthetic:8x3x32x16"


class FakeServer:
    """Holds the initial parameters; writes checkpoint manifests; records its calls."""

    def __init__(self, config: TrainConfig, initial: Mapping[str, np.ndarray]) -> None:
        self.config = config
        self.state = {k: np.array(v) for k, v in initial.items()}
        self.layout: list[list[tuple[str, str, int, int]]] = [[] for _ in range(2)]
        self.storage_at_shutdown: bool | None = None
        self.restored: list[Path] = []
        self.versions = [0] * int(config.shards)  # each shard's applied version

    def state_dict(self) -> dict[str, np.ndarray]:
        return dict(self.state)

    def checkpoint(self, out_dir: str | Path, round: int) -> Path:
        path = Path(out_dir) / "checkpoints" / f"round-{round}"
        path.mkdir(parents=True, exist_ok=True)
        shards = [[] for _ in range(int(self.config.shards))]
        (path / "manifest.json").write_text(json.dumps({"round": round,
                                                        "plan": {"shards": shards}}))
        return path

    def shard_versions(self) -> list[int]:
        return list(self.versions)

    def restore(self, checkpoint: str | Path) -> int:
        self.restored.append(Path(checkpoint))
        return int(Path(checkpoint).name.split("-")[1])

    def shutdown(self) -> None:
        self.storage_at_shutdown = self.config.storage_dir.exists()

    def leader_changes(self) -> list[int]:
        return [0, 0]

    def replica_stats(self) -> list[list[dict[str, Any]]]:
        return [[], []]

    def heal(self) -> list[tuple[int, int, int]]:
        return []

    def __getattr__(self, name: str) -> Any:  # the round methods: _train is replaced
        raise AssertionError(f"the fake server has no {name}")


class FakeBackend:
    """Creates ``FakeServer``s and, like the replicas, a log per shard under storage_dir."""

    def __init__(self, versions: list[int] | None = None) -> None:
        self.servers: list[FakeServer] = []
        self.versions = versions  # what the servers' reloaded logs hold, if anything

    def create(self, config: TrainConfig, initial: Mapping[str, np.ndarray]) -> FakeServer:
        assert isinstance(config.shards, int), "the driver resolves shards='auto' first"
        for s in range(config.shards):
            group = config.storage_dir / f"{config.job}_shard-{s}"
            group.mkdir(parents=True, exist_ok=True)
            (group / "replica-0.db").write_bytes(b"log")
        self.servers.append(FakeServer(config, initial))
        if self.versions is not None:
            self.servers[-1].versions = list(self.versions)
        return self.servers[-1]

    def latest_checkpoint(self, out_dir: Path) -> Path | None:
        return RaftServerBackend().latest_checkpoint(out_dir)


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Ray and no rounds: the driver's lifecycle only."""
    monkeypatch.setattr(driver_mod, "ensure_ray", lambda address: None)
    monkeypatch.setattr(driver_mod, "cluster_cpus", lambda: 8)
    monkeypatch.setattr(Driver, "_train", lambda self, *args: (1.0, 0))


def config(out: Path, **changes: Any) -> TrainConfig:
    base = TrainConfig(model="mlp", data=DATA, epochs=1, global_batch=16, out=str(out),
                       progress=False, job="lifecycle")
    return replace(base, **changes)


def test_a_clean_finish_deletes_the_raft_storage_and_nothing_else(
    tmp_path: Path, no_ray: None
) -> None:
    outside = tmp_path / "raft"  # a sibling of out with the same name: not the job's
    outside.mkdir()
    out = tmp_path / "run"
    backend = FakeBackend()
    result = Driver(config(out), backend=backend).run()
    assert backend.servers[0].storage_at_shutdown is True  # shut down first, then deleted
    assert not (out / "raft").exists()
    assert result.model_path.is_file() and (out / "summary.json").is_file()
    assert (out / "checkpoints" / "round-2" / "manifest.json").is_file()
    assert outside.is_dir()


def test_keep_raft_log_keeps_it(tmp_path: Path, no_ray: None) -> None:
    Driver(config(tmp_path, keep_raft_log=True), backend=FakeBackend()).run()
    assert (tmp_path / "raft" / "lifecycle_shard-0" / "replica-0.db").is_file()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["config"]["keep_raft_log"] is True


def test_a_failed_run_keeps_the_raft_storage(
    tmp_path: Path, no_ray: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(self: Driver, *args: object) -> tuple[float, int]:
        raise TrainingError("a gradient task failed")

    monkeypatch.setattr(Driver, "_train", fail)
    backend = FakeBackend()
    with pytest.raises(TrainingError):
        Driver(config(tmp_path), backend=backend).run()
    assert backend.servers[0].storage_at_shutdown is True
    assert (tmp_path / "raft" / "lifecycle_shard-1" / "replica-0.db").is_file()
    assert not (tmp_path / "summary.json").exists()


def test_storage_outside_out_is_never_deleted(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere" / "raft"
    elsewhere.mkdir(parents=True)
    remove_raft_log(elsewhere, tmp_path / "out", timeout_s=1.0)
    assert elsewhere.is_dir()
    inside = tmp_path / "out" / "raft"
    inside.mkdir(parents=True)
    remove_raft_log(inside, tmp_path / "out", timeout_s=1.0)
    assert not inside.exists() and (tmp_path / "out").is_dir()


def test_auto_shards_is_resolved_before_the_server_and_recorded(
    tmp_path: Path, no_ray: None
) -> None:
    backend = FakeBackend()
    Driver(config(tmp_path, shards="auto"), backend=backend).run()
    assert backend.servers[0].config.shards == 1  # a tiny model: one shard
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["config"]["shards"] == 1 and summary["shards_auto"] is True
    assert summary["config"]["durability"] == "disk"


def test_auto_shards_on_resume_takes_the_checkpoints_count(
    tmp_path: Path, no_ray: None
) -> None:
    FakeServer(config(tmp_path, shards=3), {}).checkpoint(tmp_path, 1)
    backend = FakeBackend()
    Driver(config(tmp_path, shards="auto", resume=True), backend=backend).run()
    assert backend.servers[0].config.shards == 3
    assert backend.servers[0].restored == [tmp_path / "checkpoints" / "round-1"]


def test_the_config_reaches_the_server_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """durability lands in ``ServerConfig.group`` with the shard groups' other defaults;
    nesterov and weight decay in the optimizer; storage under ``<out>/raft``."""
    from paramserver.server import ParameterServer
    from paramserver.server_config import default_group_config

    seen: list[Any] = []
    monkeypatch.setattr(ParameterServer, "create", staticmethod(
        lambda cfg, initial, buffers: seen.append((cfg, dict(initial), buffers)) or "server"))
    cfg = TrainConfig(durability="memory", nesterov=True, momentum=0.8, weight_decay=1e-4,
                      nonfinite_policy="skip-round", out="runs/x")
    weight, count = np.zeros(2, np.float32), np.zeros((), np.int64)
    initial = ModelState({"w": weight}, {"bn.num_batches_tracked": count})
    assert RaftServerBackend().create(cfg, initial) == "server"
    ((server_config, tensors, buffers),) = seen
    assert tensors.keys() == {"w", "bn.num_batches_tracked"}
    assert buffers == {"bn.num_batches_tracked"}  # said explicitly, not left to the mapping
    assert server_config.group.durability == "memory"
    assert replace(server_config.group, durability="disk") == default_group_config()
    opt = server_config.optimizer
    assert (opt.kind, opt.momentum, opt.nesterov, opt.weight_decay) == ("sgd", 0.8, True, 1e-4)
    assert server_config.nonfinite_policy == "skip-round"
    assert server_config.storage_dir == str(Path("runs/x").resolve() / "raft")
    assert TrainConfig(out="runs/x").storage_dir == Path("runs/x").resolve() / "raft"


@pytest.mark.parametrize("durability", ["disk", "memory"])
def test_resume_starts_memory_durability_groups_fresh(
    tmp_path: Path, no_ray: None, durability: str
) -> None:
    """With durability=memory the checkpoint is the durable state: a resumed job deletes
    the old Raft storage before its groups start (after a power loss every replica would
    come back flagged and none could vote). With disk the groups adopt their logs."""
    FakeServer(config(tmp_path), {}).checkpoint(tmp_path, 1)
    stale = tmp_path / "raft" / "lifecycle_shard-0" / "replica-2.db"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old log")
    Driver(config(tmp_path, resume=True, durability=durability, keep_raft_log=True),
           backend=FakeBackend()).run()
    assert stale.exists() == (durability == "disk")


def _starts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the round each ``_train`` call starts at."""
    seen: list[int] = []

    def train(self: Driver, server: Any, spec: Any, model: Any, data: Any, schedule: Any,
              start: int, end: int) -> tuple[float, int]:
        seen.append(start)
        return 1.0, 0
    monkeypatch.setattr(Driver, "_train", train)
    return seen


def test_resume_continues_from_the_raft_logs_when_every_shard_agrees(
    tmp_path: Path, no_ray: None, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Killed after 3 rounds with a checkpoint at round 1: the shards' logs hold 3 rounds
    each, so no round is computed again and the checkpoint is not restored."""
    FakeServer(config(tmp_path), {}).checkpoint(tmp_path, 1)
    starts = _starts(monkeypatch)
    backend = FakeBackend(versions=[3, 3])
    Driver(config(tmp_path, resume=True), backend=backend).run()
    assert starts == [3] and backend.servers[0].restored == []
    assert "resuming at round 3 from the Raft logs (every shard applied 3 rounds)" in (
        capsys.readouterr().err)


@pytest.mark.parametrize(("versions", "why"), [
    ([3, 2], "the shards' logs end at different versions (shard 0 at 3, shard 1 at 2)"),
    ([0, 0], "the shards' logs end at round 0, before the checkpoint"),
])
def test_resume_falls_back_to_the_checkpoint_and_says_why(
    tmp_path: Path, no_ray: None, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], versions: list[int], why: str,
) -> None:
    FakeServer(config(tmp_path), {}).checkpoint(tmp_path, 1)
    starts = _starts(monkeypatch)
    backend = FakeBackend(versions=versions)
    Driver(config(tmp_path, resume=True), backend=backend).run()
    assert starts == [1]
    assert backend.servers[0].restored == [tmp_path / "checkpoints" / "round-1"]
    assert f"resuming at round 1 from checkpoint round-1 ({why})" in capsys.readouterr().err


def test_resume_from_the_logs_alone_before_any_checkpoint(
    tmp_path: Path, no_ray: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Killed before its first checkpoint: the recorded incarnation says the logs are
    there, and they are all the job needs. Without the record, --resume has nothing."""
    from jobs.errors import ResumeError
    from jobs.raft_storage import fresh_incarnation

    with pytest.raises(ResumeError, match="found no checkpoint"):
        Driver(config(tmp_path, resume=True), backend=FakeBackend()).run()
    fresh_incarnation(tmp_path / "raft")
    starts = _starts(monkeypatch)
    Driver(config(tmp_path, resume=True), backend=FakeBackend(versions=[2, 2])).run()
    assert starts == [2]


def test_memory_durability_always_resumes_from_its_checkpoint(
    tmp_path: Path, no_ray: None, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    FakeServer(config(tmp_path), {}).checkpoint(tmp_path, 1)
    starts = _starts(monkeypatch)
    Driver(config(tmp_path, resume=True, durability="memory"),
           backend=FakeBackend(versions=[3, 3])).run()
    assert starts == [1]
    assert "(durability=memory keeps no log across a restart)" in capsys.readouterr().err
