"""Round races of the ``ssp`` and ``async`` loops, replayed with a scripted straggler.

``RoundEngine`` runs against an in-process server (the real aggregator, shard state machine
and checkpoint writer) and a stand-in for the few Ray calls it makes: gradient tasks finish
in the order a script gives, one group per ``ray.wait``, so each interleaving is exact and
repeatable. No Ray, no sleeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray

from jobs import rounds as rounds_module
from jobs.config import TrainConfig
from jobs.errors import TrainingError
from jobs.round_result import RoundResult
from jobs.rounds import RoundEngine
from paramserver import AggregatorConfig, OptimizerConfig, RoundAggregator, ShardPlan
from paramserver.checkpoint import read_checkpoint, write_checkpoint
from paramserver.errors import PlanError
from paramserver.shard import ShardStateMachine
from workers.gradient import GradientMetrics
from workers.schedule import BatchSchedule

SHAPES = {"w": (3, 2), "b": (2,)}
PLAN = ShardPlan.build(SHAPES, 1)
OPT = OptimizerConfig(kind="sgd", lr=0.1, momentum=0.9)
Unit = tuple[int, int]  # (round, rank)


class MetricsRef:
    def __init__(self, unit: Unit) -> None:
        self.unit = unit


class GradRef:
    def __init__(self, unit: Unit) -> None:
        self.unit = unit


def gradient(unit: Unit) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([unit[0], unit[1]])
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


class ScriptedRay:
    """``ray.put/wait/get/cancel`` over fake refs. Each blocking ``wait`` finishes the first
    group of the script that has a launched, unfinished unit among the refs waited on."""

    exceptions = ray.exceptions

    def __init__(self, script: Sequence[Sequence[Unit]]) -> None:
        self.script = [list(group) for group in script]
        self.finished: set[Unit] = set()

    def put(self, value: Any) -> Any:
        return value

    def wait(self, refs: list[Any], num_returns: int = 1, timeout: float | None = None,
             fetch_local: bool = True) -> tuple[list[Any], list[Any]]:
        tasks = {r.unit: r for r in refs if isinstance(r, MetricsRef)}
        if timeout != 0 and not any(u in self.finished for u in tasks):
            for group in self.script:
                ready = [u for u in group if u in tasks and u not in self.finished]
                if ready:
                    self.finished.update(ready)
                    break
        done = [r for r in refs if not isinstance(r, MetricsRef) or r.unit in self.finished]
        return done, [r for r in refs if r not in done]

    def get(self, refs: Any, timeout: float | None = None) -> Any:
        if not isinstance(refs, list):
            return self.get([refs])[0]
        return [GradientMetrics(round=r.unit[0], rank=r.unit[1], samples=2, loss_sum=1.0,
                                correct=1, load_s=0.0, compute_s=0.0, device="cpu")
                for r in refs]

    def cancel(self, ref: Any) -> None:
        return None


class InProcessServer:
    """One shard: the leader's aggregator feeding the state machine directly. A unit in
    ``new_leader_before`` is submitted to a fresh aggregator (a leader change just before)."""

    def __init__(self, config: AggregatorConfig, new_leader_before: Sequence[Unit] = ()) -> None:
        self.config = config
        self.machine = ShardStateMachine(PLAN.pieces(0), gradient((99, 99)), OPT)
        self.aggregator = RoundAggregator(config, self.machine.shapes)
        self.new_leader_before = set(new_leader_before)
        self.layout: list[list[Any]] = [[]]

    def pull(self, min_version: int) -> list[Any]:
        return [object()]

    def submit(self, round: int, rank: int, grad_refs: Sequence[Any], param_version: int,
               *, replay: bool = False) -> None:
        if (round, rank) in self.new_leader_before:
            self.aggregator = RoundAggregator(self.config, self.machine.shapes,
                                              start_round=self.machine.version)
        outcome = self.aggregator.submit(round, rank, gradient(grad_refs[0].unit), 2,
                                         param_version)
        for command in outcome.commands:
            self.machine.apply(command)
        self.aggregator.advance(self.machine.version)

    def wait_version(self, version: int, timeout: float) -> None:
        if self.machine.version < version:
            raise TimeoutError(f"shard at version {self.machine.version}, not {version}")

    def checkpoint(self, out_dir: str | Path, round: int) -> Path:
        state = self.machine.export_state()
        if state.version != round:  # as ShardService.export
            raise PlanError(f"shard is at version {state.version}, not {round}")
        return write_checkpoint(out_dir, round, PLAN, [state], OPT)


def _engine(config: TrainConfig, server: InProcessServer, script: Sequence[Sequence[Unit]],
            monkeypatch: pytest.MonkeyPatch) -> RoundEngine:
    """A RoundEngine whose tasks finish as ``script`` says (16 samples, batches of 4)."""
    monkeypatch.setattr(rounds_module, "ray", ScriptedRay(script))
    monkeypatch.setattr(rounds_module, "launch_gradient_task",
                        lambda spec, index, rank, *a, **k: ([GradRef((index, rank))],
                                                            MetricsRef((index, rank))))
    return RoundEngine(config=config, server=server, spec=object(),  # type: ignore[arg-type]
                       schedule=BatchSchedule(seed=0, global_batch=4, n_train=16),
                       x_ref=None, y_ref=None)


def _run(tmp_path: Path, script: Sequence[Sequence[Unit]], *, mode: Any, rounds: int,
         monkeypatch: pytest.MonkeyPatch,
         new_leader_before: Sequence[Unit] = ()) -> InProcessServer:
    staleness = 1 if mode == "ssp" else 0
    config = TrainConfig(mode=mode, staleness=staleness, workers=2, global_batch=4,
                         checkpoint_every=2, out=str(tmp_path), progress=False)
    server = InProcessServer(AggregatorConfig(workers=2, mode=mode, staleness=staleness),
                             new_leader_before)
    engine = _engine(config, server, script, monkeypatch)

    def on_round(result: RoundResult) -> None:  # the driver's checkpoint rule
        done = result.round + 1
        if mode != "async" and done % 2 == 0:
            server.checkpoint(tmp_path, done)

    engine.run(0, rounds, on_round)
    return server


IN_ORDER = [[(r, 0), (r, 1)] for r in range(4)]


def test_ssp_round_flushed_with_the_checkpoint_round_does_not_overrun_the_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Round 1 ends at a checkpoint (every 2 rounds). Its rank 1 straggles while round 2
    (staleness 1) completes; round 2 used to be launched, held by the aggregator and
    flushed together with round 1, so the shard was at version 3 when the driver cut the
    checkpoint of version 2: PlanError stopped the job. No round past a barrier starts now."""
    straggler = [[(0, 0), (0, 1)], [(1, 0)], [(2, 0), (2, 1)], [(1, 1)], [(3, 0), (3, 1)]]
    server = _run(tmp_path / "a", straggler, mode="ssp", rounds=4, monkeypatch=monkeypatch)
    assert server.machine.version == 4
    assert read_checkpoint(tmp_path / "a" / "checkpoints" / "round-2").shards[0].version == 2
    reference = _run(tmp_path / "b", IN_ORDER, mode="ssp", rounds=4, monkeypatch=monkeypatch)
    assert server.machine.digest() == reference.machine.digest()


