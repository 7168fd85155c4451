"""Warmup plus cosine and warmup plus step decay, as the pure functions of the round the
replicas compute, against torch.optim.lr_scheduler's own composition of the same pieces
(LinearLR for the warmup, then CosineAnnealingLR or StepLR, chained by SequentialLR)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from paramserver.schedule import ScheduleConfig, learning_rate


def _torch_rates(base: float, warmup: int, tail: torch.optim.lr_scheduler.LRScheduler | None,
                 opt: torch.optim.Optimizer, rounds: int) -> list[float]:
    schedulers: list[torch.optim.lr_scheduler.LRScheduler] = []
    if warmup:
        schedulers.append(torch.optim.lr_scheduler.LinearLR(
            opt, start_factor=1 / warmup, end_factor=1.0, total_iters=warmup - 1))
    assert tail is not None
    schedulers.append(tail)
    chained = (torch.optim.lr_scheduler.SequentialLR(opt, schedulers, milestones=[warmup])
               if warmup else tail)
    rates = []
    with warnings.catch_warnings():  # step() before optimizer.step() in a bare loop
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(rounds):
            rates.append(opt.param_groups[0]["lr"])
            opt.step()
            chained.step()
    return rates


def _opt(base: float) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)


@pytest.mark.parametrize(("warmup", "total", "min_lr"), [(4, 14, 0.01), (0, 10, 0.0),
                                                         (1, 7, 0.001), (5, 40, 0.05)])
def test_warmup_then_cosine_matches_torch(warmup: int, total: int, min_lr: float) -> None:
    base = 0.3
    cfg = ScheduleConfig(kind="cosine", warmup_rounds=warmup, total_rounds=total, min_lr=min_lr)
    opt = _opt(base)
    tail = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warmup, eta_min=min_lr)
    expected = _torch_rates(base, warmup, tail, opt, total)
    mine = [learning_rate(base, cfg, r) for r in range(total)]
    assert all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
               for a, b in zip(mine, expected, strict=True)), (mine, expected)


@pytest.mark.parametrize(("warmup", "step_size", "gamma"), [(2, 3, 0.5), (0, 1, 0.9),
                                                            (3, 4, 0.1)])
def test_warmup_then_step_decay_matches_torch(warmup: int, step_size: int, gamma: float) -> None:
    base, rounds = 0.2, 16
    cfg = ScheduleConfig(kind="step", warmup_rounds=warmup, step_size=step_size, gamma=gamma)
    opt = _opt(base)
    tail = torch.optim.lr_scheduler.StepLR(opt, step_size=step_size, gamma=gamma)
    expected = _torch_rates(base, warmup, tail, opt, rounds)
    mine = [learning_rate(base, cfg, r) for r in range(rounds)]
    assert all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
               for a, b in zip(mine, expected, strict=True)), (mine, expected)
