"""The ceiling of raftps' data plane: its own gradient tasks, no Raft, no storage.

raftps' sync round is fixed by the training contract: stateless ``@ray.remote`` gradient tasks
(``workers.gradient.gradient_task``, one ref per shard), parameters passed as object-store
refs, one call per shard that sums the contributions in rank order and steps the optimizer,
and rounds pipelined ``depth`` deep (round t+1's tasks queued on round t's answer). This peer
runs exactly that data plane with the same task code and the same shard plan, but each shard
is ONE plain Ray actor holding its parameters in memory: no replication, no log, no fsync, no
round ids, no locks. Whatever raftps adds (durability, failover, exactly-once rounds) can only
cost time on top, so on a CPU-bound machine this side bounds what any raftps side can reach.

The defaults are ``bench.train``'s setting (the benchmark MLP, SGD, ``bench.common``'s data
drawn at random per round). ``bench.scale`` runs it as its ``ceiling`` side with another
``model`` factory (``bench.models``), ``optimizer="adam"`` (``AdamShardActor``: raftps'
server-side Adam, ``paramserver.optim``, on the mean gradient) and ``data="synthetic"``
(``workers.data.synthetic`` and ``workers.schedule.BatchSchedule``: the very samples and
batch order raftps trains on with ``--data synthetic:784x10xN``). ``actor_prefix`` names the
shard actors ``<prefix>/shard-<s>`` so a probe can find them.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from bench.common import CLASSES, IN_FEATURES, build_mlp, synthetic_classification

Pieces = dict[str, np.ndarray]
ModelFactory = Callable[[], Any]


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
    model: ModelFactory | None = None  # zero-argument factory; None: bench.common.build_mlp
    optimizer: Literal["sgd", "adam"] = "sgd"  # sgd: ShardActor (lr); adam: AdamShardActor
    adam_lr: float = 1e-3  # Adam's learning rate (optimizer="adam" only)
    data: Literal["bench", "synthetic"] = "bench"  # see the module docstring
    samples: int | None = None  # training samples; None: 16 global batches
    actor_prefix: str | None = None  # shard actors named <prefix>/shard-<s>; None: unnamed

    def __post_init__(self) -> None:
        for name in ("shards", "workers", "batch_per_worker", "iterations", "depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"TaskCeilingConfig.{name} must be >= 1; pass a positive value")
        if self.warmup < 1:
            raise ValueError("TaskCeilingConfig.warmup must be >= 1: the clock starts when "
                             "the last warm-up round is answered")
        if not self.lr > 0 or not self.timeout_s > 0:
            raise ValueError("TaskCeilingConfig.lr and timeout_s must be > 0")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError("TaskCeilingConfig.optimizer must be 'sgd' or 'adam', got "
                             f"{self.optimizer!r}")
        if not (math.isfinite(self.adam_lr) and self.adam_lr > 0):
            raise ValueError(f"TaskCeilingConfig.adam_lr={self.adam_lr} must be a finite "
                             "number > 0")
        if self.data not in ("bench", "synthetic"):
            raise ValueError("TaskCeilingConfig.data must be 'bench' or 'synthetic', got "
                             f"{self.data!r}")
        if self.samples is not None and self.samples < self.global_batch:
            raise ValueError(f"TaskCeilingConfig.samples={self.samples} is below one global "
                             f"batch ({self.global_batch}); pass more samples or None")

    @property
    def global_batch(self) -> int:
        """Samples per round: ``workers * batch_per_worker``."""
        return self.workers * self.batch_per_worker

    @property
    def train_samples(self) -> int:
        """``samples``, or 16 global batches when it is None."""
        return self.samples if self.samples is not None else 16 * self.global_batch


def _rank_sum(contributions: Sequence[tuple[int, Pieces]], key: str) -> np.ndarray:
    """A new array: the contributions' ``key`` pieces summed in rank order (inputs untouched)."""
    total = contributions[0][1][key].copy()
    for _, pieces in contributions[1:]:
        total += pieces[key]
    return total


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
            total = _rank_sum(contributions, key)
            total /= np.float32(samples)
            torch.from_numpy(param).add_(torch.from_numpy(total), alpha=-self.lr)
        return self.params, samples


class AdamShardActor:
    """One shard's parameters and Adam state in memory; each ``step`` applies one round the
    way raftps' shard does: the contributions summed in rank order, then
    ``paramserver.layer_step.step_layers`` (the mean gradient, sum / samples in float32,
    stepped with per-piece state from ``new_state``, big pieces in chunks on its pool)."""

    def __init__(self, params: Pieces, lr: float) -> None:
        from paramserver.optim import OptimizerConfig, new_state

        self.cfg = OptimizerConfig(kind="adam", lr=lr)
        self.params = {key: np.array(value, np.float32) for key, value in params.items()}
        self.state = {key: new_state(self.cfg) for key in self.params}

    def step(self, *contributions: tuple[int, Pieces]) -> tuple[Pieces, int]:
        """Sum the (samples, pieces) contributions in rank order, take one Adam step on the
        mean, return the new parameters and the sample count."""
        from paramserver.layer_step import step_layers

        samples = sum(count for count, _ in contributions)
        sums = {key: _rank_sum(contributions, key) for key in self.params}
        self.params, self.state = step_layers(self.params, self.state, list(self.params), sums,
                                              samples, self.cfg.lr, self.cfg)
        return self.params, samples


