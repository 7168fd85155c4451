"""Stepping a shard's layers for one round: torch's optimizer kernels over flat chunks, on a pool.

A layer of at least ``POOL_MIN_ELEMENTS`` is stepped in chunks of ``CHUNK_ELEMENTS``: its
parameters, gradient and optimizer buffers are viewed flat, and each chunk's slice is one
task of a process-wide pool of ``STEP_WORKERS`` threads. Every optimizer in
``paramserver.optim`` is elementwise and torch's kernels give an element the same bits
wherever it falls in a vector (``tests/unit/test_optim.py`` checks this), so a chunked step
has exactly the bits of the whole-layer one. Chunks keep a step's seven passes over its
arrays in the cache, and spread one big layer over every core. The pool's threads run
torch's kernels single-threaded (``optim.single_threaded_kernels``): the chunks are the
parallelism, and a kernel forking its own threads from each pool thread would oversubscribe
the cores. Layers below the threshold are stepped whole on the calling thread, as is a first
SGD momentum step (torch clones the gradient into a new buffer then).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from paramserver.optim import OptimizerConfig, optimizer_step, single_threaded_kernels

F32 = npt.NDArray[np.float32]
LayerState = dict[str, npt.NDArray[Any]]
STEP_WORKERS = max(1, min(4, os.cpu_count() or 1))
"""Threads stepping the chunks of one round (torch kernels release the GIL)."""
POOL_MIN_ELEMENTS = 1 << 16
"""Layers smaller than this are stepped whole on the applying thread (a pool task costs
more)."""
CHUNK_ELEMENTS = 1 << 18
"""Elements per chunk (1 MiB of float32 per array): small enough for a step's arrays to
stay in the cache between its passes, big enough that a chunk's few kernel calls cost
little next to their work."""

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_scratch = threading.local()


def _step_pool() -> ThreadPoolExecutor:
    """The process-wide pool that steps chunks (created on first use; never shut down)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(STEP_WORKERS, thread_name_prefix="shard-step",
                                       initializer=single_threaded_kernels)
        return _pool


def _thread_scratch(purpose: str, size: int) -> F32:
    """This thread's reusable float32 buffer for ``purpose``, ``size`` elements (at most a
    chunk)."""
    buffers: dict[str, F32] | None = getattr(_scratch, "buffers", None)
    if buffers is None:
        buffers = _scratch.buffers = {}
    if purpose not in buffers or buffers[purpose].size < size:
        buffers[purpose] = np.empty(max(size, CHUNK_ELEMENTS), np.float32)
    return buffers[purpose][:size]


@dataclass
class _Layer:
    """One layer prepared for a chunked step: flat writable views of what the step updates,
    and the read-only sources each chunk copies its slice from first (copy-on-write).
    ``scratch`` names the buffers whose new values are not kept: a chunk steps them in this
    thread's scratch, copied from their source (or zeros where there is none)."""

    param: F32
    grad: F32
    step: npt.NDArray[Any]
    param_source: F32 | None = None
    buffers: dict[str, F32] = field(default_factory=dict)
    sources: dict[str, F32] = field(default_factory=dict)
    scratch: dict[str, F32 | None] = field(default_factory=dict)
    shaped: dict[str, npt.NDArray[Any]] = field(default_factory=dict)
    """The new parameter and buffers in the layer's shape (what the step returns)."""


def _chunkable(param: F32, grad: F32, state: Mapping[str, npt.NDArray[Any]],
               optimizer: OptimizerConfig) -> bool:
    if param.size < POOL_MIN_ELEMENTS or STEP_WORKERS < 2:
        return False
    if param.shape != grad.shape or param.dtype != np.float32 or grad.dtype != np.float32:
        return False  # the whole-layer step raises the typed error
    if not param.flags.c_contiguous:
        return False
    names = optimizer.state_names()
    if optimizer.kind == "sgd" and names and state.get(names[0]) is None:
        return False  # the first momentum step creates the buffer as a clone of g
    return all(state.get(n) is None or state[n].flags.c_contiguous for n in names)


