"""Durable Raft storage on stdlib ``sqlite3``: hard state, log entries and one snapshot.

Contract (Raft Figure 2, "persistent state on all servers"):

- ``save`` writes one ``Ready``'s hard state, entries and snapshot in ONE transaction and
  returns only once it is durable (WAL mode, ``synchronous=FULL`` fsyncs the WAL on commit):
  group commit, one fsync per ``Ready``. A ``save`` that raises leaves the previous state.
  Exception: a save that only advances the commit index skips the fsync (the commit index
  is volatile in Raft; a crash may roll it back, never past a durable entry).
- Entries replace every stored entry with the same or higher index (conflict truncation, §5.3).
- A saved snapshot follows §7: if the log holds the snapshot's last entry with the same term,
  the entries after it are kept; otherwise the whole log is discarded.
- ``compact`` stores a snapshot the host took itself and deletes the entries it covers.
- Every entry, snapshot and hard-state row carries a CRC32 (zlib) of its payload. ``load``
  runs ``PRAGMA quick_check``, verifies every CRC and that indices are contiguous from the
  snapshot; any failure raises :class:`StorageCorruptError` naming the file. A torn last write
  (WAL truncated mid-frame by a crash) is not corruption: sqlite ignores the incomplete
  transaction and ``load`` returns the last committed state.
- Payloads larger than ``StorageConfig.inline_max_bytes`` live in append-only segment files
  (``<db>.segments/<n>.seg``); sqlite keeps their index, term, segment, offset, size and CRC
  in the same transaction as the rest of the Ready. A save appends and ``fdatasync``s the
  payloads BEFORE the sqlite commit, so a committed row never points at bytes that are not
  durable. Bytes a crash (or a failed save) leaves past the last committed reference are
  orphans: never read, reclaimed with their segment. A missing, short or CRC-failing payload
  raises StorageCorruptError. Why: a 1 MB blob in sqlite costs ~2-3.5 ms CPU and two disk
  writes (WAL + checkpoint, 4 KB overflow pages); a segment append ~1 ms and one write.
  Segments rotate at ``segment_bytes``; a segment no row references is deleted after a
  compaction, snapshot install or rotation.

Not thread-safe: one thread at a time (the replica uses a single-thread executor), but that
thread may differ from the creating one.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from consensus.errors import ConfigError, StorageCorruptError
from consensus.types import Entry, EntryKind, HardState, Snapshot, SnapshotMeta

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hard_state (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    term INTEGER NOT NULL, vote INTEGER, commit_index INTEGER NOT NULL, crc INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    idx INTEGER PRIMARY KEY, term INTEGER NOT NULL, kind INTEGER NOT NULL,
    data BLOB NOT NULL, crc INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS snapshot (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    idx INTEGER NOT NULL, term INTEGER NOT NULL, voters TEXT NOT NULL,
    data BLOB NOT NULL, crc INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS payload_refs (
    idx INTEGER PRIMARY KEY, seg INTEGER NOT NULL, off INTEGER NOT NULL, size INTEGER NOT NULL);
"""

_NO_VOTE = -1


def _hard_state_crc(term: int, vote: int, commit: int) -> int:
    return zlib.crc32(struct.pack(">qqq", term, vote, commit))


def _entry_crc(idx: int, term: int, kind: int, data: bytes) -> int:
    return zlib.crc32(data, zlib.crc32(struct.pack(">qqq", idx, term, kind)))


def _snapshot_crc(idx: int, term: int, voters: str, data: bytes) -> int:
    header = struct.pack(">qq", idx, term) + voters.encode()
    return zlib.crc32(data, zlib.crc32(header))


def _voters_text(voters: tuple[int, ...]) -> str:
    return ",".join(str(v) for v in voters)


def _voters_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",")) if text else ()


