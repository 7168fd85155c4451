"""Configuration of a ``ParameterServer``: one frozen, keyword-only, validated dataclass."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from consensus.replica_config import RaftGroupConfig
from paramserver.config import AggregationMode, AggregatorConfig, NonFinitePolicy
from paramserver.errors import ConfigError
from paramserver.optim import OptimizerConfig
from paramserver.schedule import ScheduleConfig

_JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_SPLIT_BYTES = 4 << 20
"""Default ``ServerConfig.split_bytes``: small next to a shard of a large model, so the greedy
plan keeps shards within a few percent of each other (e.g. GPT-2 small over 2-8 shards)."""


def default_group_config() -> RaftGroupConfig:
    """Raft timing for parameter shards. Ticks of 50 ms with a heartbeat every 2 ticks keep
    idle replicas cheap beside the training tasks (S groups x R replicas share the CPUs).
    The election timeout is 20-40 ticks (1-2 s, etcd's default is 1 s): a round of a large
    model is an entry of tens of MB that every replica receives, writes and applies while
    the gradient tasks hold the cores, and a follower must not mistake that for a dead
    leader (0.5-1 s gave a leader change every few dozen rounds of a 20M-parameter model on
    2 cores). A leader whose process exits or is killed is replaced within a fifth of that,
    because its followers see its connections close (``RaftNode.peer_gone``); one that
    goes silent (a partition, a machine that lost power) in 1-2 s. The log is compacted
    every 256 rounds, or sooner by bytes (``RaftGroupConfig.snapshot_log_bytes``)."""
    return RaftGroupConfig(tick_interval_s=0.05, heartbeat_ticks=2, election_ticks=20,
                           snapshot_every=256)


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Everything ``ParameterServer.create`` needs besides the initial tensors."""

    job: str
    """Job name; actors are named ``<job>/shard-<s>/replica-<r>``. Letters, digits, ``_.-``."""
    shards: int = 2
    """S, the number of parameter shards (one Raft group each); >= 1."""
    replicas: int = 3
    """Replicas per shard group; >= 1 (3 tolerates one failure per shard)."""
    workers: int = 2
    """N, the number of worker ranks contributing to each round; >= 1."""
    mode: AggregationMode = "sync"
    """``sync``, ``ssp`` or ``async`` (see ``AggregatorConfig``)."""
    staleness: int = 0
    """Bounded staleness s for ``ssp``/``async``; >= 0."""
    backup_workers: int = 0
    """b backup workers in ``sync``: a round closed at its deadline completes with N-b."""
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(kind="sgd", lr=0.1))
    """The server-side optimizer applied to the mean gradient of each round."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Learning-rate schedule, a pure function of the round."""
    nonfinite_policy: NonFinitePolicy = "error"
    """``error`` rejects a NaN/Inf gradient; ``skip-round`` commits its round as a no-op."""
    storage_dir: str = "/tmp/raftps"
    """Where each replica keeps its durable Raft log (node-local)."""
    namespace: str | None = None
    """Ray namespace of the shard actors; None uses the driver's."""
    split_bytes: int = DEFAULT_SPLIT_BYTES
    """Tensors above this many bytes are split into row slices across shards."""
    group: RaftGroupConfig = field(default_factory=default_group_config)
    """Raft timing and batching of every shard group."""
    rpc_timeout_s: float = 60.0
    """Upper bound on any single blocking call to a shard (pull, checkpoint, status)."""

    def __post_init__(self) -> None:
        if not _JOB_NAME.match(self.job):
            raise ConfigError(f"job name {self.job!r} is invalid; use 1-64 letters, digits, "
                              "'_', '.' or '-', starting with a letter or digit")
        if not isinstance(self.shards, int) or self.shards < 1:
            raise ConfigError(f"shards={self.shards!r} must be an int >= 1 (resolve 'auto' "
                              "with paramserver.plan.auto_shards first)")
        if self.replicas < 1:
            raise ConfigError(f"replicas={self.replicas} must be >= 1")
        if self.split_bytes < 4:
            raise ConfigError(f"split_bytes={self.split_bytes} must be >= 4 (one float32)")
        if self.rpc_timeout_s <= 0:
            raise ConfigError(f"rpc_timeout_s={self.rpc_timeout_s} must be > 0")
        self.aggregator()  # validates workers, mode, staleness, backup workers, policy

    def aggregator(self) -> AggregatorConfig:
        """The aggregator configuration every shard leader uses."""
        return AggregatorConfig(
            workers=self.workers, mode=self.mode, backup_workers=self.backup_workers,
            staleness=self.staleness, nonfinite=self.nonfinite_policy,
        )
