"""Storage failures of a replica are recorded, counted and bounded: the same cause
``max_storage_failures`` times in a row (a corrupt or foreign database: once) leaves the
replica up out of service, reporting the cause in ``status()``, instead of a restart loop;
a group whose majority is out of service fails with an error naming each replica, path
and errno. Replicas are built directly on an asyncio loop (no Ray); the process exit that
Ray turns into a restart is replaced by a recorded call."""

from __future__ import annotations

import asyncio
import errno
import json
import pickle
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consensus import replica as replica_mod
from consensus import replica_fresh, storage_failure
from consensus.errors import NotLeaderError, StorageCorruptError, StorageFullError
from consensus.failures import Failure, classify
from consensus.incarnation import IncarnationMismatchError
from consensus.replica import RaftReplica
from consensus.replica_config import RaftGroupConfig
from consensus.replica_context import storage_path
from consensus.storage import SqliteStorage, StorageConfig
from consensus.storage_failure import (
    RECORD_BYTES,
    FailureRecord,
    GroupOutOfServiceError,
    ReplicaOutOfServiceError,
    StorageFailure,
    failure_of,
    failures_note,
    out_of_service,
    raise_if_out_of_service,
    record_path,
)
from consensus.types import HardState
from tests.unit.test_storage import _entries

GROUP = "job/shard-0"
NAME = f"{GROUP}/replica-0"


class Counter:
    """The smallest state machine: counts applied commands."""

    def __init__(self) -> None:
        self.n = 0

    def apply(self, command: bytes) -> int:
        self.n += 1
        return self.n

    def snapshot(self) -> bytes:
        return str(self.n).encode()

    def restore(self, data: bytes) -> None:
        self.n = int(data or b"0")

    def query(self, query: Any) -> int:
        return self.n


class _Exited(Exception):
    """Stands for the process exit (Ray would restart the actor)."""


class FullDisk(SqliteStorage):
    """A storage whose every write fails as a full disk does."""

    def save(self, *args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))


@pytest.fixture
def exits(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[asyncio.Event]]:
    """Each process exit sets the next event (and ends the calling code)."""
    events: list[asyncio.Event] = []

    def exit_process() -> None:
        events.append(asyncio.Event())
        events[-1].set()
        raise _Exited

    monkeypatch.setattr(replica_mod, "_fail_stop", exit_process)
    monkeypatch.setattr(replica_fresh, "ray_restarted", lambda: False)  # no Ray here
    yield events


def _config(**changes: Any) -> RaftGroupConfig:
    return RaftGroupConfig(tick_interval_s=0.01, peer_tcp=False, **changes)


def _start(tmp_path: Path, config: RaftGroupConfig) -> RaftReplica:
    return RaftReplica(GROUP, 0, [NAME], None, Counter, tmp_path, config)


async def _stop(replica: RaftReplica) -> None:
    """What the process exit ends: the ticker, the drive loop, files and threads."""
    if replica._ticker is not None:
        replica._ticker.cancel()
    await asyncio.gather(replica._task, replica._ticker, return_exceptions=True)
    replica._storage.close()
    replica._disk.shutdown()
    replica._applier.shutdown()


def test_a_full_disk_restarts_a_bounded_number_of_times_then_stays_out_of_service(
    tmp_path: Path, exits: list[asyncio.Event], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replica_mod, "SqliteStorage", FullDisk)
    config = _config(max_storage_failures=3)
    db = storage_path(tmp_path, GROUP, 0)

    async def scenario() -> RaftReplica:
        for attempt in range(1, 4):  # each start campaigns, writes its term, and fails
            replica = _start(tmp_path, config)
            while len(exits) < attempt:
                await asyncio.sleep(0.01)
            await _stop(replica)
            recorded = json.loads(record_path(db).read_bytes())
            assert (recorded["count"], recorded["code"]) == (attempt, "ENOSPC")
        return _start(tmp_path, config)  # the fourth start: out of service, no exit

    replica = asyncio.run(scenario())
    assert len(exits) == 3
    status = asyncio.run(replica.status())
    assert status["role"] == "FAILED" and status["lost_state"] is True
    failure = status["out_of_service"]
    assert (failure["replica"], failure["path"], failure["errno"], failure["count"]) == (
        NAME, str(db), errno.ENOSPC, 3)
    with pytest.raises(ReplicaOutOfServiceError) as info:
        asyncio.run(replica.read("n", 1.0))
    assert isinstance(info.value, NotLeaderError) and classify(info.value) is Failure.RETRY
    assert "ENOSPC (errno 28)" in str(info.value) and str(db) in str(info.value)
    assert "3 times in a row" in str(info.value)