def _task_spec(config: TaskCeilingConfig) -> tuple[Any, list[Pieces]]:
    """(TaskSpec, initial parameters by shard) of the model under raftps' plan."""
    import torch

    from paramserver.plan import ShardPlan
    from workers.gradient import TaskSpec
    from workers.models import ModelSpec, callable_key

    factory = config.model or build_mlp
    key = "bench-mlp" if config.model is None else callable_key(factory)
    torch.manual_seed(config.seed)
    initial = {name: p.detach().numpy().copy() for name, p in factory().state_dict().items()}
    plan = ShardPlan.build({k: tuple(v.shape) for k, v in initial.items()}, config.shards)
    layout = tuple(tuple(tuple(piece) for piece in shard) for shard in plan.layout())
    spec = TaskSpec(model=ModelSpec(factory=factory, key=key), seed=config.seed,
                    layout=layout)  # type: ignore[arg-type]
    return spec, plan.split(initial)


def training_data(config: TaskCeilingConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of ``config.train_samples`` samples, 784 features, 10 classes: ``bench.common``'s
    (seeded by ``config.seed``) or ``workers.data.synthetic``'s (its default seed, as raftps'
    ``--data synthetic:784x10xN``; the test split is not drawn: it follows the train one)."""
    if config.data == "bench":
        return synthetic_classification(config.train_samples, seed=config.seed)
    from workers.data import synthetic

    x, y, _, _ = synthetic(IN_FEATURES, CLASSES, n_train=config.train_samples, n_test=1)
    return x, y


def round_indices(config: TaskCeilingConfig) -> Iterator[list[np.ndarray]]:
    """Each round's sample indices, one array per rank: ``data="bench"``, a fresh random
    global batch per round; ``"synthetic"``, raftps' ``BatchSchedule`` (epoch permutations,
    contiguous equal worker slices)."""
    per, workers = config.batch_per_worker, config.workers
    if config.data == "synthetic":
        from workers.schedule import BatchSchedule

        schedule = BatchSchedule(seed=config.seed, global_batch=config.global_batch,
                                 n_train=config.train_samples)
        index = 0
        while True:
            epoch, batch = schedule.round_position(index)
            yield [schedule.worker_indices(epoch, batch, rank, workers)
                   for rank in range(workers)]
            index += 1
    rng = np.random.default_rng(config.seed)
    while True:
        order = rng.permutation(config.train_samples)[:config.global_batch]
        yield [order[rank * per:(rank + 1) * per] for rank in range(workers)]


def _shard_actors(config: TaskCeilingConfig, parts: Sequence[Pieces]) -> list[Any]:
    import ray

    kind, lr = ((AdamShardActor, config.adam_lr) if config.optimizer == "adam"
                else (ShardActor, config.lr))
    remote: Any = ray.remote(kind)
    if config.actor_prefix is None:
        return [remote.remote(part, lr) for part in parts]
    return [remote.options(name=f"{config.actor_prefix}/shard-{s}").remote(part, lr)
            for s, part in enumerate(parts)]


def run(config: TaskCeilingConfig) -> float:
    """Time ``config.iterations`` pipelined rounds after ``config.warmup``; return samples/s.

    Needs ``ray.init``. Blocks until the last round is answered; kills its actors.
    """
    import ray

    from workers.gradient import launch_gradient_task

    spec, parts = _task_spec(config)
    x, y = training_data(config)
    x_ref, y_ref, spec_ref = ray.put(x), ray.put(y), ray.put(spec)
    actors = _shard_actors(config, parts)
    params: Sequence[Any] = [ray.put(part) for part in parts]
    batches = round_indices(config)
    inflight: deque[list[Any]] = deque()
    clock = {"settled": 0, "start": 0.0}

    def settle_oldest() -> None:
        ray.get(inflight.popleft(), timeout=config.timeout_s)
        clock["settled"] += 1
        if clock["settled"] == config.warmup:
            clock["start"] = time.perf_counter()

    try:
        for index in range(config.warmup + config.iterations):
            launched = [launch_gradient_task(spec, index, rank, x_ref, y_ref, indices, params,
                                             spec_ref=spec_ref)
                        for rank, indices in enumerate(next(batches))]
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
    return config.iterations * config.global_batch / elapsed
