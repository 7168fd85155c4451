"""Group incarnations: a database and its snapshot files are stamped with the group's
incarnation id, and storage of another incarnation (or state without an id) is refused with
IncarnationMismatchError, naming the path and both ids, having changed nothing."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest

from consensus.errors import ConfigError
from consensus.incarnation import IncarnationMismatchError, new_incarnation
from consensus.memory_log import memory_log_root
from consensus.replica_config import RaftGroupConfig
from consensus.snapshot_files import HEADER_BYTES, MAGIC, SnapshotFiles
from consensus.storage import SqliteStorage, StorageConfig
from consensus.types import HardState
from tests.unit.test_storage import _entries, _snap, _snapshot_files, _tree

OLD, NEW = "a1" * 8, "b2" * 8


def _stored(path: Path, incarnation: str | None) -> None:
    """A database with a log and a snapshot, written under ``incarnation``."""
    st = SqliteStorage(path, StorageConfig(incarnation=incarnation))
    st.save(HardState(term=2, vote=0, commit=4), _entries(1, 4, 2), None)
    st.compact(_snap(2, 2, b"IMAGE"))
    st.close()


def test_new_ids_are_random_hex() -> None:
    first, second = new_incarnation(), new_incarnation()
    assert first != second and len(first) == 16 and int(first, 16) >= 0


def test_the_same_incarnation_reloads_its_storage(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    _stored(path, OLD)
    st = SqliteStorage(path, StorageConfig(incarnation=OLD))
    assert st.incarnation == OLD
    assert st.load() == (HardState(term=2, vote=0, commit=4), _snap(2, 2, b"IMAGE"),
                         _entries(3, 4, 2))


def test_another_incarnations_database_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    _stored(path, OLD)
    before = _tree(tmp_path)
    with pytest.raises(IncarnationMismatchError) as info:
        SqliteStorage(path, StorageConfig(incarnation=NEW))
    err = info.value
    assert (err.path, err.expected, err.found) == (str(path), NEW, OLD)
    assert str(path) in str(err) and OLD in str(err) and NEW in str(err)
    assert "Delete it" in str(err) and "nothing was changed" in str(err)
    assert _tree(tmp_path) == before
    assert pickle.loads(pickle.dumps(err)).found == OLD


def test_state_without_an_id_is_refused_when_one_is_expected(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    _stored(path, None)  # written without an incarnation
    with pytest.raises(IncarnationMismatchError) as info:
        SqliteStorage(path, StorageConfig(incarnation=NEW))
    assert info.value.found is None and "no incarnation id" in str(info.value)
    assert SqliteStorage(path).load()[0] == HardState(term=2, vote=0, commit=4)


def test_an_empty_database_takes_the_configured_id(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    SqliteStorage(path).close()  # created empty, unstamped
    st = SqliteStorage(path, StorageConfig(incarnation=NEW))
    assert st.incarnation == NEW
    st.close()
    with pytest.raises(IncarnationMismatchError):
        SqliteStorage(path, StorageConfig(incarnation=OLD))


def test_without_a_configured_id_the_stamp_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    _stored(path, OLD)
    st = SqliteStorage(path)
    assert st.incarnation == OLD
    st.compact(_snap(4, 2, b"NEWER"))  # stamped like the database
    assert _snapshot_files(path)[0].read_bytes().startswith(MAGIC)
    st.close()
    assert SqliteStorage(path, StorageConfig(incarnation=OLD)).load()[1] == _snap(4, 2, b"NEWER")


def test_snapshot_files_carry_the_id_before_the_image(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    _stored(path, OLD)
    (file,) = _snapshot_files(path)
    raw = file.read_bytes()
    assert len(raw) == HEADER_BYTES + len(b"IMAGE") and raw.endswith(b"IMAGE")
    assert raw.startswith(MAGIC) and OLD.encode() in raw[:HEADER_BYTES]
    st = SqliteStorage(path, StorageConfig(incarnation=OLD))
    mapped = st.map_image(file)
    assert bytes(mapped) == b"IMAGE"
    mapped.close()


def test_a_snapshot_file_of_another_incarnation_is_refused(tmp_path: Path) -> None:
    """Same database, but its snapshot file swapped for another run's (same name)."""
    mine, other = tmp_path / "mine" / "r.db", tmp_path / "other" / "r.db"
    _stored(mine, OLD)
    _stored(other, NEW)
    (theirs,) = _snapshot_files(other)
    (ours,) = _snapshot_files(mine)
    shutil.copy(theirs, ours)
    st = SqliteStorage(mine, StorageConfig(incarnation=OLD))
    with pytest.raises(IncarnationMismatchError) as info:
        st.load()
    assert (info.value.path, info.value.found) == (str(ours), NEW)
    assert ours.exists()  # nothing deleted


def test_a_bare_image_file_is_refused_when_an_id_is_expected(tmp_path: Path) -> None:
    files = SnapshotFiles(tmp_path / "s", tmp_path / "r.db")
    stored = files.write(1, 1, [b"data"])
    stamped = SnapshotFiles(tmp_path / "s", tmp_path / "r.db", OLD)
    with pytest.raises(IncarnationMismatchError) as info:
        stamped.read(stored)
    assert info.value.found is None
    assert files.read(stored) == b"data"  # no expectation: accepted


def test_a_stamped_file_reads_without_an_expectation(tmp_path: Path) -> None:
    stamped = SnapshotFiles(tmp_path / "s", tmp_path / "r.db", OLD)
    stored = stamped.write(1, 1, [b"data"])
    assert SnapshotFiles(tmp_path / "s", tmp_path / "r.db").read(stored) == b"data"


@pytest.mark.parametrize("bad", ["", "XYZ", "A1" * 8, "ab" * 40, "12345"])
def test_bad_ids_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError, match="8-64 lowercase hex digits"):
        StorageConfig(incarnation=bad)
    with pytest.raises(ConfigError, match=r"RaftGroupConfig\.incarnation"):
        RaftGroupConfig(incarnation=bad)


def test_the_group_config_carries_the_id_to_its_replicas_storage() -> None:
    config = RaftGroupConfig(incarnation=OLD, durability="memory")
    assert config.storage_config() == StorageConfig(incarnation=OLD, sync_entries=False,
                                                    memory_segments=memory_log_root())
    with pytest.raises(ConfigError, match="differs from incarnation"):
        RaftGroupConfig(incarnation=OLD, storage=StorageConfig(incarnation=NEW))
    with pytest.raises(ConfigError, match="max_storage_failures must be >= 1"):
        RaftGroupConfig(max_storage_failures=0)
