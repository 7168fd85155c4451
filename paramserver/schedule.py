"""Learning-rate schedules: the learning rate is a pure function of the round.

Replicas compute the rate from the committed round id alone, so they agree without sharing
any scheduler state (unlike ``torch.optim.lr_scheduler``, which counts its own steps).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from paramserver.errors import ConfigError

ScheduleKind = Literal["constant", "step", "cosine"]


@dataclass(frozen=True, kw_only=True)
class ScheduleConfig:
    """How the base learning rate changes with the round (after an optional linear warmup)."""

    kind: ScheduleKind = "constant"
    """``constant``; ``step`` (multiply by ``gamma`` every ``step_size`` rounds, like StepLR);
    ``cosine`` (anneal to ``min_lr`` at ``total_rounds``, like CosineAnnealingLR)."""
    step_size: int = 1
    """Rounds between decays for ``step``; >= 1."""
    gamma: float = 0.1
    """Decay factor for ``step``; in (0, 1]."""
    warmup_rounds: int = 0
    """Rounds of linear warmup from ``lr / warmup_rounds`` up to ``lr``; >= 0."""
    total_rounds: int = 0
    """Rounds until ``cosine`` reaches ``min_lr`` (warmup included); must exceed warmup."""
    min_lr: float = 0.0
    """Floor of the ``cosine`` schedule; >= 0."""

    def __post_init__(self) -> None:
        if self.kind not in ("constant", "step", "cosine"):
            raise ConfigError(f"schedule kind {self.kind!r} is unknown; use constant/step/cosine")
        if self.step_size < 1:
            raise ConfigError(f"step_size={self.step_size} must be >= 1")
        if not 0.0 < self.gamma <= 1.0:
            raise ConfigError(f"gamma={self.gamma} must be in (0, 1]")
        if self.warmup_rounds < 0:
            raise ConfigError(f"warmup_rounds={self.warmup_rounds} must be >= 0")
        if self.kind == "cosine" and self.total_rounds <= self.warmup_rounds:
            raise ConfigError(
                f"cosine needs total_rounds ({self.total_rounds}) > warmup_rounds "
                f"({self.warmup_rounds}); set total_rounds to the run's number of rounds"
            )
        if not (math.isfinite(self.min_lr) and self.min_lr >= 0):
            raise ConfigError(f"min_lr={self.min_lr} must be a finite number >= 0")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return asdict(self)


def learning_rate(base_lr: float, config: ScheduleConfig, round: int) -> float:
    """The learning rate for ``round`` (0-based): pure, deterministic, no state."""
    if round < 0:
        raise ValueError(f"round={round} must be >= 0")
    if round < config.warmup_rounds:
        return base_lr * (round + 1) / config.warmup_rounds
    t = round - config.warmup_rounds
    if config.kind == "step":
        return base_lr * config.gamma ** (t // config.step_size)
    if config.kind == "cosine":
        span = config.total_rounds - config.warmup_rounds
        progress = min(t, span) / span
        return config.min_lr + (base_lr - config.min_lr) * (1 + math.cos(math.pi * progress)) / 2
    return base_lr
