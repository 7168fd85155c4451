"""Persisted large entries are held as views of their stored bytes, not as copies.

A replica of a large model would otherwise keep every round since its last snapshot in
memory (hundreds of MB each), and every round its apply lags behind. The storage hands out
read-only, file-backed views of the payloads in its segment files; the core swaps them in
for persisted entries of the same term and length only; a restart loads segment payloads
as views too; a snapshot image is written part by part, never assembled.
"""

from __future__ import annotations

import asyncio
import random
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from consensus import replica_fresh
from consensus.buffers import gather, same_bytes
from consensus.config import RaftConfig
from consensus.core import RaftNode
from consensus.errors import StorageCorruptError
from consensus.payload_release import PayloadRelease, is_file_view
from consensus.raft_log import RaftLog
from consensus.segments import Segments
from consensus.session import Envelope, decode_batch, decode_run, encode_batch, encode_run
from consensus.storage import SqliteStorage, StorageConfig
from consensus.types import Entry, HardState, Role, SnapshotMeta
from tests.unit.lone_replica import lone_leader

BIG = 200_000  # above StorageConfig.inline_max_bytes: stored in a segment


def _entries(first: int, sizes: list[int], term: int = 1) -> list[Entry]:
    return [Entry(term=term, index=first + i, data=bytes([first + i]) * size)
            for i, size in enumerate(sizes)]


def test_segment_views_read_the_stored_bytes_without_copying(tmp_path: Path) -> None:
    segments = Segments(tmp_path / "seg", segment_bytes=1 << 30)
    (seg, off), = segments.append([b"a" * 1000])
    view = segments.view(seg, off, 1000)
    assert view is not None and view.readonly and bytes(view) == b"a" * 1000
    (seg2, off2), = segments.append([b"b" * 500])  # the segment grew past its mapping
    later = segments.view(seg2, off2, 500)
    assert later is not None and bytes(later) == b"b" * 500
    assert bytes(view) == b"a" * 1000  # an older view stays valid
    assert segments.view(seg, off2, 10_000) is None  # past the end of the file
    assert segments.view(seg + 5, 0, 10) is None  # no such segment
    segments.close()


def test_a_view_outlives_its_segment_being_collected(tmp_path: Path) -> None:
    segments = Segments(tmp_path / "seg", segment_bytes=100)
    (seg, off), = segments.append([b"x" * 200])
    segments.append([b"y" * 200])  # rotates: ``seg`` is no longer the current segment
    view = segments.view(seg, off, 200)
    assert view is not None
    segments.collect(live=set())
    assert not segments.path(seg).exists()
    assert bytes(view) == b"x" * 200
    segments.close()


def test_storage_views_cover_segment_payloads_only(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "r.db")
    storage.save(HardState(term=1), _entries(1, [10, BIG, BIG]), None)
    views = storage.payload_views(1, 3)
    assert sorted(views) == [2, 3]  # entry 1 is inline in sqlite
    term, view = views[2]
    assert term == 1 and isinstance(view, memoryview) and bytes(view) == bytes([2]) * BIG
    storage.close()


def test_a_restart_loads_segment_payloads_as_views_and_still_checks_them(
    tmp_path: Path,
) -> None:
    storage = SqliteStorage(tmp_path / "r.db")
    storage.save(HardState(term=1), _entries(1, [10, BIG]), None)
    storage.close()
    reopened = SqliteStorage(tmp_path / "r.db")
    _hs, _snap, entries = reopened.load()
    assert isinstance(entries[0].data, bytes)
    assert isinstance(entries[1].data, memoryview)
    assert bytes(entries[1].data) == bytes([2]) * BIG
    reopened.close()
    seg = next((tmp_path / "r.db.segments").glob("*.seg"))
    raw = bytearray(seg.read_bytes())
    raw[100] ^= 0xFF
    seg.write_bytes(bytes(raw))
    damaged = SqliteStorage(tmp_path / "r.db")
    with pytest.raises(StorageCorruptError, match="entry 2 CRC mismatch"):
        damaged.load()
    damaged.close()


def test_the_log_swaps_only_persisted_entries_of_the_same_term_and_length() -> None:
    log = RaftLog(entries=_entries(1, [4, 4]))  # a reloaded log: persisted
    log.append(_entries(3, [4]))  # not persisted yet
    same = memoryview(bytes([1]) * 4)
    swapped = log.swap_payloads({
        1: (1, same),
        2: (2, memoryview(bytes(4))),  # another term: not the same entry
        3: (1, memoryview(bytes(4))),  # not persisted
        9: (1, memoryview(b"")),  # not held
    })
    assert swapped == 1
    assert log.entries(1, 1)[0].data is same
    assert isinstance(log.entries(2, 2)[0].data, bytes)
    assert log.swap_payloads({2: (1, memoryview(bytes(3)))}) == 0  # length differs


