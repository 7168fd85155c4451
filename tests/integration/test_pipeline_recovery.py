"""The pipelined round loop's failover path, against a scripted in-process server.

Real Ray tasks carry the data flow (so a lost leader's answer really fails the tasks that
depend on it), but the "server" is a deterministic script: it loses its leader exactly once,
at a chosen round's ``step_round``, so every interleaving the test names is reproduced on
every run (no kills, no sleeps).
"""

from __future__ import annotations

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
    assert params == ("params", round), f"round {round} computed on {params}"
    metrics = GradientMetrics(round=round, rank=rank, samples=1, loss_sum=0.0, correct=0,
                              load_s=0.0, compute_s=0.0, device="cpu")
    return (round, rank), metrics


@ray.remote(num_returns=2)
def _answer(round: int, *grads: tuple[int, int]) -> tuple[tuple[str, int], dict[str, Any]]:
    """A leader's step_round answer: needs every rank's gradient (fails if one failed)."""
    assert list(grads) == [(round, rank) for rank in range(WORKERS)]
    return ("params", round + 1), {"round": round, "aggregate_s": 0.0, "commit_s": 0.0}


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

    def applied_rounds(self) -> list[int]:
        """The rounds applied so far, in order (resolving the answers recorded)."""
        done: list[int] = []
        replayed: dict[int, set[int]] = {}
        for kind, round, what in self.events:
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
        assert len(self.applied_rounds()) >= version
        self.kept = {r: refs for r, refs in self.kept.items() if r >= version}

    def replay(self, through: int) -> None:
        for round in sorted(r for r in self.kept if r < through):
            for rank, ref in enumerate(self.kept[round]):
                assert ray.get(ref) == (round, rank)
                self.events.append(("replay", round, rank))
        self.kept = {r: refs for r, refs in self.kept.items() if r < through}

    def wait_version(self, version: int, timeout: float) -> None:
        done = self.applied_rounds()
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


class GradientsLostServer(ScriptedServer):
    """After the leader loss, the replayed rounds' gradients are gone too (they lived on the
    node that died, after another shard applied them): waiting for the replay fails."""

    def wait_version(self, version: int, timeout: float) -> None:
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
