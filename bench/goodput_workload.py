"""The one workload and fault schedule every side of ``bench.goodput`` runs, and its record.

Every side trains the bench MLP (``bench.common.build_mlp``, 784-256-128-10) with SGD on the
same synthetic data (``bench.common.synthetic_classification``, ``batches`` global batches,
cycled), sync data-parallel with 2 workers of ``batch_per_worker`` samples, for ``steps``
steps. A side reports a ``SideRun``:
the wall-clock time (seconds since the side's own start) at which each step completed,
the faults it injected and when, and the final model's digest.

Faults come from one ``FaultPlan``: a seeded list of times (seconds after the first
completed step) at which the side kills one of its training worker processes (SIGKILL),
optionally one node loss and one driver kill. The same plan is given to every side.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

WORKERS = 2
LR = 0.05


@dataclass(frozen=True, kw_only=True)
class Workload:
    """What every side trains (see the module docstring)."""

    steps: int = 300
    batch_per_worker: int = 1024
    seed: int = 0
    lr: float = LR
    workers: int = WORKERS
    batches: int = 64
    """Distinct global batches in the data set; step ``s`` trains on batch
    ``s % batches`` (64 x 2048 samples of 784 floats: 411 MB, whatever ``steps``)."""

    @property
    def global_batch(self) -> int:
        return self.workers * self.batch_per_worker

    @property
    def samples(self) -> int:
        """Training samples: ``min(steps, batches)`` global batches."""
        return min(self.steps, self.batches) * self.global_batch

    def batch_of(self, step: int) -> int:
        """The global batch step ``step`` trains on (the data set is cycled)."""
        return step % min(self.steps, self.batches)

    def data(self) -> tuple[np.ndarray, np.ndarray]:
        """The training set, the same arrays on every side."""
        from bench.common import synthetic_classification

        return synthetic_classification(self.samples, self.seed)


@dataclass(frozen=True, kw_only=True)
class FaultPlan:
    """When a side injects faults, in seconds after its first completed step."""

    worker_kills_s: tuple[float, ...] = ()
    """Kill one training worker process (SIGKILL) at each of these times."""
    node_loss_s: float | None = None
    """Remove a whole worker node (``ray.cluster_utils.Cluster``) at this time."""
    driver_kill_s: float | None = None
    """SIGKILL the driver at this time, then start it again to resume."""
    seed: int = 0
    """Seeds which worker each kill picks (``victim``)."""

    @classmethod
    def every(cls, period_s: float, horizon_s: float, seed: int = 0) -> FaultPlan:
        """A worker kill every ``period_s`` seconds, up to ``horizon_s``."""
        if period_s <= 0:
            raise ValueError(f"a fault period must be > 0 s, got {period_s}")
        count = int(horizon_s // period_s)
        return cls(worker_kills_s=tuple(period_s * (i + 1) for i in range(count)), seed=seed)

    def victim(self, index: int, candidates: Sequence[Any]) -> Any:
        """The worker the ``index``-th kill picks among ``candidates`` (seeded, stable)."""
        if not candidates:
            raise ValueError("no worker process to kill")
        return random.Random(self.seed * 1_000_003 + index).choice(list(candidates))


@dataclass(kw_only=True)
class SideRun:
    """One run of one side: what ``bench.goodput`` computes goodput and recovery from."""

    side: str
    faulted: bool
    step_times_s: list[float] = field(default_factory=list)
    """Seconds since the side started (its process, start-up included) at which each
    completed step ended, in completion order; a step recomputed after a failure appears
    again (so ``len`` can exceed ``steps``)."""
    first_step_s: float = 0.0
    """Seconds from start to the first completed step (start-up)."""
    wall_s: float = 0.0
    """Seconds from start until ``steps`` distinct steps were complete."""
    fault_times_s: list[float] = field(default_factory=list)
    """Seconds since start at which each injected fault happened."""
    fault_kinds: list[str] = field(default_factory=list)
    """What each fault was: ``worker``, ``leader``, ``follower``, ``node``, ``driver``."""
    lost_steps: list[int] = field(default_factory=list)
    """Per fault: completed steps that had to be computed again because of it."""
    model_sha256: str = ""
    """Digest of the final model's parameters (``model_digest``)."""
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What the run said of itself that is no error (where a resume continued from, a
    scheduled fault that found nothing to kill)."""
    capped: bool = False
    """The run was stopped at its wall-time cap before ``steps`` distinct steps were done
    (its walls are then lower bounds)."""
    steps_done: int = 0
    """Distinct steps a capped run completed."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def model_digest(state: Mapping[str, Any]) -> str:
    """SHA-256 over the parameters by name, as float32 bytes in C order: equal for two runs
    exactly when their models are bitwise equal, whatever the file format."""
    h = hashlib.sha256()
    for name in sorted(state):
        value = state[name]
        array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        h.update(name.encode())
        h.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    return h.hexdigest()


def recovery_s(run: SideRun) -> list[float]:
    """Per fault: seconds from the fault to the next completed step."""
    out = []
    for t in run.fault_times_s:
        after = [s for s in run.step_times_s if s > t]
        out.append(after[0] - t if after else float("nan"))
    return out
