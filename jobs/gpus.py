"""``--gpu`` on a Ray cluster: use its GPUs, have its autoscaler add some, or run on the CPU.

A cluster that has no GPU when a job starts may still get one: an autoscaling cluster
(``ray up cluster.yaml``) starts GPU nodes only for GPU demand, so the job must ask. The
decision is a pure function (``plan_gpus``) of what is asked, what the cluster has and
whether it can grow; ``use_gpus`` gathers those facts from Ray, asks the autoscaler for
the GPUs and waits for them (``wait_for_gpus``), or falls back to the CPU with a warning
when nothing could ever add a GPU (an embedded ``ray.init()``, a fixed ``ray start``
cluster).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from jobs.config import TrainConfig
from jobs.errors import GpuUnavailableError

LOG = logging.getLogger(__name__)
GPU_WAIT_S = 900.0
"""How long a job waits for an autoscaler to add its first GPU (``--timeout`` if longer):
starting a cloud GPU node and installing torch on it takes minutes."""
POLL_S = 5.0
AUTOSCALING_STATUS_KEY = "__autoscaling_status"
"""Where Ray's autoscaler (v1 monitor) publishes its status in the GCS key-value store."""


@dataclass(frozen=True, slots=True)
class GpuPlan:
    """What the gradient tasks do about ``--gpu``."""

    gpu: float
    """GPUs per task to request (0: run on the CPU)."""
    wait: bool
    """Ask the autoscaler for GPUs and wait until the cluster has them, before round 0."""
    message: str | None
    """A warning line for the user, or None."""


def plan_gpus(requested: float, cluster_gpus: float, can_scale: bool) -> GpuPlan:
    """The decision, from ``--gpu`` (``requested`` GPUs per task), the GPUs the cluster has
    now and whether something can add GPU nodes to it (an autoscaler, or the user said so):
    GPUs present, or none asked for: as asked; none yet but ``can_scale``: ask and wait;
    none and nothing can add any: the CPU, with a warning."""
    if requested <= 0 or cluster_gpus >= requested:
        return GpuPlan(gpu=max(requested, 0.0), wait=False, message=None)
    have = f"only {cluster_gpus:g} GPU" if cluster_gpus > 0 else "no GPU"
    if can_scale:
        return GpuPlan(gpu=requested, wait=True, message=(
            f"--gpu {requested:g}: the Ray cluster has {have} yet; asking its autoscaler for "
            "GPU nodes and waiting for them"))
    return GpuPlan(gpu=0.0, wait=False, message=(
        f"--gpu {requested:g} was given but the Ray cluster has {have} and no autoscaler that "
        "could add one; running the gradient tasks on the CPU (pass --wait-for-gpus if GPU "
        "nodes will join)"))


def autoscaler_can_add_nodes(status: Mapping[str, Any] | None) -> bool:
    """Whether the autoscaler status Ray publishes (``AUTOSCALING_STATUS_KEY``, parsed)
    comes from an autoscaler with a node provider, one that can launch nodes. A cluster
    without one (``ray.init()``, ``ray start`` by hand) runs Ray's read-only monitor, which
    names each node's type ``node_<node id>``; a real autoscaler uses the config's node
    type names (``head``, ``gpu_worker``, ...). None (no status) is False."""
    if not status:
        return False
    report = status.get("autoscaler_report")
    if not isinstance(report, Mapping):
        return False
    mapping = report.get("node_type_mapping") or {}
    types = dict(mapping) if isinstance(mapping, Mapping) else {}
    if not types:
        return False
    return any(node_type != f"node_{node}" for node, node_type in types.items())


def _autoscaling_status() -> Mapping[str, Any] | None:
    """The autoscaler status of the connected cluster, parsed; None if there is none."""
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_initialized

    if not _internal_kv_initialized():  # type: ignore[no-untyped-call]
        return None
    raw = _internal_kv_get(AUTOSCALING_STATUS_KEY)
    if not raw:
        return None
    try:
        parsed = json.loads(raw)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def cluster_gpus() -> float:
    """GPUs of the connected Ray cluster (all nodes)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))  # type: ignore[no-untyped-call]


def wait_for_gpus(needed: float, deadline_s: float, *,
                  gpus: Callable[[], float] = cluster_gpus,
                  clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep,
                  poll_s: float = POLL_S) -> float:
    """Block until the cluster has ``needed`` GPUs (one task's worth); returns how many it
    has. Raises ``GpuUnavailableError`` after ``deadline_s`` seconds."""
    start = clock()
    while True:
        have = gpus()
        if have >= needed:
            return have
        waited = clock() - start
        if waited >= deadline_s:
            raise GpuUnavailableError(
                f"--gpu {needed:g}: the autoscaler added no GPU node in {waited:.0f} s; check "
                "the GPU node type of the cluster config (its max_workers, the cloud's GPU "
                "quota, its image) and `ray status`, or run without --gpu")
        sleep(min(poll_s, max(deadline_s - waited, 0.0)))


def use_gpus(config: TrainConfig) -> TrainConfig:
    """``config`` with the GPUs per task the gradient tasks will get (see ``plan_gpus``):
    blocks while an autoscaler adds GPU nodes; the warning line goes to stderr and the log.
    Needs Ray up."""
    if config.gpu <= 0:
        return config
    have = cluster_gpus()
    can_scale = (config.wait_for_gpus if config.wait_for_gpus is not None
                 else autoscaler_can_add_nodes(_autoscaling_status()))
    plan = plan_gpus(config.gpu, have, can_scale)
    if plan.message is not None:
        LOG.warning(plan.message)
        print(plan.message, file=sys.stderr)
    if plan.wait:
        _scale_up(config, plan.gpu)
    return config if plan.gpu == config.gpu else replace(config, gpu=plan.gpu)


def _scale_up(config: TrainConfig, gpu: float) -> None:
    """Ask the autoscaler for one bundle per gradient task and wait for the first GPU; the
    request is withdrawn afterwards (the queued tasks' own demand keeps the nodes)."""
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[{"CPU": 1, "GPU": gpu}] * config.max_workers)
    try:
        have = wait_for_gpus(gpu, max(GPU_WAIT_S, config.timeout_s))
    finally:
        request_resources(bundles=[])
    LOG.info("--gpu %g: the cluster has %g GPU(s) now", gpu, have)
