"""The job's Raft storage is tied to one history: a fresh run draws a new incarnation
(recorded in ``<out>/raft/incarnation``), its groups get the id and their own directory
``<out>/raft/<incarnation>``; ``--resume`` finds the same id again (a memory-durability
resume starts a new one). model.safetensors and summary.json are replaced atomically.
Driver runs use an in-process fake server (no Ray, no rounds)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from consensus.errors import ConfigError
from consensus.incarnation import new_incarnation
from jobs import driver as driver_mod
from jobs.backend import RaftServerBackend
from jobs.config import TrainConfig
from jobs.driver import Driver
from jobs.raft_storage import (
    INCARNATION_FILE,
    fresh_incarnation,
    group_storage,
    read_incarnation,
    resumed_incarnation,
)
from tests.unit.test_driver_lifecycle import FakeBackend, FakeServer


class RecordingBackend(FakeBackend):
    """Records the incarnation recorded when each server is created."""

    def __init__(self) -> None:
        super().__init__()
        self.incarnations: list[str | None] = []

    def create(self, config: TrainConfig, initial: Mapping[str, np.ndarray]) -> FakeServer:
        self.incarnations.append(read_incarnation(config.storage_dir))
        return super().create(config, initial)


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(driver_mod, "ensure_ray", lambda address: None)
    monkeypatch.setattr(driver_mod, "cluster_cpus", lambda: 8)
    monkeypatch.setattr(Driver, "_train", lambda self, *args: (1.0, 0))


def _config(out: Path, **changes: Any) -> TrainConfig:
    base = TrainConfig(model="mlp", data="synthetic:8x3x32x16", epochs=1, global_batch=16,
                       out=str(out), progress=False, job="storage", keep_raft_log=True)
    return replace(base, **changes)


def test_each_fresh_run_gets_a_new_incarnation(tmp_path: Path, no_ray: None) -> None:
    backend = RecordingBackend()
    Driver(_config(tmp_path), backend=backend).run()
    Driver(_config(tmp_path, overwrite=True), backend=backend).run()
    first, second = backend.incarnations
    assert first is not None and second is not None and first != second
    assert read_incarnation(tmp_path / "raft") == second


@pytest.mark.parametrize(("durability", "same"), [("disk", True), ("memory", False)])
def test_resume_finds_its_incarnation_again(
    tmp_path: Path, no_ray: None, durability: str, same: bool
) -> None:
    backend = RecordingBackend()
    Driver(_config(tmp_path, durability=durability), backend=backend).run()
    Driver(_config(tmp_path, durability=durability, resume=True), backend=backend).run()
    first, resumed = backend.incarnations
    assert (first == resumed) is same


def test_the_backend_gives_the_groups_the_id_and_their_own_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from paramserver.server import ParameterServer

    seen: list[Any] = []
    monkeypatch.setattr(ParameterServer, "create",
                        staticmethod(lambda cfg, initial, buffers: seen.append(cfg) or "server"))
    cfg = TrainConfig(out=str(tmp_path))
    incarnation = fresh_incarnation(cfg.storage_dir)
    RaftServerBackend().create(cfg, {})
    (server_config,) = seen
    assert server_config.group.incarnation == incarnation
    assert server_config.storage_dir == str(tmp_path.resolve() / "raft" / incarnation)


def test_a_missing_or_bad_record_means_a_new_history(tmp_path: Path) -> None:
    root = tmp_path / "raft"
    assert read_incarnation(root) is None
    fresh = resumed_incarnation(root)
    assert read_incarnation(root) == fresh
    (root / INCARNATION_FILE).write_text("../../etc\n")
    assert read_incarnation(root) is None
    assert group_storage(root, None) == root and group_storage(root, fresh) == root / fresh


@pytest.fixture
def renames(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str]]]:
    """(source, target) names of every os.replace, and the files fsync'ed before."""
    calls: list[tuple[str, str]] = []
    synced: set[str] = set()
    real_replace, real_fsync = os.replace, os.fsync

    def fsync(fd: int) -> None:
        synced.add(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def rename(src: Any, dst: Any) -> None:
        assert str(src) in synced, f"{src} renamed before it was fsync'ed"
        calls.append((Path(src).name, Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", rename)
    yield calls


def test_model_and_summary_are_replaced_atomically(
    tmp_path: Path, no_ray: None, renames: list[tuple[str, str]]
) -> None:
    Driver(_config(tmp_path), backend=FakeBackend()).run()
    targets = {dst: src for src, dst in renames}
    for name in ("model.safetensors", "summary.json"):
        assert targets[name].startswith(f".{name}.tmp-")
        assert (tmp_path / name).is_file() and not (tmp_path / targets[name]).exists()


def test_a_resume_without_a_record_takes_the_checkpoints_incarnation(tmp_path: Path) -> None:
    """The driver's node lost its record, but the checkpoint names the history it was cut
    under: resume keeps that history (replicas elsewhere still hold its logs)."""
    root = tmp_path / "raft"
    cut_under = new_incarnation()
    assert resumed_incarnation(root, cut_under) == cut_under
    assert read_incarnation(root) == cut_under  # recorded, for the next resume
    assert resumed_incarnation(root, new_incarnation()) == cut_under  # the record wins
    with pytest.raises(ConfigError, match="incarnation"):
        resumed_incarnation(tmp_path / "other", "../../etc")

