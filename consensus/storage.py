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
- Every entry, snapshot and hard-state row carries a CRC of its payload: CRC-32C in a
  database created now, zlib's CRC-32 in one written before the ``checksum`` stamp existed
  (``consensus.checksums``; one function per database, stamped when it is created). ``load``
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
- Snapshot images live in files, ``<db>.snapshots/<index>-<term>.snap`` (a sqlite BLOB is
  capped at 1e9 bytes); the row keeps the file name, size and CRC (of index, term, voters
  and image). The file is durable (written in chunks, fsync'ed, renamed, directory fsync'ed:
  ``consensus.snapshot_files``) BEFORE the transaction recording it commits; the file it
  supersedes, like any orphan, is deleted after the commit and by ``load``. So a crash
  leaves the old snapshot or the new one. A missing, short or CRC-failing image raises
  StorageCorruptError naming the file. Databases that kept the image as a BLOB in the row
  (``file`` NULL) still load; their next snapshot goes to a file.
- Incarnation: with ``StorageConfig.incarnation`` set, a new (empty) database is stamped
  with it (a ``meta`` row) and so is every snapshot file; a database or snapshot file
  stamped with another id, or holding state but no id, raises IncarnationMismatchError
  (``consensus.incarnation``) when opened or loaded, having changed nothing. Without one, a
  stamped database keeps (and checks its files against) its own id; an unstamped one stays
  unstamped. Every directory created is fsync'ed into its parent, and so is a new database.
- Disk space: a ``save``/``compact`` with a snapshot first checks the filesystem can hold it
  (:meth:`SqliteStorage.check_space`), else raises :class:`StorageFullError` having changed
  nothing. ENOSPC from a segment or snapshot write and SQLITE_FULL from the transaction raise
  it too, the previous durable state intact. :meth:`SqliteStorage.disk_bytes` sizes it all.

