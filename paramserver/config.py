"""Configuration of the round aggregator (the optimizer and schedule configs live beside
their code in ``optim.py`` and ``schedule.py`` and are re-exported here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from paramserver.errors import ConfigError
from paramserver.optim import OptimizerConfig
from paramserver.schedule import ScheduleConfig

AggregationMode = Literal["sync", "ssp", "async"]
NonFinitePolicy = Literal["error", "skip-round"]

__all__ = ["AggregationMode", "AggregatorConfig", "NonFinitePolicy", "OptimizerConfig",
           "ScheduleConfig"]


@dataclass(frozen=True, kw_only=True)
class AggregatorConfig:
    """How a shard leader turns worker contributions into round commands."""

    workers: int
    """N, the number of worker ranks (``0..N-1``); >= 1."""
    mode: AggregationMode = "sync"
    """``sync`` (BSP: one open round), ``ssp`` (rounds up to ``staleness`` ahead of the applied
    version) or ``async`` (every contribution becomes its own command)."""
    backup_workers: int = 0
    """b: in ``sync``, once ``close_round`` signals the straggler deadline a round completes
    with N-b contributions; 0 <= b < N."""
    staleness: int = 0
    """s: in ``ssp``, a contribution computed on parameters older than ``round - s`` is
    rejected and rounds may run up to s ahead of the applied version. In ``async``, a
    contribution computed more than s versions behind the applied one is rejected, and 0
    means unbounded. >= 0."""
    nonfinite: NonFinitePolicy = "error"
    """``error``: reject a NaN/Inf gradient (nothing changes); ``skip-round``: accept it and
    commit its round as a no-op step that only advances the version."""

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"workers={self.workers} must be >= 1")
        if self.mode not in ("sync", "ssp", "async"):
            raise ConfigError(f"mode {self.mode!r} is unknown; use sync, ssp or async")
        if not 0 <= self.backup_workers < self.workers:
            raise ConfigError(
                f"backup_workers={self.backup_workers} must be in 0..{self.workers - 1} "
                "(fewer than the number of workers)"
            )
        if self.backup_workers and self.mode != "sync":
            raise ConfigError("backup_workers only applies to mode='sync'; set it to 0")
        if self.staleness < 0:
            raise ConfigError(f"staleness={self.staleness} must be >= 0")
        if self.nonfinite not in ("error", "skip-round"):
            raise ConfigError(f"nonfinite={self.nonfinite!r} is unknown; use error or skip-round")