def test_the_core_releases_persisted_entries_only() -> None:
    node = RaftNode(RaftConfig(id=1, voters=(1,)), random.Random(1))
    for _ in range(100):
        node.tick()
        if node.role == Role.LEADER:
            break
    ready = node.ready()
    node.advance(ready)  # the no-op of the new term, persisted
    index = node.propose(b"p" * 8)
    view = memoryview(b"p" * 8)
    assert node.release_payloads({index: (node.term, view)}) == 0  # not persisted yet
    node.advance(node.ready())  # persisted
    assert node.release_payloads({index: (node.term, view)}) == 1
    assert node.log.entries(index, index)[0].data is view


def test_a_snapshot_written_in_parts_equals_the_joined_image(tmp_path: Path) -> None:
    parts = [b"head", memoryview(b"x" * 70_000), bytearray(b"tail")]
    meta = SnapshotMeta(index=3, term=1, voters=(1,))
    storage = SqliteStorage(tmp_path / "r.db", StorageConfig())
    storage.save(HardState(term=1), _entries(1, [10, 10, 10]), None)
    storage.compact_parts(meta, parts)
    storage.close()
    _hs, snap, entries = SqliteStorage(tmp_path / "r.db").load()
    assert snap is not None and bytes(snap.data) == b"".join(bytes(p) for p in parts)
    assert entries == []
    assert zlib.crc32(bytes(snap.data)) == zlib.crc32(b"".join(bytes(p) for p in parts))


