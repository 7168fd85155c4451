"""Server optimizers vs torch.optim (bitwise, small and 1M-element tensors); the kernels'
position and thread independence; input checks; schedules; config validation."""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch

from paramserver import (
    ConfigError,
    GradientShapeError,
    OptimizerConfig,
    ScheduleConfig,
    learning_rate,
)
from paramserver.optim import check_state, new_state, optimizer_step

SHAPES = [(37, 19), (1000,), (3, 4, 5)]


def _run_pair(cfg: OptimizerConfig, torch_opt: type[torch.optim.Optimizer], kw: dict[str, Any],
              shape: tuple[int, ...], seed: int,
              schedule: ScheduleConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    start = rng.standard_normal(shape).astype(np.float32)
    ref = torch.nn.Parameter(torch.from_numpy(start.copy()))
    opt = torch_opt([ref], **kw)
    mine, state = start.copy(), new_state(cfg)
    for step in range(100):
        lr = learning_rate(cfg.lr, schedule or ScheduleConfig(), step)
        grad = rng.standard_normal(shape).astype(np.float32)
        opt.param_groups[0]["lr"] = lr
        ref.grad = torch.from_numpy(grad.copy())
        opt.step()
        optimizer_step(mine, grad, state, lr, cfg)
    assert int(state["step"]) == 100
    return mine, ref.detach().numpy()


SGD_CASES = [
    {"lr": 0.1},
    {"lr": 0.05, "momentum": 0.9},
    {"lr": 0.05, "momentum": 0.9, "nesterov": True},
    {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01},
    {"lr": 0.05, "momentum": 0.5, "nesterov": True, "weight_decay": 0.1},
]


@pytest.mark.parametrize("kw", SGD_CASES)
@pytest.mark.parametrize("shape", SHAPES)
def test_sgd_matches_torch_bitwise_over_100_steps(
    kw: dict[str, Any], shape: tuple[int, ...]
) -> None:
    mine, ref = _run_pair(OptimizerConfig(kind="sgd", **kw), torch.optim.SGD, kw, shape, 1)
    np.testing.assert_array_equal(mine, ref)


ADAM_CASES = [
    ("adam", torch.optim.Adam, {"lr": 0.01}),
    ("adam", torch.optim.Adam, {"lr": 0.003, "weight_decay": 0.01, "betas": (0.8, 0.99),
                                "eps": 1e-6}),
    ("adamw", torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1}),
]


@pytest.mark.parametrize(("kind", "cls", "kw"), ADAM_CASES)
@pytest.mark.parametrize("shape", SHAPES)
def test_adam_family_matches_torch_bitwise_over_100_steps(
    kind: str, cls: Any, kw: dict[str, Any], shape: tuple[int, ...]
) -> None:
    mine, ref = _run_pair(OptimizerConfig(kind=kind, **kw), cls, kw, shape, 2)  # type: ignore[arg-type]
    np.testing.assert_array_equal(mine, ref)


def test_sgd_with_step_schedule_matches_torch() -> None:
    schedule = ScheduleConfig(kind="step", step_size=10, gamma=0.5, warmup_rounds=5)
    kw: dict[str, Any] = {"lr": 0.1, "momentum": 0.9}
    mine, ref = _run_pair(OptimizerConfig(kind="sgd", **kw), torch.optim.SGD, kw, (50,), 3,
                          schedule)
    np.testing.assert_array_equal(mine, ref)


def test_adamw_decays_weights_without_gradient_coupling() -> None:
    cfg = OptimizerConfig(kind="adamw", lr=0.1, weight_decay=0.5)
    param = np.ones(4, np.float32)
    optimizer_step(param, np.zeros(4, np.float32), new_state(cfg), 0.1, cfg)
    np.testing.assert_allclose(param, np.float32(1 - 0.1 * 0.5))


def test_step_schedule_matches_torch_step_lr() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    cfg = ScheduleConfig(kind="step", step_size=3, gamma=0.5)
    for r in range(12):
        assert math.isclose(learning_rate(0.2, cfg, r), opt.param_groups[0]["lr"], rel_tol=1e-12)
        opt.step()
        sched.step()


def test_cosine_schedule_warms_up_then_anneals_to_min() -> None:
    cfg = ScheduleConfig(kind="cosine", warmup_rounds=4, total_rounds=14, min_lr=0.01)
    lrs = [learning_rate(1.0, cfg, r) for r in range(20)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4] == 1.0
    assert math.isclose(lrs[9], 0.01 + 0.99 * 0.5)
    assert all(a >= b for a, b in itertools.pairwise(lrs[3:]))
    assert lrs[14:] == [0.01] * 6


