"""The pipelined round loop's failover path, against a scripted in-process server.

Real Ray tasks carry the data flow (so a lost leader's answer really fails the tasks that
depend on it), but the "server" is a deterministic script: it loses its leader exactly once,
at a chosen round's ``step_round``, so every interleaving the test names is reproduced on
every run (no kills, no sleeps).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
import ray

from consensus.errors import NotLeaderError
from jobs.config import TrainConfig
from jobs.pipeline import PipelinedRounds
from jobs.pipeline_depth import DEPTH
from jobs.round_result import RoundResult
from workers.gradient import GradientMetrics

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture(autouse=True)
def _settle_waits_for_running_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    """These scripts' tasks always finish: a recovery waits for them (a fresh Ray's first
    tasks take seconds), so which rounds are replayed and which recomputed is fixed. The
    held-tasks test lowers the bound again."""
    import jobs.pipeline

    monkeypatch.setattr(jobs.pipeline, "SETTLE_MIN_S", 120.0)
WORKERS = 2
BARRIER = 5  # round 5 ends at a barrier (an epoch end or a checkpoint)


@ray.remote
def _lost_leader() -> None:
    raise NotLeaderError("scripted: the leader is gone", leader_hint=None)


@ray.remote
def _lost_with_node() -> None:
    # what Ray raises for an actor's answer that lived on a node that died
    raise ray.exceptions.ObjectReconstructionFailedError("00" * 28, "", "")


LOSSES = {"leader": (_lost_leader, NotLeaderError),
          "node": (_lost_with_node, ray.exceptions.ObjectReconstructionFailedError)}


@ray.remote(num_returns=2)
def _task(params: tuple[str, int], round: int, rank: int) -> tuple[Any, GradientMetrics]:
    return _computed(params, round, rank)


def _computed(params: tuple[str, int], round: int,
              rank: int) -> tuple[Any, GradientMetrics]:
    assert params == ("params", round), f"round {round} computed on {params}"
    metrics = GradientMetrics(round=round, rank=rank, samples=1, loss_sum=0.0, correct=0,
                              load_s=0.0, compute_s=0.0, device="cpu")
    return (round, rank), metrics


@ray.remote(num_returns=2)
def _answer(round: int, *grads: tuple[int, int]) -> tuple[tuple[str, int], dict[str, Any]]:
    """A leader's step_round answer: needs every rank's gradient (fails if one failed)."""
    assert list(grads) == [(round, rank) for rank in range(WORKERS)]
    return ("params", round + 1), {"round": round, "aggregate_s": 0.0, "commit_s": 0.0,
                                   "term": 0}


class ScriptedServer:
    """One shard. ``step_round(fail_at)`` loses the leader once: its answers fail, and so
    does everything computed on them. Never blocks, like the real facade. A round applies
    when its answer succeeds or when all its ranks are replayed, and only as the next one."""

    def __init__(self, fail_at: int, loss: str = "leader") -> None:
        self.fail_at = fail_at
        self.failed = False
        self.lose, self.lost_error = LOSSES[loss]
        self.events: list[tuple[str, int, Any]] = []  # ("step", round, answer) | ("replay", ..)
        self.kept: dict[int, list[Any]] = {}  # round -> grad refs by rank, like the facade
        self.most_kept = 0

    def applied_rounds(self, upto: int | None = None) -> list[int]:
        """The rounds applied so far, in order (resolving the answers recorded), or the
        first ``upto`` of them (answers recorded after those are not resolved)."""
        done: list[int] = []
        replayed: dict[int, set[int]] = {}
        for kind, round, what in self.events:
            if upto is not None and len(done) >= upto:
                break
            if round != len(done):
                continue  # already applied (a replay of it is a no-op) or not next
            if kind == "replay":
                replayed.setdefault(round, set()).add(what)
                if len(replayed[round]) == WORKERS:
                    done.append(round)
                continue
            try:
                ray.get(what)
            except self.lost_error:
                continue
            done.append(round)
        return done

    def pull(self, min_version: int) -> list[Any]:
        assert len(self.applied_rounds()) == min_version
        return [ray.put(("params", min_version))]

    def step_round(self, round: int, grad_refs: Sequence[Sequence[Any]],
                   param_version: int) -> tuple[list[Any], list[Any]]:
        self.kept[round] = [refs[0] for refs in grad_refs]
        self.most_kept = max(self.most_kept, len(self.kept))
        if round == self.fail_at and not self.failed:
            self.failed = True
            lost = self.lose.remote()
            self.events.append(("step", round, lost))
            return [lost], [lost]
        params, info = _answer.remote(round, *(refs[0] for refs in grad_refs))
        self.events.append(("step", round, info))
        return [params], [info]

    def applied(self, version: int) -> None:
        assert len(self.applied_rounds(version)) >= version
        self.kept = {r: refs for r, refs in self.kept.items() if r >= version}

    def replay(self, through: int) -> None:
        for round in sorted(r for r in self.kept if r < through):
            for rank, ref in enumerate(self.kept[round]):
                assert ray.get(ref) == (round, rank)
                self.events.append(("replay", round, rank))
        self.kept = {r: refs for r, refs in self.kept.items() if r < through}

    def terms(self, wait_s: float) -> list[int]:
        return [1 if self.failed else 0]

    def wait_version(self, version: int, timeout: float, watch: Any = None) -> None:
        done = self.applied_rounds(version)
        assert len(done) >= version, f"applied {done}, wanted {version}"


def _launch(round: int, params: Sequence[Any]) -> tuple[list[list[Any]], list[Any]]:
    grads, metrics = [], []
    for rank in range(WORKERS):
        g, m = _task.remote(params[0], round, rank)
        grads.append([g])
        metrics.append(m)
    return grads, metrics


@pytest.mark.parametrize("loss", ["leader", "node"])
@pytest.mark.parametrize("fail_at", [0, 3, BARRIER])
def test_a_lost_leader_mid_pipeline_replays_and_every_round_applies_once(
    fail_at: int, loss: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """``loss="node"``: the answer is an object Ray cannot reconstruct (its node died), not
    a consensus error; recovery must treat it the same way, not as the user's error."""
    server = ScriptedServer(fail_at, loss)
    config = TrainConfig(workers=WORKERS, timeout_s=60.0, progress=False)
    reported: list[RoundResult] = []
    with caplog.at_level("INFO", logger="jobs.pipeline"):
        PipelinedRounds(config=config, server=server,  # type: ignore[arg-type]
                        launch=_launch, is_barrier=lambda r: r == BARRIER).run(
                            0, 8, reported.append)
    recovered = [r.getMessage() for r in caplog.records if "recovered in" in r.getMessage()]
    assert len(recovered) == 1 and "launched tasks settled in" in recovered[0]
    assert server.failed
    assert server.applied_rounds() == list(range(8)), "every round applied once, in order"
    # the loop tells the server what committed: it never keeps more than the rounds in flight
    assert server.most_kept <= DEPTH + 1
    assert [r.round for r in reported] == list(range(8)), "reported once each, in order"
    assert all(r.contributors == WORKERS for r in reported)
    # The lost answer also carried the news that the round before it committed, so both
    # are replayed (a replay of an applied round is a no-op), not recomputed; the round
    # computed on the lost answer is recomputed.
    replayed = sorted({round for kind, round, _ in server.events if kind == "replay"})
    assert replayed == [r for r in (fail_at - 1, fail_at) if r >= 0]
    steps = [round for kind, round, _ in server.events if kind == "step"]
    after_barrier = fail_at == BARRIER  # nothing past a barrier runs before it settles
    assert steps.count(fail_at) == 1
    assert steps.count(fail_at + 1) == (1 if after_barrier else 2)


