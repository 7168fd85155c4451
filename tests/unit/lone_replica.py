"""A one-replica Raft group on a plain asyncio loop, no Ray: the harness of the unit tests
that drive a real ``RaftReplica`` (its drive loop, storage and apply path)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from consensus.replica import RaftReplica
from consensus.replica_config import RaftGroupConfig
from consensus.types import Role

GROUP = "job/shard-0"


@contextlib.asynccontextmanager
async def lone_leader(tmp_path: Path, machine: Callable[[], Any],
                      **config: Any) -> AsyncIterator[RaftReplica]:
    """A started replica of a one-member group, once it leads; stopped on exit. ``config``:
    ``RaftGroupConfig`` settings (ticks of 10 ms, no peer transport by default)."""
    settings: dict[str, Any] = {"tick_interval_s": 0.01, "peer_tcp": False, **config}
    replica = RaftReplica(GROUP, 0, [f"{GROUP}/replica-0"], None, machine, tmp_path,
                          RaftGroupConfig(**settings))
    try:
        for _turn in range(1000):  # a lone replica elects itself within a few ticks
            if replica._node.role == Role.LEADER:
                break
            await asyncio.sleep(0.01)
        assert replica._node.role == Role.LEADER
        yield replica
    finally:
        replica._task.cancel()
        if replica._ticker is not None:
            replica._ticker.cancel()
        replica._storage.close()
