"""The stateless gradient task: one worker's slice of one global batch → per-shard gradients.

``gradient_task`` is a ``@ray.remote`` function (not an actor). Called with
``.options(num_returns=S + 1)`` it returns S refs, one per parameter shard, each resolving to
``(samples, {piece key: summed gradient, or buffer value})``, plus one small
``GradientMetrics`` record. The gradient is of the SUMMED per-sample loss (the job's
``workers.objective``: cross-entropy by default, ``reduction="sum"``) so that the server's sum
over workers divided by the total sample count is the exact global-batch mean for any split.
A buffer piece (BatchNorm's running statistics, ...) maps to the buffer as the forward left
it, starting from the published buffers.

The task reads its samples ``x[indices]`` from in-memory arrays in the object store, or, for
a dataset addressed by index (``workers.datasets``), opens that dataset once per process
from the small handle it is given and fetches only its indices.

The task mutates nothing but per-process caches (the model, keyed by the factory's key and
seed; the opened datasets, keyed by the handle's key);
parameters are read zero-copy from the object store (``torch.from_numpy``), buffers are
copied before the forward updates them, and the forward's randomness is seeded from (seed,
round, rank) (``workers.forward_rng``), so re-running a task (``max_retries``) with the same
inputs, in any process and after any history, returns bit-identical results on CPU.

With micro-batches (``launch_gradient_task(micro=...)``) a task computes a contiguous range
of the round's micro-batches, one forward and backward each, seeded from (seed, round,
micro-batch index), and returns ``(samples, TreeContribution)`` per shard: the sums of the
maximal tree nodes inside its range (``paramserver.microbatch``), the same bits whichever
task computes them.
"""

from __future__ import annotations

import logging
import time
import warnings
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
import torch
from ray import ObjectRef
from torch import nn
from torch.func import functional_call

from paramserver.microbatch import Node, TreeContribution, aligned_cover, subtree_sum
from workers.clipping import clip_contribution
from workers.datasets.cache import TaskDataset, task_dataset
from workers.datasets.contract import fetch_batch
from workers.errors import GradientTaskError
from workers.forward_rng import seeded_forward
from workers.model_state import buffer_dtype, state_buffers
from workers.models import ModelSpec, build_model
from workers.objective import Objective
from workers.schedule import MicroRange

LOG = logging.getLogger(__name__)
PieceRows = tuple[str, str, int, int]
"""One piece of a shard's layout as the tasks see it: ``(key, tensor, start_row, stop_row)``
(the plain-tuple view of ``paramserver.plan.Piece``)."""
Layout = Sequence[Sequence[PieceRows]]
ShardGradient = tuple[int, dict[str, np.ndarray]]

_MODELS: dict[str, nn.Module] = {}
_PLACED: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()
"""The device each cached module was last moved to."""
_WARNED_NO_GPU = False


@dataclass(frozen=True, kw_only=True)
class TaskSpec:
    """What every task of a job shares: the model, its seed, the shard layout, the device.

    seed: passed to ``build_model`` so the module matches the driver's, and to the forward's
    generator seed (``workers.forward_rng``). use_gpu: run on CUDA when the worker sees one
    (else CPU, with one warning per process).
    """

    model: ModelSpec
    seed: int
    layout: tuple[tuple[PieceRows, ...], ...]
    use_gpu: bool = False
    clip_grad_norm: float | None = None
    """Scale the task's contribution to a mean-gradient global norm of at most this
    (``workers.clipping``); None: sent as computed."""
    objective: Objective = field(default_factory=Objective)
    """The loss the task differentiates (summed over its samples) and the metric it reports;
    by default cross-entropy and accuracy."""


@dataclass(frozen=True, kw_only=True)
class GradientMetrics:
    """A task's small side record: counts and timings for metrics, never for the model."""

    round: int
    rank: int
    samples: int
    loss_sum: float
    correct: float
    """The metric's per-sample values, summed (accuracy: the samples classified right; 0.0
    without a metric)."""
    load_s: float
    compute_s: float
    device: str


def cached_model(spec: TaskSpec) -> nn.Module:
    """The model for ``spec``, built once per worker process; only its structure is used:
    every task passes the published parameters to ``functional_call``, so the module's own
    parameters are emptied (a 124M-parameter model would otherwise keep half a gigabyte
    per worker for nothing). Their identities stay, so tied weights stay tied."""
    key = f"{spec.model.key}@{spec.seed}"
    model = _MODELS.get(key)
    if model is None:
        model = build_model(spec.model, spec.seed)
        with torch.no_grad():
            for param in model.parameters():
                param.data = torch.empty(0, dtype=param.dtype)
        _MODELS[key] = model
    return model


def _as_tensor(arr: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():  # object-store arrays are read-only; torch never writes them
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)


