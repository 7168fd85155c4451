"""The benchmark's no-Raft ceiling: its shard actor really applies a mean-gradient SGD step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.peers.task_ceiling import ShardActor, TaskCeilingConfig


def test_step_sums_in_rank_order_and_applies_sgd_like_torch() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    g0 = rng.standard_normal((4, 3)).astype(np.float32)
    g1 = rng.standard_normal((4, 3)).astype(np.float32)
    actor = ShardActor({"w": w}, lr=0.1)
    params, samples = actor.step((2, {"w": g0}), (6, {"w": g1}))
    assert samples == 8
    expected = torch.from_numpy(w.copy())
    mean = torch.from_numpy((g0 + g1) / np.float32(8))
    expected.add_(mean, alpha=-0.1)
    assert np.array_equal(params["w"], expected.numpy())
    assert not np.array_equal(params["w"], w)  # the step changed the parameters


def test_contributions_are_not_mutated() -> None:
    g = np.ones((2, 2), np.float32)
    ShardActor({"w": np.zeros((2, 2), np.float32)}, lr=1.0).step((1, {"w": g}))
    assert np.array_equal(g, np.ones((2, 2), np.float32))


@pytest.mark.parametrize("field", ["shards", "workers", "batch_per_worker", "iterations",
                                   "depth", "warmup"])
def test_config_rejects_non_positive_sizes(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        TaskCeilingConfig(**{field: 0})
