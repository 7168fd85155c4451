"""Snapshot images as files beside the Raft database, and the disk space writing them needs.

A snapshot image can be larger than sqlite's 1e9-byte BLOB cap (a 125M-parameter shard with
Adam state is ~1.5 GB), so :class:`SnapshotFiles` keeps each image in its own file under
``<db>.snapshots/`` and sqlite keeps only its name, size and CRC (``consensus.storage``).

Contract of :meth:`SnapshotFiles.write` (blocks on disk IO, GIL released in the syscalls):

1. the free space of the directory's filesystem is checked first (:func:`check_space`);
   too little raises :class:`StorageFullError` before anything is created;
2. the image goes to ``<name>.tmp`` in ``CHUNK_BYTES`` memoryview slices of the caller's
   buffer (no second full-size copy; past the page cache where the filesystem allows it,
   ``consensus.direct_io``: the file is read back only on a restart or for a follower that
   needs a snapshot), its checksum (the owner database's function,
   ``consensus.checksums``, chained chunk by chunk from a caller-given seed) computed on the
   same slices;
3. the file is fsync'ed, renamed to ``<index>-<term>.snap`` (``<index>-<term>.<k>.snap``
   if that name exists: a name is never reused while a row may reference it) and the
   directory fsync'ed, so the name and the bytes are durable when ``write`` returns.

With a group incarnation (``consensus.incarnation``), the file starts with a header of
``HEADER_BYTES`` (a magic and the incarnation id; a multiple of the mmap granularity, so the
image after it can still be mapped) and :meth:`SnapshotFiles.read` refuses a file of another
incarnation (``IncarnationMismatchError``). Without one, the file is the bare image.

The caller records the returned :class:`StoredSnapshot` in its own transaction only after
that, and calls :meth:`SnapshotFiles.collect` once the transaction committed. A crash at any
point thus leaves the previously referenced file intact; files no row references (an
uncommitted new image, a superseded old one, a ``.tmp``) are orphans that ``collect``
deletes. ENOSPC during the write deletes the partial file and raises StorageFullError.

:meth:`SnapshotFiles.read` checks the size before reading, reads the image into ONE bytes
object of that size (``FileIO.readall`` sizes its buffer from ``fstat``), and verifies the CRC
chunk by chunk; a missing, short, long or CRC-failing file raises StorageCorruptError naming
it. Not thread-safe (one thread at a time, like the storage that owns it).

:func:`durable_dir` and :func:`fsync_dir` make created directories and names durable: every
directory level created is fsync'ed into its parent.
"""

from __future__ import annotations

import errno
import mmap
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consensus.checksums import Checksum, crc32c
from consensus.direct_io import SequentialWriter
from consensus.errors import StorageCorruptError, StorageFullError
from consensus.incarnation import IncarnationMismatchError

CHUNK_BYTES = 16 << 20
"""Bytes written (and checksummed) per slice."""
SPACE_RESERVE_BYTES = 1 << 20
"""Free space :func:`check_space` demands beyond the write itself: room for the sqlite
transaction that records it, so that a snapshot that just fits does not fail at commit."""

_SUFFIX = ".snap"
_TMP = ".tmp"
MAGIC = b"\x89raftps-snap\r\n\x1a\n"
"""First bytes of a snapshot file that carries an incarnation header."""
HEADER_BYTES = max(4096, mmap.ALLOCATIONGRANULARITY)
"""Size of that header: the image starts at this offset (mmap-able)."""
_ID_BYTES = 64


def _header(incarnation: str) -> bytes:
    raw = incarnation.encode("ascii")
    return (MAGIC + raw.ljust(_ID_BYTES, b"\0")).ljust(HEADER_BYTES, b"\0")


