"""ParameterServer as the one owner of the contributions handed to the shards: ``step_round``
keeps them, ``applied`` lets go of those every shard applied, ``replay`` re-sends the rest
below a round to freshly looked-up leaders and drops the later ones (recomputed)."""

from __future__ import annotations

from typing import Any

from paramserver.plan import ShardPlan
from paramserver.server import ParameterServer
from paramserver.server_config import ServerConfig


class _Method:
    def __init__(self, calls: list[tuple[Any, ...]], shard: int) -> None:
        self.calls, self.shard = calls, shard

    def options(self, **_: Any) -> _Method:
        return self

    def remote(self, method: str, *args: Any, leader_only: bool) -> Any:
        self.calls.append((self.shard, method, *args))
        return (object(), object()) if method == "step_round" else object()


class _Leader:
    def __init__(self, calls: list[tuple[Any, ...]], shard: int) -> None:
        self.call_service = _Method(calls, shard)


class _Group:
    def __init__(self, calls: list[tuple[Any, ...]], shard: int) -> None:
        self.calls, self.shard, self.lookups = calls, shard, 0

    def leader(self, timeout: float) -> _Leader:
        self.lookups += 1
        return _Leader(self.calls, self.shard)


def _server(shards: int = 2) -> tuple[ParameterServer, list[tuple[Any, ...]], list[_Group]]:
    calls: list[tuple[Any, ...]] = []
    groups = [_Group(calls, s) for s in range(shards)]
    plan = ShardPlan.build({"w": (4, 2), "b": (2,)}, shards)
    server = ParameterServer(ServerConfig(job="replay-test", shards=shards), plan,
                             groups)  # type: ignore[arg-type]
    return server, calls, groups


def _grads(round: int, ranks: int = 2, shards: int = 2) -> list[list[str]]:
    return [[f"g{round}.{rank}.{shard}" for shard in range(shards)] for rank in range(ranks)]


def _replays(calls: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [c for c in calls if c[1] == "submit"]


def test_replay_resends_the_kept_rounds_below_through_to_fresh_leaders() -> None:
    server, calls, groups = _server()
    for round in range(3):
        server.step_round(round, _grads(round), round)
    calls.clear()
    server.replay(2)
    assert all(g.lookups == 2 for g in groups), "every leader looked up again"
    # (shard, "submit", round, rank, that shard's ref, param_version, replay=True)
    assert _replays(calls) == [
        (shard, "submit", round, rank, f"g{round}.{rank}.{shard}", round, True)
        for shard in range(2) for round in (0, 1) for rank in range(2)]
    calls.clear()
    server.replay(5)
    assert {c[2] for c in _replays(calls)} == {0, 1}, "round 2 was dropped: recomputed"


def test_applied_drops_what_every_shard_applied() -> None:
    server, calls, _ = _server()
    for round in range(3):
        server.step_round(round, _grads(round), round)
    server.applied(2)
    assert server.version == 2
    calls.clear()
    server.replay(3)
    assert {c[2] for c in _replays(calls)} == {2}


def test_a_plain_submit_is_kept_the_same_way() -> None:
    server, calls, _ = _server()
    server.submit(0, 1, ["a", "b"], 0)
    assert _replays(calls) == [(0, "submit", 0, 1, "a", 0, False),
                               (1, "submit", 0, 1, "b", 0, False)]
    calls.clear()
    server.replay(1)
    assert _replays(calls) == [(0, "submit", 0, 1, "a", 0, True),
                               (1, "submit", 0, 1, "b", 0, True)]
