"""Whether a replica that found no durable state may vote: a lost disk or a fresh group
(``RaftReplica`` mixes this in; the rules are in ``consensus.lost_state``).

A replica that comes back without its storage (Ray reconstructed it, a power loss
discarded unsynced storage, its sticky marker says so) is flagged ``lost_state``: it never
votes or campaigns until ``RaftGroup.heal`` replaces it. An empty first start may instead be
a re-created group on a node without this replica's database: it is provisional, and votes
only once every peer reports that it also started empty.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path
from typing import Any

from consensus.lost_state import (
    detect_lost_state,
    mark_lost_state,
    peers_started_empty,
    ray_restarted,
)
from consensus.replica_config import RaftGroupConfig

__all__ = ["FreshStart"]

log = logging.getLogger(__name__)


class FreshStart:
    """Lost-state detection and fresh-group confirmation (attributes set by
    ``RaftReplica``)."""

    group: str
    index: int
    node_id: int
    lost_state: bool
    _names: list[str]
    _db_path: Path
    _config: RaftGroupConfig
    _started_empty: bool
    _confirming_fresh: bool
    _router: Any
    _node: Any

    def _check_lost_state(self, started_empty: bool, join: bool, power_lost: bool) -> None:
        """Set ``lost_state`` (see consensus.lost_state) and whether this empty first start
        must first confirm with its peers that the group is fresh. ``power_lost``: the
        storage was written without fsync before a reboot and was discarded."""
        self._started_empty = started_empty
        if power_lost:
            mark_lost_state(self._db_path)
        self.lost_state = detect_lost_state(self._db_path, reconstructed=ray_restarted(),
                                            join=join, storage_empty=started_empty)
        if self.lost_state:
            self._log_lost_state()
        # an empty first start may be a re-created group on a node without our database:
        # no vote until every peer says it started empty too
        self._confirming_fresh = (started_empty and not join and not self.lost_state
                                  and len(self._names) > 1)

    def _log_lost_state(self) -> None:
        log.error("replica %s of %s started without its durable state (a new node or a lost "
                  "disk): it will not vote or campaign; replace it with RaftGroup.replace(%d)"
                  " or RaftGroup.heal()", self.index, self.group, self.index)

    async def _confirm_fresh(self) -> None:
        """Provisional empty start: all peers started empty too → a fresh group, vote
        normally; one did not → the group existed and this replica lost its database: flag
        it for good (marker) so ``RaftGroup.heal`` replaces it."""
        loop = asyncio.get_running_loop()

        async def ask(node_id: int) -> bool:
            handle = self._router.handle(node_id)
            if handle is None:
                raise LookupError(f"replica {node_id - 1} is still being looked up")
            return bool(await handle.started_empty.remote())

        peers = [i for i in range(1, len(self._names) + 1) if i != self.node_id]
        if await peers_started_empty(peers, ask, self._config.tick_interval_s):
            self._node.config = dataclasses.replace(self._node.config, lost_state=False)
        else:
            self.lost_state = True
            await loop.run_in_executor(None, mark_lost_state, self._db_path)
            self._log_lost_state()
        self._confirming_fresh = False

    async def started_empty(self) -> bool:
        """Whether this replica found no durable state when it started (see _confirm_fresh)."""
        return self._started_empty
