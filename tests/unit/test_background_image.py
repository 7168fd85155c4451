"""A replica writes its snapshot's image in a thread of its own: while the image is written,
it keeps persisting (for a lone leader: committing) new entries, but applies none until the
image is durable, so the image is the state at its index. A one-replica group on a plain
asyncio loop, no Ray; the test holds the image thread inside ``snapshot_parts``."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from consensus import replica_fresh
from consensus.errors import StorageFullError
from consensus.types import Entry
from tests.unit.lone_replica import lone_leader

WAIT_S = 10.0


class GatedImage:
    """A state machine of the commands applied; an image of any of them waits for ``gate``."""

    def __init__(self) -> None:
        self.applied: list[bytes] = []
        self.gate = threading.Event()
        self.imaging = threading.Event()
        self.images: list[bytes] = []

    def apply(self, command: bytes) -> int:
        self.applied.append(bytes(command))
        return len(self.applied)

    def snapshot(self) -> bytes:
        return b"|".join(self.applied)

    def snapshot_parts(self) -> list[Any]:
        if not self.applied:  # the images before any command go through
            return [b""]
        self.imaging.set()
        if not self.gate.wait(WAIT_S):
            raise TimeoutError("the test never opened the gate")
        self.images.append(self.snapshot())  # what the image holds: read after the wait
        return [self.images[-1]]

    def restore(self, data: bytes) -> None:
        self.applied = [part for part in bytes(data).split(b"|") if part]

    def query(self, query: Any) -> list[bytes]:
        return list(self.applied)


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replica_fresh, "ray_restarted", lambda: False)


def _watch_saves(replica: Any, data: bytes) -> threading.Event:
    """An event set once the replica's storage saved an entry holding ``data``."""
    saved = threading.Event()
    save = replica._storage.save

    def watched(hard_state: Any, entries: Sequence[Entry], snapshot: Any) -> None:
        save(hard_state, entries, snapshot)
        if any(data in bytes(entry.data) for entry in entries):
            saved.set()

    replica._storage.save = watched
    return saved


def test_entries_are_persisted_while_the_image_is_written_and_applied_after(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with lone_leader(tmp_path, GatedImage, snapshot_every=1) as replica:
            machine = replica.state_machine
            assert isinstance(machine, GatedImage)
            await replica.propose("client", 1, b"first", timeout=WAIT_S)
            assert await asyncio.to_thread(machine.imaging.wait, WAIT_S)
            saved = _watch_saves(replica, b"second")
            second = asyncio.ensure_future(
                replica.propose("client", 2, b"second", timeout=WAIT_S))
            # the drive loop persists the entry while the image thread is held
            assert await asyncio.to_thread(saved.wait, WAIT_S)
            assert replica._node.log.committed > replica.applied_index
            assert machine.applied == [b"first"] and not second.done()
            machine.gate.set()
            assert await second == 2
            assert machine.images[0] == b"first"  # the state at the snapshot's index
            assert replica._snaps.index > 0  # adopted before the entry after it applied

    asyncio.run(scenario())


def test_a_disk_too_full_for_the_image_refuses_proposals_and_keeps_the_log(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with lone_leader(tmp_path, GatedImage, snapshot_every=1) as replica:
            machine = replica.state_machine
            assert isinstance(machine, GatedImage)
            machine.gate.set()

            refused = threading.Event()

            def full(meta: Any, parts: Any) -> Any:
                refused.set()
                raise StorageFullError(str(tmp_path / "r.db.snapshots"), 10 << 30, 1 << 20)

            replica._storage.write_image = full
            await replica.propose("client", 1, b"first", timeout=WAIT_S)
            before = replica._snaps.index  # of the image before "first": adopted before it
            assert await asyncio.to_thread(refused.wait, WAIT_S)
            # the failure is taken in before the next apply: this proposal is refused, or
            # applied with the failure recorded first
            with contextlib.suppress(StorageFullError):
                await replica.propose("client", 2, b"second", timeout=WAIT_S)
            assert replica._snaps.storage_full is not None
            with pytest.raises(StorageFullError, match=r"r\.db\.snapshots"):
                await replica.propose("client", 3, b"third", timeout=WAIT_S)
            assert replica._snaps.index == before and machine.applied[0] == b"first"

    asyncio.run(scenario())
