"""``--workers auto``: how many gradient tasks a round gets, from the cluster's current size.

With ``TrainConfig(workers="auto", micro_batches=M)`` the driver decides each round's task
count when it launches the round: one task per CPU of the cluster's alive nodes (or, with
``gpu``, per ``gpu`` GPUs, whichever is fewer), at least 1 and at most M. Nodes that join
give the next rounds more tasks; nodes that leave, fewer. The model bits do not change: the
round's gradient is the fixed micro-batch tree (``paramserver.microbatch``), whichever tasks
computed its micro-batches.

The count follows the cluster's totals (``ray.cluster_resources``), not its momentary load:
other work on the cluster only makes the tasks queue. A round keeps the count it was first
launched with, also when a failover recomputes it, so its contributions always tile its
micro-batches the same way.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping

LOG = logging.getLogger(__name__)

REFRESH_S = 0.2
"""The cluster's size is read at most this often (a GCS call); rounds in between reuse it."""
_KEEP_ROUNDS = 1024  # decisions remembered: far more than a pipeline keeps in flight
_SLACK = 1e-9  # float resource totals such as 0.9999999 GPUs count as whole


def task_count(resources: Mapping[str, float], *, gpu: float, most: int) -> int:
    """Tasks a round gets on a cluster with these resource totals: one per CPU (a task holds
    one), and with ``gpu > 0`` also at most ``GPU / gpu``; clamped to ``1..most``."""
    if most < 1:
        raise ValueError(f"a round needs room for at least one task, got most={most}")
    slots = math.floor(float(resources.get("CPU", 0.0)) + _SLACK)
    if gpu > 0:
        slots = min(slots, math.floor(float(resources.get("GPU", 0.0)) / gpu + _SLACK))
    return max(1, min(most, slots))


class ElasticWorkers:
    """The task count of each round under ``--workers auto`` (see the module docstring).

    ``read`` returns the cluster's resource totals (``ray.cluster_resources`` by default);
    ``clock`` is monotonic seconds; ``refresh_s``: ``REFRESH_S`` when None. They are
    injectable so the decisions can be tested without a cluster."""

    def __init__(self, *, gpu: float, most: int,
                 read: Callable[[], Mapping[str, float]] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 refresh_s: float | None = None) -> None:
        self.gpu = gpu
        self.most = most
        self._read = read if read is not None else _cluster_resources
        self._clock = clock
        self._refresh_s = REFRESH_S if refresh_s is None else refresh_s
        self._read_at: float | None = None
        self._current = 0
        self._by_round: dict[int, int] = {}

    def tasks(self, round: int) -> int:
        """The task count of ``round``: decided at its first call, the same ever after."""
        known = self._by_round.get(round)
        if known is not None:
            return known
        now = self._clock()
        if self._read_at is None or now - self._read_at >= self._refresh_s:
            self._read_at = now
            count = task_count(self._read(), gpu=self.gpu, most=self.most)
            if count != self._current:
                LOG.info("--workers auto: %d gradient task(s) per round from round %d",
                         count, round)
            self._current = count
        self._by_round[round] = self._current
        if len(self._by_round) > 2 * _KEEP_ROUNDS:  # rounds that far back are committed
            self._by_round = {r: n for r, n in self._by_round.items()
                              if r >= round - _KEEP_ROUNDS}
        return self._current


def _cluster_resources() -> Mapping[str, float]:
    import ray

    resources: Mapping[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    return resources
