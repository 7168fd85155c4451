"""Where a ``durability="memory"`` replica keeps its log's payload segments: shared memory.

With ``memory`` durability an entry counts once a majority holds it in memory, and a killed
replica process must still lose nothing. A file on a tmpfs (``/dev/shm``) gives exactly
that: the kernel keeps its pages when the process dies, a reboot clears it (a start under
another boot already discards such a replica's storage: ``consensus.lost_state``), and a
write is one copy into memory, with no device to wait for and no page-cache writeback or
eviction. A large model's log is as many bytes per round as its state's gradient on every
replica; on a disk shared by all of them, that disk bounds the round rate.

So such a replica's ``<db>.segments`` is a symbolic link to a folder under
``memory_log_root()``, named after the database's absolute path, and everything that reads
or writes segments goes through the link. The database (hard state, entry metadata, small
payloads) and the snapshot files stay on disk, fsynced as before. A fresh database clears
whatever an earlier one at the same path left in its folder; storage made on disk (a real
``.segments`` folder) keeps its segments there. The log in memory is bounded like the log on
disk (``consensus.compaction``: twice the state plus one entry per replica), and it counts
as the machine's memory, not its disk: ``RAFTPS_MEMORY_LOG_DIR`` names another tmpfs
folder, and an empty value keeps the segments on disk. A root with less than
``MIN_FREE_BYTES`` free when a replica opens its storage is not used.

``rmtree`` of a storage folder removes the links but not what they point to, so storage is
deleted with ``remove_storage_tree`` / ``remove_segments``. Nothing here needs Ray or
torch: a Ray node runs ``remove_storage_tree`` with the consensus package alone.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

from consensus.segments import Segments
from consensus.snapshot_files import fsync_dir

__all__ = ["MIN_FREE_BYTES", "ROOT_ENV", "link_segments", "memory_log_root", "open_segments",
           "remove_segments", "remove_storage_tree", "segments_target", "unusable"]

ROOT_ENV = "RAFTPS_MEMORY_LOG_DIR"
DEFAULT_ROOT = Path("/dev/shm")
SUBDIR = "raftps-log"
MIN_FREE_BYTES = 1 << 30
"""A root with less free space than this is not used (the segments stay on disk)."""
SEGMENTS_SUFFIX = ".segments"
LOG = logging.getLogger(__name__)
_WARNED: set[Path] = set()  # roots already warned about in this process


def memory_log_root() -> Path | None:
    """The folder memory-durability segments go under: ``$RAFTPS_MEMORY_LOG_DIR``, else
    ``/dev/shm``; None (segments on disk) when the variable is empty, or the folder is
    missing, not writable, or has less than ``MIN_FREE_BYTES`` free. The last three are
    logged as a warning, once per folder and process, with what to change."""
    value = os.environ.get(ROOT_ENV)
    if value == "":
        return None
    root = DEFAULT_ROOT if value is None else Path(value).absolute()  # links name it whole
    reason = unusable(root)
    if reason is None:
        return root
    if root not in _WARNED:
        _WARNED.add(root)
        LOG.warning("durability=memory: %s %s, so the log's segments stay on disk; set %s "
                    "to a tmpfs folder with at least %d MiB free (or to an empty value to "
                    "keep them on disk without this warning)", root, reason, ROOT_ENV,
                    MIN_FREE_BYTES >> 20)
    return None


def unusable(root: Path) -> str | None:
    """Why ``root`` cannot hold memory-durability segments (None if it can)."""
    try:
        if not root.is_dir():
            return "is not a folder"
        if not os.access(root, os.W_OK | os.X_OK):
            return "is not writable"
        free = shutil.disk_usage(root).free
    except OSError as exc:
        return f"cannot be used ({exc.strerror or exc})"
    if free < MIN_FREE_BYTES:
        return f"has {free >> 20} MiB free, less than {MIN_FREE_BYTES >> 20} MiB"
    return None


def segments_target(db_path: Path, root: Path) -> Path:
    """The folder under ``root`` that holds the segments of the database at ``db_path``."""
    digest = hashlib.sha256(str(db_path.resolve()).encode()).hexdigest()[:24]
    return root / SUBDIR / f"{db_path.name}-{digest}"


def link_segments(link: Path, db_path: Path, root: Path, *, fresh: bool) -> None:
    """Make ``link`` (``<db>.segments``) a symbolic link to the database's folder under
    ``root`` (see the module), unless it is a real folder already. ``fresh``: the database
    was just created, so what its folder holds is an earlier database's, and is cleared.
    An existing link whose folder is gone (a reboot cleared the tmpfs) gets it back, empty.
    """
    if link.is_symlink():
        Path(os.readlink(link)).mkdir(parents=True, exist_ok=True)
        return
    if link.exists():
        return
    target = segments_target(db_path, root)
    if fresh:
        shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target, target_is_directory=True)
    fsync_dir(link.parent)  # the link is durable before a row points into its folder


def open_segments(db_path: Path, root: Path | None, segment_bytes: int, *, sync: bool,
                  fresh: bool) -> Segments:
    """The payload segments of the database at ``db_path``, in ``<db>.segments``: a link to
    its folder under ``root`` when one is given (``link_segments``; ``fresh``: the database
    was just created). Segments in memory are written buffered: a tmpfs file's pages are its
    storage, so a direct write would copy twice, through its staging buffer first."""
    folder = db_path.with_name(db_path.name + SEGMENTS_SUFFIX)
    if root is not None:
        link_segments(folder, db_path, root, fresh=fresh)
    return Segments(folder, segment_bytes, sync, direct=not folder.is_symlink())


def remove_segments(path: Path) -> None:
    """Delete a segments folder: a link with the folder it points to, or a real folder."""
    if path.is_symlink():
        shutil.rmtree(os.readlink(path), ignore_errors=True)
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def remove_storage_tree(path: str, ignore_errors: bool = True) -> None:
    """``shutil.rmtree(path)`` that also deletes the folders the segment links inside point
    to (errors ignored, as ``rmtree(path, ignore_errors=True)``)."""
    top = Path(path)
    if top.is_dir() and not top.is_symlink():
        for folder, dirs, files in os.walk(top):  # links to folders are not followed
            for name in dirs + files:
                entry = Path(folder, name)
                if name.endswith(SEGMENTS_SUFFIX) and entry.is_symlink():
                    remove_segments(entry)
    shutil.rmtree(top, ignore_errors=ignore_errors)