def test_a_corrupt_database_is_out_of_service_at_the_first_start(
    tmp_path: Path, exits: list[asyncio.Event]
) -> None:
    db = storage_path(tmp_path, GROUP, 0)
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not a sqlite database" * 100)

    async def start() -> RaftReplica:
        return _start(tmp_path, _config())

    replica = asyncio.run(start())
    assert exits == []  # no restart: a restart cannot repair it
    status = asyncio.run(replica.status())
    assert status["role"] == "FAILED"
    failure = status["out_of_service"]
    assert (failure["error"], failure["path"], failure["permanent"]) == (
        "StorageCorruptError", str(db), True)
    with pytest.raises(ReplicaOutOfServiceError):
        asyncio.run(replica.call_service("info", leader_only=False))


def test_a_foreign_database_is_out_of_service_naming_both_ids(
    tmp_path: Path, exits: list[asyncio.Event]
) -> None:
    db = storage_path(tmp_path, GROUP, 0)
    old = SqliteStorage(db, StorageConfig(incarnation="0123456789abcdef"))
    old.save(HardState(term=3, vote=0, commit=2), _entries(1, 2, 3), None)
    old.close()

    async def start() -> RaftReplica:
        return _start(tmp_path, _config(incarnation="fedcba9876543210"))

    replica = asyncio.run(start())
    assert exits == []
    failure = asyncio.run(replica.status())["out_of_service"]
    assert failure["error"] == "IncarnationMismatchError" and failure["path"] == str(db)
    assert "0123456789abcdef" in failure["message"] and "fedcba9876543210" in failure["message"]
    assert SqliteStorage(db).load()[0] == HardState(term=3, vote=0, commit=2)  # untouched


def _failure(count: int = 1, **changes: Any) -> StorageFailure:
    base = StorageFailure(replica=NAME, error="OSError", path="/d/r.db", errno=errno.ENOSPC,
                          code="ENOSPC", message="No space left on device", count=count)
    return StorageFailure(**{**base.to_dict(), **changes})


