"""ShardService.step_round, the pipelined sync round, against an in-process fake replica.

The fake context commits a proposal only when the test says so (``commit_next``), so every
interleaving below is explicit and deterministic: no Ray, no sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from paramserver import (
    AggregatorConfig,
    OptimizerConfig,
    ShardPlan,
    ShardStateMachine,
    StaleRoundError,
)
from paramserver.errors import NonFiniteGradientError
from paramserver.service import ShardService

SHAPES = {"w": (6, 5), "b": (5,)}
PLAN = ShardPlan.build(SHAPES, 1)
OPT = OptimizerConfig(kind="sgd", lr=0.1, momentum=0.9)


class LostLeadership(Exception):
    """Stands in for consensus' NotLeaderError."""


class FakeContext:
    """A one-replica 'group': proposals queue until the test commits or fails them."""

    def __init__(self, machine: ShardStateMachine) -> None:
        self.machine = machine
        self.queue: list[tuple[bytes, asyncio.Future[Any]]] = []
        self.waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    term = 1
    leader_changes = 0

    def is_leader(self) -> bool:
        return True

    @property
    def state_machine(self) -> ShardStateMachine:
        return self.machine

    async def apply_idle(self) -> None:
        return None  # applies run inline in commit_next

    async def propose(self, command: bytes, timeout: float = 10.0) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.queue.append((command, fut))
        return await fut

    async def wait_applied(self, target: Any, timeout: float | None = None) -> None:
        if target():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append((target, fut))
        await asyncio.wait_for(fut, timeout)

    def commit_next(self) -> None:
        command, fut = self.queue.pop(0)
        fut.set_result(self.machine.apply(command))
        for target, waiter in list(self.waiters):
            if target() and not waiter.done():
                waiter.set_result(None)

    def fail_next(self) -> None:
        _, fut = self.queue.pop(0)
        fut.set_exception(LostLeadership("lost leadership"))


