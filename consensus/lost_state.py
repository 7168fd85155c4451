"""Does a replica start without the durable state it once had? (thesis §4: disk loss)

Ray restarts a crashed replica actor by re-running its constructor, possibly on another node.
With node-local storage that node has no database for it: the replica comes back under its
old id with an empty log and no memory of its votes. Voting then would be unsafe (see
``RaftConfig.lost_state``), so such a replica runs with ``lost_state`` until it is replaced.

A group re-created over existing storage (a new driver, ``--resume``) can also place a
replica on a node without its database; that start is not a Ray restart. So every empty
first start is provisional: the replica does not vote until each peer reports that it, too,
started empty (a fresh group); if one started with state, the group existed and the empty
replica is flagged (``RaftReplica._confirm_fresh``).

The decision is sticky: a marker file next to the database records it, so a replica that
was flagged keeps the flag over later restarts (its new log does not bring its old votes
back). Only ``RaftGroup.replace`` (a new member, a new database path) clears it.

``durability="memory"`` writes entries without fsync: a killed process loses nothing (the
OS has the bytes), but a power loss or OS crash may drop an unsynced tail the replica had
acknowledged. Such a replica records the boot it wrote under (``stamp_unsynced``); a start
under another boot finds that stamp stale (``unsynced_since_boot``), discards the storage
and is treated exactly like a replica that lost its disk.
"""

from __future__ import annotations

import asyncio
import shutil
import warnings
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from consensus.atomic_file import write_atomic
from consensus.memory_log import remove_segments
from consensus.snapshot_files import fsync_dir

MARKER_SUFFIX = ".lost-state"
UNSYNCED_SUFFIX = ".unsynced-boot"
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def marker_path(db_path: Path) -> Path:
    """The sticky marker of the database at ``db_path``."""
    return db_path.with_name(db_path.name + MARKER_SUFFIX)


def ray_restarted() -> bool:
    """True if Ray restarted the calling actor: its constructor ran before (maybe on another
    node). False outside a Ray actor (a replica built directly, in tests)."""
    try:
        import ray

        with warnings.catch_warnings():
            # Ray's own property reads its deprecated ``actor_id`` and warns on every start
            warnings.simplefilter("ignore", DeprecationWarning)
            return bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:  # no Ray worker / not an actor: a first start
        return False


def detect_lost_state(db_path: Path, *, reconstructed: bool, storage_empty: bool,
                      join: bool) -> bool:
    """True if the replica whose database is ``db_path`` must run with ``lost_state``.

    ``reconstructed``: Ray restarted this actor (it ran before); ``storage_empty``: no hard
    state, snapshot or entry was found; ``join``: a member added empty on purpose. A restart
    that finds no state is flagged and the marker written (blocks on a small file write).
    """
    if marker_path(db_path).exists():
        return True
    if reconstructed and storage_empty and not join:
        mark_lost_state(db_path)
        return True
    return False


def mark_lost_state(db_path: Path) -> None:
    """Write the sticky marker of the database at ``db_path`` durably (a small file write,
    fsync'ed with its directory entry: the flag must survive a power loss)."""
    write_atomic(marker_path(db_path),
                 b"started without its durable state; replace this replica\n")


async def peers_started_empty(peers: Iterable[int], ask: Callable[[int], Awaitable[bool]],
                              retry_s: float) -> bool:
    """Ask every peer whether it started with empty storage, retrying those that cannot
    answer yet (not started, restarting) every ``retry_s`` seconds until each has answered.
    True if all did (a fresh group); False as soon as one did not (the group existed).
    ``ask(peer)`` returns the peer's answer or raises if it cannot be reached."""
    pending = set(peers)
    while pending:
        for peer in sorted(pending):
            try:
                started_empty = await ask(peer)
            except Exception:  # not reachable yet: ask again next time
                continue
            if not started_empty:
                return False
            pending.discard(peer)
        if pending:
            await asyncio.sleep(retry_s)
    return True


def boot_id() -> str | None:
    """This machine's boot id (Linux), or None where the OS does not tell."""
    try:
        return BOOT_ID.read_text().strip() or None
    except OSError:
        return None


def unsynced_path(db_path: Path) -> Path:
    """The stamp recording the boot under which ``db_path`` was written without fsync."""
    return db_path.with_name(db_path.name + UNSYNCED_SUFFIX)


def stamp_unsynced(db_path: Path) -> None:
    """Record (durably) that the database at ``db_path`` is written without fsync under the
    current boot. Blocks on a small write and fsync."""
    write_atomic(unsynced_path(db_path), f"{boot_id() or 'unknown'}\n".encode())


def unsynced_since_boot(db_path: Path) -> bool:
    """True if ``db_path`` was written without fsync under an earlier boot: a power loss or
    OS crash came in between, so its unsynced tail may be gone (False where the OS gives no
    boot id: then only a process crash is survivable, as documented)."""
    path = unsynced_path(db_path)
    if not path.exists():
        return False
    current = boot_id()
    return current is not None and path.read_text(encoding="utf-8").strip() != current


def discard_storage(db_path: Path) -> None:
    """Delete the database at ``db_path`` with its WAL, segments and snapshot files (a
    replica whose unsynced tail may be lost keeps nothing of it); the deletions are made
    durable (directory fsync) before it returns."""
    for suffix in ("", "-wal", "-shm", UNSYNCED_SUFFIX):
        db_path.with_name(db_path.name + suffix).unlink(missing_ok=True)
    remove_segments(db_path.with_name(db_path.name + ".segments"))  # a link: its folder too
    shutil.rmtree(db_path.with_name(db_path.name + ".snapshots"), ignore_errors=True)
    if db_path.parent.is_dir():
        fsync_dir(db_path.parent)