def test_the_record_counts_the_same_cause_and_restarts_on_another(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    record = FailureRecord(db, NAME)
    assert record_path(db).stat().st_size == RECORD_BYTES  # preallocated
    assert record.record(_failure()).count == 1
    assert record.record(_failure()).count == 2
    assert not record.exhausted(3)
    assert FailureRecord(db, NAME).record(_failure()).count == 3  # survives a restart
    assert FailureRecord(db, NAME).exhausted(3)
    other = FailureRecord(db, NAME).record(_failure(errno=errno.EIO, code="EIO"))
    assert other.count == 1 and not FailureRecord(db, NAME).exhausted(3)


def test_healthy_writes_clear_the_record(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    FailureRecord(db, NAME).record(_failure())
    record = FailureRecord(db, NAME)
    for _ in range(storage_failure.HEALTHY_SAVES - 1):
        record.healthy_save()
    assert record.last is not None
    record.healthy_save()
    assert record.last is None and FailureRecord(db, NAME).last is None


def test_a_full_disk_still_gets_the_record_written_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "r.db"
    record = FailureRecord(db, NAME)  # preallocated while the disk had room

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage_failure, "write_atomic", full)
    record.record(_failure())
    record.record(_failure())
    monkeypatch.undo()
    assert FailureRecord(db, NAME).last == _failure(count=2, at=0.0)


def test_an_unreadable_record_counts_as_none(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    record_path(db).write_bytes(b"{not json")
    assert FailureRecord(db, NAME).last is None


def test_failures_name_the_path_and_errno(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    full = StorageFullError(str(tmp_path / "r.db.segments"), 100, 5)
    full.__cause__ = OSError(errno.EDQUOT, "Disk quota exceeded")
    cases = {
        full: ("StorageFullError", str(tmp_path / "r.db.segments"), errno.EDQUOT, "EDQUOT"),
        StorageFullError(str(db), None, None): ("StorageFullError", str(db), errno.ENOSPC,
                                                "ENOSPC"),
        OSError(errno.EIO, "I/O error", "/x/1.seg"): ("OSError", "/x/1.seg", errno.EIO, "EIO"),
        StorageCorruptError("/x/r.db", "CRC"): ("StorageCorruptError", "/x/r.db", None, None),
        IncarnationMismatchError("/x/r.db", "ab" * 4, None): (
            "IncarnationMismatchError", "/x/r.db", None, None),
    }
    for exc, expected in cases.items():
        found = failure_of(exc, NAME, db)
        assert found is not None
        assert (found.error, found.path, found.errno, found.code) == expected
    io_error = sqlite3.OperationalError("disk I/O error")
    io_error.sqlite_errorname = "SQLITE_IOERR_WRITE"  # type: ignore[attr-defined]
    found = failure_of(io_error, NAME, db)
    assert found is not None and (found.path, found.code) == (str(db), "SQLITE_IOERR_WRITE")
    assert failure_of(ValueError("a bug"), NAME, db) is None


def _statuses(*failed: bool) -> list[dict[str, Any]]:
    return [{"index": i, "role": "FAILED" if bad else "FOLLOWER",
             "out_of_service": _failure(3, replica=f"{GROUP}/replica-{i}").to_dict()
             if bad else None,
             "storage_failure": _failure(3, replica=f"{GROUP}/replica-{i}").to_dict()
             if bad else None}
            for i, bad in enumerate(failed)]


class _Group:
    def __init__(self, statuses: list[dict[str, Any]]) -> None:
        self.name, self._statuses = GROUP, statuses

    def status(self, timeout: float = 2.0) -> list[dict[str, Any]]:
        return self._statuses


def test_a_majority_out_of_service_stops_the_group_with_every_cause() -> None:
    assert out_of_service(GROUP, _statuses(True, False, False)) is None
    error = out_of_service(GROUP, _statuses(True, True, False))
    assert isinstance(error, GroupOutOfServiceError)
    assert classify(error) is Failure.FATAL
    for i in (0, 1):
        assert f"{GROUP}/replica-{i}: OSError [ENOSPC (errno 28)] on /d/r.db" in str(error)
    assert pickle.loads(pickle.dumps(error)).failures == error.failures
    with pytest.raises(GroupOutOfServiceError):
        raise_if_out_of_service([_Group(_statuses(False, False, False)),
                                 _Group(_statuses(True, True, True))])


def test_the_timeout_note_names_every_failed_replica() -> None:
    assert failures_note([_Group(_statuses(False, False))]) == ""
    note = failures_note([_Group(_statuses(False, True))])
    assert note.startswith(" Storage failures: replica job/shard-0/replica-1: OSError")
    assert "/d/r.db" in note and "errno 28" in note


def test_out_of_service_errors_pickle_with_their_cause() -> None:
    error = ReplicaOutOfServiceError(_failure(3))
    again = pickle.loads(pickle.dumps(error))
    assert again.failure == error.failure and str(again) == str(error)
    assert again.leader_hint is None


def test_a_failure_that_cannot_be_written_down_is_the_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only disk: neither the record nor its preallocated file can be written, so
    restarts could not be counted; the first failure already stops them."""
    db = tmp_path / "r.db"

    def read_only(*args: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(storage_failure, "write_atomic", read_only)
    record = FailureRecord(db, NAME)
    assert record.record(_failure(errno=errno.EROFS, code="EROFS")).count == 1
    assert not record.durable and record.exhausted(3)
