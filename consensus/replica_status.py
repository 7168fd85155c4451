"""What a replica reports about itself (``RaftReplica`` mixes this in): its role, term and
log positions, membership, storage use, memory and CPU peaks, and any storage failure.
``RaftGroup.status``, the benchmarks and the driver's summary read it."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from typing import Any

from consensus.payload_release import private_bytes
from consensus.replica_context import replica_name
from consensus.storage_failure import FailureRecord, StorageFailure
from consensus.types import Role

__all__ = ["ReplicaStatus"]


class ReplicaStatus:
    """``status()`` of a replica (attributes set by ``RaftReplica``)."""

    group: str
    index: int
    node_id: int
    lost_state: bool
    applied_index: int
    leader_changes: int
    _namespace: str | None
    _node: Any
    _snaps: Any
    _storage: Any
    _router: Any
    _readies: int
    _peak_private: int
    _confirming_fresh: bool
    _failures: FailureRecord
    _out_of_service: StorageFailure | None
    _failed_status: Callable[[], dict[str, Any]]

    async def status(self) -> dict[str, Any]:
        """A snapshot of this replica's view (cheap; never blocks). ``storage_failure``: the
        last recorded storage failure (``StorageFailure.to_dict``), if any; out of service,
        also ``out_of_service`` (the same) and role ``FAILED``."""
        if self._out_of_service is not None:
            return self._failed_status()
        failure = None if self._failures.last is None else self._failures.last.to_dict()
        node = self._node
        return {
            "name": replica_name(self.group, self.index), "namespace": self._namespace,
            "index": self.index, "node_id": self.node_id, "role": Role(node.role).name,
            "term": node.term, "commit": node.commit_index, "applied": self.applied_index,
            "last_index": node.last_index,
            "leader": None if node.leader is None else node.leader - 1,
            "voters": [v - 1 for v in node.voters], "snapshot_index": self._snaps.index,
            "learners": [v - 1 for v in node.learners],
            "matches": {v - 1: m for v, m in node.member_matches().items()},
            "alive": True, "readies": self._readies, "lost_state": self.lost_state,
            "leader_changes": self.leader_changes,
            "storage_full": None if self._snaps.storage_full is None else str(
                self._snaps.storage_full),
            "disk_bytes": self._storage.disk_bytes(),
            "peak_log_bytes": self._snaps.peak_log_bytes, "snapshot_bytes": self._snaps.bytes,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "peak_private_bytes": max(self._peak_private, private_bytes() or 0),
            "confirming_fresh": self._confirming_fresh,
            "sent_msgs": self._router.sent_msgs, "sent_entries": self._router.sent_entries,
            "pid": os.getpid(),
            "cpu_s": time.process_time(),
            "storage_failure": failure, "out_of_service": None,
        }
