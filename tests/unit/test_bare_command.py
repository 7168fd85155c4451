"""A command proposed without a client session is its own log entry (``EntryKind.COMMAND``):
the entry's bytes are the command's, never copied into an envelope, and it applies once,
with its result, like any other command. A one-replica group on a plain asyncio loop."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from consensus import replica_fresh
from consensus.config import RaftConfig
from consensus.core import RaftNode
from consensus.errors import ConfigError
from consensus.replica_context import ReplicaContext
from consensus.types import EntryKind, Role
from tests.unit.lone_replica import lone_leader


class Recorder:
    """Records what each command arrived as; ``command_views`` is set per test."""

    command_views = False

    def __init__(self) -> None:
        self.seen: list[tuple[type, bytes]] = []

    def apply(self, command: bytes) -> int:
        self.seen.append((type(command), bytes(command[:4])))
        return len(command)

    def snapshot(self) -> bytes:
        return b""

    def restore(self, data: bytes) -> None:
        self.seen = []

    def query(self, query: Any) -> Any:
        return list(self.seen)


class ViewRecorder(Recorder):
    command_views = True


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replica_fresh, "ray_restarted", lambda: False)


def _run(tmp_path: Path, machine: type[Recorder],
         commands: list[bytes]) -> tuple[list[Any], list[Any], list[Any]]:
    async def scenario() -> tuple[list[Any], list[Any], list[Any]]:
        async with lone_leader(tmp_path, machine) as replica:
            ctx = ReplicaContext(replica)
            results = [await ctx.propose(c, timeout=10.0) for c in commands]
            log = replica._node.log
            entries = log.entries(log.snapshot_index + 1, log.last_index)
            return results, list(replica.state_machine.seen), entries

    return asyncio.run(scenario())


def test_a_context_proposal_is_one_bare_entry_and_applies_once(tmp_path: Path) -> None:
    commands = [b"abcd" * 3, b"wxyz" * (1 << 19)]  # a small one and a 2 MiB one
    results, seen, entries = _run(tmp_path, Recorder, commands)
    assert results == [12, 2 << 20]
    assert seen == [(bytes, b"abcd"), (bytes, b"wxyz")]  # a copy for a plain machine
    bare = [e for e in entries if e.kind == EntryKind.COMMAND]
    assert [bytes(e.data) for e in bare] == commands  # the entry holds the command as is


def test_a_machine_with_command_views_gets_a_view_of_the_entry(tmp_path: Path) -> None:
    results, seen, _entries = _run(tmp_path, ViewRecorder, [b"abcd" * 3, b"wxyz" * 5])
    assert results == [12, 20]
    assert seen == [(memoryview, b"abcd"), (memoryview, b"wxyz")]


def test_the_core_appends_the_proposed_object_itself_and_refuses_other_kinds() -> None:
    node = RaftNode(RaftConfig(id=1, voters=(1,)), random.Random(1))
    for _ in range(100):
        node.tick()
        if node.role == Role.LEADER:
            break
    data = b"c" * 100
    index = node.propose(data, EntryKind.COMMAND)
    entry = node.log.entries(index, index)[0]
    assert entry.kind == EntryKind.COMMAND and entry.data is data
    with pytest.raises(ConfigError, match="NORMAL or COMMAND"):
        node.propose(b"x", EntryKind.CONF_CHANGE)
