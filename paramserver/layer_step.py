"""Stepping a shard's layers for one round: torch's optimizer kernels, big layers on a pool.

The kernels release the GIL, so layers of at least ``POOL_MIN_ELEMENTS`` are stepped on a
process-wide pool of ``STEP_WORKERS`` threads (when there are two or more of them) and the
rest on the calling thread; steps of different layers never touch the same arrays.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

import numpy as np
import numpy.typing as npt

from paramserver.optim import OptimizerConfig, optimizer_step

F32 = npt.NDArray[np.float32]
LayerState = dict[str, npt.NDArray[Any]]
STEP_WORKERS = max(1, min(4, os.cpu_count() or 1))
"""Threads stepping the layers of one round (torch kernels release the GIL)."""
POOL_MIN_ELEMENTS = 1 << 16
"""Layers smaller than this are stepped on the applying thread (a pool task costs more)."""

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _step_pool() -> ThreadPoolExecutor:
    """The process-wide pool that steps layers (created on first use; never shut down)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(STEP_WORKERS, thread_name_prefix="shard-step")
        return _pool


def step_layers(params: Mapping[str, F32], opt: Mapping[str, Mapping[str, npt.NDArray[Any]]],
                trained: Sequence[str], grads: Mapping[str, F32], samples: int, lr: float,
                optimizer: OptimizerConfig, *,
                keep_state: bool = True) -> tuple[dict[str, F32], dict[str, LayerState]]:
    """Step each ``trained`` layer with its mean gradient (``grads[key] / samples``) at
    ``lr``: ``({key: new parameters}, {key: new optimizer state})``. Writable arrays are
    stepped in place, frozen ones (handed out) copied first; without ``keep_state`` each
    layer's new optimizer state is dropped as soon as it stepped (``{}`` in its place).
    Returns once every layer ran."""
    scale = np.float32(samples)

    def step(key: str) -> tuple[F32, LayerState]:
        param = params[key]
        if not param.flags.writeable:  # frozen: handed out, so copy-on-write
            param = param.copy()
        state = dict(opt[key])
        # the mean gradient is a temporary of this step's: the optimizer may reuse it
        optimizer_step(param, np.divide(grads[key], scale), state, lr, optimizer,
                       spare_grad=True)
        return param, state if keep_state else {}

    big = [k for k in trained if params[k].size >= POOL_MIN_ELEMENTS]
    if len(big) < 2 or STEP_WORKERS < 2:
        big = []
    futures: dict[str, Future[tuple[F32, LayerState]]] = {}
    try:
        for key in sorted(big, key=lambda k: -params[k].size):
            futures[key] = _step_pool().submit(step, key)
        done = {k: step(k) for k in trained if k not in futures}
    finally:
        wait(futures.values())  # no pool thread may touch the state after we return
    done.update((k, f.result()) for k, f in futures.items())
    return {k: done[k][0] for k in trained}, {k: done[k][1] for k in trained}
