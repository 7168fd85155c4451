"""Where a replica applies committed entries: small ones on its event loop (a thread
hand-off costs more than the apply), large ones, or all with ``inline_apply_bytes=0``, in
its apply thread (a large model's optimizer step must not hold up ticks). A one-replica
group on a plain asyncio loop, no Ray."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from consensus import replica_fresh
from consensus.errors import ConfigError
from consensus.replica_config import RaftGroupConfig
from tests.unit.lone_replica import lone_leader


class ThreadRecorder:
    """A state machine that records the thread each command was applied on."""

    def __init__(self) -> None:
        self.threads: list[str] = []

    def apply(self, command: bytes) -> int:
        self.threads.append(threading.current_thread().name)
        return len(command)

    def snapshot(self) -> bytes:
        return b""

    def restore(self, data: bytes) -> None:
        self.threads = []

    def query(self, query: Any) -> list[str]:
        return list(self.threads)


def _applied_threads(tmp_path: Path, sizes: list[int], **config: Any) -> tuple[list[str], str]:
    async def scenario() -> tuple[list[str], str]:
        async with lone_leader(tmp_path, ThreadRecorder, **config) as replica:
            for seq, size in enumerate(sizes, start=1):
                await replica.propose("client", seq, b"c" * size, timeout=10.0)
            return replica.state_machine.threads, threading.current_thread().name

    return asyncio.run(scenario())


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replica_fresh, "ray_restarted", lambda: False)


def test_small_entries_apply_on_the_loop_and_large_ones_in_the_apply_thread(
    tmp_path: Path,
) -> None:
    threads, loop_thread = _applied_threads(tmp_path, [10, 200_000, 10],
                                            inline_apply_bytes=64 << 10)
    assert threads[0] == loop_thread and threads[2] == loop_thread
    assert threads[1].startswith("raft-apply")


def test_zero_sends_every_apply_to_the_thread(tmp_path: Path) -> None:
    threads, _loop = _applied_threads(tmp_path, [10, 10], inline_apply_bytes=0)
    assert all(name.startswith("raft-apply") for name in threads)


def test_a_negative_bound_is_refused() -> None:
    with pytest.raises(ConfigError, match="inline_apply_bytes must be >= 0"):
        RaftGroupConfig(inline_apply_bytes=-1)


class SlowOnce(ThreadRecorder):
    """Its first apply takes five ticks; the rest are instant."""

    def apply(self, command: bytes) -> int:
        if not self.threads:
            time.sleep(0.05)
        return super().apply(command)


def test_a_small_apply_slower_than_a_tick_sends_later_applies_to_the_thread(
    tmp_path: Path,
) -> None:
    async def scenario() -> tuple[list[str], str]:
        async with lone_leader(tmp_path, SlowOnce) as replica:  # ticks of 10 ms
            for seq in (1, 2, 3):
                await replica.propose("client", seq, b"c" * 10, timeout=10.0)
            return replica.state_machine.threads, threading.current_thread().name

    threads, loop_thread = asyncio.run(scenario())
    assert threads[0] == loop_thread
    assert [name.startswith("raft-apply") for name in threads[1:]] == [True, True]
