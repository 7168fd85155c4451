"""SqliteStorage: durability, conflict truncation, compaction, torn writes, corruption and
snapshot image files (crash windows, damaged files, old BLOB rows). Disk space and the
>1 GiB image: test_snapshot_files.py."""

from __future__ import annotations

import shutil
import sqlite3
import struct
import zlib
from pathlib import Path

import pytest

from consensus.checksums import crc32, crc32c
from consensus.errors import ConfigError, StorageCorruptError
from consensus.snapshot_files import SnapshotFiles
from consensus.storage import SqliteStorage, StorageConfig
from consensus.storage_rows import entry_crc, hard_state_crc
from consensus.types import Entry, EntryKind, HardState, Snapshot, SnapshotMeta


def _entries(first: int, last: int, term: int) -> list[Entry]:
    return [
        Entry(term=term, index=i, data=f"cmd-{i}-{term}".encode()) for i in range(first, last + 1)
    ]


def _snap(index: int, term: int, data: bytes = b"image") -> Snapshot:
    return Snapshot(meta=SnapshotMeta(index=index, term=term, voters=(0, 1, 2)), data=data)


def test_round_trip_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    st = SqliteStorage(path)
    assert st.load() == (HardState(), None, [])
    conf = Entry(term=2, index=4, kind=EntryKind.CONF_CHANGE, data=b"\x00\x01")
    st.save(HardState(term=2, vote=1, commit=3), [*_entries(1, 3, 1), conf], None)
    st.close()
    hs, snap, entries = SqliteStorage(path).load()
    assert hs == HardState(term=2, vote=1, commit=3)
    assert snap is None
    assert entries == [*_entries(1, 3, 1), conf]


def test_none_vote_round_trips(tmp_path: Path) -> None:
    st = SqliteStorage(tmp_path / "r.db")
    st.save(HardState(term=5, vote=None, commit=0), [], None)
    assert st.load()[0] == HardState(term=5, vote=None, commit=0)


def test_conflicting_entries_truncate_the_suffix(tmp_path: Path) -> None:
    st = SqliteStorage(tmp_path / "r.db")
    st.save(None, _entries(1, 5, 1), None)
    st.save(None, _entries(3, 3, 2), None)  # a new leader overwrote index 3
    assert st.load()[2] == [*_entries(1, 2, 1), *_entries(3, 3, 2)]


def test_compaction_drops_covered_entries_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    st = SqliteStorage(path)
    st.save(HardState(term=1, vote=0, commit=6), _entries(1, 6, 1), None)
    st.compact(_snap(4, 1))
    st.close()
    _, snap, entries = SqliteStorage(path).load()
    assert snap == _snap(4, 1)
    assert entries == _entries(5, 6, 1)


def test_installed_snapshot_with_other_term_discards_whole_log(tmp_path: Path) -> None:
    st = SqliteStorage(tmp_path / "r.db")
    st.save(None, _entries(1, 6, 1), None)
    st.save(HardState(term=3, vote=None, commit=5), [], _snap(5, 3))
    _, snap, entries = st.load()
    assert snap == _snap(5, 3)
    assert entries == []


def test_installed_snapshot_matching_log_keeps_suffix(tmp_path: Path) -> None:
    st = SqliteStorage(tmp_path / "r.db")
    st.save(None, _entries(1, 6, 1), None)
    st.save(None, [], _snap(4, 1))
    assert st.load()[2] == _entries(5, 6, 1)


def test_torn_wal_tail_recovers_last_committed_state(tmp_path: Path) -> None:
    live = tmp_path / "live"
    st = SqliteStorage(live / "r.db")
    st.save(HardState(term=1, vote=0, commit=2), _entries(1, 2, 1), None)
    st.save(HardState(term=1, vote=0, commit=3), [Entry(term=1, index=3, data=b"x" * 20000)], None)
    # Crash image: copy the files while the connection is open (the WAL still holds the
    # transactions), then tear the last transaction's frames.
    crash = tmp_path / "crash"
    crash.mkdir()
    for suffix in ("", "-wal"):
        shutil.copy(f"{live / 'r.db'}{suffix}", f"{crash / 'r.db'}{suffix}")
    wal = Path(f"{crash / 'r.db'}-wal")
    wal.write_bytes(wal.read_bytes()[:-3000])
    hs, _, entries = SqliteStorage(crash / "r.db").load()
    assert hs == HardState(term=1, vote=0, commit=2)
    assert entries == _entries(1, 2, 1)


