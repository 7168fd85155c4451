"""The pipelined sync round loop (``sync`` without backup workers).

Round r's gradient tasks are submitted with the parameter refs that round r-1's
``step_round`` calls WILL return, so Ray starts them the moment those calls answer, with no
driver round trip in between. A shard leader answers round r-1 as soon as it has aggregated
it (the next parameters computed on a copy) and commits it while round r computes; it
answers round r only once round r-1 is applied. So round r is known committed when round
r+1's answers arrive, or, for the last round before a barrier (epoch end, checkpoint, end of
training), after ``wait_version``. The driver submits up to ``DEPTH`` rounds ahead and never
past a barrier, so evaluation and checkpoints see exactly the version they name.

Faults. Two owners, one concern each: the server facade keeps every contribution it was
handed until every shard applied its round (``ParameterServer.step_round``, ``applied``) and
is the one that re-sends them (``replay``); this loop knows which rounds' tasks succeeded and
decides where to restart. When a replica or its leadership is lost (or a node, with objects
Ray cannot reconstruct), it lets the launched tasks that can run settle, asks the server to
replay the longest prefix of rounds whose tasks all succeeded (a round a shard already
applied is success), waits until every shard applied them, and restarts the pipeline from
there. A lost leader is learnt of from its shard's term rising (``jobs.leader_watch``) once
a round is late, or from Ray failing its calls, whichever comes first; the answers it left
unread are read once Ray settles them (``consensus.discarded_refs``).
Aggregation and the optimizer are deterministic, so the model bits are those of a run
without the fault. Two facts of the data flow make that prefix well defined and cheap:

* round r + 1's tasks take round r's ``step_round`` answers (the next parameters) as
  arguments, so once a round's answer is lost every later round's tasks fail too: the rounds
  whose tasks succeeded are a prefix of those in flight;
* a task's metrics are small, so Ray returns them inline to this process (the owner): once
  ``ray.wait`` saw them settle, reading them needs no fetch and cannot be lost with a node.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import ray

from consensus.discarded_refs import DiscardedRefs
from consensus.failures import Failure, classify, root_cause
from jobs.backend import ParameterServerLike
from jobs.config import TrainConfig
from jobs.errors import RoundsLostError, TrainingError
from jobs.leader_watch import LeaderWatch
from jobs.pipeline_depth import DEPTH
from jobs.round_result import RoundResult
from workers.gradient import GradientMetrics

LOG = logging.getLogger(__name__)
SETTLE_MIN_S = 2.0
SETTLE_PROBES = 4
"""A recovery waits for a launched round's tasks at most ``SETTLE_PROBES`` leader-watch
periods (a few typical rounds each), and never less than ``SETTLE_MIN_S``; a round that took
longer is recomputed (``Pipeline._settled_prefix``)."""


Launch = Callable[[int, Sequence[Any]], tuple[list[list[Any]], list[Any]]]
"""(round, parameter refs by shard) -> (gradient refs [rank][shard], metrics ref by rank)."""


@dataclass
class _Flight:
    round: int
    launched: float
    grads: list[list[Any]]  # [rank][shard]
    metrics: list[Any]  # by rank
    params: list[Any]  # by shard: the parameters of version round + 1
    infos: list[Any]  # by shard: step_round's info dict


class PipelinedRounds:
    """Runs sync rounds ``[start, end)`` pipelined (see the module docstring)."""

    def __init__(self, *, config: TrainConfig, server: ParameterServerLike, launch: Launch,
                 is_barrier: Callable[[int], bool], depth: int = DEPTH) -> None:
        if depth < 1:
            raise ValueError(f"a pipeline keeps at least one round in flight, got {depth}")
        self.config = config
        self.depth = depth  # rounds in flight (``jobs.pipeline_depth``)
        self.server = server
        self.launch = launch
        self.is_barrier = is_barrier  # round r ends at a barrier: launch nothing past it
        self.leader_changes: list[int] = []  # per shard, the most any leader reported
        self.failovers = 0
        self.watch = LeaderWatch(server)  # a lost leader, learnt of before Ray says so
        self._discarded = DiscardedRefs()  # answers a recovery left unread

    def _submit(self, round: int, params: Sequence[Any]) -> _Flight:
        launched = time.perf_counter()
        grads, metrics = self.launch(round, params)
        next_params, infos = self.server.step_round(round, grads, round)
        return _Flight(round, launched, grads, metrics, next_params, infos)

    def run(self, start: int, end: int, on_round: Callable[[RoundResult], None]) -> None:
        """Run rounds ``[start, end)``; blocks; raises TrainingError or the server's errors."""
        params: Sequence[Any] = self.server.pull(start)
        inflight: deque[_Flight] = deque()
        last = time.perf_counter()
        next_round = start
        while inflight or next_round < end:
            while (next_round < end and len(inflight) < self.depth
                   and not (inflight and self.is_barrier(inflight[-1].round))):
                flight = self._submit(next_round, params)
                inflight.append(flight)
                params = flight.params
                next_round += 1
            try:
                done = [self._settle(inflight)]
            except Exception as exc:
                if not _recoverable(exc):
                    raise _user_error(exc) from None
                done, next_round = self._recover(inflight)
                params = self.server.pull(next_round)
            for flight, metrics, info in done:
                now = time.perf_counter()
                self._count(info)
                result = _result(flight, metrics, info, now - max(last, flight.launched))
                if "terms" in info:
                    self.watch.answered(info["terms"], result.wall_s)
                on_round(dataclasses.replace(result, leader_changes=tuple(self.leader_changes),
                                             failovers=self.failovers))
                last = now
        self._discarded.drain(min(self.config.timeout_s, 10.0))

    def _count(self, info: dict[str, Any]) -> None:
        """Fold the shard leaders' leader-change counts of one round into the totals."""
        changes = info.get("leader_changes", [])
        if len(self.leader_changes) < len(changes):
            self.leader_changes += [0] * (len(changes) - len(self.leader_changes))
        for shard, count in enumerate(changes):
            self.leader_changes[shard] = max(self.leader_changes[shard], int(count))

    def _settle(self, inflight: deque[_Flight]) -> tuple[_Flight, list[GradientMetrics],
                                                         dict[str, Any]]:
        """Block until the oldest round is committed on every shard; pop and return it with
        its metrics and the leaders' info (the slowest shard's times)."""
        timeout = self.config.timeout_s
        oldest = inflight[0]
        later_refs = inflight[1].infos if len(inflight) > 1 else []
        self._discarded.poll()
        # One get for all (task errors first in the list, so they surface first).
        values = self.watch.get([*oldest.metrics, *oldest.infos, *later_refs], timeout)
        workers, shards = len(oldest.metrics), len(oldest.infos)
        metrics: list[GradientMetrics] = values[:workers]
        infos, later = values[workers:workers + shards], values[workers + shards:]
        if later:  # round r + 1's answers: every shard applied round r
            commit_s = max(float(i["commit_s"]) for i in later)
            self.server.applied(oldest.round + 1)
        else:  # a barrier: wait for the commit itself (the server replays on a leader loss)
            t0 = time.perf_counter()
            self.server.wait_version(oldest.round + 1, timeout, watch=self.watch)
            commit_s = time.perf_counter() - t0
        inflight.popleft()
        info = {"aggregate_s": max(float(i["aggregate_s"]) for i in infos), "commit_s": commit_s,
                "leader_changes": [int(i.get("leader_changes", 0)) for i in infos],
                "terms": [int(i.get("term", -1)) for i in infos]}
        return oldest, metrics, info

    def _recover(self, inflight: deque[_Flight]) -> tuple[
            list[tuple[_Flight, list[GradientMetrics], dict[str, Any]]], int]:
        """After a lost replica/leader: replay the rounds whose tasks all succeeded, wait
        until every shard applied them, and return them (to report) and the next round."""
        timeout = self.config.timeout_s
        t_start = time.perf_counter()
        good = self._settled_prefix(
            inflight, min(timeout, max(SETTLE_MIN_S, SETTLE_PROBES * self.watch.every_s)))
        t_settled = time.perf_counter()
        # Answers are not used any more, nor the outputs of rounds to recompute: their
        # errors are read once they settle, or Ray logs each one as an "unhandled error".
        unused = [ref for f in inflight for ref in (*f.infos, *f.params)]
        for flight in list(inflight)[len(good):]:
            unused += [*flight.metrics, *(ref for refs in flight.grads for ref in refs)]
        self._discarded.add(unused)
        t_read = time.perf_counter()
        restart = good[-1][0].round + 1 if good else inflight[0].round
        self.failovers += 1
        LOG.warning("a shard replica or leader was lost during rounds %d..%d; replaying "
                    "rounds %d..%d and resuming at round %d", inflight[0].round,
                    inflight[-1].round, inflight[0].round, restart - 1, restart)
        self.server.replay(restart)
        t0 = time.perf_counter()
        try:
            self.server.wait_version(restart, timeout, watch=self.watch)
        except Exception as exc:
            if classify(exc) is not Failure.LOST:
                raise
            # a replayed round's gradients died with a node after some shard applied it:
            # the shards' versions differ and the old parameters are gone, so it cannot be
            # recomputed here; the last checkpoint gives the same bits
            raise RoundsLostError(
                f"gradients of rounds {inflight[0].round}..{restart - 1} were lost with a node "
                f"before every shard applied them ({root_cause(exc)!r}); continuing from the "
                "last checkpoint gives the same model bits (rerun with --resume if this "
                "stopped the job)") from None
        info = {"aggregate_s": 0.0, "commit_s": time.perf_counter() - t0}
        self.watch.refresh()
        LOG.info("recovered in %.2f s: launched tasks settled in %.2f s, their unused answers "
                 "read in %.2f s, every shard applied round %d in %.2f s",
                 time.perf_counter() - t_start, t_settled - t_start, t_read - t_settled,
                 restart - 1, info["commit_s"])
        inflight.clear()
        return [(flight, metrics, info) for flight, metrics in good], restart

    @staticmethod
    def _settled_prefix(inflight: deque[_Flight], settle_s: float) -> list[
            tuple[_Flight, list[GradientMetrics]]]:
        """The rounds in flight, oldest first, up to the first whose tasks did not succeed,
        with their metrics. A round's tasks can run only once the round before it answered
        (they take its parameters): those of a round whose inputs are not there are never
        waited for, since the leader that owed them may be gone with Ray not knowing it yet;
        those whose inputs are there are waited for, as they are running or about to, but
        for at most ``settle_s`` each. A task Ray re-runs after its node went may need an
        input that lived in that node's object store (a lost leader's answer), and Ray can
        take many seconds to give up on it; recomputing the round from the shards' pulled
        parameters gives the same bits sooner."""
        good: list[tuple[_Flight, list[GradientMetrics]]] = []
        for i, flight in enumerate(inflight):
            if i > 0:
                inputs = inflight[i - 1].params
                ready, _ = ray.wait(inputs, num_returns=len(inputs), timeout=0,
                                    fetch_local=False)
                if len(ready) < len(inputs):
                    break
            ready, _ = ray.wait(flight.metrics, num_returns=len(flight.metrics),
                                timeout=settle_s)
            if len(ready) < len(flight.metrics):
                break  # not settled in time: recompute it
            try:
                metrics = ray.get(flight.metrics, timeout=0)
            except Exception as exc:
                if not _recoverable(exc):
                    raise _user_error(exc) from None
                break  # this round's parameters were lost with the leader/node: recompute it
            good.append((flight, metrics))
        return good


