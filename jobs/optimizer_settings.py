"""The server-side optimizer and learning-rate schedule of a ``TrainConfig``.

``optimizer_config`` and ``schedule_config`` turn the job's settings into the
``paramserver`` configs every shard replica steps with; ``with_schedule_rounds`` fills in
the length of a cosine schedule once the driver knows the run's rounds. ``paramserver`` is
imported only when a config is built, so ``jobs`` stays importable without it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from jobs.config import TrainConfig
from jobs.errors import ConfigError

if TYPE_CHECKING:
    from paramserver.optim import OptimizerConfig
    from paramserver.schedule import ScheduleConfig


def optimizer_kind(config: TrainConfig) -> tuple[str, float]:
    """The server optimizer kind and momentum: ``momentum`` is SGD with ``config.momentum``."""
    if config.optimizer == "momentum":
        return "sgd", config.momentum
    return config.optimizer, 0.0


def optimizer_config(config: TrainConfig) -> OptimizerConfig:
    """``paramserver.optim.OptimizerConfig`` of ``config``: kind, base learning rate
    (``config.learning_rate``), momentum, nesterov and weight decay."""
    from paramserver.optim import OptimizerConfig

    kind, momentum = optimizer_kind(config)
    return OptimizerConfig.from_dict({
        "kind": kind, "lr": config.learning_rate, "momentum": momentum,
        "nesterov": config.nesterov, "weight_decay": config.weight_decay})


def schedule_rounds(config: TrainConfig, rounds_per_epoch: int) -> int:
    """The rounds a full run has on the schedule's clock: ``epochs`` x ``rounds_per_epoch``,
    times ``workers`` in async (every contribution is a step there)."""
    rounds = config.epochs * rounds_per_epoch
    return rounds * config.max_workers if config.mode == "async" else rounds


def with_schedule_rounds(config: TrainConfig, rounds_per_epoch: int) -> TrainConfig:
    """``config`` with a cosine schedule's ``lr_total_rounds`` set to the run's rounds when it
    is None (``schedule_rounds``); any other config as it is. Raises ``ConfigError`` when the
    warmup leaves no rounds to anneal over."""
    if config.lr_schedule != "cosine" or config.lr_total_rounds is not None:
        return config
    total = schedule_rounds(config, rounds_per_epoch)
    if total <= config.lr_warmup_rounds:
        raise ConfigError(
            f"--lr-schedule cosine anneals over the run's {total} rounds, and "
            f"--lr-warmup-rounds {config.lr_warmup_rounds} leaves none of them; lower the "
            "warmup, or set --lr-total-rounds above it")
    return replace(config, lr_total_rounds=total)


def schedule_config(config: TrainConfig) -> ScheduleConfig:
    """``paramserver.schedule.ScheduleConfig`` of ``config``. A cosine schedule needs its
    length first (``with_schedule_rounds``); without it this raises ``ConfigError``."""
    from paramserver.schedule import ScheduleConfig

    if config.lr_schedule == "cosine" and config.lr_total_rounds is None:
        raise ConfigError("a cosine schedule needs lr_total_rounds: the driver sets it to the "
                          "run's rounds (with_schedule_rounds), or set --lr-total-rounds")
    return ScheduleConfig(kind=config.lr_schedule, step_size=config.lr_step_size,
                          gamma=config.lr_gamma, warmup_rounds=config.lr_warmup_rounds,
                          total_rounds=config.lr_total_rounds or 0, min_lr=config.lr_min)
