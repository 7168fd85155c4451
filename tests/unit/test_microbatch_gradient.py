"""Micro-batch gradient tasks: any number of tasks gives the same round command bits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from paramserver import AggregatorConfig, RoundAggregator, RoundCommand, decode_command
from paramserver.plan import ShardPlan, buffer_dtypes
from workers.errors import GradientTaskError, ScheduleError
from workers.gradient import TaskSpec, compute_gradients, compute_micro_gradients
from workers.model_state import model_state
from workers.models import ModelSpec, build_model
from workers.schedule import BatchSchedule, MicroRange, micro_range


def mb_bn_model() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def mb_mlp_model() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))


BN = ModelSpec(factory=mb_bn_model, key="tests.unit.test_microbatch_gradient:mb_bn_model")
MLP = ModelSpec(factory=mb_mlp_model, key="tests.unit.test_microbatch_gradient:mb_mlp_model")
GLOBAL = 12


def _setup(model: ModelSpec) -> tuple[TaskSpec, list[dict[str, np.ndarray]], ShardPlan]:
    state = model_state(build_model(model, 3))
    plan = ShardPlan.build({k: v.shape for k, v in state.items()}, 2,
                           buffers=buffer_dtypes(state, getattr(state, "buffers", ())))
    layout = tuple(tuple(tuple(p) for p in shard) for shard in plan.layout())
    shards = plan.split(state)
    for part in shards:
        for array in part.values():
            array.setflags(write=False)  # like object-store arrays
    return TaskSpec(model=model, seed=3, layout=layout), shards, plan  # type: ignore[arg-type]


def _data() -> tuple[np.ndarray, np.ndarray, BatchSchedule]:
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((40, 5)) * 10.0 ** rng.integers(-3, 3, (40, 1))).astype(np.float32)
    return x, rng.integers(0, 3, 40), BatchSchedule(seed=5, global_batch=GLOBAL, n_train=40)


def _round(model: ModelSpec, workers: int, micro_batches: int) -> list[bytes]:
    """One round's command per shard, with ``workers`` tasks over the micro-batches."""
    spec, shards, plan = _setup(model)
    x, y, schedule = _data()
    buffers = plan.buffers  # buffers are whole pieces: key == tensor
    aggregators = [RoundAggregator(AggregatorConfig(workers=workers),
                                   {k: v.shape for k, v in part.items()},
                                   buffers={k: np.dtype(v) for k, v in buffers.items()
                                            if k in part}, start_round=4)
                   for part in shards]
    commands: list[bytes] = []
    for rank in range(workers):
        micro = micro_range(rank, workers, micro_batches)
        indices = schedule.micro_batch_indices(1, 2, micro)
        grads, info = compute_micro_gradients(spec, x, y, indices, shards, round_index=4,
                                              micro=micro)
        assert info["samples"] == len(indices) == GLOBAL // micro_batches * micro.count
        for agg, (samples, part) in zip(aggregators, grads, strict=True):
            commands += agg.submit(4, rank, part, samples, 4).commands
    assert len(commands) == len(shards)
    return commands


@pytest.mark.parametrize("micro_batches", [4, 6])
@pytest.mark.parametrize("model", [MLP, BN], ids=["mlp", "batchnorm"])
def test_any_number_of_tasks_gives_the_same_command_bytes(model: ModelSpec,
                                                          micro_batches: int) -> None:
    reference = _round(model, 1, micro_batches)
    for workers in range(2, micro_batches + 1):
        assert _round(model, workers, micro_batches) == reference, workers


def test_the_round_sum_is_the_global_batch_gradient_and_buffers_of_micro_batch_0() -> None:
    x, y, schedule = _data()
    indices = schedule.global_batch_indices(1, 2)
    for model in (MLP, BN):
        cmds = [decode_command(c) for c in _round(model, 3, 4)]
        assert all(isinstance(c, RoundCommand) for c in cmds)
        got = {k: v for c in cmds if isinstance(c, RoundCommand)
               for k, v in {**c.grads, **c.buffers}.items()}
        ref = build_model(model, 3)
        ref.train()
        # a plain torch loop: BatchNorm normalises per micro-batch, the MLP does not care
        for j in range(4):
            rows = indices[j * 3:(j + 1) * 3]
            loss = nn.functional.cross_entropy(ref(torch.from_numpy(x[rows])),
                                               torch.from_numpy(y[rows]), reduction="sum")
            loss.backward()
            if j == 0:
                first = {k: v.clone() for k, v in ref.named_buffers()}
        for name, p in ref.named_parameters():
            assert p.grad is not None
            np.testing.assert_allclose(got[name], p.grad.numpy(), rtol=2e-5, atol=1e-4)
        for name, value in first.items():  # the buffers as micro-batch 0's forward left them
            assert np.array_equal(got[name], value.numpy()), name
    mlp = build_model(MLP, 3)
    nn.functional.cross_entropy(mlp(torch.from_numpy(x[indices])), torch.from_numpy(y[indices]),
                                reduction="sum").backward()
    cmds = [decode_command(c) for c in _round(MLP, 2, 6)]
    got = {k: v for c in cmds if isinstance(c, RoundCommand) for k, v in c.grads.items()}
    for name, p in mlp.named_parameters():
        assert p.grad is not None
        np.testing.assert_allclose(got[name], p.grad.numpy(), rtol=2e-5, atol=1e-4)


def test_bad_splits_are_refused() -> None:
    spec, shards, _ = _setup(MLP)
    x, y, _ = _data()
    with pytest.raises(GradientTaskError, match="equal"):
        compute_micro_gradients(spec, x, y, np.arange(5), shards, round_index=0,
                                micro=MicroRange(start=0, stop=2, total=4))
    with pytest.raises(ScheduleError, match="lower --workers"):
        micro_range(0, 5, 4)
    with pytest.raises(ScheduleError, match="multiple of --micro-batches"):
        BatchSchedule(seed=0, global_batch=12, n_train=40).micro_batch_indices(
            0, 0, MicroRange(start=0, stop=1, total=5))


@pytest.mark.parametrize("model", [MLP, BN], ids=["mlp", "batchnorm"])
def test_one_micro_batch_per_worker_is_the_per_rank_round_bit_for_bit(model: ModelSpec) -> None:
    """``--micro-batches N`` with ``--workers N`` commits exactly the round of no flag."""
    spec, shards, plan = _setup(model)
    x, y, schedule = _data()
    aggregators = [RoundAggregator(AggregatorConfig(workers=3),
                                   {k: v.shape for k, v in part.items()},
                                   buffers={k: np.dtype(v) for k, v in plan.buffers.items()
                                            if k in part}, start_round=4)
                   for part in shards]
    per_rank: list[bytes] = []
    for rank in range(3):
        grads, _ = compute_gradients(spec, x, y, schedule.worker_indices(1, 2, rank, 3), shards,
                                     round_index=4, rank=rank)
        for agg, (samples, pieces) in zip(aggregators, grads, strict=True):
            per_rank += agg.submit(4, rank, pieces, samples, 4).commands
    assert _round(model, 3, 3) == per_rank
