"""``durability="memory"`` keeps its payload segments in shared memory
(``consensus.memory_log``): ``<db>.segments`` links to a folder under the memory root, a
reopen finds the entries there, and every way storage is deleted deletes that folder too."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from consensus import lost_state, memory_log
from consensus.memory_log import (
    ROOT_ENV,
    memory_log_root,
    remove_storage_tree,
    segments_target,
)
from consensus.replica_config import RaftGroupConfig
from consensus.storage import SqliteStorage, StorageConfig
from consensus.types import Entry, HardState

pytestmark = pytest.mark.unit


def _big(index: int) -> Entry:
    return Entry(1, index, data=bytes([index]) * (2 << 20))  # a segment payload, written direct


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "shm"
    folder.mkdir()
    monkeypatch.setenv(ROOT_ENV, str(folder))
    return folder


def _config(root: Path) -> StorageConfig:
    return StorageConfig(sync_entries=False, memory_segments=root)


def _segment_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.seg"))


def test_the_root_is_the_variable_or_dev_shm_and_only_when_usable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ROOT_ENV, "")
    assert memory_log_root() is None  # turned off: segments on disk
    monkeypatch.setenv(ROOT_ENV, str(tmp_path / "missing"))
    assert memory_log_root() is None
    monkeypatch.setenv(ROOT_ENV, str(tmp_path))
    assert memory_log_root() == tmp_path
    monkeypatch.chdir(tmp_path.parent)
    monkeypatch.setenv(ROOT_ENV, tmp_path.name)  # relative: made absolute for the links
    assert memory_log_root() == tmp_path
    monkeypatch.setattr(memory_log, "MIN_FREE_BYTES", 1 << 62)
    assert memory_log_root() is None  # too little free memory
    monkeypatch.delenv(ROOT_ENV)
    monkeypatch.setattr(memory_log, "MIN_FREE_BYTES", 1)
    expected = memory_log.DEFAULT_ROOT if memory_log.DEFAULT_ROOT.is_dir() else None
    assert memory_log_root() == expected


def test_an_unusable_root_is_named_in_one_warning_with_what_to_change(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A container's 64 MB /dev/shm must not quietly put a memory-mode log on disk."""
    monkeypatch.setattr(memory_log, "_WARNED", set())
    monkeypatch.setattr(memory_log, "MIN_FREE_BYTES", 1 << 62)
    monkeypatch.setenv(ROOT_ENV, str(tmp_path))
    with caplog.at_level("WARNING", logger="consensus.memory_log"):
        assert memory_log_root() is None
        assert memory_log_root() is None  # once per folder and process
    (record,) = caplog.records
    message = record.getMessage()
    assert str(tmp_path) in message and "MiB free" in message and ROOT_ENV in message
    assert "stay on disk" in message
    caplog.clear()
    monkeypatch.setenv(ROOT_ENV, str(tmp_path / "missing"))
    with caplog.at_level("WARNING", logger="consensus.memory_log"):
        assert memory_log_root() is None
    assert "is not a folder" in caplog.records[0].getMessage()
    caplog.clear()
    monkeypatch.setenv(ROOT_ENV, "")  # asked for: no warning
    with caplog.at_level("WARNING", logger="consensus.memory_log"):
        assert memory_log_root() is None
    assert not caplog.records


def test_only_memory_durability_puts_segments_in_memory(root: Path) -> None:
    assert RaftGroupConfig(durability="memory").storage_config().memory_segments == root
    assert RaftGroupConfig().storage_config().memory_segments is None


def test_segments_live_under_the_root_and_a_reopen_reads_them(tmp_path: Path,
                                                             root: Path) -> None:
    db = tmp_path / "disk" / "replica-0.db"
    storage = SqliteStorage(db, _config(root))
    storage.save(HardState(1, 1, 0), [_big(1), _big(2)], None)
    storage.close()
    link = db.with_name("replica-0.db.segments")
    target = segments_target(db, root)
    assert link.is_symlink() and Path(os.readlink(link)) == target
    assert _segment_files(target) and sum(f.stat().st_size for f in _segment_files(target)) \
        >= 2 * (2 << 20)
    reopened = SqliteStorage(db, _config(root))
    _, _, entries = reopened.load()
    assert [bytes(e.data) for e in entries] == [bytes(_big(i).data) for i in (1, 2)]
    reopened.close()