@dataclass(frozen=True, kw_only=True)
class StorageConfig:
    """How one replica lays out payloads on disk. Private to the replica: replicas may differ,
    and a reopened database may use other values (existing rows say where their bytes are)."""

    inline_max_bytes: int = 64 << 10
    """Payloads up to this many bytes stay in sqlite; larger ones go to segment files."""
    segment_bytes: int = 64 << 20
    """A segment file past this size is closed and a new one started (reclaim granularity)."""

    def __post_init__(self) -> None:
        if self.inline_max_bytes < 0:
            raise ConfigError(
                f"StorageConfig.inline_max_bytes must be >= 0, got {self.inline_max_bytes}")
        if self.segment_bytes < 1:
            raise ConfigError(
                f"StorageConfig.segment_bytes must be >= 1, got {self.segment_bytes}")


class _Segments:
    """Append-only payload files ``<n>.seg`` in one directory; only the newest is written.

    Holds no index of its own: sqlite's ``payload_refs`` says which bytes are live.
    """

    def __init__(self, directory: Path, segment_bytes: int) -> None:
        self.dir = directory
        self._limit = segment_bytes
        directory.mkdir(parents=True, exist_ok=True)
        ids = self.ids()
        self.current = max(ids) if ids else 1
        self._fd = self._open(self.current)

    def ids(self) -> list[int]:
        """Ids of the segment files present on disk."""
        return [int(p.stem) for p in self.dir.glob("*.seg") if p.stem.isdigit()]

    def path(self, seg: int) -> Path:
        return self.dir / f"{seg:010d}.seg"

    def _open(self, seg: int) -> int:
        fd = os.open(self.path(seg), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the new file's name is durable before a row points into it
        finally:
            os.close(dir_fd)
        return fd

    def append(self, payloads: Sequence[bytes]) -> list[tuple[int, int]]:
        """Append ``payloads`` durably (fdatasync before returning); their (segment, offset).

        Blocks on disk IO. On OSError some bytes may have been written: they are orphans.
        """
        refs: list[tuple[int, int]] = []
        offset = os.fstat(self._fd).st_size  # after a failed append: past its orphan bytes
        for data in payloads:
            if offset >= self._limit:
                os.fdatasync(self._fd)
                os.close(self._fd)
                self.current += 1
                self._fd = self._open(self.current)
                offset = 0
            refs.append((self.current, offset))
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            offset += len(data)
        os.fdatasync(self._fd)
        return refs

    def read(self, seg: int, offset: int, size: int) -> bytes | None:
        """The ``size`` bytes at ``offset`` of segment ``seg``; None if absent or short."""
        try:
            fd = os.open(self.path(seg), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            data = os.pread(fd, size, offset)
        finally:
            os.close(fd)
        return data if len(data) == size else None

    def collect(self, live: set[int]) -> None:
        """Delete every segment but the current one that is not in ``live``."""
        for seg in self.ids():
            if seg != self.current and seg not in live:
                self.path(seg).unlink(missing_ok=True)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class SqliteStorage:
    """One replica's durable Raft state: a sqlite file (plus ``-wal``) and payload segments."""

    def __init__(self, path: str | Path, config: StorageConfig | None = None) -> None:
        """Open (creating if missing) the database at ``path``; blocks on disk IO.

        Raises StorageCorruptError if the file is not a readable sqlite database.
        """
        self.path = Path(path)
        self.config = config if config is not None else StorageConfig()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._durable_term_vote: tuple[int, int | None] | None = None
        except sqlite3.DatabaseError as exc:
            raise StorageCorruptError(str(self.path), f"cannot open: {exc}") from exc
        self._segments = _Segments(
            self.path.with_name(self.path.name + ".segments"), self.config.segment_bytes)

    # ------------------------------------------------------------------ reading

    def load(self) -> tuple[HardState, Snapshot | None, list[Entry]]:
        """Read and verify everything; raises StorageCorruptError on any integrity failure."""
        try:
            check = self._db.execute("PRAGMA quick_check").fetchall()
            if [tuple(row) for row in check] != [("ok",)]:
                raise self._corrupt(f"quick_check: {check[:3]}")
            hard_state = self._load_hard_state()
            snapshot = self._load_snapshot()
            entries = self._load_entries(snapshot)
        except sqlite3.DatabaseError as exc:
            raise self._corrupt(f"sqlite: {exc}") from exc
        self._durable_term_vote = (hard_state.term, hard_state.vote)
        return hard_state, snapshot, entries

    def _corrupt(self, detail: str) -> StorageCorruptError:
        return StorageCorruptError(str(self.path), detail)

    def _load_hard_state(self) -> HardState:
        row = self._db.execute(
            "SELECT term, vote, commit_index, crc FROM hard_state WHERE id = 0"
        ).fetchone()
        if row is None:
            return HardState()
        term, vote, commit, crc = row
        if _hard_state_crc(term, vote, commit) != crc:
            raise self._corrupt("hard state CRC mismatch")
        return HardState(term=term, vote=None if vote == _NO_VOTE else vote, commit=commit)

    def _load_snapshot(self) -> Snapshot | None:
        row = self._db.execute(
            "SELECT idx, term, voters, data, crc FROM snapshot WHERE id = 0"
        ).fetchone()
        if row is None:
            return None
        idx, term, voters, data, crc = row
        if _snapshot_crc(idx, term, voters, bytes(data)) != crc:
            raise self._corrupt(f"snapshot at index {idx} CRC mismatch")
        meta = SnapshotMeta(index=idx, term=term, voters=_voters_tuple(voters))
        return Snapshot(meta=meta, data=bytes(data))

    def _load_entries(self, snapshot: Snapshot | None) -> list[Entry]:
        rows = self._db.execute(
            "SELECT e.idx, e.term, e.kind, e.data, e.crc, r.seg, r.off, r.size FROM entries e "
            "LEFT JOIN payload_refs r ON r.idx = e.idx ORDER BY e.idx")
        expected = snapshot.meta.index + 1 if snapshot is not None else None
        entries: list[Entry] = []
        for idx, term, kind, data, crc, seg, off, size in rows:
            payload = bytes(data) if seg is None else self._segments.read(seg, off, size)
            if payload is None:
                raise self._corrupt(
                    f"entry {idx} payload missing or truncated in {self._segments.path(seg)}")
            if _entry_crc(idx, term, kind, payload) != crc:
                raise self._corrupt(f"entry {idx} CRC mismatch")
            if expected is not None and idx != expected:
                raise self._corrupt(f"log gap: expected entry {expected}, found {idx}")
            entries.append(Entry(term=term, index=idx, kind=EntryKind(kind), data=payload))
            expected = idx + 1
        return entries

    # ------------------------------------------------------------------ writing

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
    ) -> None:
        """Persist one Ready atomically and durably (one transaction, one fsync).

        Order inside the transaction: snapshot (§7 log retention), then entries (truncating
        any stored entry at or above the first new index), then hard state. Raises
        ``sqlite3.Error`` on IO failure, after rolling back (the previous state remains).
        """
        if hard_state is None and not entries and snapshot is None:
            return
        db = self._db
        segment_before = self._segments.current
        refs = self._append_payloads(entries)  # durable before any row points at them
        # Only the commit index moved: it need not be durable (a restart recomputes it from a
        # quorum, Raft Figure 2 keeps it volatile), so skip the fsync; the next durable
        # transaction syncs the WAL, and with it this one, anyway.
        commit_only = not self.needs_sync(hard_state, entries, snapshot)
        if commit_only:
            db.execute("PRAGMA synchronous=NORMAL")
        db.execute("BEGIN IMMEDIATE")
        try:
            if snapshot is not None:
                self._write_snapshot(snapshot, keep_matching_suffix=True)
            if entries:
                self._write_entries(entries, refs)
            if hard_state is not None:
                self._write_hard_state(hard_state)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        finally:
            if commit_only:
                db.execute("PRAGMA synchronous=FULL")
        if hard_state is not None:
            self._durable_term_vote = (hard_state.term, hard_state.vote)
        if snapshot is not None or self._segments.current != segment_before:
            self._collect_segments()

    def _append_payloads(self, entries: Sequence[Entry]) -> dict[int, tuple[int, int]]:
        """Append the payloads above ``inline_max_bytes`` to segments, durably (blocks on IO).

        Returns ``{entry index: (segment, offset)}``; entries not in it are stored inline."""
        large = [e for e in entries if len(e.data) > self.config.inline_max_bytes]
        if not large:
            return {}
        places = self._segments.append([e.data for e in large])
        return {e.index: place for e, place in zip(large, places, strict=True)}

    def _write_entries(self, entries: Sequence[Entry], refs: dict[int, tuple[int, int]]) -> None:
        """Inside the open transaction: truncate at ``entries[0]``, insert rows and refs."""
        first = entries[0].index
        self._db.execute("DELETE FROM entries WHERE idx >= ?", (first,))
        self._db.execute("DELETE FROM payload_refs WHERE idx >= ?", (first,))
        self._db.executemany(
            "INSERT INTO entries (idx, term, kind, data, crc) VALUES (?, ?, ?, ?, ?)",
            [
                (e.index, e.term, int(e.kind), b"" if e.index in refs else e.data,
                 _entry_crc(e.index, e.term, int(e.kind), e.data))
                for e in entries
            ],
        )
        if refs:
            self._db.executemany(
                "INSERT INTO payload_refs (idx, seg, off, size) VALUES (?, ?, ?, ?)",
                [(e.index, *refs[e.index], len(e.data)) for e in entries if e.index in refs],
            )

    def _collect_segments(self) -> None:
        """Delete segment files no committed row references (after the commit; IO)."""
        rows = self._db.execute("SELECT DISTINCT seg FROM payload_refs").fetchall()
        self._segments.collect({seg for (seg,) in rows})

    def needs_sync(
        self, hard_state: HardState | None, entries: Sequence[Entry], snapshot: Snapshot | None
    ) -> bool:
        """Whether ``save`` of these would fsync (False: nothing, or only the commit index)."""
        if entries or snapshot is not None:
            return True
        if hard_state is None:
            return False
        return self._durable_term_vote != (hard_state.term, hard_state.vote)

    def compact(self, snapshot: Snapshot) -> None:
        """Store ``snapshot`` (taken by this host) and delete the entries it covers; durable."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            self._write_snapshot(snapshot, keep_matching_suffix=False)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._collect_segments()

    def _write_snapshot(self, snapshot: Snapshot, *, keep_matching_suffix: bool) -> None:
        meta = snapshot.meta
        voters = _voters_text(meta.voters)
        if keep_matching_suffix:
            row = self._db.execute("SELECT term FROM entries WHERE idx = ?", (meta.index,))
            found = row.fetchone()
            if found is None or found[0] != meta.term:
                self._db.execute("DELETE FROM entries")
                self._db.execute("DELETE FROM payload_refs")
        self._db.execute("DELETE FROM entries WHERE idx <= ?", (meta.index,))
        self._db.execute("DELETE FROM payload_refs WHERE idx <= ?", (meta.index,))
        self._db.execute(
            "INSERT OR REPLACE INTO snapshot (id, idx, term, voters, data, crc) "
            "VALUES (0, ?, ?, ?, ?, ?)",
            (meta.index, meta.term, voters, snapshot.data,
             _snapshot_crc(meta.index, meta.term, voters, snapshot.data)),
        )

    def _write_hard_state(self, hs: HardState) -> None:
        vote = _NO_VOTE if hs.vote is None else hs.vote
        self._db.execute(
            "INSERT OR REPLACE INTO hard_state (id, term, vote, commit_index, crc) "
            "VALUES (0, ?, ?, ?, ?)",
            (hs.term, vote, hs.commit, _hard_state_crc(hs.term, vote, hs.commit)),
        )

    def close(self) -> None:
        """Close the connection (checkpointing the WAL) and the segment file. Idempotent."""
        self._db.close()
        self._segments.close()
