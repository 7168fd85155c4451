"""Small files that decide what a replica or a job does after a crash are written
atomically and durably: the ``.lost-state`` marker and the unsynced-boot stamp (file and
directory fsync'ed), every directory created (each level fsync'ed into its parent), and the
atomic writer itself (temporary file, fsync, rename, directory fsync; nothing left on
failure)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from consensus import atomic_file, snapshot_files
from consensus.atomic_file import write_atomic
from consensus.lost_state import mark_lost_state, marker_path, stamp_unsynced, unsynced_path
from consensus.storage import SqliteStorage


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The paths fsync'ed, in order."""
    paths: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    yield paths


def test_the_lost_state_marker_is_fsynced_with_its_directory(
    tmp_path: Path, synced: list[str]
) -> None:
    db = tmp_path / "g" / "replica-0.db"
    db.parent.mkdir()
    mark_lost_state(db)
    assert marker_path(db).read_text().startswith("started without its durable state")
    marker = str(marker_path(db))
    tmp = [p for p in synced if p != str(db.parent)]
    assert len(tmp) == 1 and tmp[0].startswith(str(db.parent / f".{marker_path(db).name}"))
    assert synced[-1] == str(db.parent)  # the rename is durable
    assert sorted(os.listdir(db.parent)) == [Path(marker).name]  # no temporary left


def test_the_unsynced_boot_stamp_is_fsynced_with_its_directory(
    tmp_path: Path, synced: list[str]
) -> None:
    db = tmp_path / "new" / "replica-0.db"
    stamp_unsynced(db)
    assert unsynced_path(db).is_file()
    assert synced[-1] == str(db.parent)
    assert str(tmp_path) in synced  # the created directory's entry, in its parent


def test_every_created_directory_level_is_fsynced_into_its_parent(
    tmp_path: Path, synced: list[str]
) -> None:
    deep = tmp_path / "a" / "b" / "c"
    snapshot_files.durable_dir(deep)
    assert deep.is_dir()
    assert synced == [str(tmp_path), str(tmp_path / "a"), str(tmp_path / "a" / "b")]
    synced.clear()
    snapshot_files.durable_dir(deep)  # exists: nothing to do
    assert synced == []


def test_a_new_database_and_its_directories_are_durable(
    tmp_path: Path, synced: list[str]
) -> None:
    db = tmp_path / "raft" / "g" / "replica-0.db"
    SqliteStorage(db).close()
    for directory in (tmp_path, tmp_path / "raft", db.parent):
        assert str(directory) in synced


def test_a_failed_atomic_write_keeps_the_old_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "summary.json"
    write_atomic(path, b"old")

    def broken(*args: object) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="I/O error"):
        write_atomic(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["summary.json"]
    assert atomic_file.temp_path(path).name.startswith(".summary.json.tmp-")
