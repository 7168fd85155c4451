"""Restoring a checkpoint: a misfit is refused before any shard changes, a refused apply is
reported, and a corrupt latest checkpoint falls back to the previous one, saying so.

``ParameterServer.restore`` runs against in-process groups whose ``propose`` applies the
command to a local state machine and answers like a replica (a ``CommandError`` when the
apply raised); ``Driver._restore`` against a server that reads the checkpoint. No Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from consensus import CommandError
from jobs.config import TrainConfig
from jobs.driver import Driver
from paramserver import OptimizerConfig, RoundCommand, ShardPlan, ShardStateMachine
from paramserver.checkpoint import read_checkpoint, write_checkpoint
from paramserver.errors import ApplyFailedError, CheckpointCorruptError, CheckpointMismatchError
from paramserver.server import ParameterServer
from paramserver.server_config import ServerConfig

SHAPES = {"w": (4, 2), "b": (2,)}
PLAN = ShardPlan.build(SHAPES, 2, split_bytes=16)
ADAM = OptimizerConfig(kind="adam", lr=0.01)
MOMENTUM = OptimizerConfig(kind="sgd", lr=0.01, momentum=0.9)


def _machines(optimizer: OptimizerConfig, rounds: int) -> list[ShardStateMachine]:
    rng = np.random.default_rng(0)
    full = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    machines = [ShardStateMachine(PLAN.pieces(s), part, optimizer)
                for s, part in enumerate(PLAN.split(full))]
    for r in range(rounds):
        for m in machines:
            grads = {k: np.full(v.shape, r + 1, np.float32) for k, v in m.params().items()}
            m.apply(RoundCommand(round=r, kind="sync", samples=2, ranks=(0,),
                                 grads=grads).encode())
    return machines


class LocalGroup:
    """A one-replica group: applies proposals to its machine, answering like a replica."""

    def __init__(self, machine: ShardStateMachine) -> None:
        self.machine = machine
        self.proposals = 0

    def propose(self, command: bytes, timeout: float = 10.0) -> Any:
        self.proposals += 1
        try:
            return self.machine.apply(command)
        except Exception as exc:  # what consensus.replica does with a raising apply
            return CommandError(f"{type(exc).__name__}: {exc}")


def _server(optimizer: OptimizerConfig, machines: list[ShardStateMachine]) -> ParameterServer:
    groups: list[Any] = [LocalGroup(m) for m in machines]
    return ParameterServer(ServerConfig(job="restore-test", shards=2, optimizer=optimizer),
                           PLAN, groups)


def _checkpoint(tmp_path: Path, optimizer: OptimizerConfig, round: int) -> Path:
    states = [m.export_state() for m in _machines(optimizer, round)]
    return write_checkpoint(tmp_path, round, PLAN, states, optimizer)


def test_an_adam_checkpoint_is_refused_by_a_momentum_run_before_any_shard_changes(
    tmp_path: Path,
) -> None:
    """The restore used to rebuild the shards with the run's optimizer and propose them."""
    path = _checkpoint(tmp_path, ADAM, 3)
    machines = _machines(MOMENTUM, 1)
    digests = [m.digest() for m in machines]
    server = _server(MOMENTUM, machines)
    with pytest.raises(CheckpointMismatchError, match="--optimizer adam"):
        server.restore(path)
    assert [g.proposals for g in server.groups] == [0, 0]  # type: ignore[attr-defined]
    assert [m.digest() for m in machines] == digests


def test_a_restore_a_shard_refused_is_reported(tmp_path: Path) -> None:
    """A committed RestoreCommand whose apply raised used to pass unnoticed: the driver went
    on from the checkpoint's round while that shard kept its old version."""
    path = _checkpoint(tmp_path, ADAM, 3)
    machines = [_machines(ADAM, 0)[0], _machines(MOMENTUM, 0)[1]]  # shard 1 misconfigured
    before = machines[1].digest()
    server = _server(ADAM, machines)
    with pytest.raises(ApplyFailedError, match=r"shard 1: OptimizerStateError"):
        server.restore(path)
    assert machines[1].digest() == before and machines[0].version == 3


def test_restore_returns_the_checkpoints_round(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path, ADAM, 3)
    machines = _machines(ADAM, 0)
    assert _server(ADAM, machines).restore(path) == 3
    assert [m.snapshot() for m in machines] == [m.snapshot() for m in _machines(ADAM, 3)]


class ReadingServer:
    """Restores by reading the checkpoint (as the real one does first)."""

    def __init__(self) -> None:
        self.tried: list[str] = []

    def restore(self, checkpoint: str | Path) -> int:
        self.tried.append(Path(checkpoint).name)
        return read_checkpoint(checkpoint).round


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    for r in (2, 4):
        _checkpoint(tmp_path, ADAM, r)
    latest = tmp_path / "checkpoints" / "round-4"
    manifest = latest / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"version": 4', '"version": 3'))
    driver = Driver(TrainConfig(out=str(tmp_path), resume=True))
    server = ReadingServer()
    assert driver._restore(server, latest) == 2  # type: ignore[arg-type]
    assert server.tried == ["round-4", "round-2"]
    err = capsys.readouterr().err
    assert "checkpoint round-4 is corrupt" in err and "manifest.json" in err
    assert "resuming from the previous one, round-2" in err


def test_with_no_intact_checkpoint_left_the_oldest_error_is_raised(tmp_path: Path) -> None:
    _checkpoint(tmp_path, ADAM, 2)
    only = tmp_path / "checkpoints" / "round-2"
    (only / "shard-1.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(CheckpointCorruptError, match=r"shard-1\.safetensors"):
        Driver(TrainConfig(out=str(tmp_path), resume=True))._restore(
            ReadingServer(), only)  # type: ignore[arg-type]