@ray.remote
class _Gate:
    """Holds back a silent leader's answers until Ray "notices" its death (the replay)."""

    def __init__(self) -> None:
        self._open = asyncio.Event()

    async def wait(self) -> None:
        await self._open.wait()

    async def open(self) -> None:
        self._open.set()


@ray.remote(num_returns=2)
def _silent(_gate: None) -> None:
    raise NotLeaderError("scripted: the leader is gone", leader_hint=None)


class SilentLeaderServer(ScriptedServer):
    """The leader dies at ``fail_at`` and Ray does not say so: its answers stay pending
    (until the replay, which opens the gate) while its followers elect a new leader, which
    raises the shard's term."""

    def __init__(self, fail_at: int) -> None:
        super().__init__(fail_at)
        self.gate = _Gate.remote()  # type: ignore[attr-defined]

    def step_round(self, round: int, grad_refs: Sequence[Sequence[Any]],
                   param_version: int) -> tuple[list[Any], list[Any]]:
        if round != self.fail_at or self.failed:
            return super().step_round(round, grad_refs, param_version)
        self.kept[round] = [refs[0] for refs in grad_refs]
        self.failed = True
        params, info = _silent.remote(self.gate.wait.remote())
        self.events.append(("step", round, info))
        return [params], [info]

    def replay(self, through: int) -> None:
        ray.get(self.gate.open.remote())
        super().replay(through)


