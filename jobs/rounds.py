"""The round loop: launches gradient tasks, submits their refs, closes and commits rounds.

A small state machine over rounds. ``sync`` and ``ssp`` share one loop: round ``r`` is
launched once the applied version is >= ``r - staleness`` (0 for sync) and every barrier
before it (an epoch end or checkpoint, ``is_barrier``) has committed, contributions are
submitted in completion order (``ray.wait``), and rounds commit in order. So no round past a
barrier can apply before the driver evaluates or checkpoints there, and a checkpoint cuts
exactly its version. ``async`` keeps N tasks in flight and submits each contribution on
arrival; two of one rank's contributions may be in flight and finish in either order (the
server applies each once, see ``paramserver.async_steps``). The straggler policy only decides;
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
from jobs.elastic import ElasticWorkers
from jobs.errors import TrainingError
from jobs.pipeline import PipelinedRounds
from jobs.pipeline_depth import pipeline_depth
from jobs.round_result import RoundResult
from workers.gradient import GradientMetrics, TaskSpec, launch_gradient_task
from workers.schedule import BatchSchedule, micro_range


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


@dataclass
class _LaunchedRound:
    """A round whose gradient tasks were launched: what its commit reports and waits for."""

    index: int
    version: int
    launched: float
    publish_s: float
    pending: dict[Any, tuple[int, list[Any]]] = field(default_factory=dict)
    metrics: list[GradientMetrics] = field(default_factory=list)
    last_done: float = 0.0
    aggregate_s: float = 0.0
    tasks: int = 0  # gradient tasks launched for it


def _object_store_bytes() -> float | None:
    """The cluster's object store capacity (None if Ray does not say)."""
    store = ray.cluster_resources().get("object_store_memory")  # type: ignore[no-untyped-call]
    return float(store) if store else None