def assemble_parameters(
    layout: Layout, shard_params: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, torch.Tensor]:
    """Full tensors by name from per-shard piece dicts; whole pieces are zero-copy views.

    Row slices of one tensor are concatenated in row order and must cover it exactly.
    Raises ``GradientTaskError`` on a missing piece or a gap/overlap in the rows.
    """
    if len(layout) != len(shard_params):
        raise GradientTaskError(f"got {len(shard_params)} shard dicts for {len(layout)} shards")
    slices: dict[str, list[tuple[int, int, np.ndarray]]] = {}
    out: dict[str, torch.Tensor] = {}
    for shard, params in zip(layout, shard_params, strict=True):
        for key, tensor, start, stop in shard:
            if key not in params:
                raise GradientTaskError(f"shard parameters lack piece {key!r}")
            if key == tensor:
                out[tensor] = _as_tensor(params[key])
            else:
                slices.setdefault(tensor, []).append((start, stop, params[key]))
    for tensor, parts in slices.items():
        parts.sort(key=lambda p: p[0])
        expected = 0
        for start, stop, arr in parts:
            if start != expected or arr.shape[0] != stop - start:
                raise GradientTaskError(f"row slices of {tensor!r} do not tile it at row {start}")
            expected = stop
        out[tensor] = torch.cat([_as_tensor(arr) for _, _, arr in parts])
    return out


def split_gradients(
    layout: Layout, grads: Mapping[str, torch.Tensor]
) -> list[dict[str, np.ndarray]]:
    """Cut full tensors (gradients, and buffers) into the layout's pieces: C-contiguous
    copies, float32 for a floating-point tensor, int64 for an integer or boolean one."""
    result: list[dict[str, np.ndarray]] = []
    for shard in layout:
        pieces: dict[str, np.ndarray] = {}
        for key, tensor, start, stop in shard:
            g = grads[tensor] if key == tensor else grads[tensor][start:stop]
            # asarray, not ascontiguousarray: that one makes a 0-d tensor 1-d
            pieces[key] = np.asarray(g.detach().cpu().numpy(), buffer_dtype(g), order="C")
        result.append(pieces)
    return result


def _device(use_gpu: bool) -> torch.device:
    global _WARNED_NO_GPU
    if use_gpu and torch.cuda.is_available():
        return torch.device("cuda")
    if use_gpu and not _WARNED_NO_GPU:
        _WARNED_NO_GPU = True
        LOG.warning("--gpu was given but this worker sees no CUDA device; using the CPU")
    return torch.device("cpu")


def compute_gradients(
    spec: TaskSpec, x: np.ndarray, y: np.ndarray, indices: np.ndarray,
    shard_params: Sequence[Mapping[str, np.ndarray]], *, round_index: int = 0, rank: int = 0,
) -> tuple[list[ShardGradient], dict[str, float | int | str]]:
    """Gradients of the summed loss (``spec.objective``) of ``x[indices]`` under the given
    parameters and buffers, in training mode (pure).

    Returns one ``(samples, pieces)`` per shard, a buffer piece holding the buffer as the
    forward left it, and a metrics dict (samples, loss_sum, correct: the metric's sum,
    load_s, compute_s, device). A loss or metric that breaks its contract raises
    ``LossError`` / ``MetricError``. The forward runs under ``seeded_forward(spec.seed,
    round_index, rank)``. Mutates nothing visible: the cached module is used only through
    ``functional_call``, the published buffers are copied, and the process's torch
    generators are restored.
    """
    if len(indices) == 0:
        raise GradientTaskError("a gradient task was given no samples")
    t0 = time.perf_counter()
    prepared = _prepare(spec, shard_params)
    xb, yb = _batch(x, y, indices, prepared.device)
    t1 = time.perf_counter()
    full, loss, outputs = _forward_backward(spec, prepared, xb, yb, round_index, rank)
    samples = len(indices)
    shard_grads = [(samples, pieces) for pieces in split_gradients(spec.layout, full)]
    metrics: dict[str, float | int | str] = {
        "samples": samples,
        "loss_sum": float(loss.detach()),
        "correct": spec.objective.metric.summed(outputs.detach(), yb),
        "load_s": t1 - t0,
        "compute_s": time.perf_counter() - t1,
        "device": str(prepared.device),
    }
    return shard_grads, metrics


@dataclass(frozen=True)
class _Prepared:
    """A task's module and published tensors on its device, shared by its forwards."""

    model: nn.Module
    device: torch.device
    names: list[str]
    leaves: dict[str, torch.Tensor]
    published: dict[str, torch.Tensor]  # the published buffers, never written
    own_buffers: dict[str, torch.Tensor]


