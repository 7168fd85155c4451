"""ParameterServer.heal: replacements are reported; a shard whose replacement fails or is
refused is logged with the reason and skipped (its flagged replica never votes, so training
may go on), never raised."""

from __future__ import annotations

from typing import Any

import pytest

from consensus import ConsensusError
from paramserver.plan import ShardPlan
from paramserver.server import ParameterServer
from paramserver.server_config import ServerConfig


class FakeGroup:
    def __init__(self, result: dict[int, int] | Exception, replicas: int = 0) -> None:
        self.result = result
        self.calls = 0
        self.replicas = replicas

        self.statuses: list[Any] | None = None

    def _ask_status(self) -> tuple[list[int], list[Any]]:
        # refs that never settle: replicas that are down or restarting
        return list(range(self.replicas)), [object() for _ in range(self.replicas)]

    def _read_status(self, indices: list[int], refs: list[Any],
                     done: set[Any]) -> list[dict[str, Any]]:
        return [{"index": i, "alive": ref in done} for i, ref in zip(indices, refs, strict=True)]

    def heal(self, timeout: float = 60.0,
             statuses: list[dict[str, Any]] | None = None) -> dict[int, int]:
        self.calls += 1
        self.statuses = statuses
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def _server(groups: list[Any]) -> ParameterServer:
    plan = ShardPlan.build({"w": (4, 2), "b": (2,)}, len(groups))
    return ParameterServer(ServerConfig(job="heal-test", shards=len(groups)), plan, groups)


def test_heal_reports_each_replacement_and_skips_a_failing_shard(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failing = FakeGroup(ConsensusError("no leader"))
    healthy = FakeGroup({1: 3})
    server = _server([failing, healthy])
    with caplog.at_level("WARNING", logger="paramserver.server_health"):
        assert server.heal() == [(1, 1, 3)]
    assert failing.calls == healthy.calls == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("shard 0: could not replace" in m and "no leader" in m for m in messages)
    assert any("shard 1: replica 1 lost its storage or stayed unreachable; replaced by "
               "replica 3" in m for m in messages)


def test_a_refused_replacement_is_logged_with_its_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from consensus.errors import QuorumUnsafeError

    refused = FakeGroup(QuorumUnsafeError("refusing to remove replica 0: bring back [1]"))
    with caplog.at_level("WARNING", logger="paramserver.server_health"):
        assert _server([refused]).heal() == []
    assert any("bring back [1]" in r.getMessage() for r in caplog.records)


def test_heal_asks_every_shard_at_once_and_waits_briefly_for_silent_replicas(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A replica Ray is restarting answers no status call, and the training waits at the
    epoch barrier while heal runs: one bounded wait for all shards, not 2 s per shard."""
    import consensus.group
    from paramserver.server_health import HEAL_STATUS_S

    waits: list[tuple[int, float]] = []

    def wait(refs: list[Any], *, num_returns: int, timeout: float) -> tuple[list[Any],
                                                                         list[Any]]:
        waits.append((len(refs), timeout))
        return [], list(refs)

    monkeypatch.setattr(consensus.group.ray, "wait", wait)
    groups = [FakeGroup({}, replicas=3), FakeGroup({}, replicas=3)]
    assert _server(groups).heal() == []
    assert waits == [(6, HEAL_STATUS_S)] and HEAL_STATUS_S <= 0.5
    assert all(g.statuses == [{"index": i, "alive": False} for i in range(3)] for g in groups)


def test_heal_with_nothing_lost_does_nothing() -> None:
    groups = [FakeGroup({}), FakeGroup({})]
    assert _server(groups).heal() == []


def test_a_full_disk_is_not_a_failover() -> None:
    """A leader whose disk cannot hold its next snapshot raises StorageFullError: the job
    must stop with it (no other replica would do better), not retry it as a failover."""
    from consensus import NotLeaderError, StorageFullError
    from paramserver.server import is_failover

    full = StorageFullError("/data/raft", needed=3 << 30, free=1 << 20)
    assert not is_failover(full)
    assert is_failover(NotLeaderError("replica 1 is not the leader", None))


def test_config_and_corrupt_storage_errors_are_not_failovers() -> None:
    """Retrying them only let the job's timeout hide their message."""
    from consensus import ConfigError, StorageCorruptError
    from paramserver.server import is_failover

    assert not is_failover(ConfigError("replicas must be >= 1"))
    assert not is_failover(StorageCorruptError("/data/raft/r.db", "hard state CRC mismatch"))
