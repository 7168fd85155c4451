"""A healthy group keeps its leader whatever the entry size and however long an apply
takes: heartbeats and their answers never wait behind the fsync or the apply of a large
entry (applies run in a thread; ``RaftNode.early_messages`` goes out while a Ready is in
flight)."""

from __future__ import annotations

import functools
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

from consensus import RaftGroup, RaftGroupConfig

pytestmark = pytest.mark.usefixtures("ray_session")

# 50 ms ticks, election timeout 0.5-1.0 s, applies of 1.6 s and 16 MiB entries: a loop that
# waits for a core on a busy 2-core host (stalls of 0.3 s are logged there) stays inside the
# shortest timeout (with 20 ms ticks such a host fails this test in most runs)
TIMING = RaftGroupConfig(tick_interval_s=0.05, election_ticks=10, heartbeat_ticks=3, seed=3)
APPLY_S = 1.6  # the modelled optimizer step of a large shard (releases the GIL, like torch)


class SlowMachine:
    """Remembers each command's length and CRC; each apply of a large command takes
    ``APPLY_S`` seconds (a small one is applied on the replica's loop, and must be fast)."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def apply(self, command: bytes) -> int:
        if len(command) > TIMING.inline_apply_bytes:  # small commands must apply fast
            time.sleep(APPLY_S)  # models work that releases the GIL; no synchronisation
        self.seen.append((len(command), zlib.crc32(command)))
        return len(self.seen)

    def snapshot(self) -> bytes:
        return b"".join(struct.pack(">QI", n, c) for n, c in self.seen)

    def restore(self, data: bytes) -> None:
        self.seen = [struct.unpack_from(">QI", data, i) for i in range(0, len(data), 12)]

    def query(self, query: Any) -> Any:
        return list(self.seen)


def test_big_entries_and_slow_applies_cause_no_leader_change(tmp_path: Path) -> None:
    group = RaftGroup.create("big-entries", 3, functools.partial(SlowMachine),
                             str(tmp_path), config=TIMING)
    try:
        group.propose(b"warm-up", timeout=30)
        before = {r["index"]: r["term"] for r in group.status()}
        payloads = [bytes([i]) * (16 << 20) for i in range(6)]  # 16 MiB entries
        for i, payload in enumerate(payloads):
            assert group.propose(payload, timeout=60) == i + 2
        statuses = group.status()
        assert [r["leader_changes"] for r in statuses] == [0, 0, 0]
        assert {r["index"]: r["term"] for r in statuses} == before
        expected = [(7, zlib.crc32(b"warm-up"))] + [
            (len(p), zlib.crc32(p)) for p in payloads]
        assert group.read("seen", timeout=30) == expected
    finally:
        group.shutdown()