def _prepare(spec: TaskSpec, shard_params: Sequence[Mapping[str, np.ndarray]]) -> _Prepared:
    model = cached_model(spec)
    model.train()
    device = _device(spec.use_gpu)
    tensors = assemble_parameters(spec.layout, shard_params)
    names = [n for n, _ in model.named_parameters()]
    own_buffers = state_buffers(model)
    missing = [n for n in [*names, *own_buffers] if n not in tensors]
    if missing:
        raise GradientTaskError(f"shard layout lacks model tensors {missing[:3]}")
    leaves = {n: tensors[n].to(device).requires_grad_(True) for n in names}
    if _PLACED.get(model) != str(device):  # a walk of every module: once per process
        model.to(device)
        _PLACED[model] = str(device)
    return _Prepared(model, device, names, leaves, {n: tensors[n] for n in own_buffers},
                     own_buffers)


def _batch(x: np.ndarray, y: np.ndarray, indices: np.ndarray,
           device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    xb = torch.from_numpy(np.ascontiguousarray(x[indices])).to(device)
    yb = torch.from_numpy(np.ascontiguousarray(y[indices])).to(device)
    return xb, yb


def _forward_backward(
    spec: TaskSpec, prepared: _Prepared, xb: torch.Tensor, yb: torch.Tensor, round_index: int,
    stream: int,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """One forward and backward from the published buffers, its randomness seeded from
    (seed, round, ``stream``): (summed gradients by tensor plus the buffers as the forward
    left them, the summed loss, the outputs)."""
    device = prepared.device
    # private copies in the module's dtypes: the forward updates them in place
    buffers = {n: prepared.published[n].to(device=device, dtype=b.dtype, copy=True)
               for n, b in prepared.own_buffers.items()}
    leaves = prepared.leaves
    with seeded_forward(spec.seed, round_index, stream, device):
        outputs = functional_call(prepared.model, {**leaves, **buffers}, (xb,))
    loss = spec.objective.loss.summed(outputs, yb)
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    full = {
        n: (g if g is not None else torch.zeros_like(leaves[n]))
        for n, g in zip(prepared.names, grads, strict=True)
    }
    if spec.clip_grad_norm is not None:
        clip_contribution(full, len(xb), spec.clip_grad_norm)
    full.update(buffers)  # after clipping: buffers are no gradients
    return full, loss, outputs


def compute_micro_gradients(
    spec: TaskSpec, x: np.ndarray, y: np.ndarray, indices: np.ndarray,
    shard_params: Sequence[Mapping[str, np.ndarray]], *, round_index: int, micro: MicroRange,
) -> tuple[list[tuple[int, TreeContribution]], dict[str, float | int | str]]:
    """``compute_gradients`` for micro-batches ``[micro.start, micro.stop)`` of
    ``micro.total``: ``indices`` are theirs, in order, an equal share each.

    Each micro-batch is its own forward and backward from the published buffers, seeded
    from (seed, round, micro-batch index) and clipped on its own (``clip_grad_norm``), so it
    is the same whichever task computes it. Per shard the task returns ``(samples,
    TreeContribution)``: the sums of the maximal tree nodes inside its range
    (``paramserver.microbatch``) and the buffers as micro-batch ``micro.start``'s forward left
    them. Metrics as ``compute_gradients``'s, summed over the micro-batches.
    """
    count = micro.count
    if count < 1 or len(indices) == 0 or len(indices) % count:
        raise GradientTaskError(f"{len(indices)} samples do not split into {count} equal "
                                "micro-batches")
    size = len(indices) // count
    t0 = time.perf_counter()
    prepared = _prepare(spec, shard_params)
    t1 = time.perf_counter()
    fetch_s = 0.0  # inside the loop: moving each micro-batch to the device
    leaves: list[list[dict[str, np.ndarray]]] = []  # [micro-batch][shard]
    loss_sum, correct = 0.0, 0.0
    for j in range(count):
        t2 = time.perf_counter()
        xb, yb = _batch(x, y, indices[j * size:(j + 1) * size], prepared.device)
        fetch_s += time.perf_counter() - t2
        full, loss, outputs = _forward_backward(spec, prepared, xb, yb, round_index,
                                                micro.start + j)
        leaves.append(split_gradients(spec.layout, full))
        loss_sum += float(loss.detach())
        correct += spec.objective.metric.summed(outputs.detach(), yb)
    nodes = aligned_cover(micro.start, micro.stop, micro.total)
    shard_grads: list[tuple[int, TreeContribution]] = []
    for shard, pieces in enumerate(spec.layout):
        buffer_keys = {key for key, tensor, _, _ in pieces if tensor in prepared.own_buffers}
        grad_keys = [key for key, _, _, _ in pieces if key not in buffer_keys]
        sums = tuple({key: _node_sum(leaves, shard, key, node, micro) for key in grad_keys}
                     for node in nodes)
        buffers = {key: leaves[0][shard][key] for key in sorted(buffer_keys)}
        shard_grads.append((len(indices), TreeContribution(
            start=micro.start, stop=micro.stop, total=micro.total, nodes=nodes, sums=sums,
            buffers=buffers)))
    metrics: dict[str, float | int | str] = {
        "samples": len(indices), "loss_sum": loss_sum, "correct": correct,
        "load_s": t1 - t0 + fetch_s, "compute_s": time.perf_counter() - t1 - fetch_s,
        "device": str(prepared.device),
    }
    return shard_grads, metrics


def _node_sum(leaves: list[list[dict[str, np.ndarray]]], shard: int, key: str, node: Node,
              micro: MicroRange) -> np.ndarray:
    """One tree node's sum of piece ``key`` from this task's micro-batch gradients."""
    start, stop = node
    if stop - start == 1:
        return leaves[start - micro.start][shard][key]
    own = {(i, i + 1): leaves[i - micro.start][shard][key] for i in range(start, stop)}
    return subtree_sum(own, start, stop, micro.total)


def task_batch(x: np.ndarray | TaskDataset, y: np.ndarray | None,
               indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """What ``compute_gradients`` reads for ``indices``: ``(x, y, indices, seconds)``.
    In-memory arrays are passed as they are (the task slices ``x[indices]``); a dataset
    handle (``y`` None) is opened once per process (``workers.datasets.cache``) and the
    batch fetched by index (``fetch_batch``), so the indices become ``0..len-1``."""
    if isinstance(x, np.ndarray):
        if y is None:
            raise GradientTaskError("a gradient task got features without targets")
        return x, y, indices, 0.0
    t0 = time.perf_counter()
    xb, yb = fetch_batch(task_dataset(x), indices, what="the train split")
    return xb, yb, np.arange(len(indices)), time.perf_counter() - t0


def _gradient_task(
    spec: TaskSpec, round_index: int, rank: int, x: np.ndarray | TaskDataset,
    y: np.ndarray | None, indices: np.ndarray, *shard_params: Mapping[str, np.ndarray],
    micro: MicroRange | None = None,
) -> tuple[object, ...]:
    torch.set_num_threads(1)
    xs, ys, rows, fetch_s = task_batch(x, y, indices)
    shard_grads: Sequence[object]
    if micro is None:
        shard_grads, info = compute_gradients(spec, xs, ys, rows, shard_params,
                                              round_index=round_index, rank=rank)
    else:
        shard_grads, info = compute_micro_gradients(spec, xs, ys, rows, shard_params,
                                                    round_index=round_index, micro=micro)
    metrics = GradientMetrics(
        round=round_index, rank=rank, samples=int(info["samples"]),
        loss_sum=float(info["loss_sum"]), correct=float(info["correct"]),
        load_s=fetch_s + float(info["load_s"]), compute_s=float(info["compute_s"]),
        device=str(info["device"]),
    )
    return (*shard_grads, metrics)


# Rounds are idempotent on the server (a duplicate contribution is a no-op), so retries are safe.
gradient_task = ray.remote(num_cpus=1, max_retries=3)(_gradient_task)


def launch_gradient_task(
    spec: TaskSpec, round_index: int, rank: int, x_ref: ObjectRef[Any],
    y_ref: ObjectRef[Any] | None, indices: np.ndarray, param_refs: Sequence[ObjectRef[Any]],
    gpu_fraction: float = 0.0, spec_ref: ObjectRef[Any] | None = None,
    micro: MicroRange | None = None,
) -> tuple[list[ObjectRef[Any]], ObjectRef[Any]]:
    """Submit one task (non-blocking): returns (one gradient ref per shard, the metrics ref).

    Passes refs, never values: the data and parameter refs resolve zero-copy in the worker.
    ``x_ref``/``y_ref``: the training arrays (in-memory data), or ``x_ref`` a ref of a
    dataset handle (``workers.datasets``) and ``y_ref`` None: the task then opens the
    dataset in its process and reads only its ``indices``.
    ``spec_ref``: ``ray.put(spec)`` made once per job, sent instead of pickling ``spec``
    again for every task. Parameter refs may still be pending (Ray starts the task when
    they resolve). ``micro``: the task computes these micro-batches (``indices`` are
    theirs) and returns ``TreeContribution`` pieces (``compute_micro_gradients``).
    """
    shards = len(spec.layout)
    if shards != len(param_refs):
        raise GradientTaskError(f"{len(param_refs)} parameter refs for {shards} shards")
    options: dict[str, object] = {"num_returns": shards + 1}
    if gpu_fraction > 0:
        options["num_gpus"] = gpu_fraction
    extra: dict[str, object] = {} if micro is None else {"micro": micro}
    refs = gradient_task.options(**options).remote(
        spec if spec_ref is None else spec_ref, round_index, rank, x_ref, y_ref, indices,
        *param_refs, **extra)
    return list(refs[:shards]), refs[shards]