Not thread-safe: one thread at a time (the replica uses a single-thread executor), but that
thread may differ from the creating one.
"""

from __future__ import annotations

import mmap
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consensus import snapshot_files
from consensus.checksums import Checksum, checksum
from consensus.errors import ConfigError, StorageCorruptError, StorageFullError
from consensus.incarnation import IncarnationMismatchError, check_incarnation
from consensus.memory_log import open_segments
from consensus.snapshot_files import SnapshotFiles, StoredSnapshot
from consensus.storage_meta import checksum_name, migrate, stamp
from consensus.storage_rows import (
    entry_crc,
    hard_state_crc,
    learners_tuple,
    snapshot_crc,
    snapshot_header_crc,
    voters_text,
    voters_tuple,
)
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
    data BLOB NOT NULL, crc INTEGER NOT NULL, file TEXT, size INTEGER);
CREATE TABLE IF NOT EXISTS payload_refs (
    idx INTEGER PRIMARY KEY, seg INTEGER NOT NULL, off INTEGER NOT NULL, size INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_NO_VOTE = -1


@dataclass(frozen=True, kw_only=True)
class StorageConfig:
    """How one replica lays out payloads on disk. Private to the replica: replicas may differ,
    and a reopened database may use other values (existing rows say where their bytes are)."""

    inline_max_bytes: int = 64 << 10
    """Payloads up to this many bytes stay in sqlite; larger ones go to segment files."""
    segment_bytes: int = 64 << 20
    """A segment file past this size is closed and a new one started (reclaim granularity)."""
    sync_entries: bool = True
    """False (``durability="memory"``): entries are written (to the OS: a killed process
    loses nothing) but not fsynced; hard state changes (term, vote) and snapshots are still
    fsynced before ``save``/``compact`` return. A power loss or OS crash may then drop the
    unsynced tail (``consensus.lost_state.unsynced_since_boot`` detects it)."""
    memory_segments: Path | None = None
    """A tmpfs folder to keep the payload segments under (``consensus.memory_log``: the
    ``<db>.segments`` folder becomes a link there); None: next to the database. Set for
    ``durability="memory"``, whose entries need to survive a killed process, not a power
    loss."""
    incarnation: str | None = None
    """The group incarnation this storage belongs to (``consensus.incarnation``): stamped
    into a new database and every snapshot file, checked against existing ones. None:
    nothing is stamped, and an existing stamp is kept and checked."""

    def __post_init__(self) -> None:
        check_incarnation(self.incarnation, "StorageConfig.incarnation")
        if self.inline_max_bytes < 0:
            raise ConfigError(
                f"StorageConfig.inline_max_bytes must be >= 0, got {self.inline_max_bytes}")
        if self.segment_bytes < 1:
            raise ConfigError(
                f"StorageConfig.segment_bytes must be >= 1, got {self.segment_bytes}")


class SqliteStorage:
    """One replica's durable Raft state: a sqlite file (plus ``-wal``), payload segments and
    snapshot image files."""

    def __init__(self, path: str | Path, config: StorageConfig | None = None) -> None:
        """Open (creating if missing) the database at ``path``; blocks on disk IO.

        Raises StorageCorruptError if the file is not a readable sqlite database, and
        IncarnationMismatchError (before writing anything) if it belongs to another
        incarnation than ``config.incarnation``.
        """
        self.path = Path(path)
        self._sqlite_files = (str(self.path), f"{self.path}-wal", f"{self.path}-shm")
        self.config = config if config is not None else StorageConfig()
        snapshot_files.durable_dir(self.path.parent)
        created = not self.path.exists()
        try:
            self._db = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self.incarnation = self._adopt_incarnation()
            stamped = checksum_name(self._db)
            self._db.executescript(_SCHEMA)
            migrate(self._db)
            self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('checksum', ?)",
                             (stamped,))
            self._crc: Checksum = checksum(stamped)
            if self.incarnation is not None and self.config.incarnation is not None:
                self._db.execute("INSERT OR IGNORE INTO meta (key, value) "
                                 "VALUES ('incarnation', ?)", (self.incarnation,))
            self._durable_term_vote: tuple[int, int | None] | None = None
        except (sqlite3.DatabaseError, ValueError) as exc:
            db = getattr(self, "_db", None)
            if db is not None:
                db.close()
            raise StorageCorruptError(str(self.path), f"cannot open: {exc}") from exc
        if created:
            snapshot_files.fsync_dir(self.path.parent)
        self._segments = open_segments(self.path, self.config.memory_segments,
                                       self.config.segment_bytes,
                                       sync=self.config.sync_entries, fresh=created)
        self._snapshots = SnapshotFiles(
            self.path.with_name(self.path.name + ".snapshots"), self.path, self.incarnation,
            checksum=self._crc)

    def _adopt_incarnation(self) -> str | None:
        """The incarnation this storage runs under: the database's stamp, else (an empty
        database) ``config.incarnation``. Raises IncarnationMismatchError, closing the
        database, if the stamp differs from the configured one or state has no stamp."""
        expected = self.config.incarnation
        found, has_state = stamp(self._db)
        if expected is not None and found != expected and (found is not None or has_state):
            self._db.close()
            raise IncarnationMismatchError(str(self.path), expected, found)
        return found if found is not None else (expected if not has_state else None)

    # ------------------------------------------------------------------ reading

    def load(self) -> tuple[HardState, Snapshot | None, list[Entry]]:
        """Read and verify everything; raises StorageCorruptError on any integrity failure.

        Blocks on disk IO (a snapshot image is read whole). Once everything verified, deletes
        the snapshot files the row does not reference (left by a crash); on failure deletes
        nothing, so an operator can still inspect them.
        """
        try:
            check = self._db.execute("PRAGMA quick_check").fetchall()
            if [tuple(row) for row in check] != [("ok",)]:
                raise self._corrupt(f"quick_check: {check[:3]}")
            hard_state = self._load_hard_state()
            snapshot, snapshot_file = self._load_snapshot()
            entries = self._load_entries(snapshot)
        except sqlite3.DatabaseError as exc:
            raise self._corrupt(f"sqlite: {exc}") from exc
        self._durable_term_vote = (hard_state.term, hard_state.vote)
        self._snapshots.collect(keep=snapshot_file)
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
        if hard_state_crc(term, vote, commit, checksum=self._crc) != crc:
            raise self._corrupt("hard state CRC mismatch")
        return HardState(term=term, vote=None if vote == _NO_VOTE else vote, commit=commit)

    def _load_snapshot(self) -> tuple[Snapshot | None, str | None]:
        """The verified snapshot, and the name of its file (None: none, or a BLOB row)."""
        row = self._db.execute(
            "SELECT idx, term, voters, data, crc, file, size FROM snapshot WHERE id = 0"
        ).fetchone()
        if row is None:
            return None, None
        idx, term, voters, data, crc, file, size = row
        if file is not None:  # the image is in a file: verified chunk by chunk
            stored = StoredSnapshot(name=file, size=size, crc=crc)
            data = self._snapshots.read(
                stored, snapshot_header_crc(idx, term, voters, checksum=self._crc))
        elif snapshot_crc(idx, term, voters, bytes(data),  # written before files
                          checksum=self._crc) != crc:
            raise self._corrupt(f"snapshot at index {idx} CRC mismatch")
        meta = SnapshotMeta(index=idx, term=term, voters=voters_tuple(voters),
                            learners=learners_tuple(voters))
        return Snapshot(meta=meta, data=bytes(data)), file

    def _load_entries(self, snapshot: Snapshot | None) -> list[Entry]:
        rows = self._db.execute(
            "SELECT e.idx, e.term, e.kind, e.data, e.crc, r.seg, r.off, r.size FROM entries e "
            "LEFT JOIN payload_refs r ON r.idx = e.idx ORDER BY e.idx")
        expected = snapshot.meta.index + 1 if snapshot is not None else None
        entries: list[Entry] = []
        for idx, term, kind, data, crc, seg, off, size in rows:
            # segment payloads stay in the file (a view): a log of several rounds of a large
            # model would otherwise be read into memory whole on every restart
            payload = bytes(data) if seg is None else self._segments.view(seg, off, size)
            if payload is None:
                raise self._corrupt(
                    f"entry {idx} payload missing or truncated in {self._segments.path(seg)}")
            if entry_crc(idx, term, kind, payload, checksum=self._crc) != crc:
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
        """Persist one Ready atomically and durably (one transaction, one fsync); blocks on IO.

        Order: large payloads are appended to segments and a snapshot image written to its
        file, both durably, then ONE transaction records snapshot (§7 log retention), entries
        (truncating any stored entry at or above the first new index) and hard state.
        With a snapshot, the free space is checked first (StorageFullError, nothing changed).
        Raises StorageFullError on ENOSPC / SQLITE_FULL and ``sqlite3.Error`` on other IO
        failures, after rolling back: the previous durable state remains.
        """
        if hard_state is None and not entries and snapshot is None:
            return
        db = self._db
        if snapshot is not None:
            self.check_space(len(snapshot.data) + self._payload_bytes(entries))
        segment_before = self._segments.current
        refs = self._append_payloads(entries)  # durable before any row points at them
        stored = None if snapshot is None else self._write_snapshot_file(snapshot)
        # Only the commit index moved: it need not be durable (a restart recomputes it from a
        # quorum, Raft Figure 2 keeps it volatile), so skip the fsync; the next durable
        # transaction syncs the WAL, and with it this one, anyway.
        commit_only = not self.needs_sync(hard_state, entries, snapshot) or (
            not self.config.sync_entries and snapshot is None
            and not self._vote_changes(hard_state))
        if commit_only:
            db.execute("PRAGMA synchronous=NORMAL")
        try:
            with self._transaction(stored):
                if snapshot is not None and stored is not None:
                    self._write_snapshot(snapshot.meta, stored, keep_matching_suffix=True)
                if entries:
                    self._write_entries(entries, refs)
                if hard_state is not None:
                    self._write_hard_state(hard_state)
        finally:
            if commit_only:
                db.execute("PRAGMA synchronous=FULL")
        if hard_state is not None:
            self._durable_term_vote = (hard_state.term, hard_state.vote)
        if snapshot is not None or self._segments.current != segment_before:
            self._collect_segments()
        if stored is not None:
            self._snapshots.collect(keep=stored.name)

    @contextmanager
    def _transaction(self, new_file: StoredSnapshot | None) -> Iterator[None]:
        """BEGIN IMMEDIATE .. COMMIT around the body. On any error: roll back, delete
        ``new_file`` (no committed row references it) and re-raise, SQLITE_FULL as
        StorageFullError."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            yield
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:  # a failed COMMIT may have rolled back already
                db.execute("ROLLBACK")
            if new_file is not None:
                self._snapshots.discard(new_file.name)
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                free = snapshot_files.free_bytes(self.path.parent)
                raise StorageFullError(str(self.path), None, free) from exc
            raise

    def check_space(self, nbytes: int) -> None:
        """Raise StorageFullError (naming the directory, bytes needed and free, and what to
        change) unless the snapshot filesystem can take ``nbytes`` more (plus a small reserve
        for the sqlite commit). One ``statvfs``; changes nothing. ``save``/``compact`` call it
        for a snapshot's size; a host may call it as soon as it knows the size, from any
        thread (it touches no state). A new snapshot needs its full size free: the old one is
        deleted only after the new one commits."""
        snapshot_files.check_space(self._snapshots.dir, nbytes)

    def disk_bytes(self) -> dict[str, int]:
        """Bytes this replica keeps on disk, from stat calls only (no reads):
        ``log_bytes`` (sqlite file, ``-wal``, ``-shm`` and payload segments; an old-format
        snapshot BLOB counts here), ``snapshot_bytes`` (snapshot files, orphans included)
        and ``total_bytes``."""
        log = self.log_bytes()
        snap = self._snapshots.total_bytes()
        return {"log_bytes": log, "snapshot_bytes": snap, "total_bytes": log + snap}

    def log_bytes(self) -> int:
        """``disk_bytes``' ``log_bytes`` alone, cheap enough to ask after every write: three
        stat calls, and the segments' own count."""
        log = 0
        for name in self._sqlite_files:
            with suppress(FileNotFoundError):
                log += os.stat(name).st_size
        return log + self._segments.total_bytes()

    def _write_snapshot_file(self, snapshot: Snapshot) -> StoredSnapshot:
        """Write ``snapshot``'s image to a new durable file (blocks on IO); see SnapshotFiles."""
        return self._write_image_file(snapshot.meta, (snapshot.data,))

    def _write_image_file(self, meta: SnapshotMeta, parts: Sequence[Any]) -> StoredSnapshot:
        seed = snapshot_header_crc(meta.index, meta.term,
                                   voters_text(meta.voters, meta.learners), checksum=self._crc)
        return self._snapshots.write(meta.index, meta.term, parts, seed)

    def _payload_bytes(self, entries: Sequence[Entry]) -> int:
        return sum(len(e.data) for e in entries if len(e.data) > self.config.inline_max_bytes)

    def _append_payloads(self, entries: Sequence[Entry]) -> dict[int, tuple[int, int]]:
        """Append the payloads above ``inline_max_bytes`` to segments, durably (blocks on IO).

        Returns ``{entry index: (segment, offset)}``; entries not in it are stored inline."""
        large = [e for e in entries if len(e.data) > self.config.inline_max_bytes]
        if not large:
            return {}
        with snapshot_files.full_on_enospc(self._segments.dir, sum(len(e.data) for e in large)):
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
                 entry_crc(e.index, e.term, int(e.kind), e.data, checksum=self._crc))
                for e in entries
            ],
        )
        if refs:
            self._db.executemany(
                "INSERT INTO payload_refs (idx, seg, off, size) VALUES (?, ?, ?, ?)",
                [(e.index, *refs[e.index], len(e.data)) for e in entries if e.index in refs],
            )

    def payload_views(self, lo: int, hi: int) -> dict[int, tuple[int, memoryview]]:
        """``{index: (term, view)}`` of the stored entries in ``[lo, hi]`` whose payloads live
        in segment files: read-only views backed by those files (see ``Segments.view``), for a
        host to hold in place of its in-memory copies. Reads only sqlite's index."""
        rows = self._db.execute(
            "SELECT e.idx, e.term, r.seg, r.off, r.size FROM payload_refs r "
            "JOIN entries e ON e.idx = r.idx WHERE r.idx BETWEEN ? AND ?", (lo, hi))
        views: dict[int, tuple[int, memoryview]] = {}
        for idx, term, seg, off, size in rows:
            view = self._segments.view(seg, off, size)
            if view is not None:
                views[idx] = (term, view)
        return views

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
        return self._vote_changes(hard_state)

    def _vote_changes(self, hard_state: HardState | None) -> bool:
        """Whether ``hard_state`` changes the durable term or vote (these always fsync)."""
        if hard_state is None:
            return False
        return self._durable_term_vote != (hard_state.term, hard_state.vote)

    def compact(self, snapshot: Snapshot) -> Path:
        """Store ``snapshot`` (taken by this host) and delete the entries it covers; durable
        when it returns (blocks on IO); returns the image's file (a host may map it instead
        of keeping the image in memory: a later compaction unlinks it, which leaves a
        mapping valid). Raises StorageFullError if the image does not fit (checked before
        writing; changes nothing) or on ENOSPC (previous state remains)."""
        return self.compact_parts(snapshot.meta, (snapshot.data,))

    def compact_parts(self, meta: SnapshotMeta, parts: Sequence[Any]) -> Path:
        """:meth:`compact` of the image that is the concatenation of ``parts`` (bytes-like),
        written part by part: the image is never assembled in memory."""
        stored = self._write_image_file(meta, parts)  # checks the space first
        with self._transaction(stored):
            self._write_snapshot(meta, stored, keep_matching_suffix=False)
        self._collect_segments()
        self._snapshots.collect(keep=stored.name)
        return self._snapshots.path(stored.name)

    def map_image(self, path: Path) -> mmap.mmap:
        """A read-only mapping of the image in the snapshot file ``path`` (from
        :meth:`compact`), past its incarnation header if it has one."""
        return self._snapshots.map(path)

    def _write_snapshot(
        self, meta: SnapshotMeta, stored: StoredSnapshot, *, keep_matching_suffix: bool
    ) -> None:
        """Inside the open transaction: drop the entries the snapshot ``meta`` describes covers
        (§7) and point the snapshot row at ``stored``, the image's durable file."""
        voters = voters_text(meta.voters, meta.learners)
        if keep_matching_suffix:
            row = self._db.execute("SELECT term FROM entries WHERE idx = ?", (meta.index,))
            found = row.fetchone()
            if found is None or found[0] != meta.term:
                self._db.execute("DELETE FROM entries")
                self._db.execute("DELETE FROM payload_refs")
        self._db.execute("DELETE FROM entries WHERE idx <= ?", (meta.index,))
        self._db.execute("DELETE FROM payload_refs WHERE idx <= ?", (meta.index,))
        self._db.execute(
            "INSERT OR REPLACE INTO snapshot (id, idx, term, voters, data, crc, file, size) "
            "VALUES (0, ?, ?, ?, ?, ?, ?, ?)",
            (meta.index, meta.term, voters, b"", stored.crc, stored.name, stored.size),
        )

    def _write_hard_state(self, hs: HardState) -> None:
        vote = _NO_VOTE if hs.vote is None else hs.vote
        self._db.execute(
            "INSERT OR REPLACE INTO hard_state (id, term, vote, commit_index, crc) "
            "VALUES (0, ?, ?, ?, ?)",
            (hs.term, vote, hs.commit,
             hard_state_crc(hs.term, vote, hs.commit, checksum=self._crc)),
        )

    def close(self) -> None:
        """Close the connection (checkpointing the WAL) and the segment file. Idempotent."""
        self._db.close()
        self._segments.close()
