"""``Segments``: append-only payload files of one replica's log (``<db>.segments/<n>.seg``).

Payloads above ``StorageConfig.inline_max_bytes`` live here instead of in sqlite;
``consensus.storage`` records each one's segment, offset and size in the same transaction as
the rest of a Ready, after the bytes are appended (and, with ``sync``, fdatasync'ed).

``view`` hands out read-only, file-backed views of stored payloads: a replica keeps those in
its in-memory log instead of its own copies once entries are applied (the page cache holds
the bytes, and only a lagging follower's catch-up reads them back). Segments are only ever
appended to or unlinked (a direct write cuts back only the padding of its own last block),
never rewritten, so a view stays valid for as long as it is referenced; an unlinked
segment's disk space returns once its last view is dropped.

A payload of ``DIRECT_MIN_BYTES`` or more is written past the page cache
(``consensus.direct_io``) at the next block-aligned offset, so a few bytes of a hole may
precede it; smaller ones are buffered. The replica keeps such an entry's own bytes until it
is applied (``consensus.payload_release``): only a lagging follower's catch-up reads it
back, from disk. Without ``sync`` (``durability="memory"``) nothing is fdatasync'ed, but a
large payload is still written direct: it then waits for the device, not for a flush, and
on a busy host that costs far less than the buffered copy, writeback and eviction (r3
``memory`` at 20M in three interleaved pairs: 187/89, 194/103, 217/78 samples/s direct /
buffered, the buffered runs with 4 to 8 leader changes). Segments in shared memory
(``consensus.memory_log``) are created with ``direct=False``: a tmpfs file's pages are the
storage, so a buffered write is its only copy (16 vs 25 ms of CPU per 40 MB here), where
a direct one copies through the staging buffer first.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence
from pathlib import Path

from consensus import snapshot_files
from consensus.direct_io import ALIGN, STAGE_BYTES, SequentialWriter

__all__ = ["DIRECT_MIN_BYTES", "Segments"]

DIRECT_MIN_BYTES = 1 << 20
"""Payloads at least this large are written past the page cache."""


class Segments:
    """Append-only payload files ``<n>.seg`` in one directory; only the newest is written.

    Holds no index of its own: sqlite's ``payload_refs`` says which bytes are live.
    """

    def __init__(self, directory: Path, segment_bytes: int, sync: bool = True,
                 direct: bool = True) -> None:
        self.dir = directory
        self._sync = sync
        self._direct = direct  # large payloads past the page cache, until the fs refuses it
        self._stage: mmap.mmap | None = None  # the direct writes' staging buffer (lazy)
        self._limit = segment_bytes
        snapshot_files.durable_dir(directory)
        ids = self.ids()
        self.current = max(ids) if ids else 1
        self._fd = self._open(self.current)
        self._maps: dict[int, mmap.mmap] = {}  # segment -> its newest read-only mapping
        # segment -> its bytes on disk: stat'ed once here, then kept by append and collect
        # (``total_bytes`` runs after every write; a directory scan each time costs more)
        self._sizes = {seg: self.path(seg).stat().st_size for seg in ids}
        self._sizes.setdefault(self.current, 0)

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

    def append(self, payloads: Sequence[bytes | memoryview]) -> list[tuple[int, int]]:
        """Append ``payloads`` durably (fdatasync before returning); their (segment, offset).

        Blocks on disk IO. On OSError some bytes may have been written: they are orphans.
        """
        refs: list[tuple[int, int]] = []
        offset = os.fstat(self._fd).st_size  # after a failed append: past its orphan bytes
        self._sizes[self.current] = offset
        for data in payloads:
            if offset >= self._limit:
                if self._sync:
                    os.fdatasync(self._fd)
                os.close(self._fd)
                self.current += 1
                self._fd = self._open(self.current)
                self._sizes[self.current] = offset = 0
            view = memoryview(data).cast("B")
            if self._direct and len(view) >= DIRECT_MIN_BYTES:
                offset = -(-offset // ALIGN) * ALIGN
                refs.append((self.current, offset))
                offset = self._write_direct(view, offset)
            else:
                refs.append((self.current, offset))
                offset += len(view)
                while view:
                    view = view[os.write(self._fd, view):]
            self._sizes[self.current] = offset
        if self._sync:
            os.fdatasync(self._fd)
        return refs

    def _write_direct(self, view: memoryview, offset: int) -> int:
        """Write ``view`` into the current segment at ``offset`` (aligned) past the page
        cache; returns the file's end after it. A filesystem that refuses direct IO gets
        buffered writes, here and from now on."""
        if self._stage is None:
            self._stage = mmap.mmap(-1, STAGE_BYTES)
        with SequentialWriter(self.path(self.current), offset=offset,
                              stage=self._stage) as writer:
            writer.write(view)
            end = writer.finish(sync=False)  # the batch's fdatasync covers it
        self._direct = writer.direct
        return end

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

    def view(self, seg: int, offset: int, size: int) -> memoryview | None:
        """A read-only view of the ``size`` bytes at ``offset`` of segment ``seg``, backed by
        the file (no copy in this process); None if absent or short. A segment still being
        appended to is mapped again once a payload lies past its current mapping."""
        if size <= 0:
            return None
        mapped = self._maps.get(seg)
        if mapped is None or offset + size > len(mapped):
            try:
                with self.path(seg).open("rb") as fh:
                    if os.fstat(fh.fileno()).st_size < offset + size:
                        return None
                    mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            except FileNotFoundError:
                return None
            self._maps[seg] = mapped
        return memoryview(mapped)[offset:offset + size]

    def total_bytes(self) -> int:
        """Bytes of the segment files on disk, as this object wrote and deleted them (the
        bytes of an append that failed half-way count from the next append on)."""
        return sum(self._sizes.values())

    def collect(self, live: set[int]) -> None:
        """Delete every segment but the current one that is not in ``live``."""
        for seg in self.ids():
            if seg != self.current and seg not in live:
                self.path(seg).unlink(missing_ok=True)
                self._sizes.pop(seg, None)
                self._maps.pop(seg, None)  # unmapped once no view of it is left

    def close(self) -> None:
        self._maps.clear()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