class RoundEngine:
    """Runs rounds ``[start, end)`` against ``server``; calls ``on_round`` after each commit.

    ``x_ref``/``y_ref``: the training arrays in the object store, or ``x_ref`` a dataset
    handle's ref and ``y_ref`` None (``workers.gradient.launch_gradient_task``). Every task
    gets its indices from ``schedule``, the one source of sample order."""

    def __init__(self, *, config: TrainConfig, server: ParameterServerLike, spec: TaskSpec,
                 schedule: BatchSchedule, x_ref: Any, y_ref: Any | None) -> None:
        self.config = config
        self.server = server
        self.spec = spec
        self.schedule = schedule
        self.x_ref = x_ref
        self.y_ref = y_ref
        self.spec_ref = ray.put(spec)  # pickled once, not once per task
        self.policy = StragglerPolicy(workers=config.max_workers,
                                      backup_workers=config.backup_workers,
                                      timeout_s=config.straggler_timeout)
        self.elastic = (ElasticWorkers(gpu=config.gpu, most=config.max_workers)
                        if config.elastic else None)

    def workers(self, index: int) -> int:
        """Gradient tasks of round ``index``: ``config.workers``, or with ``workers="auto"``
        the count decided when the round was first launched (``jobs.elastic``)."""
        if self.elastic is None:
            return self.config.max_workers
        return self.elastic.tasks(index)

    def _launch(self, index: int, version: int, ranks: range) -> _LaunchedRound:
        t0 = time.perf_counter()
        param_refs = self.server.pull(version)
        ray.wait(param_refs, num_returns=len(param_refs), timeout=self.config.timeout_s,
                 fetch_local=False)
        state = _LaunchedRound(index=index, version=version, launched=time.perf_counter(),
                               publish_s=time.perf_counter() - t0, tasks=len(ranks))
        for rank, (grads, metrics_ref) in zip(ranks, self._tasks(index, param_refs, ranks),
                                              strict=True):
            state.pending[metrics_ref] = (rank, grads)
        return state

    def _tasks(self, index: int, param_refs: Any,
               ranks: range) -> list[tuple[list[Any], Any]]:
        """Submit the gradient tasks of ``ranks`` for round ``index`` (params may be refs
        still pending): (gradient refs by shard, metrics ref) per rank. With micro-batches,
        task ``rank`` computes its contiguous range of them (``workers.schedule.micro_range``)."""
        epoch, batch = self.schedule.round_position(index)
        m = self.config.micro_batches
        if m is not None:
            ranges = [micro_range(rank, self.workers(index), m) for rank in ranks]
            return [launch_gradient_task(
                        self.spec, index, rank, self.x_ref, self.y_ref,
                        self.schedule.micro_batch_indices(epoch, batch, micro), param_refs,
                        gpu_fraction=self.config.gpu, spec_ref=self.spec_ref, micro=micro)
                    for rank, micro in zip(ranks, ranges, strict=True)]
        return [launch_gradient_task(
                    self.spec, index, rank, self.x_ref, self.y_ref,
                    self.schedule.worker_indices(epoch, batch, rank, self.workers(index)),
                    param_refs, gpu_fraction=self.config.gpu, spec_ref=self.spec_ref)
                for rank in ranks]

    def _collect(self, rounds: list[_LaunchedRound],
                 budget_s: float) -> list[tuple[_LaunchedRound, Any]]:
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

    def _submit(self, st: _LaunchedRound, ref: Any, round_id: int) -> None:
        rank, grads = st.pending.pop(ref)
        t0 = time.perf_counter()
        self.server.submit(round_id, rank, grads, st.version)
        st.aggregate_s += time.perf_counter() - t0

    def _await_commit(self, st: _LaunchedRound, version: int) -> RoundResult:
        for ref in st.pending:  # late results of a closed round are discarded
            ray.cancel(ref)
        st.pending.clear()
        t0 = time.perf_counter()
        try:
            self.server.wait_version(version, timeout=self.config.timeout_s)
        except TimeoutError as exc:
            raise TrainingError(
                f"round {st.index} did not commit within {self.config.timeout_s} s ({exc}); "
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

    def is_barrier(self, round: int) -> bool:
        """Round ``round`` ends at a barrier (epoch end or checkpoint): the driver evaluates
        or cuts a checkpoint there, so no later round may run ahead of it."""
        done = round + 1
        every = self.config.checkpoint_every
        return done % self.schedule.batches_per_epoch == 0 or bool(every and done % every == 0)

    def run(self, start: int, end: int, on_round: Callable[[RoundResult], None]) -> None:
        """Run rounds ``[start, end)``; blocks; raises ``TrainingError`` or server errors."""
        if self.config.mode == "async":
            self._run_async(start, end, on_round)
        elif (self.config.mode == "sync" and self.config.backup_workers == 0
              and self.config.pipeline):
            PipelinedRounds(config=self.config, server=self.server, launch=self._launch_all,
                            is_barrier=self.is_barrier,
                            depth=pipeline_depth(self.server.parameter_bytes,
                                                 self.config.max_workers,
                                                 _object_store_bytes())).run(start, end, on_round)
        else:
            self._run_rounds(start, end, on_round)

    def _launch_all(self, index: int, param_refs: Any) -> tuple[list[list[Any]], list[Any]]:
        """Every rank's task of round ``index``: (gradient refs [rank][shard], metrics refs)."""
        tasks = self._tasks(index, param_refs, range(self.workers(index)))
        return [grads for grads, _ in tasks], [metrics for _, metrics in tasks]

    def _run_rounds(self, start: int, end: int, on_round: Callable[[RoundResult], None]) -> None:
        stale = self.config.staleness
        applied, next_round = start, start
        inflight: dict[int, _LaunchedRound] = {}
        while applied < end:
            while (next_round < end and next_round - stale <= applied
                   and not (next_round > applied and self.is_barrier(next_round - 1))):
                inflight[next_round] = self._launch(next_round, applied,
                                                    range(self.workers(next_round)))
                next_round += 1
            oldest = inflight[applied]
            elapsed = time.perf_counter() - oldest.launched
            budget = self.policy.wait_budget(elapsed, self.config.timeout_s)
            for st, ref in self._collect(list(inflight.values()), budget):
                self._submit(st, ref, st.index)
            contributed, workers = len(oldest.metrics), oldest.tasks
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
            on_round(self._await_commit(inflight.pop(applied), applied + 1))
            applied += 1

    def _run_async(self, start: int, end: int, on_round: Callable[[RoundResult], None]) -> None:
        """Unit u is (round u // N, rank u % N); N units in flight; version counts units."""
        workers = self.config.max_workers  # async: a fixed count (no micro-batches)
        units, next_unit, applied = end * workers, start * workers, start * workers
        inflight: dict[int, _LaunchedRound] = {}
        window = _LaunchedRound(index=start, version=applied, launched=time.perf_counter(),
                                publish_s=0.0)
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
                    on_round(self._await_commit(window, applied))
                    window = _LaunchedRound(index=applied // workers, version=applied,
                                    launched=time.perf_counter(), publish_s=0.0)