def _header_id(header: bytes) -> str | None:
    """The incarnation in ``header``; None if it is not one of ours."""
    if len(header) != HEADER_BYTES or not header.startswith(MAGIC):
        return None
    raw = header[len(MAGIC):len(MAGIC) + _ID_BYTES].rstrip(b"\0")
    try:
        return raw.decode("ascii") or None
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True, slots=True)
class StoredSnapshot:
    """Where a durable image lives: its file name in the directory, size and checksum."""

    name: str
    size: int
    crc: int


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use on ``path``'s filesystem; None if unknown."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def check_space(path: Path, nbytes: int) -> None:
    """Raise StorageFullError unless ``path``'s filesystem has ``nbytes`` plus
    ``SPACE_RESERVE_BYTES`` free. One ``statvfs``; writes nothing."""
    needed = nbytes + SPACE_RESERVE_BYTES
    free = shutil.disk_usage(path).free
    if free < needed:
        raise StorageFullError(str(path), needed, free)


@contextmanager
def full_on_enospc(path: Path, nbytes: int | None) -> Iterator[None]:
    """Turn an ``OSError(ENOSPC)`` (or EDQUOT) raised inside into StorageFullError naming
    ``path``; the caller's cleanup decides what the partial write leaves."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise StorageFullError(str(path), nbytes, free_bytes(path)) from exc


def durable_dir(path: Path) -> None:
    """Create ``path`` and any missing parents; each created level is fsync'ed into its
    parent, so the directories survive a power loss."""
    missing: list[Path] = []
    level = path
    while not level.is_dir():
        missing.append(level)
        if level.parent == level:
            break
        level = level.parent
    for created in reversed(missing):
        created.mkdir(exist_ok=True)
        fsync_dir(created.parent)


def fsync_dir(path: Path) -> None:
    """fsync a directory, making the names created or renamed in it durable; given a
    regular file, it makes the file's bytes durable (the same call)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _byte_views(parts: Sequence[Any]) -> list[memoryview]:
    return [memoryview(part).cast("B") for part in parts]


def _write_synced(path: Path, parts: Sequence[memoryview], crc: int, checksum: Checksum,
                  header: bytes = b"") -> int:
    """Write ``header`` then the image, the concatenation of ``parts``, to ``path`` (in
    CHUNK_BYTES slices of each part, past the page cache where the filesystem allows:
    ``consensus.direct_io``) and fsync it; the CRC chained from ``crc`` over the image's
    bytes (``checksum``)."""
    with SequentialWriter(path) as writer:
        if header:
            writer.write(header)
        for view in parts:
            for start in range(0, len(view), CHUNK_BYTES):
                chunk = view[start:start + CHUNK_BYTES]
                crc = checksum(chunk, crc)
                writer.write(chunk)
        writer.finish(sync=True)
    return crc


