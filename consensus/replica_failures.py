"""A replica's storage failures: recorded, bounded, and what the replica is once out of
service (``RaftReplica`` mixes this in; the rules are in ``consensus.storage_failure``).

A storage failure at start (a full disk, an I/O error, a corrupt or foreign database) is
recorded next to the database; the process then exits for Ray to restart it, or, once the
same cause was recorded ``max_storage_failures`` times (a corrupt or foreign database: at
once), the replica stays up out of service: ``status`` reports the failure (role ``FAILED``,
``lost_state`` so that ``RaftGroup.heal`` replaces it) and every other use raises
``ReplicaOutOfServiceError``, a NotLeaderError, so clients go elsewhere.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from consensus.replica_config import RaftGroupConfig
from consensus.replica_context import replica_name
from consensus.storage_failure import (
    FailureRecord,
    ReplicaOutOfServiceError,
    StorageFailure,
    failure_of,
)

__all__ = ["ReplicaFailures"]

log = logging.getLogger(__name__)


class ReplicaFailures:
    """Storage-failure handling of a replica (attributes set by ``RaftReplica``)."""

    group: str
    index: int
    node_id: int
    lost_state: bool
    _namespace: str | None
    _db_path: Path
    _config: RaftGroupConfig
    _failures: FailureRecord
    _out_of_service: StorageFailure | None

    def _record_failure(self, exc: BaseException) -> StorageFailure | None:
        """Record ``exc`` if it is a storage failure (see consensus.storage_failure)."""
        failure = failure_of(exc, replica_name(self.group, self.index), self._db_path)
        if failure is None:
            return None
        counted = self._failures.record(failure)
        log.error("storage failure: %s", counted.describe())
        return counted

    def _start_failed(self, exc: BaseException, fail_stop: Callable[[], NoReturn]) -> None:
        """The storage failed while starting: record it, then ``fail_stop`` (exit for a
        restart) or, once the limit is reached, stay up out of service."""
        self._record_failure(exc)
        storage = self.__dict__.pop("_storage", None)
        if storage is not None:
            with contextlib.suppress(Exception):  # it failed already; its files stay
                storage.close()
        if not self._failures.exhausted(self._config.max_storage_failures):
            fail_stop()
        self._stay_out_of_service()

    def _stay_out_of_service(self) -> None:
        """Stay up without storage, core or service (module docstring)."""
        assert self._failures.last is not None
        self._out_of_service = self._failures.last
        self.lost_state = True
        log.error("replica %s of %s is out of service: %s", self.index, self.group,
                  self._out_of_service.describe())

    def _failed_status(self) -> dict[str, Any]:
        """``status()`` while out of service."""
        assert self._out_of_service is not None
        last = self._failures.last
        return {
            "name": replica_name(self.group, self.index), "namespace": self._namespace,
            "index": self.index, "node_id": self.node_id, "role": "FAILED",
            "leader": None, "alive": True, "lost_state": True, "leader_changes": 0,
            "storage_failure": None if last is None else last.to_dict(),
            "out_of_service": self._out_of_service.to_dict(), "pid": os.getpid(),
        }

    if not TYPE_CHECKING:
        def __getattr__(self, name: str) -> Any:
            """Out of service, the replica has no core, storage or service: any use of
            them raises ReplicaOutOfServiceError."""
            failure = self.__dict__.get("_out_of_service")
            if failure is not None and not name.startswith("__"):
                raise ReplicaOutOfServiceError(failure)
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
