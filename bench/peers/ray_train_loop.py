"""The training loop of the Ray Train goodput side (``bench.peers.ray_train_goodput``):
what every ``TorchTrainer`` worker runs.

Each worker builds the benchmark MLP after ``torch.manual_seed(workload.seed)`` and trains it
with SGD at ``workload.lr`` under gloo DDP. Step ``s`` uses the samples ``[s*G, (s+1)*G)`` of
the training set (``G`` the global batch) and rank ``r`` the ``r``-th contiguous
``batch_per_worker`` slice of them (``rank_slice``), read zero-copy from the object store.
Every ``checkpoint_every`` steps (and after the last step) rank 0 reports a checkpoint (model,
optimizer state and the next step) with ``ray.train.report``; a worker group that starts
resumes from ``ray.train.get_checkpoint()``. Progress goes to the run's event log
(``bench.peers.ray_train_events``): a ``start`` record per worker, then rank 0's ``step``
records and its ``done`` record with the final model's digest.

With ``max_wall_s`` set, the run stops once that many seconds have passed since the run's
first completed step (read from the event log, so a restarted group keeps the same
deadline): every ``CAP_CHECK_EVERY`` steps the ranks agree, with one all-reduce of a flag,
whether the deadline has passed, and if it has they leave the loop at the same step. Rank 0
then logs a ``capped`` record instead of ``done``, and no final checkpoint is reported.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.goodput_workload import Workload, model_digest
from bench.peers.ray_train_events import append_event, cap_deadline, rank_slice, read_events

__all__ = ["CAP_CHECK_EVERY", "CHECKPOINT_FILE", "train_loop"]

CHECKPOINT_FILE = "state.pt"
CAP_CHECK_EVERY = 10  # steps between the ranks' checks of the wall-time cap


def train_loop(config: dict[str, Any]) -> None:
    """One worker's loop: resume, train steps ``start..steps-1``, checkpoint, log."""
    import numpy as np
    import ray
    import ray.train
    import torch
    from torch.nn.parallel import DistributedDataParallel

    from bench.common import build_mlp

    workload: Workload = config["workload"]
    every: int = config["checkpoint_every"]
    events: str = config["events"]
    max_wall_s: float | None = config.get("max_wall_s")
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    if world != workload.workers:
        raise RuntimeError(f"{world} workers run, the workload needs {workload.workers}")
    x_all, y_all = ray.get(config["data"])
    torch.manual_seed(workload.seed)
    model = build_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=workload.lr)
    start = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / CHECKPOINT_FILE, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
    ddp = DistributedDataParallel(model)
    append_event(events, {"event": "start", "rank": rank, "pid": os.getpid(), "step": start,
                          "t": time.time()})
    deadline: float | None = None
    for step in range(start, workload.steps):
        if max_wall_s is not None and step % CAP_CHECK_EVERY == 0:
            if deadline is None:
                deadline = cap_deadline(read_events(Path(events)), max_wall_s)
            if _all_past(deadline):
                if rank == 0:
                    append_event(events, {"event": "capped", "step": step, "t": time.time()})
                return
        lo, hi = rank_slice(workload.batch_of(step), rank, workload.batch_per_worker,
                            workload.workers)
        inputs = torch.from_numpy(np.array(x_all[lo:hi]))  # a writable copy of the slice
        labels = torch.from_numpy(np.array(y_all[lo:hi]))
        loss = torch.nn.functional.cross_entropy(ddp(inputs), labels)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        done = step + 1
        if rank == 0:
            append_event(events, {"event": "step", "step": step, "t": time.time()})
        if done == workload.steps or (every > 0 and done % every == 0):
            _report(done, float(loss.item()), model, optimizer, rank)
    if rank == 0:
        append_event(events, {"event": "done", "sha256": model_digest(model.state_dict()),
                              "t": time.time()})


def _all_past(deadline: float | None) -> bool:
    """Whether any rank sees ``deadline`` passed: one all-reduce, so every rank of the group
    gets the same answer at the same step."""
    import torch
    import torch.distributed as dist

    flag = torch.tensor([deadline is not None and time.time() >= deadline], dtype=torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _report(done: int, loss: float, model: Any, optimizer: Any, rank: int) -> None:
    """Report step ``done`` to Ray Train, with rank 0's checkpoint of the training state."""
    import ray.train
    import torch

    metrics = {"step": done, "loss": loss}
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="ray-train-goodput-") as folder:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "step": done}, Path(folder) / CHECKPOINT_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
