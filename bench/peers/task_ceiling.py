"""The ceiling of raftps' data plane: its own gradient tasks, no Raft, no storage.

raftps' sync round is fixed by the training contract: stateless ``@ray.remote`` gradient tasks
(``workers.gradient.gradient_task``, one ref per shard), parameters passed as object-store
refs, one call per shard that sums the contributions in rank order and steps the optimizer,
and rounds pipelined ``depth`` deep (round t+1's tasks queued on round t's answer). This peer
runs exactly that data plane with the same task code and the same shard plan, but each shard
is ONE plain Ray actor holding its parameters in memory: no replication, no log, no fsync, no
round ids, no locks. Whatever raftps adds (durability, failover, exactly-once rounds) can only
cost time on top, so on a CPU-bound machine this side bounds what any raftps side can reach.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.common import build_mlp, synthetic_classification

Pieces = dict[str, np.ndarray]


@dataclass(frozen=True, kw_only=True)
class TaskCeilingConfig:
    """Settings of one timed run."""

    shards: int = 2  # parameter shards (one actor each), raftps' default plan
    workers: int = 2  # gradient tasks per round
    batch_per_worker: int = 1024  # samples per task
    iterations: int = 40  # timed rounds
    warmup: int = 5  # untimed rounds first (worker start-up, first-touch allocations)
    depth: int = 3  # rounds in flight, as raftps' pipeline
    lr: float = 0.05  # SGD learning rate
    seed: int = 0  # data, init and batch-order seed
    timeout_s: float = 300.0  # limit on every ray.get

    def __post_init__(self) -> None:
        for name in ("shards", "workers", "batch_per_worker", "iterations", "depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"TaskCeilingConfig.{name} must be >= 1; pass a positive value")
        if self.warmup < 1:
            raise ValueError("TaskCeilingConfig.warmup must be >= 1: the clock starts when "
                             "the last warm-up round is answered")
        if not self.lr > 0 or not self.timeout_s > 0:
            raise ValueError("TaskCeilingConfig.lr and timeout_s must be > 0")


class ShardActor:
    """One shard's parameters in memory; each ``step`` applies one round's contributions."""

    def __init__(self, params: Pieces, lr: float) -> None:
        self.params = {key: np.array(value, np.float32) for key, value in params.items()}
        self.lr = lr

    def step(self, *contributions: tuple[int, Pieces]) -> tuple[Pieces, int]:
        """Sum the (samples, pieces) contributions in rank order, take one SGD step on the
        mean, return the new parameters and the sample count."""
        import torch

        samples = sum(count for count, _ in contributions)
        for key, param in self.params.items():
            total = contributions[0][1][key].copy()
            for _, pieces in contributions[1:]:
                total += pieces[key]
            total /= np.float32(samples)
            torch.from_numpy(param).add_(torch.from_numpy(total), alpha=-self.lr)
        return self.params, samples


def _task_spec(config: TaskCeilingConfig) -> tuple[Any, list[Pieces]]:
    """(TaskSpec, initial parameters by shard) of the benchmark MLP under raftps' plan."""
    import torch

    from paramserver.plan import ShardPlan
    from workers.gradient import TaskSpec
    from workers.models import ModelSpec

    torch.manual_seed(config.seed)
    initial = {name: p.detach().numpy().copy() for name, p in build_mlp().state_dict().items()}
    plan = ShardPlan.build({k: tuple(v.shape) for k, v in initial.items()}, config.shards)
    layout = tuple(tuple(tuple(piece) for piece in shard) for shard in plan.layout())
    spec = TaskSpec(model=ModelSpec(factory=build_mlp, key="bench-mlp"), seed=config.seed,
                    layout=layout)  # type: ignore[arg-type]
    return spec, plan.split(initial)


def run(config: TaskCeilingConfig) -> float:
    """Time ``config.iterations`` pipelined rounds after ``config.warmup``; return samples/s.

    Needs ``ray.init``. Blocks until the last round is answered; kills its actors.
    """
    import ray

    from workers.gradient import launch_gradient_task

    spec, parts = _task_spec(config)
    global_batch, per = config.workers * config.batch_per_worker, config.batch_per_worker
    x, y = synthetic_classification(global_batch * 16, seed=config.seed)
    x_ref, y_ref, spec_ref = ray.put(x), ray.put(y), ray.put(spec)
    actors: list[Any] = [ray.remote(ShardActor).remote(part, config.lr) for part in parts]
    params: Sequence[Any] = [ray.put(part) for part in parts]
    rng = np.random.default_rng(config.seed)
    inflight: deque[list[Any]] = deque()
    clock = {"settled": 0, "start": 0.0}

    def settle_oldest() -> None:
        ray.get(inflight.popleft(), timeout=config.timeout_s)
        clock["settled"] += 1
        if clock["settled"] == config.warmup:
            clock["start"] = time.perf_counter()

    try:
        for index in range(config.warmup + config.iterations):
            order = rng.permutation(len(x))[:global_batch]
            launched = [launch_gradient_task(spec, index, rank, x_ref, y_ref,
                                             order[rank * per:(rank + 1) * per], params,
                                             spec_ref=spec_ref)
                        for rank in range(config.workers)]
            answers = [actor.step.options(num_returns=2).remote(*[g[s] for g, _ in launched])
                       for s, actor in enumerate(actors)]
            params = [new for new, _ in answers]
            inflight.append([m for _, m in launched] + [count for _, count in answers])
            if len(inflight) >= config.depth:
                settle_oldest()
        while inflight:
            settle_oldest()
        elapsed = time.perf_counter() - clock["start"]
    finally:
        for actor in actors:
            ray.kill(actor)
    return config.iterations * global_batch / elapsed
