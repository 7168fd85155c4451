"""Storage failures of a replica: recorded, counted and bounded.

A replica whose storage fails (a full disk, an I/O error, a corrupt or foreign database)
cannot go on: its core and its disk would disagree. Ray restarts a replica that exits, so a
failure that recurs on every start would otherwise become a silent restart loop. Instead:

- the replica records the failure (:class:`StorageFailure`: replica, exception type, path,
  errno or sqlite code, message, how many times in a row) in ``<db>.failure`` next to its
  database, written atomically, and in memory, where ``status()`` shows it;
- the same cause again increments the count, another cause starts over at one, and a
  replica that has run healthy for ``HEALTHY_SAVES`` durable writes since its start
  clears the record;
- a start that finds the cause recorded ``RaftGroupConfig.max_storage_failures`` times (or
  once, for a corrupt or foreign database, which no restart repairs) touches no storage:
  the replica stays up *out of service*, answering ``status()`` with the cause and every
  other call with :class:`ReplicaOutOfServiceError`, a ``NotLeaderError`` (clients try the
  other replicas); its status reports ``lost_state`` so that ``RaftGroup.heal`` replaces it.
  A start failure that cannot even be written down (a read-only disk) counts as the last:
  restarts could not be counted.

The record file is preallocated at ``RECORD_BYTES`` while the disk is healthy and later
written in place if a full disk refuses the atomic replacement. :func:`out_of_service`
turns a group's statuses into :class:`GroupOutOfServiceError` once a majority is out of
service (the group cannot commit), naming each replica, path and errno.
"""

from __future__ import annotations

import dataclasses
import errno as errno_codes
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from consensus.atomic_file import write_atomic
from consensus.errors import ConsensusError, NotLeaderError, StorageCorruptError, StorageFullError
from consensus.incarnation import IncarnationMismatchError

__all__ = [
    "STORAGE_ERRORS", "FailureRecord", "GroupOutOfServiceError", "ReplicaOutOfServiceError",
    "StorageFailure", "describe_failures", "failure_of", "failures_note", "out_of_service",
    "raise_if_out_of_service", "record_path",
]

log = logging.getLogger(__name__)

STORAGE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, sqlite3.Error, StorageFullError, StorageCorruptError, IncarnationMismatchError)
"""What a failing storage raises; anything else is not recorded."""
_PERMANENT = (StorageCorruptError, IncarnationMismatchError)
RECORD_SUFFIX = ".failure"
RECORD_BYTES = 4096
"""Size of the record file (padded JSON), so it can be rewritten in place on a full disk."""
HEALTHY_SAVES = 100
"""Durable writes after a start that clear an earlier failure."""
_TEXT_MAX = 1000


def record_path(db_path: Path) -> Path:
    """The failure record of the database at ``db_path``."""
    return db_path.with_name(db_path.name + RECORD_SUFFIX)


