"""The synchronous parameter server of Ray's documentation, re-implemented for this benchmark.

Ray's "Parameter Server" example (docs.ray.io, ray-core/examples/plot_parameter_server) keeps
the whole model in one ``ParameterServer`` actor and computes gradients in ``DataWorker``
actors. One synchronous iteration is:

1. every worker gets the current weights *ref* and returns its gradients (one list of numpy
   arrays per worker, the mean over its own batch);
2. the driver passes the gradient refs straight into ``ps.apply_gradients.remote(*grads)``;
   Ray resolves them before the call runs, the server sums them element-wise, writes the sum
   into the parameters' ``.grad`` and takes one ``torch.optim.SGD`` step;
3. the call returns the new weights, whose ref feeds the next iteration.

The driver never waits inside the loop, so it only blocks on the last weights ref. This module
follows that shape with the benchmark MLP and synthetic data (see ``bench.common``) instead of
the example's MNIST ConvNet, so it does the same arithmetic per sample as the other sides.
No replication, no persistence: it is the baseline raftps is compared with.

``bench.scale`` runs the same loop as its ``ray_ps_adam`` side: ``RayPSConfig.model`` names
another factory (``bench.models``) and ``optimizer="adam"`` steps ``torch.optim.Adam`` on the
server instead of SGD. The defaults are ``bench.train``'s setting (the benchmark MLP, SGD).
The server keeps the example's rule of stepping on the *sum* of the workers' gradients.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from bench.common import build_mlp, synthetic_classification

Weights = dict[str, np.ndarray]
ModelFactory = Callable[[], Any]


@dataclass(frozen=True, kw_only=True)
class RayPSConfig:
    """Settings of one timed run of the example."""

    workers: int = 2  # DataWorker actors
    batch_per_worker: int = 1024  # samples each worker uses per iteration
    iterations: int = 40  # timed synchronous iterations
    warmup: int = 5  # untimed iterations first (actor start, first-touch allocations)
    lr: float = 0.05  # SGD learning rate on the server
    seed: int = 0  # data and init seed
    timeout_s: float = 300.0  # limit on the driver's final ray.get
    model: ModelFactory | None = None  # zero-argument factory; None: bench.common.build_mlp
    optimizer: Literal["sgd", "adam"] = "sgd"  # the server's torch optimizer

    def __post_init__(self) -> None:
        for name in ("workers", "batch_per_worker", "iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"RayPSConfig.{name} must be >= 1; pass a positive value")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"RayPSConfig.optimizer must be 'sgd' or 'adam', got "
                             f"{self.optimizer!r}")
        if self.warmup < 0:
            raise ValueError("RayPSConfig.warmup must be >= 0; pass 0 to time every iteration")
        if not self.lr > 0 or not self.timeout_s > 0:
            raise ValueError("RayPSConfig.lr and timeout_s must be > 0")


def _weights_of(model: Any) -> Weights:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


class ParameterServer:
    """Holds the model and its optimizer; applies the sum of the workers' gradients."""

    def __init__(self, lr: float, seed: int, model: ModelFactory | None = None,
                 optimizer: str = "sgd") -> None:
        import torch

        torch.manual_seed(seed)
        self.model = (model or build_mlp)()
        kind = torch.optim.Adam if optimizer == "adam" else torch.optim.SGD
        self.optimizer = kind(self.model.parameters(), lr=lr)

    def apply_gradients(self, *gradients: list[np.ndarray]) -> Weights:
        """Sum the workers' gradient lists, take one optimizer step, return the new weights."""
        import torch

        summed = [np.sum(np.stack(parts), axis=0) for parts in zip(*gradients, strict=True)]
        self.optimizer.zero_grad(set_to_none=False)
        for param, grad in zip(self.model.parameters(), summed, strict=True):
            param.grad = torch.from_numpy(grad)
        self.optimizer.step()
        return _weights_of(self.model)

    def get_weights(self) -> Weights:
        return _weights_of(self.model)


class DataWorker:
    """Owns a slice of the data; computes the gradient of its next batch at given weights."""

    def __init__(self, rank: int, batch: int, seed: int,
                 model: ModelFactory | None = None) -> None:
        import torch

        self.model = (model or build_mlp)()
        x, y = synthetic_classification(batch * 16, seed=seed * 1000 + rank)
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
        self.batch = batch
        self.cursor = 0

    def compute_gradients(self, weights: Weights) -> list[np.ndarray]:
        """Load ``weights``, run forward/backward on the next batch, return the gradients."""
        import torch
        import torch.nn.functional as functional

        self.model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
        lo = self.cursor
        self.cursor = (self.cursor + self.batch) % len(self.x)
        self.model.zero_grad(set_to_none=True)
        loss = functional.cross_entropy(
            self.model(self.x[lo : lo + self.batch]), self.y[lo : lo + self.batch]
        )
        loss.backward()  # type: ignore[no-untyped-call]
        return [p.grad.numpy() for p in self.model.parameters() if p.grad is not None]


def _iterate(ps: Any, workers: list[Any], weights: Any, iterations: int) -> Any:
    """Chain ``iterations`` synchronous rounds without blocking; return the last weights ref."""
    for _ in range(iterations):
        grads = [w.compute_gradients.remote(weights) for w in workers]
        weights = ps.apply_gradients.remote(*grads)
    return weights


def run(config: RayPSConfig) -> float:
    """Start the actors, warm up, time ``config.iterations`` rounds; return samples per second.

    Needs ``ray.init`` to have been called. Blocks until the last round's weights exist (at
    most ``config.timeout_s``), then kills the actors it created.
    """
    import ray

    ps: Any = ray.remote(ParameterServer).remote(config.lr, config.seed, config.model,
                                                 config.optimizer)
    workers: list[Any] = [
        ray.remote(DataWorker).remote(rank, config.batch_per_worker, config.seed, config.model)
        for rank in range(config.workers)
    ]
    try:
        ready = _iterate(ps, workers, ps.get_weights.remote(), config.warmup)
        ray.get(ready, timeout=config.timeout_s)
        start = time.perf_counter()
        last = _iterate(ps, workers, ready, config.iterations)
        ray.get(last, timeout=config.timeout_s)
        elapsed = time.perf_counter() - start
    finally:
        for actor in [ps, *workers]:
            ray.kill(actor)
    return config.iterations * config.workers * config.batch_per_worker / elapsed
