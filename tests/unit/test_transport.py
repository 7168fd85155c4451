"""Peer transport: real localhost TCP between two event-loop endpoints, no Ray, no sleeps.

Delivery is awaited on an event set by the receiving callback (with a bound), never slept on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import struct
from typing import Any

import pytest

from consensus.transport import PeerTransport, loads_batch
from consensus.types import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    EntryKind,
    InstallSnapshot,
    InstallSnapshotResponse,
    RequestVote,
    RequestVoteResponse,
    SnapshotMeta,
    TimeoutNow,
)

TOKEN = os.urandom(32)
EVERY_MESSAGE: list[Any] = [
    RequestVote(1, 2, 3, 10, 2, pre_vote=True),
    RequestVoteResponse(2, 1, 3, True),
    AppendEntries(1, 2, 3, 9, 2, (Entry(3, 10, EntryKind.NORMAL, b"x" * 70_000),
                                  Entry(3, 11, EntryKind.CONF_CHANGE, b"cc")), 9, ctx=4),
    AppendEntriesResponse(2, 1, 3, False, 9, hint_index=5, hint_term=2),
    InstallSnapshot(1, 2, 3, SnapshotMeta(8, 2, (1, 2, 3)), 0, b"snap", True),
    InstallSnapshotResponse(2, 1, 3, 8, 4, True),
    TimeoutNow(1, 2, 3),
]


class Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned",))


def test_every_message_type_round_trips_through_the_safe_decoder() -> None:
    assert loads_batch(pickle.dumps(EVERY_MESSAGE, protocol=5)) == EVERY_MESSAGE


# A list holding builtins.print, written as raw opcodes: pickling the object itself fails
# whenever something (Ray's log redirection, for one) has swapped builtins.print out.
A_LIST_OF_PRINT = b"(lcbuiltins\nprint\na."


@pytest.mark.parametrize("frame", [pickle.dumps([Evil()], protocol=5), A_LIST_OF_PRINT,
                                   pickle.dumps({"not": "a list"}, protocol=5)])
def test_the_decoder_refuses_anything_but_raft_messages(frame: bytes) -> None:
    with pytest.raises(pickle.UnpicklingError):
        loads_batch(frame)


async def _pair(received: list[list[Any]], got: asyncio.Event) -> tuple[PeerTransport,
                                                                       PeerTransport]:
    def on_batch(batch: list[Any]) -> None:
        received.append(batch)
        got.set()

    server = PeerTransport(TOKEN, on_batch)
    client = PeerTransport(TOKEN, lambda batch: None)
    await server.start("127.0.0.1")
    return server, client


def test_a_batch_crosses_a_real_connection_once_it_is_up() -> None:
    async def scenario() -> None:
        received: list[list[Any]] = []
        got = asyncio.Event()
        server, client = await _pair(received, got)
        try:
            assert client.send(2, server.address, EVERY_MESSAGE) is False  # dialing: fallback
            assert await asyncio.to_thread(client.wait_connected, 2, 10)  # the dial
            assert client.send(2, server.address, EVERY_MESSAGE) is True
            await asyncio.wait_for(got.wait(), 10)
            assert received == [EVERY_MESSAGE]
        finally:
            client.close()
            server.close()

    asyncio.run(scenario())


def test_a_connection_with_a_wrong_token_or_a_hostile_batch_delivers_nothing() -> None:
    async def scenario() -> None:
        received: list[list[Any]] = []
        got = asyncio.Event()
        server, _ = await _pair(received, got)
        assert server.address is not None
        try:
            for token, body in ((os.urandom(32), pickle.dumps(EVERY_MESSAGE)),
                                (TOKEN, pickle.dumps([Evil()]))):
                reader, writer = await asyncio.open_connection(*server.address)
                for frame in (token, body):
                    writer.write(struct.pack(">I", len(frame)) + frame)
                await writer.drain()
                # closed on us: EOF, or a reset when our unread frame was discarded
                with contextlib.suppress(ConnectionResetError):
                    assert await asyncio.wait_for(reader.read(), 10) == b""
                writer.close()
            assert received == [] and not got.is_set()
        finally:
            server.close()

    asyncio.run(scenario())


def test_a_large_frame_arrives_whole_and_the_loop_stays_free() -> None:
    """A 64 MiB entry crosses whole, on the transport's threads, while the event loop
    keeps turning."""
    async def scenario() -> None:
        received: list[list[Any]] = []
        got = asyncio.Event()
        server, client = await _pair(received, got)
        try:
            client.send(2, server.address, [])
            assert await asyncio.to_thread(client.wait_connected, 2, 10)
            big = [AppendEntries(1, 2, 3, 9, 2, (Entry(3, 10, data=os.urandom(64 << 20)),), 9)]
            assert client.send(2, server.address, big) is True
            turns = 0
            while not got.is_set():
                await asyncio.sleep(0)  # one loop turn; counts how often the loop ran
                turns += 1
                if turns > 10_000_000:
                    raise AssertionError("the frame never arrived")
            assert received == [big]
            assert turns > 100
        finally:
            client.close()
            server.close()

    asyncio.run(scenario())
