"""The no-communication limit: one process, plain torch, the same global batch.

One ``torch.optim.SGD`` step per global batch of the benchmark MLP on the synthetic data set,
with ``torch.set_num_threads(threads)`` (2 by default: the CPU budget the distributed sides
share). Nothing is serialised, sent or replicated, so this is the ceiling a parameter server on
the same cores could approach.

``bench.scale`` sets ``model`` (a ``bench.models`` factory) and ``optimizer="adam"``; the
defaults are ``bench.train``'s setting (the benchmark MLP, SGD).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from bench.common import build_mlp, synthetic_classification


@dataclass(frozen=True, kw_only=True)
class TorchSingleConfig:
    """Settings of one timed run."""

    steps: int = 60  # timed optimizer steps (global batches)
    warmup: int = 5  # untimed steps first (allocator and thread-pool warm-up)
    global_batch: int = 2048  # samples per step, the same as the distributed sides
    threads: int = 2  # intra-op threads torch may use
    lr: float = 0.05  # SGD learning rate
    seed: int = 0  # data and init seed
    model: Callable[[], Any] | None = None  # zero-argument factory; None: bench.common.build_mlp
    optimizer: Literal["sgd", "adam"] = "sgd"  # the torch optimizer stepped per global batch

    def __post_init__(self) -> None:
        for name in ("steps", "global_batch", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"TorchSingleConfig.{name} must be >= 1; pass a positive value")
        if self.warmup < 0:
            raise ValueError("TorchSingleConfig.warmup must be >= 0; pass 0 to time every step")
        if not self.lr > 0:
            raise ValueError("TorchSingleConfig.lr must be > 0; pass a positive learning rate")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"TorchSingleConfig.optimizer must be 'sgd' or 'adam', got "
                             f"{self.optimizer!r}")


def run(config: TorchSingleConfig) -> float:
    """Train ``config.steps`` timed steps after ``config.warmup``; return samples per second.

    Blocks for the whole run and changes torch's global thread count (restored after).
    """
    import torch
    import torch.nn.functional as functional

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        torch.manual_seed(config.seed)
        model = (config.model or build_mlp)()
        kind = torch.optim.Adam if config.optimizer == "adam" else torch.optim.SGD
        optimizer = kind(model.parameters(), lr=config.lr)
        total = config.steps + config.warmup
        x, y = synthetic_classification(config.global_batch * total, config.seed)
        xs, ys = torch.from_numpy(x), torch.from_numpy(y)
        start = 0.0
        for step in range(total):
            if step == config.warmup:
                start = time.perf_counter()
            lo, hi = step * config.global_batch, (step + 1) * config.global_batch
            optimizer.zero_grad(set_to_none=True)
            loss = functional.cross_entropy(model(xs[lo:hi]), ys[lo:hi])
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        elapsed = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous_threads)
    return config.steps * config.global_batch / elapsed
