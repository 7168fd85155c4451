"""``durability="memory"``: entries reach the OS but are not fsynced; term, vote and
snapshots still are; a start after a reboot discards what may have lost its tail."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from consensus import lost_state
from consensus.replica_config import RaftGroupConfig
from consensus.storage import SqliteStorage, StorageConfig
from consensus.types import Entry, HardState, Snapshot, SnapshotMeta

pytestmark = pytest.mark.unit


class SyncCounter:
    """Counts fsync/fdatasync calls (os level) and sqlite's synchronous setting per save."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real_fsync, real_fdatasync = os.fsync, os.fdatasync

        def fsync(fd: int) -> None:
            self.calls += 1
            real_fsync(fd)

        def fdatasync(fd: int) -> None:
            self.calls += 1
            real_fdatasync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "fdatasync", fdatasync)


def _big(index: int) -> Entry:
    return Entry(1, index, data=bytes([index]) * (256 << 10))  # goes to a segment file


def test_memory_durability_maps_to_unsynced_entries() -> None:
    assert RaftGroupConfig(durability="memory").storage_config().sync_entries is False
    assert RaftGroupConfig().storage_config().sync_entries is True


@pytest.mark.parametrize("sync_entries", [True, False])
def test_entries_are_fsynced_only_with_disk_durability(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync_entries: bool
) -> None:
    storage = SqliteStorage(tmp_path / "r.db", StorageConfig(sync_entries=sync_entries))
    storage.save(HardState(1, 1, 0), [], None)  # a vote: always durable
    counter = SyncCounter(monkeypatch)
    synchronous = []
    for i in (1, 2, 3):
        storage.save(HardState(1, 1, i - 1), [_big(i)], None)
        synchronous.append(storage._db.execute("PRAGMA synchronous").fetchone()[0])
    assert (counter.calls > 0) == sync_entries  # segment fdatasync per save
    assert synchronous == [2, 2, 2]  # FULL again between saves either way
    storage.close()
    _, _, entries = SqliteStorage(tmp_path / "r.db").load()  # a killed process loses nothing
    assert [e.index for e in entries] == [1, 2, 3]
    assert entries[2].data == _big(3).data


def test_snapshots_stay_durable_with_memory_durability(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = SqliteStorage(tmp_path / "r.db", StorageConfig(sync_entries=False))
    storage.save(HardState(1, None, 0), [_big(1)], None)
    counter = SyncCounter(monkeypatch)
    storage.compact(Snapshot(SnapshotMeta(1, 1, (1, 2, 3)), b"state" * 1000))
    assert counter.calls >= 2  # the snapshot file and its directory
    storage.close()


def test_vote_saves_commit_with_synchronous_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A vote change runs with PRAGMA synchronous=FULL (the WAL is fsynced on commit); an
    entry-only save of memory durability runs with NORMAL (no fsync)."""
    storage = SqliteStorage(tmp_path / "r.db", StorageConfig(sync_entries=False))
    modes: list[int] = []
    real = storage._write_hard_state

    def spy(hs: HardState) -> None:
        modes.append(storage._db.execute("PRAGMA synchronous").fetchone()[0])
        real(hs)

    monkeypatch.setattr(storage, "_write_hard_state", spy)
    storage.save(HardState(1, 1, 0), [], None)  # vote: FULL (2)
    storage.save(HardState(1, 1, 1), [_big(1)], None)  # entries only: NORMAL (1)
    storage.save(HardState(2, 2, 1), [_big(2)], None)  # new term: FULL
    assert modes == [2, 1, 2]
    storage.close()


def test_a_start_under_another_boot_discards_unsynced_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    boot = tmp_path / "boot_id"
    boot.write_text("boot-a\n")
    monkeypatch.setattr(lost_state, "BOOT_ID", boot)
    db = tmp_path / "g" / "replica-0.db"
    storage = SqliteStorage(db, StorageConfig(sync_entries=False))
    storage.save(HardState(1, 1, 0), [_big(1)], None)
    storage.close()
    lost_state.stamp_unsynced(db)
    assert not lost_state.unsynced_since_boot(db)  # same boot: a process restart
    boot.write_text("boot-b\n")  # the machine restarted
    assert lost_state.unsynced_since_boot(db)
    lost_state.discard_storage(db)
    assert not db.exists() and not db.with_name("replica-0.db.segments").exists()
    assert not lost_state.unsynced_since_boot(db)
    assert lost_state.detect_lost_state(db, reconstructed=False, storage_empty=True,
                                        join=False) is False  # flagged by the replica


def test_without_a_boot_id_nothing_is_discarded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lost_state, "BOOT_ID", tmp_path / "missing")
    db = tmp_path / "replica-0.db"
    lost_state.stamp_unsynced(db)
    assert not lost_state.unsynced_since_boot(db)