def _flip_payload_byte(path: Path, needle: bytes) -> None:
    raw = bytearray(path.read_bytes())
    at = raw.find(needle)
    assert at >= 0, "payload not found in the database file"
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_flipped_payload_byte_raises_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    st = SqliteStorage(path)
    entry = Entry(term=1, index=1, data=b"PAYLOAD-XYZ")
    st.save(HardState(term=1, vote=0, commit=1), [entry], None)
    st.close()
    _flip_payload_byte(path, b"PAYLOAD-XYZ")
    with pytest.raises(StorageCorruptError, match=str(path)) as info:
        SqliteStorage(path).load()
    assert "entry 1 CRC" in info.value.detail


def test_flipped_page_header_byte_raises(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    st = SqliteStorage(path)
    st.save(None, _entries(1, 50, 1), None)
    st.close()
    raw = bytearray(path.read_bytes())
    page_size = int.from_bytes(raw[16:18], "big")
    for offset in range(page_size, len(raw), page_size):  # b-tree page headers
        raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(StorageCorruptError, match=str(path)):
        SqliteStorage(path).load()


def test_gap_in_indices_raises(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    st = SqliteStorage(path)
    st.save(None, _entries(1, 4, 1), None)
    st.close()
    with sqlite3.connect(path) as raw:
        raw.execute("DELETE FROM entries WHERE idx = 2")
    with pytest.raises(StorageCorruptError, match="gap"):
        SqliteStorage(path).load()


def test_failed_save_leaves_previous_state(tmp_path: Path) -> None:
    st = SqliteStorage(tmp_path / "r.db")
    st.save(HardState(term=1, vote=0, commit=2), _entries(1, 2, 1), None)
    bad = Entry(term=2, index=3, data=None)  # type: ignore[arg-type]  # fails mid-transaction
    with pytest.raises(TypeError):
        st.save(HardState(term=2, vote=1, commit=2), [*_entries(1, 2, 2), bad], None)
    assert st.load() == (HardState(term=1, vote=0, commit=2), None, _entries(1, 2, 1))
    st.save(HardState(term=2, vote=1, commit=3), _entries(3, 3, 2), None)  # still usable
    assert st.load()[2] == [*_entries(1, 2, 1), *_entries(3, 3, 2)]


def test_commit_only_save_is_persisted(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    st = SqliteStorage(path)
    st.save(HardState(term=1, vote=0, commit=0), _entries(1, 3, 1), None)
    st.save(HardState(term=1, vote=0, commit=3), [], None)  # commit-only: no fsync path
    st.save(HardState(term=2, vote=None, commit=3), [], None)  # term change: durable again
    st.close()
    assert SqliteStorage(path).load() == (HardState(term=2, vote=None, commit=3), None,
                                          _entries(1, 3, 1))


# ---------------------------------------------------------------- payload segment files

_SMALL_INLINE = StorageConfig(inline_max_bytes=16, segment_bytes=100)


def _big(first: int, last: int, term: int, size: int = 64) -> list[Entry]:
    return [
        Entry(term=term, index=i, data=(f"BIG-{i}-{term}-".encode() * size)[:size])
        for i in range(first, last + 1)
    ]


def _segment_files(db: Path) -> list[Path]:
    return sorted(db.with_name(db.name + ".segments").glob("*.seg"))


def test_large_payloads_live_in_segments_and_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    st = SqliteStorage(path, StorageConfig(inline_max_bytes=16))
    mixed = [*_big(1, 2, 1), Entry(term=1, index=3, data=b"tiny")]
    st.save(HardState(term=1, vote=0, commit=3), mixed, None)
    st.close()
    (segment,) = _segment_files(path)
    assert segment.stat().st_size == 2 * 64  # only the two large payloads, once each
    assert b"BIG-1-1-" not in path.read_bytes()  # close() checkpointed the WAL into it
    assert SqliteStorage(path).load() == (HardState(term=1, vote=0, commit=3), None, mixed)


def test_payload_at_the_inline_limit_stays_in_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    st = SqliteStorage(path, StorageConfig(inline_max_bytes=64))
    st.save(None, _big(1, 1, 1, size=64), None)
    assert all(seg.stat().st_size == 0 for seg in _segment_files(path))
    assert st.load()[2] == _big(1, 1, 1, size=64)


def test_conflicting_segment_entries_truncate_the_suffix(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    st = SqliteStorage(path, _SMALL_INLINE)
    st.save(None, _big(1, 4, 1), None)
    st.save(None, _big(3, 3, 2, size=80), None)
    st.close()
    assert SqliteStorage(path, _SMALL_INLINE).load()[2] == [*_big(1, 2, 1), *_big(3, 3, 2, 80)]


def test_segments_rotate_and_compaction_deletes_unreferenced_ones(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    st = SqliteStorage(path, _SMALL_INLINE)  # 100-byte segments: a new one every 2 entries
    for i in range(1, 9):
        st.save(None, _big(i, i, 1), None)
    assert len(_segment_files(path)) == 4
    st.compact(_snap(6, 1))
    assert len(_segment_files(path)) == 1  # entries 7-8 share the last segment
    st.close()
    _, snap, entries = SqliteStorage(path, _SMALL_INLINE).load()
    assert snap == _snap(6, 1)
    assert entries == _big(7, 8, 1)


def test_installed_snapshot_discarding_log_deletes_old_segments(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    st = SqliteStorage(path, _SMALL_INLINE)
    for i in range(1, 7):
        st.save(None, _big(i, i, 1), None)
    st.save(HardState(term=3, vote=None, commit=20), [], _snap(20, 3))
    assert len(_segment_files(path)) == 1  # only the current (being appended) one
    assert st.load() == (HardState(term=3, vote=None, commit=20), _snap(20, 3), [])


def test_flipped_segment_byte_raises_naming_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    st = SqliteStorage(path, StorageConfig(inline_max_bytes=16))
    st.save(None, _big(1, 2, 1), None)
    st.close()
    (segment,) = _segment_files(path)
    _flip_payload_byte(segment, b"BIG-2-1-")
    with pytest.raises(StorageCorruptError, match=str(path)) as info:
        SqliteStorage(path).load()
    assert "entry 2 CRC" in info.value.detail


def test_truncated_or_missing_segment_raises(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    st = SqliteStorage(path, StorageConfig(inline_max_bytes=16))
    st.save(None, _big(1, 2, 1), None)
    st.close()
    (segment,) = _segment_files(path)
    segment.write_bytes(segment.read_bytes()[:100])  # entry 2's payload is cut short
    with pytest.raises(StorageCorruptError, match="entry 2 payload missing or truncated"):
        SqliteStorage(path).load()
    segment.unlink()
    with pytest.raises(StorageCorruptError, match="entry 1 payload missing or truncated"):
        SqliteStorage(path).load()


def test_torn_segment_tail_is_ignored_and_appended_after(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    st = SqliteStorage(path, StorageConfig(inline_max_bytes=16))
    st.save(HardState(term=1, vote=0, commit=1), _big(1, 1, 1), None)
    st.close()
    (segment,) = _segment_files(path)
    with segment.open("ab") as f:  # a crash after part of the next payload hit the disk
        f.write(b"TORN" * 5)
    st = SqliteStorage(path, StorageConfig(inline_max_bytes=16))
    assert st.load() == (HardState(term=1, vote=0, commit=1), None, _big(1, 1, 1))
    st.save(HardState(term=1, vote=0, commit=2), _big(2, 2, 1), None)
    st.close()
    assert SqliteStorage(path).load()[2] == _big(1, 2, 1)


def test_failed_save_after_segment_append_leaves_previous_state(tmp_path: Path) -> None:
    st = SqliteStorage(tmp_path / "r.db", StorageConfig(inline_max_bytes=16))
    st.save(HardState(term=1, vote=0, commit=2), _big(1, 2, 1), None)
    bad = Entry(term=2, index=3, kind=None, data=b"x" * 64)  # type: ignore[arg-type]
    with pytest.raises(TypeError):  # payloads already appended, then the row insert fails
        st.save(HardState(term=2, vote=1, commit=2), [*_big(1, 2, 2), bad], None)
    assert st.load() == (HardState(term=1, vote=0, commit=2), None, _big(1, 2, 1))
    st.save(HardState(term=2, vote=1, commit=3), _big(3, 3, 2), None)
    assert st.load()[2] == [*_big(1, 2, 1), *_big(3, 3, 2)]


@pytest.mark.parametrize(
    ("field", "value"), [("inline_max_bytes", -1), ("segment_bytes", 0)]
)
def test_storage_config_rejects_bad_values(field: str, value: int) -> None:
    with pytest.raises(ConfigError, match=f"StorageConfig.{field}"):
        StorageConfig(**{field: value})


# ---------------------------------------------------------------- snapshot image files


def _snapshot_files(db: Path) -> list[Path]:
    return sorted(db.with_name(db.name + ".snapshots").iterdir())


def _tree(root: Path) -> dict[str, bytes]:
    """Every durable file under ``root`` and its bytes (``-shm`` is a volatile index)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith("-shm")}


def _crash_image(live: Path, into: Path) -> Path:
    """Copy what a crash right now would leave on disk (the WAL holds the committed state)."""
    into.mkdir()
    for suffix in ("", "-wal"):
        if Path(f"{live}{suffix}").exists():
            shutil.copy(f"{live}{suffix}", into / f"{live.name}{suffix}")
    for suffix in (".segments", ".snapshots"):
        src = live.with_name(live.name + suffix)
        if src.exists():
            shutil.copytree(src, into / src.name)
    return into / live.name


def test_snapshot_image_lives_in_a_file_and_the_superseded_one_is_deleted(
    tmp_path: Path,
) -> None:
    path = tmp_path / "r.db"
    st = SqliteStorage(path)
    st.save(HardState(term=1, vote=0, commit=6), _entries(1, 6, 1), None)
    st.compact(_snap(2, 1, b"FIRST-IMAGE"))
    st.compact(_snap(4, 1, b"SECOND-IMAGE"))
    st.close()
    (image,) = _snapshot_files(path)
    assert image.name == "4-1.snap"
    assert image.read_bytes() == b"SECOND-IMAGE"
    assert b"SECOND-IMAGE" not in path.read_bytes()  # only the file's name, size and CRC
    assert SqliteStorage(path).load()[1:] == (_snap(4, 1, b"SECOND-IMAGE"), _entries(5, 6, 1))


def test_same_position_snapshot_gets_a_fresh_file_name(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    st = SqliteStorage(path)
    st.compact(_snap(3, 1, b"one"))
    st.compact(_snap(3, 1, b"other bytes"))  # never overwrite a file a row may point at
    assert [p.name for p in _snapshot_files(path)] == ["3-1.1.snap"]
    assert st.load()[1] == _snap(3, 1, b"other bytes")


@pytest.mark.parametrize(
    ("damage", "detail"),
    [("missing", "is missing"), ("truncated", "has 50 bytes, expected 110"),
     ("extended", "has 111 bytes, expected 110"), ("flipped", "CRC mismatch"),
     ("row term", "CRC mismatch")],
)
def test_damaged_snapshot_file_raises_naming_it(tmp_path: Path, damage: str,
                                                detail: str) -> None:
    path = tmp_path / "r.db"
    st = SqliteStorage(path)
    st.save(None, _entries(1, 3, 1), None)
    st.compact(_snap(2, 1, b"IMAGE-DATA" * 11))
    st.close()
    (image,) = _snapshot_files(path)
    raw = image.read_bytes()
    if damage == "missing":
        image.unlink()
    elif damage == "truncated":
        image.write_bytes(raw[:50])
    elif damage == "extended":
        image.write_bytes(raw + b"!")
    elif damage == "flipped":
        image.write_bytes(raw[:70] + bytes([raw[70] ^ 1]) + raw[71:])
    else:  # the row's metadata is covered by the same CRC
        with sqlite3.connect(path) as db:
            db.execute("UPDATE snapshot SET term = 9")
    with pytest.raises(StorageCorruptError) as info:
        SqliteStorage(path).load()
    assert str(image) in str(info.value)
    assert detail in info.value.detail
    assert image.exists() == (damage != "missing")  # a failed load deletes nothing


class _Crash(Exception):
    pass


def test_crash_between_image_file_and_commit_keeps_previous_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = tmp_path / "live" / "r.db"
    st = SqliteStorage(live)
    st.save(HardState(term=1, vote=0, commit=5), _entries(1, 5, 1), None)
    st.compact(_snap(2, 1, b"OLD"))

    def crash(*args: object, **kwargs: object) -> None:  # the new file is durable by now
        _crash_image(live, tmp_path / "crash")
        raise _Crash

    monkeypatch.setattr(SqliteStorage, "_write_snapshot", crash)
    with pytest.raises(_Crash):
        st.compact(_snap(4, 1, b"NEW"))
    monkeypatch.undo()
    crashed = tmp_path / "crash" / "r.db"
    assert [p.name for p in _snapshot_files(crashed)] == ["2-1.snap", "4-1.snap"]
    assert SqliteStorage(crashed).load()[1:] == (_snap(2, 1, b"OLD"), _entries(3, 5, 1))
    assert [p.name for p in _snapshot_files(crashed)] == ["2-1.snap"]  # orphan reclaimed
    # Without a crash the failed compaction removed its own file at once.
    assert [p.name for p in _snapshot_files(live)] == ["2-1.snap"]
    assert st.load()[1:] == (_snap(2, 1, b"OLD"), _entries(3, 5, 1))


def test_crash_after_commit_before_cleanup_deletes_the_old_file_on_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = tmp_path / "live" / "r.db"
    st = SqliteStorage(live)
    st.save(None, _entries(1, 5, 1), None)
    st.compact(_snap(2, 1, b"OLD"))

    def crash(self: object, keep: str | None) -> None:
        _crash_image(live, tmp_path / "crash")
        raise _Crash

    monkeypatch.setattr(SnapshotFiles, "collect", crash)
    with pytest.raises(_Crash):
        st.save(HardState(term=2, vote=None, commit=9), [], _snap(9, 2, b"NEW"))
    monkeypatch.undo()
    crashed = tmp_path / "crash" / "r.db"
    assert [p.name for p in _snapshot_files(crashed)] == ["2-1.snap", "9-2.snap"]
    assert SqliteStorage(crashed).load() == (HardState(term=2, vote=None, commit=9),
                                             _snap(9, 2, b"NEW"), [])
    assert [p.name for p in _snapshot_files(crashed)] == ["9-2.snap"]


def test_leftover_temp_file_is_deleted_on_load(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    st = SqliteStorage(path)
    st.compact(_snap(2, 1))
    st.close()
    torn = path.with_name("r.db.snapshots") / "7-1.snap.tmp"
    torn.write_bytes(b"half an ima")  # a crash mid-write
    assert SqliteStorage(path).load()[1] == _snap(2, 1)
    assert [p.name for p in _snapshot_files(path)] == ["2-1.snap"]


_OLD_SNAPSHOT_TABLE = """
CREATE TABLE snapshot (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    idx INTEGER NOT NULL, term INTEGER NOT NULL, voters TEXT NOT NULL,
    data BLOB NOT NULL, crc INTEGER NOT NULL);
"""


def _as_unstamped_crc32(path: Path) -> None:
    """Rewrite a closed database of inline entries as one written before the checksum
    stamp existed: every row's CRC zlib's CRC-32, and no ``checksum`` meta row."""
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM payload_refs").fetchone() == (0,)
        db.execute("DELETE FROM meta WHERE key = 'checksum'")
        for idx, term, kind, data in db.execute(
                "SELECT idx, term, kind, data FROM entries").fetchall():
            db.execute("UPDATE entries SET crc = ? WHERE idx = ?",
                       (entry_crc(idx, term, kind, data, checksum=crc32), idx))
        for term, vote, commit in db.execute(
                "SELECT term, vote, commit_index FROM hard_state").fetchall():
            db.execute("UPDATE hard_state SET crc = ?",
                       (hard_state_crc(term, vote, commit, checksum=crc32),))


def _checksum_stamp(path: Path) -> list[tuple[str]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT value FROM meta WHERE key = 'checksum'").fetchall()


def test_a_new_database_is_stamped_and_checksummed_with_crc32c(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    st = SqliteStorage(path)
    st.save(HardState(term=1, vote=0, commit=6), _entries(3, 6, 1), None)
    st.close()
    assert _checksum_stamp(path) == [("crc32c",)]
    with sqlite3.connect(path) as db:
        idx, term, kind, data, crc = db.execute(
            "SELECT idx, term, kind, data, crc FROM entries WHERE idx = 3").fetchone()
    assert crc == entry_crc(idx, term, kind, data, checksum=crc32c)
    assert crc != entry_crc(idx, term, kind, data, checksum=crc32)


def test_an_unstamped_database_keeps_zlib_crc32(tmp_path: Path) -> None:
    """Databases written before the stamp carry CRC-32 rows: they load, and what is written
    to them afterwards is CRC-32 too (one function per database)."""
    path = tmp_path / "r.db"
    st = SqliteStorage(path)
    st.save(HardState(term=1, vote=0, commit=6), _entries(3, 6, 1), None)
    st.close()
    _as_unstamped_crc32(path)
    st = SqliteStorage(path)
    assert st.load() == (HardState(term=1, vote=0, commit=6), None, _entries(3, 6, 1))
    st.save(None, _entries(7, 8, 1), None)
    st.compact(_snap(5, 1, b"IMAGE"))
    st.close()
    assert _checksum_stamp(path) == [("crc32",)]
    assert SqliteStorage(path).load()[1:] == (_snap(5, 1, b"IMAGE"), _entries(6, 8, 1))


def test_an_unknown_checksum_stamp_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    SqliteStorage(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = 'sha3' WHERE key = 'checksum'")
    with pytest.raises(StorageCorruptError, match="unknown checksum 'sha3'"):
        SqliteStorage(path)


def test_database_with_a_blob_snapshot_still_loads_and_migrates(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    st = SqliteStorage(path)
    st.save(HardState(term=1, vote=0, commit=6), _entries(3, 6, 1), None)
    st.close()
    _as_unstamped_crc32(path)  # the layout before snapshot files existed had no stamp
    crc = zlib.crc32(b"OLD-BLOB", zlib.crc32(struct.pack(">qq", 2, 1) + b"0,1,2"))
    with sqlite3.connect(path) as db:  # the layout before snapshot files existed
        db.execute("DROP TABLE snapshot")
        db.executescript(_OLD_SNAPSHOT_TABLE)
        db.execute("INSERT INTO snapshot VALUES (0, 2, 1, '0,1,2', ?, ?)", (b"OLD-BLOB", crc))
    st = SqliteStorage(path)
    assert st.load() == (HardState(term=1, vote=0, commit=6), _snap(2, 1, b"OLD-BLOB"),
                         _entries(3, 6, 1))
    st.compact(_snap(4, 1, b"NEW-FILE"))
    st.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT data, file FROM snapshot").fetchall() == [(b"", "4-1.snap")]
    assert SqliteStorage(path).load()[1:] == (_snap(4, 1, b"NEW-FILE"), _entries(5, 6, 1))
