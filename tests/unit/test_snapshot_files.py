"""SnapshotFiles: chunked durable writes, verified reads, orphan collection; disk space (the
free-space check, ENOSPC and SQLITE_FULL) and a >1 GiB image, also through SqliteStorage."""

from __future__ import annotations

import errno
import os
import pickle
import resource
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from consensus import snapshot_files
from consensus.checksums import crc32c
from consensus.direct_io import SequentialWriter
from consensus.errors import StorageCorruptError, StorageFullError
from consensus.snapshot_files import (
    SPACE_RESERVE_BYTES,
    SnapshotFiles,
    StoredSnapshot,
    check_space,
    full_on_enospc,
)
from consensus.storage import SqliteStorage, StorageConfig
from consensus.types import Entry, HardState, Snapshot, SnapshotMeta
from tests.unit.test_storage import _big, _entries, _snap, _snapshot_files, _tree


def _files(tmp_path: Path) -> SnapshotFiles:
    return SnapshotFiles(tmp_path / "r.db.snapshots", tmp_path / "r.db")


def _names(files: SnapshotFiles) -> list[str]:
    return sorted(p.name for p in files.dir.iterdir())


class _Usage(NamedTuple):
    """What ``shutil.disk_usage`` returns."""

    total: int
    used: int
    free: int


def test_write_streams_memoryview_chunks_and_chains_the_crc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _files(tmp_path)
    data = bytes(range(256)) * 3 + b"tail"
    writes: list[tuple[type, int]] = []
    real_write = SequentialWriter.write

    def spy(self: SequentialWriter, chunk: memoryview) -> None:
        writes.append((type(chunk), len(chunk)))
        real_write(self, chunk)

    monkeypatch.setattr(snapshot_files, "CHUNK_BYTES", 100)
    monkeypatch.setattr(SequentialWriter, "write", spy)
    stored = files.write(7, 3, [data], crc_seed=12345)
    monkeypatch.undo()
    assert stored == StoredSnapshot(name="7-3.snap", size=len(data),
                                    crc=crc32c(data, 12345))
    assert writes == [(memoryview, 100)] * 7 + [(memoryview, len(data) - 700)]
    assert files.path("7-3.snap").read_bytes() == data
    assert _names(files) == ["7-3.snap"]  # no temp file left
    assert files.read(stored, crc_seed=12345) == data


def test_empty_image_round_trips(tmp_path: Path) -> None:
    files = _files(tmp_path)
    stored = files.write(1, 1, [b""])
    assert files.read(stored) == b""


def test_an_existing_name_is_never_overwritten(tmp_path: Path) -> None:
    files = _files(tmp_path)
    first = files.write(5, 2, [b"first"])
    second = files.write(5, 2, [b"second"])
    assert (first.name, second.name) == ("5-2.snap", "5-2.1.snap")
    assert files.read(first) == b"first"


@pytest.mark.parametrize(
    ("stored", "detail"),
    [(StoredSnapshot("9-9.snap", 4, 0), "is missing"),
     (StoredSnapshot("1-1.snap", 5, 0), "has 4 bytes, expected 5"),
     (StoredSnapshot("1-1.snap", 4, 0), "CRC mismatch"),
     (StoredSnapshot("../1-1.snap", 4, 0), "is invalid"),
     (StoredSnapshot("1.seg", 4, 0), "is invalid")],
)
def test_read_rejects_bad_files_naming_them(
    tmp_path: Path, stored: StoredSnapshot, detail: str
) -> None:
    files = _files(tmp_path)
    files.write(1, 1, [b"data"])
    with pytest.raises(StorageCorruptError) as info:
        files.read(stored)
    assert info.value.path == str(tmp_path / "r.db")
    assert detail in info.value.detail and stored.name in info.value.detail


def test_write_checks_space_before_creating_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _files(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: _Usage(1 << 40, 1 << 40, 4096))
    with pytest.raises(StorageFullError) as info:
        files.write(1, 1, [b"x" * 4096])
    assert (info.value.path, info.value.needed, info.value.free) == (
        str(files.dir), 4096 + SPACE_RESERVE_BYTES, 4096)
    assert _names(files) == []


def test_check_space_passes_with_room(tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda p: _Usage(1 << 40, 0, 10 + SPACE_RESERVE_BYTES))
    check_space(tmp_path, 10)
    with pytest.raises(StorageFullError):
        check_space(tmp_path, 11)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_full_on_enospc_maps_a_full_disk(tmp_path: Path, code: int) -> None:
    with pytest.raises(StorageFullError) as info, full_on_enospc(tmp_path, 77):
        raise OSError(code, os.strerror(code))
    assert (info.value.path, info.value.needed) == (str(tmp_path), 77)
    assert isinstance(info.value.__cause__, OSError)


def test_full_on_enospc_passes_other_errors_through(tmp_path: Path) -> None:
    with pytest.raises(PermissionError), full_on_enospc(tmp_path, 1):
        raise PermissionError(errno.EACCES, "denied")