def test_constant_schedule_is_constant() -> None:
    assert {learning_rate(0.3, ScheduleConfig(), r) for r in range(50)} == {0.3}


@pytest.mark.parametrize("kw", [
    {"kind": "rmsprop"}, {"lr": -1.0}, {"lr": math.nan}, {"momentum": 1.0},
    {"nesterov": True}, {"kind": "adam", "nesterov": True, "momentum": 0.9},
    {"weight_decay": -0.1}, {"betas": (0.9, 1.0)}, {"eps": 0.0},
])
def test_optimizer_config_rejects_bad_values(kw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        OptimizerConfig(**kw)


@pytest.mark.parametrize("kw", [
    {"kind": "linear"}, {"step_size": 0}, {"gamma": 0.0}, {"warmup_rounds": -1},
    {"kind": "cosine", "total_rounds": 5, "warmup_rounds": 5}, {"min_lr": -1.0},
])
def test_schedule_config_rejects_bad_values(kw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        ScheduleConfig(**kw)


def test_optimizer_config_round_trips_through_dict() -> None:
    cfg = OptimizerConfig(kind="adamw", lr=0.5, betas=(0.8, 0.9), weight_decay=0.2)
    assert OptimizerConfig.from_dict(cfg.to_dict()) == cfg
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("cfg", [OptimizerConfig(kind="sgd", lr=0.1, momentum=0.9,
                                                 nesterov=True, weight_decay=0.01),
                                 OptimizerConfig(kind="adam", lr=0.01, weight_decay=0.01),
                                 OptimizerConfig(kind="adamw", lr=0.01, weight_decay=0.1)])
def test_in_place_steps_spare_grad_and_read_only_state(cfg: OptimizerConfig) -> None:
    rng = np.random.default_rng(5)
    grads = [rng.standard_normal((9, 4)).astype(np.float32) for _ in range(3)]
    start = rng.standard_normal((9, 4)).astype(np.float32)
    fresh, fresh_state = start.copy(), new_state(cfg)
    frozen, frozen_state = start.copy(), new_state(cfg)
    for grad in grads:
        kept = grad.copy()
        grad.flags.writeable = False
        optimizer_step(fresh, grad, fresh_state, 0.05, cfg)
        optimizer_step(frozen, grad, frozen_state, 0.05, cfg)
        assert np.array_equal(grad, kept)
        for value in frozen_state.values():  # state decoded from a snapshot is read-only
            value.flags.writeable = False
    assert np.array_equal(fresh.view(np.int32), frozen.view(np.int32))
    for name in cfg.state_names():
        assert np.array_equal(fresh_state[name], frozen_state[name])


ALL_CASES: list[tuple[str, Any, dict[str, Any]]] = [
    ("sgd", torch.optim.SGD, kw) for kw in SGD_CASES
] + ADAM_CASES


@pytest.mark.parametrize(("kind", "cls", "kw"), ALL_CASES)
def test_million_elements_params_and_state_match_torch_bitwise(
    kind: str, cls: Any, kw: dict[str, Any]
) -> None:
    """~1M elements (many vector blocks, an odd tail, several threads' chunks), 4 steps:
    parameters AND every state buffer equal torch.optim's bit for bit, updated in place."""
    shape = (1000, 1001)
    cfg = OptimizerConfig(kind=kind, **kw)  # type: ignore[arg-type]
    rng = np.random.default_rng(11)
    start = rng.standard_normal(shape).astype(np.float32)
    ref = torch.nn.Parameter(torch.from_numpy(start.copy()))
    opt = cls([ref], **kw)
    mine, state = start.copy(), new_state(cfg)
    address = mine.ctypes.data
    for step in range(4):
        grad = rng.standard_normal(shape).astype(np.float32)
        ref.grad = torch.from_numpy(grad.copy())
        opt.step()
        buffers = {n: state[n].ctypes.data for n in cfg.state_names() if n in state}
        optimizer_step(mine, grad, state, kw["lr"], cfg)
        assert all(state[n].ctypes.data == a for n, a in buffers.items()), "state was replaced"
        assert np.array_equal(mine.view(np.int32), ref.detach().numpy().view(np.int32)), step
        for name in cfg.state_names():
            assert np.array_equal(state[name], opt.state[ref][name].numpy()), (step, name)
    assert mine.ctypes.data == address  # stepped in place
    assert int(state["step"]) == 4


@pytest.mark.parametrize("cfg", [OptimizerConfig(kind="sgd", lr=0.1, momentum=0.9,
                                                 nesterov=True, weight_decay=0.01),
                                 OptimizerConfig(kind="adam", lr=0.01, weight_decay=0.01),
                                 OptimizerConfig(kind="adamw", lr=0.01, weight_decay=0.1)])
def test_bits_do_not_depend_on_position_or_thread_count(cfg: OptimizerConfig) -> None:
    """Replicas may chunk the work differently (other core counts, other alignment): each
    element must come out the same wherever it sits in a vector or a thread's chunk."""
    rng = np.random.default_rng(12)
    n = 300_007
    start, grads = rng.standard_normal(n).astype(np.float32), [
        rng.standard_normal(n).astype(np.float32) for _ in range(3)]

    def run(lo: int, hi: int, threads: int) -> np.ndarray:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            param, state = start[lo:hi].copy(), new_state(cfg)
            for grad in grads:
                optimizer_step(param, grad[lo:hi].copy(), state, cfg.lr, cfg)
            return param
        finally:
            torch.set_num_threads(before)

    whole = run(0, n, max(2, torch.get_num_threads()))
    assert np.array_equal(whole, run(0, n, 1))
    for lo, hi in [(1, n), (7, n - 3), (13, 13 + 31), (5, 10)]:
        assert np.array_equal(whole[lo:hi], run(lo, hi, 1)), (lo, hi)


def test_read_only_grad_is_used_without_copy_warnings() -> None:
    cfg = OptimizerConfig(kind="adam", lr=0.01)
    grad = np.ones(10, np.float32)
    grad.flags.writeable = False
    param = np.zeros(10, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimizer_step(param, grad, new_state(cfg), 0.01, cfg)
    np.testing.assert_allclose(param, -0.01, rtol=1e-6)


def test_bad_inputs_raise_typed_errors_before_changing_anything() -> None:
    cfg = OptimizerConfig(kind="sgd", lr=0.1, momentum=0.9)
    param, state = np.ones(4, np.float32), new_state(cfg)
    with pytest.raises(GradientShapeError):
        optimizer_step(param, np.ones(5, np.float32), state, 0.1, cfg)
    with pytest.raises(GradientShapeError):
        optimizer_step(param, np.ones(4, np.float64), state, 0.1, cfg)  # type: ignore[arg-type]
    frozen = np.ones(4, np.float32)
    frozen.flags.writeable = False
    with pytest.raises(GradientShapeError):
        optimizer_step(frozen, np.ones(4, np.float32), state, 0.1, cfg)
    assert np.array_equal(param, np.ones(4, np.float32)) and int(state["step"]) == 0
    assert issubclass(GradientShapeError, ValueError)


def test_check_state_rejects_misfit_buffers() -> None:
    check_state("w", (3,), {"step": np.zeros((), np.int64), "exp_avg": np.zeros(3, np.float32)})
    for bad in ({}, {"step": np.zeros(2, np.int64)}, {"step": np.zeros((), np.float32)},
                {"step": np.zeros((), np.int64), "exp_avg": np.zeros(4, np.float32)},
                {"step": np.zeros((), np.int64), "exp_avg": np.zeros(3, np.float64)}):
        with pytest.raises(GradientShapeError):
            check_state("w", (3,), bad)


@pytest.mark.parametrize("cfg", [OptimizerConfig(kind="adam", lr=0.01),
                                 OptimizerConfig(kind="adam", lr=0.01, weight_decay=0.01),
                                 OptimizerConfig(kind="adamw", lr=0.01, weight_decay=0.1),
                                 OptimizerConfig(kind="sgd", lr=0.1, momentum=0.9)])
def test_a_spare_gradient_may_be_overwritten_and_the_bits_stay(cfg: OptimizerConfig) -> None:
    """``spare_grad``: the caller's temporary mean gradient holds Adam's denominator after
    the step (one temporary fewer); the parameters and state are bitwise those of a step
    that kept the gradient intact (which the tests above compare with torch)."""
    rng = np.random.default_rng(11)
    start = rng.standard_normal((64, 33)).astype(np.float32)
    kept, kept_state = start.copy(), new_state(cfg)
    spared, spared_state = start.copy(), new_state(cfg)
    overwritten = False
    for _ in range(20):
        grad = rng.standard_normal((64, 33)).astype(np.float32)
        optimizer_step(kept, grad.copy(), kept_state, 0.05, cfg)
        spare = grad.copy()
        optimizer_step(spared, spare, spared_state, 0.05, cfg, spare_grad=True)
        overwritten |= not np.array_equal(spare, grad)
    assert np.array_equal(kept.view(np.int32), spared.view(np.int32))
    for name in cfg.state_names():
        assert np.array_equal(kept_state[name], spared_state[name])
    assert overwritten == (cfg.kind != "sgd")  # Adam(W) reuses it, SGD needs no temporary