@dataclass(frozen=True, kw_only=True)
class StorageFailure:
    """One storage failure cause of a replica, and how many times in a row it happened."""

    replica: str
    """The replica's actor name (``<group>/replica-<r>``)."""
    error: str
    """The exception's type name."""
    path: str
    """The file or directory that failed."""
    errno: int | None
    """The OS error number, if any (a full disk: ENOSPC)."""
    code: str | None
    """The errno's name (``ENOSPC``) or sqlite's error name (``SQLITE_IOERR_WRITE``)."""
    message: str
    count: int = 1
    permanent: bool = False
    """A restart cannot repair it (a corrupt or foreign database)."""
    at: float = 0.0
    """When it last happened (seconds since the epoch)."""

    def same_cause(self, other: StorageFailure) -> bool:
        return (self.error, self.path, self.errno, self.code) == (
            other.error, other.path, other.errno, other.code)

    def describe(self) -> str:
        """One line: replica, error, code and errno, path, count, message."""
        code = self.code or ""
        if self.errno is not None:
            code = f"{code} (errno {self.errno})".strip()
        code = f" [{code}]" if code else ""
        times = "once" if self.count == 1 else f"{self.count} times in a row"
        return (f"replica {self.replica}: {self.error}{code} on {self.path}, {times}: "
                f"{self.message}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StorageFailure:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def failure_of(exc: BaseException, replica: str, default_path: Path) -> StorageFailure | None:
    """``exc`` as a StorageFailure (count 1), or None if it is not a storage error."""
    if not isinstance(exc, STORAGE_ERRORS):
        return None
    number: int | None = None
    code: str | None = None
    path = str(default_path)
    if isinstance(exc, StorageFullError):
        inner = exc.__cause__
        number = getattr(inner, "errno", None) or errno_codes.ENOSPC
        path = exc.path
    elif isinstance(exc, StorageCorruptError | IncarnationMismatchError):
        path = exc.path
    elif isinstance(exc, OSError):
        number = exc.errno
        path = str(exc.filename) if exc.filename is not None else path
    if number is not None:
        code = errno_codes.errorcode.get(number)
    elif isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorname", None)
    return StorageFailure(replica=replica, error=type(exc).__name__, path=path[:_TEXT_MAX],
                          errno=number, code=code, message=str(exc)[:_TEXT_MAX],
                          permanent=isinstance(exc, _PERMANENT), at=time.time())


def _encode(failure: StorageFailure | None) -> bytes:
    fields = {} if failure is None else failure.to_dict()
    data = json.dumps(fields, sort_keys=True).encode()
    if len(data) > RECORD_BYTES and failure is not None:
        short = dataclasses.replace(failure, message=failure.message[:200],
                                    path=failure.path[:200])
        data = json.dumps(short.to_dict(), sort_keys=True).encode()
    return data.ljust(RECORD_BYTES, b" ")


class FailureRecord:
    """The failure record of one replica's storage (``<db>.failure``; see the module doc).

    Used from the replica's event loop; every method blocks only on a small file."""

    def __init__(self, db_path: Path, replica: str) -> None:
        """Read the record (an unreadable one counts as none) and preallocate the file if
        it is missing (best effort: a full disk leaves it missing)."""
        self.path = record_path(db_path)
        self.replica = replica
        self.last: StorageFailure | None = None
        self.durable = True
        """Whether the last write of the record reached the disk."""
        self._saves = 0
        try:
            data = json.loads(self.path.read_bytes() or b"{}")
            if isinstance(data, dict) and data:
                self.last = StorageFailure.from_dict(data)
        except FileNotFoundError:
            self._persist()
        except (OSError, ValueError, TypeError):
            log.warning("replica %s: unreadable failure record %s; ignoring it", replica,
                        self.path)

    def exhausted(self, limit: int) -> bool:
        """Whether the recorded cause happened ``limit`` times in a row (or is permanent, or
        could not be written down: then restarts could not be counted): the replica must
        stay out of service instead of trying its storage again."""
        return self.last is not None and (self.last.permanent or self.last.count >= limit
                                          or not self.durable)

    def record(self, failure: StorageFailure) -> StorageFailure:
        """Count ``failure`` (one more if the recorded cause is the same, else one) and
        persist it; returns the counted failure. Never raises: a record that cannot be
        written stays in memory (and is logged)."""
        previous = self.last
        count = previous.count + 1 if previous is not None and previous.same_cause(failure) else 1
        self.last = dataclasses.replace(failure, count=count)
        self._persist()
        return self.last

    def healthy_save(self) -> None:
        """A durable write succeeded; after ``HEALTHY_SAVES`` of them since the start, an
        earlier failure is forgotten."""
        self._saves += 1
        if self._saves == HEALTHY_SAVES and self.last is not None:
            log.info("replica %s: storage healthy again; clearing %s", self.replica,
                     self.last.describe())
            self.last = None
            self._persist()

    def _persist(self) -> None:
        data = _encode(self.last)
        self.durable = True
        try:
            write_atomic(self.path, data)
            return
        except OSError as exc:
            first = exc
        try:  # a full disk: overwrite the preallocated file's blocks in place
            fd = os.open(self.path, os.O_WRONLY)
            try:
                if os.fstat(fd).st_size != RECORD_BYTES:
                    raise first
                os.pwrite(fd, data, 0)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            self.durable = False
            log.error("replica %s: cannot write the failure record %s (%s)", self.replica,
                      self.path, exc)


class ReplicaOutOfServiceError(NotLeaderError):
    """This replica is out of service: its storage failed (see ``failure``) as many times in
    a row as ``RaftGroupConfig.max_storage_failures`` allows, or cannot be repaired by a
    restart. A ``NotLeaderError`` without a hint: clients try the other replicas."""

    def __init__(self, failure: StorageFailure) -> None:
        super().__init__(
            f"{failure.describe()}. The replica is out of service: replace it "
            "(RaftGroup.heal / replace), or fix its storage (free space, replace the disk, "
            "delete a foreign or corrupt database), delete the .failure record next to its "
            "database and restart it.", None)
        self.failure = failure

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.failure,))


class GroupOutOfServiceError(ConsensusError):
    """A majority of a group's replicas are out of service: the group cannot commit until
    their storage is fixed. The message names each one's path and errno."""

    def __init__(self, group: str, failures: Sequence[StorageFailure]) -> None:
        lines = "; ".join(f.describe() for f in failures)
        super().__init__(
            f"group {group} cannot commit: {len(failures)} of its replicas are out of "
            f"service after storage failures: {lines}. Fix their storage (free space, "
            "replace the disk, delete a foreign or corrupt database, see docs/OPERATIONS.md) "
            "and rerun with --resume.")
        self.group = group
        self.failures = tuple(failures)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.group, self.failures))


def _failures(statuses: Sequence[Mapping[str, Any]], key: str) -> list[StorageFailure]:
    return [StorageFailure.from_dict(s[key]) for s in statuses if s.get(key)]


def out_of_service(group: str,
                   statuses: Sequence[Mapping[str, Any]]) -> GroupOutOfServiceError | None:
    """The error to stop with when a majority of ``statuses`` (one per member, as
    ``RaftGroup.status`` returns them) are out of service; None otherwise."""
    failed = _failures(statuses, "out_of_service")
    if statuses and len(failed) > len(statuses) // 2:
        return GroupOutOfServiceError(group, failed)
    return None


def describe_failures(statuses: Sequence[Mapping[str, Any]]) -> str:
    """The storage failures the replicas of ``statuses`` report (out of service, or
    recorded before their last restart), one clause each; empty if none."""
    failures = _failures(statuses, "storage_failure")
    return "; ".join(f.describe() for f in failures)


class _Group(Protocol):
    """What the group helpers below need of a ``RaftGroup``."""

    name: str

    def status(self, timeout: float = ...) -> list[dict[str, Any]]: ...


def raise_if_out_of_service(groups: Iterable[_Group]) -> None:
    """Raise GroupOutOfServiceError for the first of ``groups`` whose majority is out of
    service (one status round per group: call it when commits stall, not per round)."""
    for group in groups:
        error = out_of_service(group.name, group.status())
        if error is not None:
            raise error


def failures_note(groups: Iterable[_Group]) -> str:
    """`` Storage failures: ...`` naming each replica of ``groups`` that reports one (its
    path, errno and count), for a timeout's message; empty if none does."""
    notes = [note for group in groups if (note := describe_failures(group.status()))]
    return f" Storage failures: {'; '.join(notes)}." if notes else ""