ASYNC_STRAGGLER = [[(0, 0)], [(1, 0)], [(1, 1)], [(0, 1)]]
"""Two workers: rank 1's unit of round 0 straggles while rank 0 runs round 1, so rank 1's
round-1 unit is launched and finishes first: two units of rank 1, out of order."""


def test_async_units_of_one_rank_finishing_out_of_order_both_apply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """They used to raise a fatal StaleRoundError ("rank 1 already sent step 1")."""
    server = _run(tmp_path, ASYNC_STRAGGLER, mode="async", rounds=2, monkeypatch=monkeypatch)
    assert server.machine.version == 4
    assert server.machine.export_state().async_steps == {0: 1, 1: 1}


def test_async_straggler_through_a_new_leader_is_applied_not_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A new leader's fresh aggregator proposes the straggler; the shard used to take it for
    a duplicate of the later step and drop it silently (the round then never committed)."""
    server = _run(tmp_path, ASYNC_STRAGGLER, mode="async", rounds=2,
                  new_leader_before=[(0, 1)], monkeypatch=monkeypatch)
    assert server.machine.version == 4
    reference = _run(tmp_path, ASYNC_STRAGGLER, mode="async", rounds=2, monkeypatch=monkeypatch)
    assert server.machine.digest() == reference.machine.digest()


def test_a_unit_the_shard_never_applies_fails_loudly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The harness itself: a version that never comes is a TrainingError, not a pass."""
    server = InProcessServer(AggregatorConfig(workers=2, mode="async"))
    monkeypatch.setattr(server, "submit", lambda *a, **k: None)
    config = TrainConfig(mode="async", workers=2, global_batch=4, out=str(tmp_path),
                         progress=False)
    engine = _engine(config, server, ASYNC_STRAGGLER, monkeypatch)
    with pytest.raises(TrainingError, match="did not commit"):
        engine.run(0, 2, lambda result: None)