def _params(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


def _service(workers: int = 2) -> tuple[ShardService, FakeContext]:
    ctx = FakeContext(ShardStateMachine(PLAN.pieces(0), _params(0), OPT))
    config = AggregatorConfig(workers=workers, mode="sync")
    return ShardService(ctx, config, commit_timeout_s=5.0, publish=lambda v: v), ctx


def _contributions(round: int, workers: int = 2) -> list[Any]:
    return [(3 + rank, _params(100 * round + rank)) for rank in range(workers)]


async def _settle() -> None:
    for _ in range(20):  # let every runnable callback run; no wall-clock waiting
        await asyncio.sleep(0)


def test_answer_comes_before_the_commit_and_equals_the_applied_bits() -> None:
    async def scenario() -> None:
        service, ctx = _service()
        params, info = await service.step_round(0, 0, *_contributions(0))
        assert ctx.machine.version == 0, "the answer must not wait for the commit"
        assert info["round"] == 0 and info["applied"] == 0
        await _settle()
        assert len(ctx.queue) == 1, "the round's one command is being proposed"
        ctx.commit_next()
        assert ctx.machine.version == 1
        for key, value in ctx.machine.params().items():
            assert params[key].tobytes() == value.tobytes()

    asyncio.run(scenario())


def test_next_round_waits_for_the_previous_commit() -> None:
    async def scenario() -> None:
        service, ctx = _service()
        await service.step_round(0, 0, *_contributions(0))
        nxt = asyncio.ensure_future(service.step_round(1, 1, *_contributions(1)))
        await _settle()
        assert not nxt.done(), "round 1 must not be answered before round 0 is applied"
        ctx.commit_next()
        params, info = await nxt
        assert info["applied"] == 1
        await _settle()
        ctx.commit_next()
        for key, value in ctx.machine.params().items():
            assert params[key].tobytes() == value.tobytes()

    asyncio.run(scenario())


def test_a_failed_background_proposal_fails_the_next_round() -> None:
    async def scenario() -> None:
        service, ctx = _service()
        await service.step_round(0, 0, *_contributions(0))
        nxt = asyncio.ensure_future(service.step_round(1, 1, *_contributions(1)))
        await _settle()
        ctx.fail_next()
        with pytest.raises(LostLeadership):
            await nxt
        assert ctx.machine.version == 0, "nothing applied"
        # The driver then re-submits round 0; the aggregator was rebuilt from version 0.
        again = asyncio.ensure_future(service.step_round(0, 0, *_contributions(0)))
        await again
        await _settle()
        ctx.commit_next()
        assert ctx.machine.version == 1

    asyncio.run(scenario())


def test_a_round_already_applied_is_stale() -> None:
    async def scenario() -> None:
        service, ctx = _service()
        await service.step_round(0, 0, *_contributions(0))
        await _settle()
        ctx.commit_next()
        with pytest.raises(StaleRoundError):
            await service.step_round(0, 0, *_contributions(0))

    asyncio.run(scenario())


def test_a_replayed_contribution_to_an_applied_round_is_an_answer_not_an_error() -> None:
    """After a failover the driver re-sends round contributions with replay=True; a round
    this shard already applied answers ``duplicate`` (an error nobody reads would make Ray
    print "unhandled error" tracebacks), changes nothing and proposes nothing. Without
    replay the same call still raises StaleRoundError."""
    async def scenario() -> None:
        service, ctx = _service()
        await service.step_round(0, 0, *_contributions(0))
        await _settle()
        ctx.commit_next()
        # a new leader (fresh aggregator) over the same applied state, as after a failover
        service = ShardService(ctx, AggregatorConfig(workers=2, mode="sync"),
                               commit_timeout_s=5.0, publish=lambda v: v)
        before = {k: v.tobytes() for k, v in ctx.machine.params().items()}
        contribution = (3, _params(0))
        answer = await service.submit(0, 0, contribution, 0, replay=True)
        assert answer["duplicate"] is True and answer["accepted"] is False
        assert answer["version"] == 1 and not ctx.queue
        assert {k: v.tobytes() for k, v in ctx.machine.params().items()} == before
        with pytest.raises(StaleRoundError):
            await service.submit(0, 0, contribution, 0)

    asyncio.run(scenario())


def test_replaying_several_rounds_at_once_applies_them_in_order() -> None:
    """A recovery re-sends rounds 0 and 1 together (replay=True): round 1's contributions
    arrive while round 0 is still committing. They wait for it instead of failing with
    FutureRoundError, and both rounds apply once, in order."""
    async def scenario() -> None:
        service, ctx = _service()
        calls = [asyncio.ensure_future(service.submit(r, rank, (3, _params(10 * r + rank)), r,
                                                      replay=True))
                 for r in (0, 1) for rank in (0, 1)]
        await _settle()
        assert len(ctx.queue) == 1  # round 0 proposed; round 1 waits, nothing failed
        assert not any(c.done() for c in calls[2:])
        ctx.commit_next()
        await _settle()
        assert len(ctx.queue) == 1  # now round 1
        ctx.commit_next()
        answers = await asyncio.gather(*calls)
        assert ctx.machine.version == 2
        assert sum(bool(a["accepted"]) for a in answers) == 4

    asyncio.run(scenario())


def test_a_bad_contribution_raises_its_typed_error_and_proposes_nothing() -> None:
    async def scenario() -> None:
        service, ctx = _service()
        bad = _params(7)
        bad["w"][0, 0] = np.nan
        with pytest.raises(NonFiniteGradientError):
            await service.step_round(0, 0, (3, _params(1)), (3, bad))
        await _settle()
        assert ctx.queue == [] and ctx.machine.version == 0

    asyncio.run(scenario())


def test_preview_changes_nothing_and_matches_apply() -> None:
    from paramserver import RoundCommand

    machine = ShardStateMachine(PLAN.pieces(0), _params(0), OPT)
    other = ShardStateMachine(PLAN.pieces(0), _params(0), OPT)
    for r in range(3):  # momentum state makes later rounds depend on earlier ones
        command = RoundCommand(round=r, kind="sync", samples=5, ranks=(0, 1),
                               grads=_params(50 + r)).encode()
        before = machine.digest()
        preview = machine.preview(command)
        assert machine.digest() == before
        machine.apply(command)
        other.apply(command)
        for key, value in machine.params().items():
            assert preview[key].tobytes() == value.tobytes()
    assert machine.digest() == other.digest()


def test_a_pulled_version_is_let_go_once_the_shard_moves_past_it() -> None:
    """The service caches the object it put for a pull (one put per version); a pipelined
    driver pulls only at its start, so that cache must not pin the start's parameters (a
    copy of the shard in the object store) for the rest of the run."""
    async def scenario() -> None:
        service, ctx = _service()
        version, _ref = await service.pull(0)
        assert version == 0 and service._published is not None
        await service.step_round(0, 0, *_contributions(0))
        assert service._published is not None  # round 0 starts from the pulled version
        await _settle()
        ctx.commit_next()
        await _settle()
        await service.step_round(1, 1, *_contributions(1))
        assert service._published is None
        again, _ = await service.pull(1)  # a later pull puts the current version
        assert again == 1

    asyncio.run(scenario())


@pytest.mark.parametrize("large", [True, False])
def test_a_large_shard_admits_contributions_off_the_loop(
    large: bool, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A replayed or unpipelined round of a large shard sums, checks and encodes hundreds of
    MB in ``submit``, and ``pull`` and ``export`` copy the state: on the loop that stalls
    ticks and heartbeats (and elections follow), so a shard of at least OFF_LOOP_BYTES does
    them on its compute thread; a small one inline."""
    import threading

    from paramserver import service as service_module
    from paramserver.aggregator import RoundAggregator

    monkeypatch.setattr(service_module, "OFF_LOOP_BYTES", 1 if large else 1 << 40)
    threads: list[str] = []
    real_submit, real_close = RoundAggregator.submit, RoundAggregator.close_round

    def submit(self: RoundAggregator, *args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real_submit(self, *args, **kwargs)

    def close_round(self: RoundAggregator, *args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real_close(self, *args, **kwargs)

    monkeypatch.setattr(RoundAggregator, "submit", submit)
    monkeypatch.setattr(RoundAggregator, "close_round", close_round)

    async def scenario() -> None:
        service, ctx = _service()
        first = asyncio.ensure_future(service.submit(0, 0, (3, _params(0)), 0))
        second = asyncio.ensure_future(service.submit(0, 1, (4, _params(1)), 0))
        while not ctx.queue:  # the round's command is proposed once both are admitted
            await asyncio.sleep(0)
        ctx.commit_next()
        assert (await first)["accepted"] is True and (await second)["version"] == 1
        await service.close_round(1)  # nothing admitted for round 1: no command
        service._publish = lambda params: threads.append(threading.current_thread().name)
        await service.pull(1)  # copies into the object store
        real_export = ctx.machine.export_state
        ctx.machine.export_state = lambda: (  # type: ignore[method-assign]
            threads.append(threading.current_thread().name), real_export())[1]
        assert (await service.export(1)).version == 1  # copies the whole state

    asyncio.run(scenario())
    loop_thread = threading.current_thread().name
    assert len(threads) == 5
    if large:
        assert all(name.startswith("shard-compute") for name in threads)
    else:
        assert threads == [loop_thread] * 5