def _writable_flat(array: npt.NDArray[Any]) -> tuple[npt.NDArray[Any], npt.NDArray[Any] | None]:
    """``(flat writable array, flat read-only source or None)``: a writable array itself, a
    read-only one as a new array whose chunks are copied from it."""
    if array.flags.writeable:
        return array.reshape(-1), None
    return np.empty(array.size, array.dtype), array.reshape(-1)


def _prepare(param: F32, grad: F32, state: Mapping[str, npt.NDArray[Any]],
             optimizer: OptimizerConfig, keep_state: bool) -> _Layer:
    flat, source = _writable_flat(param)
    layer = _Layer(param=flat, grad=grad.reshape(-1), step=np.asarray(state["step"]),
                   param_source=source)
    layer.shaped["param"] = flat.reshape(param.shape)
    names = optimizer.state_names()
    fresh: dict[str, npt.NDArray[Any]] = {}
    if optimizer.kind != "sgd" and any(state.get(n) is None for n in names):
        if not keep_state:
            layer.scratch = dict.fromkeys(names)
            return layer
        fresh = {n: np.zeros(param.shape, np.float32) for n in names}  # as adam_step does
    else:
        for name in names:
            if not keep_state and not state[name].flags.writeable:
                layer.scratch[name] = state[name].reshape(-1)
            else:
                fresh[name] = state[name]
    for name, buffer in fresh.items():
        flat_buffer, buffer_source = _writable_flat(buffer)
        layer.buffers[name] = flat_buffer
        if buffer_source is not None:
            layer.sources[name] = buffer_source
        layer.shaped[name] = flat_buffer.reshape(param.shape)
    return layer


def _step_chunk(layer: _Layer, lo: int, hi: int, scale: np.float32, lr: float,
                optimizer: OptimizerConfig) -> None:
    if layer.param_source is not None:
        layer.param[lo:hi] = layer.param_source[lo:hi]
    for name, source in layer.sources.items():
        layer.buffers[name][lo:hi] = source[lo:hi]
    mean = np.divide(layer.grad[lo:hi], scale, out=_thread_scratch("mean", hi - lo))
    state: dict[str, npt.NDArray[Any]] = {"step": layer.step}
    state.update((name, buffer[lo:hi]) for name, buffer in layer.buffers.items())
    for name, origin in layer.scratch.items():
        scratch = _thread_scratch(name, hi - lo)
        if origin is None:
            scratch.fill(0.0)
        else:
            scratch[:] = origin[lo:hi]
        state[name] = scratch
    optimizer_step(layer.param[lo:hi], mean, state, lr, optimizer, spare_grad=True)


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
    layers = {k: _prepare(params[k], grads[k], opt[k], optimizer, keep_state) for k in trained
              if _chunkable(params[k], grads[k], opt[k], optimizer)}
    futures: list[Future[None]] = []
    out: dict[str, tuple[F32, LayerState]] = {}
    try:
        for layer in sorted(layers.values(), key=lambda layer: -layer.param.size):
            size = layer.param.size
            futures.extend(
                _step_pool().submit(_step_chunk, layer, lo, min(lo + CHUNK_ELEMENTS, size),
                                    scale, lr, optimizer)
                for lo in range(0, size, CHUNK_ELEMENTS))
        for key in trained:
            if key not in layers:
                out[key] = _step_whole(params[key], grads[key], opt[key], scale, lr, optimizer)
    finally:
        wait(futures)  # no pool thread may touch the state after we return
    for future in futures:
        future.result()
    for key, layer in layers.items():
        state: LayerState = {"step": np.asarray(int(layer.step) + 1, np.int64)}
        state.update((n, b) for n, b in layer.shaped.items() if n != "param")
        out[key] = layer.shaped["param"], state
    return ({k: out[k][0] for k in trained},
            {k: out[k][1] if keep_state else {} for k in trained})


def _step_whole(param: F32, grad: F32, opt: Mapping[str, npt.NDArray[Any]], scale: np.float32,
                lr: float, optimizer: OptimizerConfig) -> tuple[F32, LayerState]:
    if not param.flags.writeable:  # frozen: handed out, so copy-on-write
        param = param.copy()
    state = dict(opt)
    # the mean gradient is a temporary of this step's: the optimizer may reuse it
    optimizer_step(param, np.divide(grad, scale), state, lr, optimizer, spare_grad=True)
    return param, state