@pytest.mark.parametrize("step", ["replace", "fsync_dir"])
def test_a_failed_write_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    files = _files(tmp_path)
    old = files.write(1, 1, [b"old"])

    def broken(*args: object) -> None:
        raise OSError(errno.EIO, "I/O error")

    if step == "replace":
        monkeypatch.setattr(os, "replace", broken)
    else:  # after the rename: the new name exists but must not survive
        monkeypatch.setattr(snapshot_files, "fsync_dir", broken)
    with pytest.raises(OSError, match="I/O error"):
        files.write(2, 1, [b"new"])
    monkeypatch.undo()
    assert _names(files) == [old.name]


def test_collect_deletes_only_unreferenced_snapshot_and_temp_files(tmp_path: Path) -> None:
    files = _files(tmp_path)
    old, live = files.write(1, 1, [b"old"]), files.write(2, 1, [b"live"])
    (files.dir / "3-1.snap.tmp").write_bytes(b"torn")
    (files.dir / "NOTES.txt").write_bytes(b"an operator's file")
    files.collect(keep=live.name)
    assert _names(files) == ["2-1.snap", "NOTES.txt"]
    assert files.total_bytes() == len(b"live") + len(b"an operator's file")
    files.collect(keep=None)
    assert _names(files) == ["NOTES.txt"]
    assert old.name not in _names(files)


def test_collect_is_best_effort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = _files(tmp_path)
    for index in (1, 2, 3):
        files.write(index, 1, [b"img"])
    real_discard = SnapshotFiles.discard

    def stubborn(self: SnapshotFiles, name: str) -> None:
        if name == "1-1.snap":
            raise PermissionError(errno.EACCES, "denied")
        real_discard(self, name)

    monkeypatch.setattr(SnapshotFiles, "discard", stubborn)
    files.collect(keep="3-1.snap")  # runs after a commit: must not raise
    assert _names(files) == ["1-1.snap", "3-1.snap"]


def test_storage_full_error_pickles_and_says_what_to_do() -> None:
    err = StorageFullError("/data/raft", 2048, None)
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.path, copy.needed, copy.free, str(copy)) == (
        "/data/raft", 2048, None, str(err))
    assert "needs 2048 bytes, free space is unknown" in str(err)
    assert "Free space there, or point storage_dir" in str(err)
    assert "needs more space" in str(StorageFullError("/d", None, 5))


# ---------------------------------------------------------------- through SqliteStorage


def test_too_little_disk_space_raises_before_anything_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "r.db"
    st = SqliteStorage(path, StorageConfig(inline_max_bytes=16))
    st.save(HardState(term=1, vote=0, commit=4), _big(1, 4, 1), None)
    st.compact(_snap(2, 1))
    before = _tree(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: _Usage(10 << 30, 10 << 30, 1000))
    with pytest.raises(StorageFullError) as info:
        st.compact(_snap(3, 1, b"x" * 5000))
    err = info.value
    snapshots = str(path.with_name("r.db.snapshots"))
    assert (err.path, err.needed, err.free) == (snapshots, 5000 + SPACE_RESERVE_BYTES, 1000)
    assert f"{snapshots} is out of disk space: needs {err.needed} bytes" in str(err)
    assert "1000 bytes are free" in str(err) and "storage_dir" in str(err)
    with pytest.raises(StorageFullError):  # an installed snapshot (with entries) checks too
        st.save(HardState(term=2, vote=None, commit=9), _big(10, 11, 2), _snap(9, 2, b"y"))
    assert _tree(tmp_path) == before
    monkeypatch.undo()
    assert st.load() == (HardState(term=1, vote=0, commit=4), _snap(2, 1), _big(3, 4, 1))


def _enospc_after(monkeypatch: pytest.MonkeyPatch, name: str, allowed: int) -> None:
    """Make ``os.write`` and ``os.pwrite`` write ``allowed`` bytes between them, then fail
    with ENOSPC (``os.fsync``: fail)."""
    real_write, real_pwrite = os.write, os.pwrite
    budget = [allowed]

    def part(data: bytes | memoryview) -> memoryview:
        if budget[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        cut = memoryview(data)[:budget[0]]
        budget[0] -= len(cut)
        return cut

    def write(fd: int, data: bytes | memoryview) -> int:
        return real_write(fd, part(data))

    def pwrite(fd: int, data: bytes | memoryview, offset: int) -> int:
        return real_pwrite(fd, part(data), offset)

    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    if name == "write":
        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "pwrite", pwrite)
    else:
        monkeypatch.setattr(os, name, fsync)


@pytest.mark.parametrize("call", ["write", "fsync"])
def test_enospc_writing_a_snapshot_keeps_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    path = tmp_path / "r.db"
    st = SqliteStorage(path)
    st.save(HardState(term=1, vote=0, commit=4), _entries(1, 4, 1), None)
    st.compact(_snap(2, 1, b"OLD"))
    _enospc_after(monkeypatch, call, allowed=3)
    with pytest.raises(StorageFullError) as info:
        st.compact(_snap(4, 1, b"z" * 5000))
    monkeypatch.undo()
    assert info.value.path == str(path.with_name("r.db.snapshots"))
    assert info.value.needed == 5000
    assert [p.name for p in _snapshot_files(path)] == ["2-1.snap"]  # partial file removed
    st.close()
    st = SqliteStorage(path)
    assert st.load() == (HardState(term=1, vote=0, commit=4), _snap(2, 1, b"OLD"),
                         _entries(3, 4, 1))
    st.compact(_snap(4, 1, b"z" * 5000))  # space freed: works again
    assert st.load()[1] == _snap(4, 1, b"z" * 5000)


