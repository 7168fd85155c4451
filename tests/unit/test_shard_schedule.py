"""The learning-rate schedule on the shard: each round steps with the rate of its own round
id, on every replica alike, in apply, preview and replay."""

from __future__ import annotations

import numpy as np

from paramserver import (
    OptimizerConfig,
    RoundCommand,
    ScheduleConfig,
    ShardPlan,
    ShardStateMachine,
    learning_rate,
)

SHAPES = {"w": (4, 3), "b": (3,)}
PLAN = ShardPlan.build(SHAPES, 1)
SGD = OptimizerConfig(kind="sgd", lr=0.5)
STEP = ScheduleConfig(kind="step", step_size=2, gamma=0.5, warmup_rounds=1)


def _params() -> dict[str, np.ndarray]:
    return {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}


def _command(round: int) -> bytes:
    grads = {k: np.full(s, 2.0, np.float32) for k, s in SHAPES.items()}  # mean 1.0 over 2
    return RoundCommand(round=round, kind="sync", samples=2, ranks=(0,),
                        grads=grads).encode()


def test_each_round_steps_with_its_own_rate_on_every_replica() -> None:
    replicas = [ShardStateMachine(PLAN.pieces(0), _params(), SGD, STEP) for _ in range(2)]
    rates = [learning_rate(SGD.lr, STEP, r) for r in range(5)]
    assert rates == [0.5, 0.5, 0.5, 0.25, 0.25]  # warmup 1, then x0.5 every 2 rounds
    before = 0.0
    for r in range(5):
        replicas[1].preview(_command(r))  # a leader's preview, adopted by its apply
        for machine in replicas:
            machine.apply(_command(r))
            machine.apply(_command(r))  # a re-proposed round is a no-op
        after = float(replicas[0].query("params")["b"][0])
        assert after == np.float32(before - rates[r])
        before = after
    assert replicas[0].snapshot() == replicas[1].snapshot()


def test_a_replica_rebuilt_from_a_snapshot_continues_the_schedule() -> None:
    live = ShardStateMachine(PLAN.pieces(0), _params(), SGD, STEP)
    for r in range(3):
        live.apply(_command(r))
    restarted = ShardStateMachine.blank(PLAN.pieces(0), SGD, STEP)
    restarted.restore(live.snapshot())
    for machine in (live, restarted):
        machine.apply(_command(3))
    assert live.snapshot() == restarted.snapshot()
    assert float(live.query("params")["b"][0]) == np.float32(-0.5 * 3 - 0.25)