class SnapshotFiles:
    """The image files of one replica's snapshots, in a directory no one else writes.

    Holds no index of its own: the owner's database says which file is live.
    """

    def __init__(self, directory: Path, owner: Path, incarnation: str | None = None, *,
                 checksum: Checksum = crc32c) -> None:
        """Use (creating if missing) ``directory``; ``owner`` (the database) names errors;
        ``incarnation``: the group incarnation every file is stamped with and checked
        against (None: bare images, nothing checked); ``checksum``: the owner's function
        (``consensus.checksums``)."""
        self.dir = directory
        self._checksum = checksum
        self._owner = owner
        self._incarnation = incarnation
        durable_dir(directory)

    @property
    def image_offset(self) -> int:
        """Where the image starts in the files this writes (after the header, if any)."""
        return HEADER_BYTES if self._incarnation is not None else 0

    def map(self, path: Path) -> mmap.mmap:
        """A read-only mapping of the image in ``path``, a file this object wrote (the page
        cache holds it, not this process)."""
        with path.open("rb") as fh:
            return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ, offset=self.image_offset)

    def path(self, name: str) -> Path:
        return self.dir / name

    def write(self, index: int, term: int, parts: Sequence[Any],
              crc_seed: int = 0) -> StoredSnapshot:
        """Make the image, the concatenation of ``parts`` (bytes-like), a durable file (see
        the module docstring), written part by part; blocks on disk IO.

        Raises StorageFullError (before creating anything if the free-space check fails;
        after deleting the partial file on ENOSPC). On any error no new file remains.
        """
        views = _byte_views(parts)
        size = sum(len(v) for v in views)
        check_space(self.dir, size)
        name = self._fresh_name(index, term)
        final, tmp = self.path(name), self.path(name + _TMP)
        try:
            with full_on_enospc(self.dir, size + self.image_offset):
                header = b"" if self._incarnation is None else _header(self._incarnation)
                crc = _write_synced(tmp, views, crc_seed, self._checksum, header)
                os.replace(tmp, final)
                fsync_dir(self.dir)
        except BaseException:
            tmp.unlink(missing_ok=True)
            final.unlink(missing_ok=True)  # a fresh name: no row references it
            raise
        return StoredSnapshot(name=name, size=size, crc=crc)

    def _fresh_name(self, index: int, term: int) -> str:
        base, k = f"{index}-{term}", 0
        name = base + _SUFFIX
        while self.path(name).exists():
            k += 1
            name = f"{base}.{k}{_SUFFIX}"
        return name

    def read(self, stored: StoredSnapshot, crc_seed: int = 0) -> bytes:
        """The verified image ``stored`` names; blocks on disk IO.

        Raises StorageCorruptError naming the file if it is missing, not exactly
        ``stored.size`` bytes (plus its header), or fails its CRC; IncarnationMismatchError
        if it belongs to another incarnation than this object's. Allocates one buffer of
        ``stored.size``.
        """
        path = self.path(stored.name)
        if Path(stored.name).name != stored.name or not stored.name.endswith(_SUFFIX):
            raise self._corrupt(f"snapshot file name {stored.name!r} is invalid")
        try:
            with open(path, "rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                found = None
                if size == stored.size + HEADER_BYTES:
                    found = _header_id(f.read(HEADER_BYTES))
                if size != stored.size and found is None:
                    raise self._corrupt(f"snapshot file {path} has {size} bytes, expected "
                                        f"{stored.size + self.image_offset}")
                if self._incarnation is not None and found != self._incarnation:
                    raise IncarnationMismatchError(str(path), self._incarnation, found)
                data = f.readall()  # from the image's start: one buffer of its size
        except FileNotFoundError:
            raise self._corrupt(f"snapshot file {path} is missing") from None
        if len(data) != stored.size:
            raise self._corrupt(
                f"snapshot file {path} read {len(data)} bytes, expected {stored.size}")
        crc, view = crc_seed, memoryview(data)
        for start in range(0, len(view), CHUNK_BYTES):
            crc = self._checksum(view[start:start + CHUNK_BYTES], crc)
        if crc != stored.crc:
            raise self._corrupt(f"snapshot file {path} CRC mismatch")
        return data

    def _corrupt(self, detail: str) -> StorageCorruptError:
        return StorageCorruptError(str(self._owner), detail)

    def discard(self, name: str) -> None:
        """Delete the file ``name`` if present (one no committed row references)."""
        self.path(name).unlink(missing_ok=True)

    def collect(self, keep: str | None) -> None:
        """Delete every snapshot and temp file but ``keep``; only names this class makes.

        Best effort, as it runs after a commit: a file it cannot delete (OSError) stays an
        orphan, never read, until the next ``collect``."""
        for entry in os.scandir(self.dir):
            ours = entry.name.endswith(_SUFFIX) or entry.name.endswith(_SUFFIX + _TMP)
            if ours and entry.name != keep:
                try:
                    self.discard(entry.name)
                except OSError:
                    continue

    def total_bytes(self) -> int:
        """Bytes of the files in the directory (stat calls only; orphans included)."""
        return sum(e.stat().st_size for e in os.scandir(self.dir) if e.is_file())