def _recoverable(exc: BaseException) -> bool:
    """True when the pipeline recovers from ``exc`` by replaying (``consensus.failures``):
    a replica or leader gone (``RETRY``) or a value lost with a node (``LOST``). A round
    that ran past ``timeout_s`` is not: the job stops and says so."""
    return not isinstance(exc, TimeoutError) and classify(exc) is not Failure.FATAL


def _user_error(exc: BaseException) -> BaseException:
    """A gradient task's failure as TrainingError; the server's typed errors as themselves."""
    link: BaseException | None = exc
    while isinstance(link, ray.exceptions.RayTaskError):
        if str(getattr(link, "function_name", "")).endswith("_gradient_task"):
            return TrainingError(f"a gradient task failed: {root_cause(exc)!r}")
        link = link.cause if isinstance(link.cause, BaseException) else None
    if isinstance(exc, TimeoutError):  # ray.get's GetTimeoutError or wait_version's
        return TrainingError(f"a round did not finish in time ({exc}); check the server's "
                             "status or raise timeout_s")
    return root_cause(exc)


def _result(flight: _Flight, metrics: list[GradientMetrics], info: dict[str, Any],
            wall_s: float) -> RoundResult:
    return RoundResult(
        round=flight.round, contributors=len(metrics), samples=sum(m.samples for m in metrics),
        loss_sum=sum(m.loss_sum for m in metrics), correct=sum(m.correct for m in metrics),
        publish_s=0.0, compute_s=max(m.load_s + m.compute_s for m in metrics),
        aggregate_s=float(info["aggregate_s"]), commit_s=float(info["commit_s"]),
        wall_s=wall_s, devices=tuple(sorted({m.device for m in metrics})))
