"""The benchmark's no-Raft ceiling: its shard actors really apply a mean-gradient SGD or Adam
step (Adam: paramserver.optim, as raftps' shard), its config, data and batch order. No Ray."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.common import synthetic_classification
from bench.peers.task_ceiling import (
    AdamShardActor,
    ShardActor,
    TaskCeilingConfig,
    _task_spec,
    round_indices,
    training_data,
)


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


def _adam_reference(params: dict[str, np.ndarray], rounds: list[list[tuple[int, dict]]],
                    lr: float) -> dict[str, np.ndarray]:
    """paramserver.optim's Adam on the mean of the rank-ordered sum, piece by piece."""
    from paramserver.optim import OptimizerConfig, new_state, optimizer_step

    cfg = OptimizerConfig(kind="adam", lr=lr)
    out = {k: v.copy() for k, v in params.items()}
    state = {k: new_state(cfg) for k in out}
    for contributions in rounds:
        samples = np.float32(sum(n for n, _ in contributions))
        for key in out:
            total = contributions[0][1][key].copy()
            for _, pieces in contributions[1:]:
                total += pieces[key]
            optimizer_step(out[key], np.divide(total, samples), state[key], lr, cfg)
    return out


@pytest.mark.parametrize("shapes", [{"w": (4, 3), "b": (3,)},
                                    {"big0": (256, 256), "big1": (300, 256), "b": (7,)}])
def test_adam_step_is_paramserver_optim_on_the_mean_of_the_rank_ordered_sum(
        shapes: dict[str, tuple[int, ...]]) -> None:
    # the second case has pieces of >= POOL_MIN_ELEMENTS: they are stepped in chunks on the pool
    rng = np.random.default_rng(1)
    params = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    rounds = [[(count, {k: rng.standard_normal(s).astype(np.float32) * 10
                        for k, s in shapes.items()}) for count in (3, 5, 8)]
              for _ in range(3)]
    frozen = [[(n, {k: v.copy() for k, v in p.items()}) for n, p in r] for r in rounds]
    actor = AdamShardActor(params, lr=1e-3)
    for contributions in rounds:
        stepped, samples = actor.step(*contributions)
        assert samples == 16
    expected = _adam_reference(params, frozen, 1e-3)
    for key in shapes:
        assert np.array_equal(stepped[key], expected[key]), key
        assert int(actor.state[key]["step"]) == 3
    assert not np.array_equal(stepped["b"], params["b"])  # it trained; the input is untouched
    for got, kept in zip(rounds, frozen, strict=True):  # contributions are never mutated
        for (_, pieces), (_, copy) in zip(got, kept, strict=True):
            assert all(np.array_equal(pieces[k], copy[k]) for k in shapes)


def test_adam_differs_from_sgd_and_the_rank_order_is_the_sum_order() -> None:
    w = np.zeros((2, 2), np.float32)
    g = (1, {"w": np.full((2, 2), 2.0, np.float32)})
    adam, _ = AdamShardActor({"w": w}, lr=0.5).step(g)
    sgd, _ = ShardActor({"w": w}, lr=0.5).step(g)
    # Adam's first step moves by about lr whatever the gradient's size; SGD by lr * grad
    assert np.allclose(adam["w"], -0.5, atol=1e-6) and np.allclose(sgd["w"], -1.0)
    assert np.array_equal(w, np.zeros((2, 2), np.float32))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"optimizer": "rmsprop"}, "optimizer"), ({"adam_lr": 0.0}, "adam_lr"),
    ({"adam_lr": float("nan")}, "adam_lr"), ({"data": "mnist"}, "data"),
    ({"samples": 255, "workers": 2, "batch_per_worker": 128}, "samples")])
def test_config_rejects_bad_optimizer_data_and_sample_counts(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TaskCeilingConfig(**kwargs)


def test_config_defaults_are_bench_trains_and_sizes_follow_the_batch() -> None:
    default = TaskCeilingConfig()
    assert (default.optimizer, default.data, default.model, default.actor_prefix) == (
        "sgd", "bench", None, None)
    assert default.global_batch == 2048 and default.train_samples == 16 * 2048
    scale = TaskCeilingConfig(workers=2, batch_per_worker=128, samples=256 * 5,
                              optimizer="adam", data="synthetic")
    assert scale.global_batch == 256 and scale.train_samples == 1280


def test_synthetic_data_and_batch_order_are_raftps_own() -> None:
    from workers.data import synthetic
    from workers.schedule import BatchSchedule

    cfg = TaskCeilingConfig(workers=2, batch_per_worker=128, samples=256 * 3, seed=4,
                            data="synthetic")
    x, y = training_data(cfg)
    ref_x, ref_y, _, _ = synthetic(784, 10, n_train=768, n_test=256)  # bench.scale's spec
    assert x.shape == (768, 784) and x.dtype == np.float32 and set(np.unique(y)) <= set(
        range(10))
    assert np.array_equal(x, ref_x) and np.array_equal(y, ref_y)
    schedule = BatchSchedule(seed=4, global_batch=256, n_train=768)
    batches = round_indices(cfg)
    for index in range(4):  # round 3 starts the second epoch
        epoch, batch = schedule.round_position(index)
        ranks = next(batches)
        assert [len(r) for r in ranks] == [128, 128]
        for rank, got in enumerate(ranks):
            assert np.array_equal(got, schedule.worker_indices(epoch, batch, rank, 2))


def test_bench_data_keeps_bench_trains_draw() -> None:
    cfg = TaskCeilingConfig(workers=2, batch_per_worker=4, seed=3)
    x, y = training_data(cfg)
    ref_x, ref_y = synthetic_classification(128, seed=3)
    assert np.array_equal(x, ref_x) and np.array_equal(y, ref_y)
    rng = np.random.default_rng(3)
    batches = round_indices(cfg)
    for _ in range(2):
        order = rng.permutation(128)[:8]
        ranks = next(batches)
        assert np.array_equal(ranks[0], order[:4]) and np.array_equal(ranks[1], order[4:])


def test_task_spec_uses_the_model_factory_and_raftps_plan() -> None:
    from bench.models import HIDDEN, mlp1m, parameter_count

    spec, parts = _task_spec(TaskCeilingConfig(shards=2, model=mlp1m))
    assert spec.model.key == "bench.models:mlp1m" and len(spec.layout) == len(parts) == 2
    assert sum(a.size for part in parts for a in part.values()) == parameter_count(HIDDEN["1m"])
    default, _ = _task_spec(TaskCeilingConfig())
    assert default.model.key == "bench-mlp"