def test_a_leader_lost_without_ray_noticing_is_found_by_its_shard_term_and_replayed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without the term probe the loop would wait for the dead leader's answers until the
    round's timeout and stop with a TrainingError."""
    server = SilentLeaderServer(3)
    config = TrainConfig(workers=WORKERS, timeout_s=30.0, progress=False)
    rounds = PipelinedRounds(config=config, server=server,  # type: ignore[arg-type]
                             launch=_launch, is_barrier=lambda r: r == BARRIER)
    reported: list[RoundResult] = []
    with caplog.at_level("WARNING", logger="jobs.pipeline"):
        rounds.run(0, 8, reported.append)
    assert rounds.watch.probes >= 1 and rounds.failovers == 1
    assert any("resuming at round 4" in r.getMessage() for r in caplog.records)
    assert server.applied_rounds() == list(range(8))
    assert [r.round for r in reported] == list(range(8))
    # round 3's tasks ran (their inputs were there): it is replayed, not recomputed, with
    # round 2 (whose commit only round 3's answer would have told); round 4's tasks waited
    # on the silent answer: recomputed, without waiting for them to fail
    assert sorted({r for kind, r, _ in server.events if kind == "replay"}) == [2, 3]
    steps = [r for kind, r, _ in server.events if kind == "step"]
    assert steps.count(3) == 1 and steps.count(4) == 2


class GradientsLostServer(ScriptedServer):
    """After the leader loss, the replayed rounds' gradients are gone too (they lived on the
    node that died, after another shard applied them): waiting for the replay fails."""

    def wait_version(self, version: int, timeout: float, watch: Any = None) -> None:
        if self.failed:
            raise ray.exceptions.ObjectReconstructionFailedError("00" * 28, "", "")
        super().wait_version(version, timeout)


def test_replayed_gradients_lost_with_a_node_stop_with_a_clear_resume_error() -> None:
    from jobs.errors import TrainingError

    server = GradientsLostServer(3, "node")
    config = TrainConfig(workers=WORKERS, timeout_s=60.0, progress=False)
    with pytest.raises(TrainingError, match="rerun with --resume"):
        PipelinedRounds(config=config, server=server,  # type: ignore[arg-type]
                        launch=_launch, is_barrier=lambda r: r == BARRIER).run(0, 8,
                                                                               lambda r: None)


@ray.remote(num_returns=2)
def _held_task(params: tuple[str, int], _gate: None, round: int,
               rank: int) -> tuple[Any, GradientMetrics]:
    return _computed(params, round, rank)


class HeldTasksServer(ScriptedServer):
    """The leader is lost at ``fail_at``, whose tasks (inputs there) do not finish until the
    replay: like a task Ray re-runs after its node went, waiting on an input that lived in
    that node's object store."""

    def __init__(self, fail_at: int) -> None:
        super().__init__(fail_at)
        self.gate = _Gate.remote()  # type: ignore[attr-defined]
        self.held = 0

    def launch(self, round: int, params: Sequence[Any]) -> tuple[list[list[Any]], list[Any]]:
        if round != self.fail_at or self.held:
            return _launch(round, params)
        self.held += 1
        gate = self.gate.wait.remote()
        grads, metrics = [], []
        for rank in range(WORKERS):
            g, m = _held_task.remote(params[0], gate, round, rank)
            grads.append([g])
            metrics.append(m)
        return grads, metrics

    def replay(self, through: int) -> None:
        ray.get(self.gate.open.remote())
        super().replay(through)


def test_a_launched_round_whose_tasks_hang_is_recomputed_not_waited_for(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """Without the bound on the settle wait, recovery waits for the held tasks until the
    round's timeout and stops with a TrainingError."""
    import jobs.pipeline

    monkeypatch.setattr(jobs.pipeline, "SETTLE_MIN_S", 0.3)
    server = HeldTasksServer(3)
    config = TrainConfig(workers=WORKERS, timeout_s=20.0, progress=False)
    rounds = PipelinedRounds(config=config, server=server,  # type: ignore[arg-type]
                             launch=server.launch, is_barrier=lambda r: r == BARRIER)
    reported: list[RoundResult] = []
    with caplog.at_level("WARNING", logger="jobs.pipeline"):
        rounds.run(0, 8, reported.append)
    assert server.held == 1 and rounds.failovers == 1
    assert any("resuming at round 3" in r.getMessage() for r in caplog.records)
    assert server.applied_rounds() == list(range(8))
    assert [r.round for r in reported] == list(range(8))
    steps = [r for kind, r, _ in server.events if kind == "step"]
    assert steps.count(3) == 2, "the held round is computed again, from the pulled params"