def test_a_fresh_database_clears_an_earlier_ones_folder(tmp_path: Path, root: Path) -> None:
    db = tmp_path / "disk" / "replica-0.db"
    target = segments_target(db, root)
    target.mkdir(parents=True)
    (target / "0000000001.seg").write_bytes(b"left by a database whose disk was lost")
    storage = SqliteStorage(db, _config(root))
    storage.save(HardState(1, 1, 0), [_big(1)], None)
    _, _, entries = storage.load()
    assert [e.index for e in entries] == [1]
    assert b"left by" not in b"".join(f.read_bytes()[:64] for f in _segment_files(target))
    storage.close()


def test_storage_made_on_disk_keeps_its_segments_there(tmp_path: Path, root: Path) -> None:
    db = tmp_path / "disk" / "replica-0.db"
    storage = SqliteStorage(db, StorageConfig())
    storage.save(HardState(1, 1, 0), [_big(1)], None)
    storage.close()
    reopened = SqliteStorage(db, _config(root))
    reopened.save(HardState(1, 1, 1), [_big(2)], None)
    assert [e.index for e in reopened.load()[2]] == [1, 2]
    reopened.close()
    link = db.with_name("replica-0.db.segments")
    assert link.is_dir() and not link.is_symlink()
    assert not (root / memory_log.SUBDIR).exists()


def test_segments_in_memory_are_written_once_not_through_the_direct_stage(
        tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a tmpfs a direct write copies twice (into the stage, then into the file's pages);
    a buffered one once. Storage made on disk still writes large payloads direct."""
    from consensus import segments

    direct: list[Path] = []
    real = segments.SequentialWriter

    def counted(path: Path, **kwargs: object) -> object:
        direct.append(path)
        return real(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(segments, "SequentialWriter", counted)
    in_memory = SqliteStorage(tmp_path / "m" / "replica-0.db", _config(root))
    in_memory.save(HardState(1, 1, 0), [_big(1), _big(2)], None)
    assert [bytes(e.data) for e in in_memory.load()[2]] == [bytes(_big(i).data) for i in (1, 2)]
    in_memory.close()
    assert direct == []
    on_disk = SqliteStorage(tmp_path / "d" / "replica-0.db", StorageConfig(sync_entries=False))
    on_disk.save(HardState(1, 1, 0), [_big(1)], None)
    on_disk.close()
    assert len(direct) == 1


def test_a_link_whose_folder_was_cleared_gets_an_empty_one(tmp_path: Path, root: Path) -> None:
    db = tmp_path / "disk" / "replica-0.db"
    SqliteStorage(db, _config(root)).close()
    target = segments_target(db, root)
    shutil.rmtree(target)  # a reboot emptied the tmpfs (the replica discards such storage first)
    storage = SqliteStorage(db, _config(root))
    storage.save(HardState(1, 1, 0), [_big(1)], None)
    assert _segment_files(target)
    storage.close()


def test_discarding_and_removing_storage_delete_the_folders_in_memory(
        tmp_path: Path, root: Path) -> None:
    one = tmp_path / "raft" / "g_shard-0" / "replica-0.db"
    two = tmp_path / "raft" / "g_shard-1" / "replica-1.db"
    for db in (one, two):
        storage = SqliteStorage(db, _config(root))
        storage.save(HardState(1, 1, 0), [_big(1)], None)
        storage.close()
    lost_state.discard_storage(one)
    assert not segments_target(one, root).exists()
    assert not one.with_name("replica-0.db.segments").is_symlink()
    assert segments_target(two, root).exists()
    remove_storage_tree(str(tmp_path / "raft"))
    assert not (tmp_path / "raft").exists() and not segments_target(two, root).exists()
    remove_storage_tree(str(tmp_path / "raft"))  # gone already: nothing to do
    with pytest.raises(FileNotFoundError):
        remove_storage_tree(str(tmp_path / "raft"), ignore_errors=False)
