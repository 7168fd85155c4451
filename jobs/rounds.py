"""The round loop: launches gradient tasks, submits their refs, closes and commits rounds.

A small state machine over rounds. ``sync`` and ``ssp`` share one loop: round ``r`` is
launched once the applied version is >= ``r - staleness`` (0 for sync), contributions are
submitted in completion order (``ray.wait``), and rounds commit in order. ``async`` keeps N
tasks in flight and submits each contribution on arrival. The straggler policy only decides;
the loop acts (``close_round``, cancel, discard late results).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray

from jobs.backend import ParameterServerLike
from jobs.config import TrainConfig
from jobs.errors import TrainingError
from workers.gradient import GradientMetrics, TaskSpec, launch_gradient_task
from workers.schedule import BatchSchedule


@dataclass(frozen=True, kw_only=True)
class StragglerPolicy:
    """Decides when a round may complete without all contributions (never acts itself)."""

    workers: int
    backup_workers: int
    timeout_s: float

    def should_close(self, elapsed_s: float, contributed: int) -> bool:
        """True once the deadline passed and at least N - b contributions are in."""
        return (self.backup_workers > 0 and elapsed_s >= self.timeout_s
                and contributed >= self.workers - self.backup_workers)

    def wait_budget(self, elapsed_s: float, default_s: float) -> float:
        """How long the loop may block waiting for results before re-deciding."""
        if self.backup_workers == 0:
            return default_s
        return max(0.0, min(default_s, self.timeout_s - elapsed_s))


@dataclass(frozen=True, kw_only=True)
class RoundResult:
    """What one committed round did; times are driver-observed seconds.

    publish_s: pull until parameter refs exist. compute_s: launch until the last accepted
    contribution. aggregate_s: time in submit/close calls. commit_s: waiting for the version.
    """

    round: int
    contributors: int
    samples: int
    loss_sum: float
    correct: int
    publish_s: float
    compute_s: float
    aggregate_s: float
    commit_s: float
    wall_s: float
    devices: tuple[str, ...] = ()
    """Where the round's gradient tasks ran (``cpu``, ``cuda``), sorted and unique."""


@dataclass
class _Round:
    index: int
    version: int
    launched: float
    publish_s: float
    pending: dict[Any, tuple[int, list[Any]]] = field(default_factory=dict)
    metrics: list[GradientMetrics] = field(default_factory=list)
    last_done: float = 0.0
    aggregate_s: float = 0.0


