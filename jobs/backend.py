"""What the driver needs from a parameter server, and the default (Raft) implementation.

The driver only talks to ``ParameterServerLike``; tests inject an in-process fake through a
``ServerBackend``, and ``RaftServerBackend`` builds the real ``paramserver.ParameterServer``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from jobs.config import TrainConfig
from jobs.optimizer_settings import optimizer_config, schedule_config
from jobs.raft_storage import group_storage, read_incarnation
from paramserver.checkpoint import latest_checkpoint
from paramserver.server import LeaderProbe, ParameterServer
from paramserver.server_config import ServerConfig, default_group_config
from workers.gradient import PieceRows
from workers.model_state import ModelState


class ParameterServerLike(Protocol):
    """The facade of ``paramserver.ParameterServer`` the driver relies on (see its docs)."""

    layout: list[list[PieceRows]]

    @property
    def parameter_bytes(self) -> int:
        """Bytes of the parameters and buffers of every shard (one copy of the model)."""

    def pull(self, min_version: int) -> list[Any]:
        """One ref per shard, each resolving to ``dict[key, ndarray]`` at version >= min."""

    def step_round(self, round: int, grad_refs: Sequence[Sequence[Any]],
                   param_version: int) -> tuple[list[Any], list[Any]]:
        """A pipelined sync round, non-blocking: (next parameters, infos), refs by shard."""

    def applied(self, version: int) -> None:
        """Every shard applied ``version`` rounds: drop what was kept for earlier ones."""

    def replay(self, through: int) -> None:
        """Re-send the kept contributions of rounds below ``through`` to fresh leaders."""

    def terms(self, wait_s: float) -> list[int]:
        """Per shard, the highest Raft term a replica reports within ``wait_s`` (-1: none)."""

    def submit(self, round: int, rank: int, grad_refs: Sequence[Any],
               param_version: int) -> None:
        """Non-blocking contribution of rank's per-shard gradient refs to ``round``."""

    def close_round(self, round: int) -> None:
        """Straggler deadline passed: complete ``round`` with the contributions it has."""

    def heal(self) -> list[tuple[int, int, int]]:
        """Replace replicas that came back without their storage: (shard, old, new) each."""

    def wait_version(self, version: int, timeout: float,
                     watch: LeaderProbe | None = None) -> None:
        """Block until every shard applied >= version; raises server errors or TimeoutError.
        ``watch``: re-submit to a shard as soon as it names it (a replaced leader)."""

    def state_dict(self) -> dict[str, np.ndarray]:
        """Full tensors by state_dict key."""

    def checkpoint(self, out_dir: str | Path, round: int) -> Path:
        """A consistent checkpoint at ``round`` under ``out_dir/checkpoints``."""

    def shard_versions(self) -> list[int]:
        """Each shard's applied version (``paramserver.ParameterServer.shard_versions``)."""

    def restore(self, checkpoint: str | Path) -> int:
        """Load a checkpoint; returns the round to continue from."""

    def leader_changes(self) -> list[int]:
        """Per shard: leader changes seen so far (see ``ParameterServer.leader_changes``)."""
        ...

    def replica_stats(self) -> list[list[dict[str, Any]]]:
        """Per shard, per replica: disk and memory peaks (``ParameterServer.replica_stats``)."""
        ...

    def shutdown(self) -> None:
        """Release the server's actors."""


class ServerBackend(Protocol):
    """Creates servers and finds checkpoints; the driver's only way to get a server."""

    def create(
        self, config: TrainConfig, initial: Mapping[str, np.ndarray]
    ) -> ParameterServerLike:
        """A server for ``config`` holding ``initial`` as version 0."""

    def latest_checkpoint(self, out_dir: Path) -> Path | None:
        """The newest complete checkpoint under ``out_dir/checkpoints``, or None."""


class RaftServerBackend:
    """The real thing: ``paramserver.ParameterServer`` with one Raft group per shard."""

    def create(
        self, config: TrainConfig, initial: Mapping[str, np.ndarray]
    ) -> ParameterServerLike:
        """Build ``paramserver.ServerConfig`` from ``config`` and create the server (blocks)."""
        if not isinstance(config.shards, int):
            raise TypeError("the driver resolves shards='auto' to a count before it creates "
                            "the server")
        incarnation = read_incarnation(config.storage_dir)  # recorded by the driver
        group = dataclasses.replace(default_group_config(),
                                    durability=config.durability, incarnation=incarnation)
        server_config = ServerConfig(
            job=config.job,
            shards=config.shards,
            replicas=config.replicas,
            workers=config.max_workers,
            mode=config.mode,
            staleness=config.staleness,
            backup_workers=config.backup_workers,
            optimizer=optimizer_config(config),
            schedule=schedule_config(config),
            nonfinite_policy=config.nonfinite_policy,
            storage_dir=str(group_storage(config.storage_dir, incarnation)),
            namespace=config.job,  # the job's Ray namespace (docs/DESIGN.md, Actor names)
            group=group,
        )
        # which tensors are module buffers (replaced each round, never optimized): the
        # driver's ModelState says so; said explicitly, it survives any copy of the tensors
        buffers = initial.buffers if isinstance(initial, ModelState) else frozenset()
        server: ParameterServerLike = ParameterServer.create(server_config, initial,
                                                             buffers=buffers)
        return server

    def latest_checkpoint(self, out_dir: Path) -> Path | None:
        """Delegates to ``paramserver.checkpoint.latest_checkpoint``."""
        return latest_checkpoint(out_dir)