def test_enospc_appending_segments_keeps_the_previous_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "r.db"
    config = StorageConfig(inline_max_bytes=16)
    st = SqliteStorage(path, config)
    st.save(HardState(term=1, vote=0, commit=2), _big(1, 2, 1), None)
    _enospc_after(monkeypatch, "write", allowed=10)
    with pytest.raises(StorageFullError) as info:
        st.save(HardState(term=1, vote=0, commit=4), _big(3, 4, 1), None)
    monkeypatch.undo()
    assert info.value.path == str(path.with_name("r.db.segments"))
    assert info.value.needed == 2 * 64
    assert st.load() == (HardState(term=1, vote=0, commit=2), None, _big(1, 2, 1))
    st.save(HardState(term=1, vote=0, commit=4), _big(3, 4, 1), None)  # after the orphan
    st.close()
    assert SqliteStorage(path, config).load()[2] == _big(1, 4, 1)


def test_sqlite_full_during_the_transaction_raises_storage_full(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    st = SqliteStorage(path)
    st.save(HardState(term=1, vote=0, commit=1), _entries(1, 1, 1), None)
    pages = st._db.execute("PRAGMA page_count").fetchone()[0]
    st._db.execute(f"PRAGMA max_page_count = {pages}")  # the database cannot grow
    with pytest.raises(StorageFullError, match=str(path)):
        st.save(None, [Entry(term=1, index=2, data=b"y" * 60000)], None)
    assert st.load() == (HardState(term=1, vote=0, commit=1), None, _entries(1, 1, 1))


def test_disk_bytes_reports_log_and_snapshot_bytes(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    st = SqliteStorage(path, StorageConfig(inline_max_bytes=16))
    st.save(HardState(term=1, vote=0, commit=3), _big(1, 3, 1), None)
    st.compact(_snap(1, 1, b"i" * 777))
    sizes = st.disk_bytes()
    sqlite_bytes = sum(p.stat().st_size for p in tmp_path.glob("r.db*") if p.is_file())
    assert sizes == {"log_bytes": sqlite_bytes + 3 * 64, "snapshot_bytes": 777,
                     "total_bytes": sqlite_bytes + 3 * 64 + 777}


# ---------------------------------------------------------------- a snapshot above 1 GiB

_HUGE = (1 << 30) | 12345  # past sqlite's 1e9-byte BLOB cap, not a multiple of a chunk


def _mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) << 10
    return 0


@pytest.fixture
def huge_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory with room for two huge images (old and new coexist until the commit):
    /dev/shm if it and memory allow (fast), else ``tmp_path``; skip if neither does."""
    need = 2 * _HUGE + (64 << 20)
    if not sys.platform.startswith("linux"):
        pytest.skip("the >1 GiB snapshot test reads /proc/meminfo (Linux only)")
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free >= need and _mem_available() >= 2 * need:
        directory = Path(tempfile.mkdtemp(prefix="raftps-test-", dir=shm))
        try:
            yield directory
        finally:
            shutil.rmtree(directory)
        return
    if shutil.disk_usage(tmp_path).free < need or _mem_available() < _HUGE + (512 << 20):
        pytest.skip(f"needs {need} bytes free disk and {_HUGE} bytes free memory")
    yield tmp_path


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10  # KiB on Linux


def test_snapshot_above_one_gib_round_trips(huge_dir: Path) -> None:
    path = huge_dir / "r.db"
    image = bytes(_HUGE)  # zero pages: costs no memory until written
    st = SqliteStorage(path)
    st.save(HardState(term=1, vote=0, commit=3), _entries(1, 3, 1), None)
    peak = _peak_rss()
    st.compact(Snapshot(SnapshotMeta(index=2, term=1, voters=(0, 1, 2)), image))
    assert _peak_rss() - peak < 256 << 20  # streamed in chunks: no second full-size copy
    st.close()
    st = SqliteStorage(path)
    hs, snap, entries = st.load()
    assert _peak_rss() - peak < _HUGE + (256 << 20)  # one buffer for the image read back
    assert snap is not None and snap.meta.index == 2 and snap.data == image
    assert (hs, entries) == (HardState(term=1, vote=0, commit=3), _entries(3, 3, 1))
    del snap
    installed = Snapshot(SnapshotMeta(index=10, term=2, voters=(0, 1)), image)
    st.save(HardState(term=2, vote=None, commit=10), [], installed)
    assert [(p.name, p.stat().st_size) for p in _snapshot_files(path)] == [("10-2.snap", _HUGE)]
    assert st.disk_bytes()["snapshot_bytes"] == _HUGE
    st.close()
    assert SqliteStorage(path).load()[1] == installed