class RoundEngine:
    """Runs rounds ``[start, end)`` against ``server``; calls ``on_round`` after each commit."""

    def __init__(self, *, config: TrainConfig, server: ParameterServerLike, spec: TaskSpec,
                 schedule: BatchSchedule, x_ref: Any, y_ref: Any) -> None:
        self.config = config
        self.server = server
        self.spec = spec
        self.schedule = schedule
        self.x_ref = x_ref
        self.y_ref = y_ref
        self.policy = StragglerPolicy(workers=config.workers,
                                      backup_workers=config.backup_workers,
                                      timeout_s=config.straggler_timeout)

    def _launch(self, index: int, version: int, ranks: range) -> _Round:
        t0 = time.perf_counter()
        param_refs = self.server.pull(version)
        ray.wait(param_refs, num_returns=len(param_refs), timeout=self.config.timeout_s,
                 fetch_local=False)
        state = _Round(index=index, version=version, launched=time.perf_counter(),
                       publish_s=time.perf_counter() - t0)
        epoch, batch = self.schedule.round_position(index)
        for rank in ranks:
            idx = self.schedule.worker_indices(epoch, batch, rank, self.config.workers)
            grads, metrics_ref = launch_gradient_task(
                self.spec, index, rank, self.x_ref, self.y_ref, idx, param_refs,
                gpu_fraction=self.config.gpu)
            state.pending[metrics_ref] = (rank, grads)
        return state

    def _collect(self, rounds: list[_Round], budget_s: float) -> list[tuple[_Round, Any]]:
        """Wait (at most ``budget_s``) for any results; fetch the ready metrics in one get."""
        owner = {ref: st for st in rounds for ref in st.pending}
        if not owner:
            return []
        refs = list(owner)
        ready, _ = ray.wait(refs, num_returns=1, timeout=budget_s)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        try:
            infos = ray.get(ready, timeout=self.config.timeout_s)
        except ray.exceptions.RayTaskError as exc:
            raise TrainingError(f"a gradient task failed: {exc.cause!r}") from exc
        now = time.perf_counter()
        done = []
        for ref, info in zip(ready, infos, strict=True):
            st = owner[ref]
            st.metrics.append(info)
            st.last_done = now
            done.append((st, ref))
        return done

    def _submit(self, st: _Round, ref: Any, round_id: int) -> None:
        rank, grads = st.pending.pop(ref)
        t0 = time.perf_counter()
        self.server.submit(round_id, rank, grads, st.version)
        st.aggregate_s += time.perf_counter() - t0

    def _commit(self, st: _Round, version: int) -> RoundResult:
        for ref in st.pending:  # late results of a closed round are discarded
            ray.cancel(ref)
        st.pending.clear()
        t0 = time.perf_counter()
        try:
            self.server.wait_version(version, timeout=self.config.timeout_s)
        except TimeoutError as exc:
            raise TrainingError(
                f"round {st.index} did not commit within {self.config.timeout_s} s; "
                "check the server's status or raise timeout_s") from exc
        now = time.perf_counter()
        return RoundResult(
            round=st.index, contributors=len(st.metrics),
            samples=sum(m.samples for m in st.metrics),
            loss_sum=sum(m.loss_sum for m in st.metrics),
            correct=sum(m.correct for m in st.metrics),
            publish_s=st.publish_s, compute_s=max(0.0, st.last_done - st.launched),
            aggregate_s=st.aggregate_s, commit_s=now - t0, wall_s=now - st.launched,
            devices=tuple(sorted({m.device for m in st.metrics})))

    def run(self, start: int, end: int, on_round: Callable[[RoundResult], None]) -> None:
        """Run rounds ``[start, end)``; blocks; raises ``TrainingError`` or server errors."""
        if self.config.mode == "async":
            self._run_async(start, end, on_round)
        elif self.config.mode == "sync" and self.config.backup_workers == 0:
            self._run_chained(start, end, on_round)
        else:
            self._run_rounds(start, end, on_round)

    def _run_chained(self, start: int, end: int, on_round: Callable[[RoundResult], None]) -> None:
        """Sync without backup workers: every contribution is needed, so the gradient refs
        go to the shard leaders the moment the tasks are launched (Ray hands each leader the
        gradient when its task finishes), and one call per shard both waits for the round's
        commit and returns the next round's parameter refs. No driver round trip between a
        task finishing and the leader seeing its gradient."""
        t0 = time.perf_counter()
        param_refs = self.server.pull(start)
        publish_s = time.perf_counter() - t0
        for index in range(start, end):
            launched = time.perf_counter()
            epoch, batch = self.schedule.round_position(index)
            metrics_refs = []
            for rank in range(self.config.workers):
                idx = self.schedule.worker_indices(epoch, batch, rank, self.config.workers)
                grads, metrics_ref = launch_gradient_task(
                    self.spec, index, rank, self.x_ref, self.y_ref, idx, param_refs,
                    gpu_fraction=self.config.gpu)
                self.server.submit(index, rank, grads, index)
                metrics_refs.append(metrics_ref)
            submitted = time.perf_counter()
            try:
                param_refs = self.server.pull_after(index + 1, timeout=self.config.timeout_s)
            except TimeoutError as exc:
                raise TrainingError(
                    f"round {index} did not commit within {self.config.timeout_s} s; "
                    "check the server's status or raise timeout_s") from exc
            metrics: list[GradientMetrics] = ray.get(metrics_refs, timeout=self.config.timeout_s)
            now = time.perf_counter()
            compute_s = max(m.load_s + m.compute_s for m in metrics)
            on_round(RoundResult(
                round=index, contributors=len(metrics), samples=sum(m.samples for m in metrics),
                loss_sum=sum(m.loss_sum for m in metrics),
                correct=sum(m.correct for m in metrics), publish_s=publish_s,
                compute_s=compute_s, aggregate_s=submitted - launched,
                commit_s=max(0.0, now - submitted - compute_s), wall_s=now - launched,
                devices=tuple(sorted({m.device for m in metrics}))))
            publish_s = 0.0  # later parameters arrive with the commit answer

    def _run_rounds(self, start: int, end: int, on_round: Callable[[RoundResult], None]) -> None:
        stale = self.config.staleness
        workers = self.config.workers
        applied, next_round = start, start
        inflight: dict[int, _Round] = {}
        while applied < end:
            while next_round < end and next_round - stale <= applied:
                inflight[next_round] = self._launch(next_round, applied, range(workers))
                next_round += 1
            oldest = inflight[applied]
            elapsed = time.perf_counter() - oldest.launched
            budget = self.policy.wait_budget(elapsed, self.config.timeout_s)
            for st, ref in self._collect(list(inflight.values()), budget):
                self._submit(st, ref, st.index)
            contributed = len(oldest.metrics)
            elapsed = time.perf_counter() - oldest.launched
            if contributed < workers and self.policy.should_close(elapsed, contributed):
                t0 = time.perf_counter()
                self.server.close_round(oldest.index)
                oldest.aggregate_s += time.perf_counter() - t0
            elif contributed < workers:
                if elapsed > self.config.timeout_s:
                    raise TrainingError(f"round {oldest.index} got {contributed}/{workers} "
                                        f"results in {self.config.timeout_s} s")
                continue
            on_round(self._commit(inflight.pop(applied), applied + 1))
            applied += 1

    def _run_async(self, start: int, end: int, on_round: Callable[[RoundResult], None]) -> None:
        """Unit u is (round u // N, rank u % N); N units in flight; version counts units."""
        workers = self.config.workers
        units, next_unit, applied = end * workers, start * workers, start * workers
        inflight: dict[int, _Round] = {}
        window = _Round(index=start, version=applied, launched=time.perf_counter(), publish_s=0.0)
        while applied < units:
            while next_unit < units and len(inflight) < workers:
                r, rank = divmod(next_unit, workers)
                inflight[next_unit] = self._launch(r, applied, range(rank, rank + 1))
                next_unit += 1
            done = self._collect(list(inflight.values()), self.config.timeout_s)
            if not done:
                raise TrainingError(f"no gradient task finished in {self.config.timeout_s} s")
            unit_of = {id(st): u for u, st in inflight.items()}
            for st, ref in sorted(done, key=lambda d: unit_of[id(d[0])]):
                self._submit(st, ref, st.index)
                inflight.pop(unit_of[id(st)])
                window.metrics.extend(st.metrics)
                window.publish_s += st.publish_s
                window.aggregate_s += st.aggregate_s
                window.last_done = st.last_done
                applied += 1
                if applied % workers == 0:  # a round's worth of updates: report it
                    on_round(self._commit(window, applied))
                    window = _Round(index=applied // workers, version=applied,
                                    launched=time.perf_counter(), publish_s=0.0)
