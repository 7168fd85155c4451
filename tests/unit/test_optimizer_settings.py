"""The optimizer and learning-rate schedule settings reach every shard's ServerConfig, from
the CLI and from the API alike."""

from __future__ import annotations

from typing import Any

import pytest

from jobs.backend import RaftServerBackend
from jobs.config import TrainConfig
from jobs.errors import ConfigError
from jobs.optimizer_settings import (
    optimizer_config,
    schedule_config,
    schedule_rounds,
    with_schedule_rounds,
)
from jobs.train import parse_config
from paramserver.schedule import ScheduleConfig, learning_rate


def _server_config(config: TrainConfig, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The ServerConfig ``RaftServerBackend.create`` builds for ``config`` (no Ray)."""
    from paramserver.server import ParameterServer

    seen: list[Any] = []
    monkeypatch.setattr(ParameterServer, "create",
                        staticmethod(lambda cfg, initial, buffers: seen.append(cfg) or "server"))
    assert RaftServerBackend().create(config, {}) == "server"
    return seen[0]


def test_adamw_with_weight_decay_reaches_the_optimizer(monkeypatch: pytest.MonkeyPatch) -> None:
    cli = parse_config(["--optimizer", "adamw", "--weight-decay", "0.01"])
    api = TrainConfig(optimizer="adamw", weight_decay=0.01)
    assert cli == api
    for config in (cli, api):
        opt = _server_config(config, monkeypatch).optimizer
        assert (opt.kind, opt.lr, opt.weight_decay, opt.momentum) == ("adamw", 1e-3, 0.01, 0.0)


def test_momentum_nesterov_and_the_policy_reach_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cli = parse_config(["--momentum", "0.7", "--nesterov", "--lr", "0.2",
                        "--nonfinite-policy", "skip-round", "--timeout", "12"])
    api = TrainConfig(momentum=0.7, nesterov=True, lr=0.2, nonfinite_policy="skip-round",
                      timeout_s=12.0)
    assert cli == api and api.timeout_s == 12.0
    server = _server_config(cli, monkeypatch)
    opt = server.optimizer
    assert (opt.kind, opt.lr, opt.momentum, opt.nesterov) == ("sgd", 0.2, 0.7, True)
    assert server.nonfinite_policy == "skip-round"


def test_the_lr_schedule_reaches_every_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    cli = parse_config(["--lr-schedule", "step", "--lr-step-size", "4", "--lr-gamma", "0.5",
                        "--lr-warmup-rounds", "2"])
    api = TrainConfig(lr_schedule="step", lr_step_size=4, lr_gamma=0.5, lr_warmup_rounds=2)
    assert cli == api
    server = _server_config(api, monkeypatch)
    assert server.schedule == ScheduleConfig(kind="step", step_size=4, gamma=0.5,
                                             warmup_rounds=2)
    assert _server_config(TrainConfig(), monkeypatch).schedule == ScheduleConfig()


def test_a_cosine_schedule_runs_over_the_job_unless_told_otherwise() -> None:
    config = parse_config(["--lr-schedule", "cosine", "--lr-min", "0.001", "--epochs", "3"])
    assert config.lr_total_rounds is None
    resolved = with_schedule_rounds(config, rounds_per_epoch=7)
    assert resolved.lr_total_rounds == 21 == schedule_rounds(config, 7)
    schedule = schedule_config(resolved)
    assert (schedule.kind, schedule.total_rounds, schedule.min_lr) == ("cosine", 21, 0.001)
    assert learning_rate(resolved.learning_rate, schedule, 21) == pytest.approx(0.001)
    budget = with_schedule_rounds(TrainConfig(lr_schedule="cosine", epochs=3, max_rounds=5), 7)
    assert budget.lr_total_rounds == 21  # a budget stop does not change the curve
    fixed = TrainConfig(lr_schedule="cosine", lr_total_rounds=10)
    assert with_schedule_rounds(fixed, 7) is fixed
    async_rounds = TrainConfig(lr_schedule="cosine", mode="async", workers=2, epochs=1)
    assert with_schedule_rounds(async_rounds, 5).lr_total_rounds == 10  # a step per rank
    with pytest.raises(ConfigError, match="needs lr_total_rounds"):
        schedule_config(config)
    with pytest.raises(ConfigError, match="leaves none of them"):
        with_schedule_rounds(TrainConfig(lr_schedule="cosine", lr_warmup_rounds=30,
                                         epochs=1), 7)


def test_optimizer_config_uses_the_resolved_learning_rate() -> None:
    assert optimizer_config(TrainConfig()).lr == 0.05
    assert optimizer_config(TrainConfig(optimizer="adam")).lr == 1e-3
    assert optimizer_config(TrainConfig(optimizer="adam", lr=0.3)).lr == 0.3
