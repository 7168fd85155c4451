"""What a Raft database records about itself, read before its rows: whether it holds state,
the incarnation and the checksum it is stamped with (its ``meta`` rows), and the migration
of databases created before snapshot files existed (``consensus.storage`` uses these)."""

from __future__ import annotations

import sqlite3

from consensus.checksums import CRC32, CRC32C

_STATE_TABLES = ("hard_state", "entries", "snapshot")


def migrate(db: sqlite3.Connection) -> None:
    """Add the file-backed snapshot columns to a database created before they existed."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(snapshot)")}
    if "file" in columns:
        return
    db.execute("BEGIN IMMEDIATE")
    db.execute("ALTER TABLE snapshot ADD COLUMN file TEXT")
    db.execute("ALTER TABLE snapshot ADD COLUMN size INTEGER")
    db.execute("COMMIT")


def stamp(db: sqlite3.Connection) -> tuple[str | None, bool]:
    """The incarnation a database is stamped with (None: none) and whether it holds any
    Raft state; reads only (an empty or new file has neither)."""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    found = None
    if "meta" in tables:
        row = db.execute("SELECT value FROM meta WHERE key = 'incarnation'").fetchone()
        found = None if row is None else str(row[0])
    has_state = any(db.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchone()[0]
                    for table in _STATE_TABLES if table in tables)
    return found, has_state


def checksum_name(db: sqlite3.Connection) -> str:
    """The checksum a database's rows carry: its ``checksum`` stamp; CRC-32 for one that
    holds state but no stamp (written before stamps); CRC-32C for a new or empty one."""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "meta" in tables:
        row = db.execute("SELECT value FROM meta WHERE key = 'checksum'").fetchone()
        if row is not None:
            return str(row[0])
    return CRC32 if stamp(db)[1] else CRC32C