class Sizes:
    """A state machine that records the size of each command it applied."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def apply(self, command: bytes) -> int:
        assert isinstance(command, bytes)  # the contract: a command is its own bytes
        self.sizes.append(len(command))
        return len(command)

    def snapshot(self) -> bytes:
        return repr(self.sizes).encode()

    def restore(self, data: bytes) -> None:
        self.sizes = []

    def query(self, query: Any) -> list[int]:
        return list(self.sizes)


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replica_fresh, "ray_restarted", lambda: False)


def test_a_replica_holds_persisted_large_entries_as_views(tmp_path: Path) -> None:
    """Through a real one-replica group: once persisted, each large entry of the in-memory
    log is a view of its segment, small ones keep their bytes, and the results (applied
    from the views) are unchanged."""
    async def scenario() -> tuple[list[object], list[int]]:
        async with lone_leader(tmp_path, Sizes) as replica:
            sizes = [10, 2 << 20, 3 << 20]
            for seq, size in enumerate(sizes, start=1):
                assert await replica.propose("client", seq, b"c" * size, timeout=10.0) == size
            log = replica._node.log
            held = [log.entries(i, i)[0].data for i in range(log.snapshot_index + 1,
                                                            log.last_index + 1)]
            return held, replica.state_machine.sizes

    held, applied = asyncio.run(scenario())
    assert applied == [10, 2 << 20, 3 << 20]
    big = [d for d in held if len(d) >= 2 << 20]
    assert len(big) == 2 and all(isinstance(d, memoryview) for d in big)
    assert all(isinstance(d, bytes) for d in held if len(d) < 1 << 20)


def test_entries_held_in_buffers_of_their_own_are_released_too(tmp_path: Path) -> None:
    """A leader's gathered command and a follower's received entry are memoryviews of
    memory the process owns, not of a file: once persisted they too become file views, or
    a replica would hold every large round since its last snapshot in memory."""
    async def scenario() -> list[Any]:
        async with lone_leader(tmp_path, Sizes) as replica:
            for size in (2 << 20, 3 << 20):
                command = gather([b"g" * size])
                assert isinstance(command, memoryview) and not is_file_view(command)
                assert await replica.propose_command(command, timeout=10.0) == size
            log = replica._node.log
            return [log.entries(i, i)[0].data
                    for i in range(log.snapshot_index + 1, log.last_index + 1)]

    held = [d for d in asyncio.run(scenario()) if len(d) >= 2 << 20]
    assert len(held) == 2 and all(is_file_view(d) for d in held)
    assert not is_file_view(b"g" * 10) and not is_file_view(memoryview(b"g"))


class Views(Sizes):
    """A machine that takes commands as views of their entries (``command_views``)."""

    command_views = True

    def apply(self, command: bytes) -> int:
        assert isinstance(command, memoryview) and command.readonly
        self.sizes.append(len(command))
        return len(command)


def test_a_machine_that_opts_in_gets_views_of_its_commands(tmp_path: Path) -> None:
    async def scenario() -> list[int]:
        async with lone_leader(tmp_path, Views) as replica:
            for seq, size in enumerate([5, 2 << 20], start=1):
                assert await replica.propose("client", seq, b"v" * size, timeout=10.0) == size
            return list(replica.state_machine.sizes)

    assert asyncio.run(scenario()) == [5, 2 << 20]


def test_decoding_with_views_copies_no_command() -> None:
    batch = encode_batch([Envelope("c", 1, b"a" * 10), Envelope("c", 2, b"b" * 20)])
    viewed = decode_batch(batch, views=True)
    assert [bytes(e.command) for e in viewed] == [b"a" * 10, b"b" * 20]
    assert all(isinstance(e.command, memoryview) and e.command.readonly for e in viewed)
    assert all(type(e.command) is bytes for e in decode_batch(memoryview(batch)))
    run = encode_run("c", 1, [b"x" * 3, b"y" * 4], 0)
    assert [bytes(c) for c in decode_run(memoryview(run), views=True).commands] == [
        b"x" * 3, b"y" * 4]
    assert all(type(c) is bytes for c in decode_run(memoryview(run)).commands)


def test_same_bytes_compares_contents_across_buffer_types() -> None:
    big = np.arange(40 << 20, dtype=np.uint8).tobytes()  # more than one comparison slice
    late = bytearray(big)
    late[-1] ^= 1
    assert same_bytes(big, memoryview(bytearray(big)))
    assert same_bytes(memoryview(big), memoryview(big))  # the same memory
    assert not same_bytes(big, late)
    assert not same_bytes(big, big[:-1])
    assert same_bytes(b"", memoryview(b""))


def test_compaction_lets_go_of_the_old_image_and_rounds_in_another_thread(
    tmp_path: Path,
) -> None:
    """The last unmap of a replaced snapshot file or segment evicts its pages from the page
    cache (tenths of a second for hundreds of MB under load): compaction hands what it
    released (the previous snapshot, the compacted entries) to a thread of its own, so
    the drive loop, and with it ticks and heartbeats, never waits on it."""
    handed: list[list[Any]] = []

    async def scenario() -> None:
        async with lone_leader(tmp_path, Sizes, snapshot_every=2) as replica:
            real_submit = replica._releaser.submit

            def submit(fn: Any, *args: Any) -> Any:
                handed.append(list(fn.__self__))  # ``released.clear``: what it will drop
                return real_submit(fn, *args)

            replica._releaser.submit = submit  # type: ignore[method-assign]
            for seq in range(1, 6):
                await replica.propose("client", seq, b"r" * (2 << 20), timeout=10.0)

    asyncio.run(scenario())
    assert len(handed) >= 2  # compacted at least twice
    first, second = handed[0], handed[1]
    assert first[0] is None or first[0].meta.index == 0  # no earlier snapshot
    assert all(isinstance(e, Entry) for e in first[1]) and first[1]
    assert second[0] is not None and second[0].meta.index == first[1][-1].index


class Origins(Sizes):
    """A machine that records whether each command it got is a view of a mapped file."""

    command_views = True

    def __init__(self) -> None:
        super().__init__()
        self.from_file: list[bool] = []

    def apply(self, command: bytes) -> int:
        self.from_file.append(is_file_view(command))
        self.sizes.append(len(command))
        return len(command)


def test_the_apply_reads_a_large_entry_from_its_own_bytes_then_the_log_holds_a_view(
    tmp_path: Path,
) -> None:
    """With ``durability="disk"`` a large payload goes past the page cache: a view of it
    would read the disk back. So an entry keeps its bytes until applied, and only then does
    the log hold a view of its segment."""
    async def scenario() -> tuple[list[bool], list[Any]]:
        async with lone_leader(tmp_path, Origins) as replica:
            for seq, size in enumerate([2 << 20, 3 << 20], start=1):
                assert await replica.propose("client", seq, b"o" * size, timeout=10.0) == size
            log = replica._node.log
            held = [log.entries(i, i)[0].data
                    for i in range(log.snapshot_index + 1, log.last_index + 1)]
            return replica.state_machine.from_file, held

    from_file, held = asyncio.run(scenario())
    assert from_file == [False, False]
    assert [is_file_view(d) for d in held if len(d) >= 2 << 20] == [True, True]


class _Node:
    def __init__(self) -> None:
        self.swapped: list[int] = []

    def release_payloads(self, payloads: dict[int, tuple[int, memoryview]]) -> int:
        self.swapped += sorted(payloads)
        return len(payloads)


class _Storage:
    def payload_views(self, lo: int, hi: int) -> dict[int, tuple[int, memoryview]]:
        return {i: (1, memoryview(b"")) for i in range(lo, hi + 1)}


def test_release_waits_for_the_apply_and_holds_at_most_the_bound() -> None:
    release = PayloadRelease(hold=2)
    node, storage = _Node(), _Storage()
    big = 1 << 20
    release.persisted(_entries(1, [big, 10, big]))  # entry 2 is small: never held
    assert not release.due(applied=0)
    assert release.release(node, storage, 0) == 0  # type: ignore[arg-type]
    release.persisted(_entries(4, [big]))  # 3 held, 2 allowed: the oldest goes anyway
    assert release.due(applied=0)
    release.release(node, storage, 0)  # type: ignore[arg-type]
    assert node.swapped == [1]
    release.release(node, storage, 3)  # type: ignore[arg-type]
    assert node.swapped == [1, 3]
    release.persisted(_entries(4, [big, big], term=2))  # a new leader rewrote 4 and on
    release.release(node, storage, 4)  # type: ignore[arg-type]
    assert node.swapped == [1, 3, 4]
    assert not release.due(applied=4)
    release.release(node, storage, 9)  # type: ignore[arg-type]
    assert node.swapped == [1, 3, 4, 5]
