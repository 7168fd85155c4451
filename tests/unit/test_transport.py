"""Peer transport: real localhost TCP between two event-loop endpoints, no Ray, no sleeps.

Delivery is awaited on an event set by the receiving callback (with a bound), never slept on.
Authentication and the caps on connections are in test_transport_auth.py.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import pytest

from consensus.errors import ConfigError
from consensus.replica_config import RaftGroupConfig
from consensus.transport import PeerTransport
from consensus.types import AppendEntries, Entry, TimeoutNow
from tests.unit.test_wire import EVERY_MESSAGE

TOKEN = os.urandom(32)


async def _pair(received: list[list[Any]], got: asyncio.Event,
                **options: Any) -> tuple[PeerTransport, PeerTransport]:
    def on_batch(batch: list[Any]) -> None:
        received.append(batch)
        got.set()

    server = PeerTransport(TOKEN, on_batch, **options)
    client = PeerTransport(TOKEN, lambda batch: None, **options)
    await server.start("127.0.0.1")
    return server, client


async def _connect(client: PeerTransport, server: PeerTransport) -> None:
    assert client.send(2, server.address, []) is False  # dialing: the caller falls back
    assert await asyncio.to_thread(client.wait_connected, 2, 10)


def test_a_batch_crosses_a_real_connection_once_it_is_up() -> None:
    async def scenario() -> None:
        received: list[list[Any]] = []
        got = asyncio.Event()
        server, client = await _pair(received, got)
        try:
            await _connect(client, server)
            assert client.send(2, server.address, EVERY_MESSAGE) is True
            await asyncio.wait_for(got.wait(), 10)
            assert received == [EVERY_MESSAGE]
        finally:
            client.close()
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
            await _connect(client, server)
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


def test_a_batch_larger_than_one_frame_arrives_in_order_in_several() -> None:
    async def scenario() -> None:
        received: list[list[Any]] = []
        got = asyncio.Event()
        server, client = await _pair(received, got, max_entry_bytes=1000)
        try:
            await _connect(client, server)
            batch: list[Any] = [AppendEntries(1, 2, 3, i, 3, (Entry(3, i + 1, data=b"x" * 600),),
                                              0) for i in range(5)]
            batch.append(TimeoutNow(1, 2, 3))
            assert client.send(2, server.address, batch) is True
            while sum(map(len, received)) < len(batch):
                got.clear()
                await asyncio.wait_for(got.wait(), 10)
            assert [m for frame in received for m in frame] == batch
            assert len(received) == 5  # at most one 600-byte entry per 1000-byte frame
        finally:
            client.close()
            server.close()

    asyncio.run(scenario())


def test_a_message_too_large_for_a_frame_is_left_to_the_fallback() -> None:
    """One entry above ``max_entry_bytes`` is not sent over TCP (the caller sends it by Ray
    instead) and the connection stays up for what fits."""
    async def scenario() -> None:
        received: list[list[Any]] = []
        got = asyncio.Event()
        server, client = await _pair(received, got, max_entry_bytes=1000)
        try:
            await _connect(client, server)
            too_big = [TimeoutNow(1, 2, 3),
                       AppendEntries(1, 2, 3, 0, 0, (Entry(3, 1, data=b"x" * 1001),), 0)]
            assert client.send(2, server.address, too_big) is False
            assert client.connected(2)
            assert client.send(2, server.address, [TimeoutNow(1, 2, 4)]) is True
            await asyncio.wait_for(got.wait(), 10)
            assert received == [[TimeoutNow(1, 2, 4)]]  # nothing of the refused batch
        finally:
            client.close()
            server.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("options,reason", [
    ({"max_entry_bytes": 0}, "max_entry_bytes must be >= 1"),
    ({"handshake_s": 0.0}, "handshake_s must be > 0"),
    ({"max_pending": 0}, "max_pending and max_peers must be >= 1"),
    ({"max_peers": 0}, "max_pending and max_peers must be >= 1"),
])
def test_bad_settings_raise_a_config_error(options: dict[str, Any], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        PeerTransport(TOKEN, lambda batch: None, **options)
    with pytest.raises(ConfigError, match="at least 16 random bytes"):
        PeerTransport(b"short", lambda batch: None)


def test_the_group_frame_bound_must_hold_one_append_and_one_snapshot_chunk() -> None:
    with pytest.raises(ConfigError, match=r"peer_max_entry_bytes \(1048576\) must be >= "):
        RaftGroupConfig(peer_max_entry_bytes=1 << 20)  # below the 4 MiB max_msg_bytes
    assert RaftGroupConfig(peer_max_entry_bytes=4 << 20).peer_max_entry_bytes == 4 << 20


def test_small_batches_go_out_from_the_callers_thread_and_large_ones_from_the_sender(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The commit path's small messages skip the hand-off to the sender thread; a large
    entry still goes through it (never written by the event loop)."""
    import consensus.socket_io as socket_io

    by_sender: list[int] = []
    real = socket_io.send_buffers

    def recording(sock: Any, buffers: Any, progress: Any = None) -> None:
        by_sender.append(sum(memoryview(b).nbytes for b in buffers))
        real(sock, buffers, progress)

    monkeypatch.setattr(socket_io, "send_buffers", recording)

    async def scenario() -> None:
        received: list[list[Any]] = []
        got = asyncio.Event()
        server, client = await _pair(received, got)
        try:
            await _connect(client, server)
            small = [[TimeoutNow(1, 2, t)] for t in range(5)]
            for batch in small:
                assert client.send(2, server.address, batch) is True
            while len(received) < len(small):
                got.clear()
                await asyncio.wait_for(got.wait(), 10)
            assert received == small and by_sender == []
            big = [AppendEntries(1, 2, 3, 9, 2, (Entry(3, 10, data=b"y" * (1 << 20)),), 9)]
            assert client.send(2, server.address, big) is True
            while len(received) < len(small) + 1:
                got.clear()
                await asyncio.wait_for(got.wait(), 10)
            assert received[-1] == big and len(by_sender) == 1
        finally:
            client.close()
            server.close()

    asyncio.run(scenario())


def test_the_rest_of_a_partial_direct_send_goes_first_and_frames_stay_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A socket that takes only part of a small frame: the sender thread finishes that frame
    before anything queued after it, so the peer decodes every frame, in order."""
    import consensus.socket_io as socket_io

    partial = [True]

    def takes_ten_bytes(sock: Any, buffers: Any) -> list[memoryview]:
        views = socket_io.views_of(buffers)
        if not partial[0]:
            return real_some(sock, buffers)
        partial[0] = False
        head = bytes(views[0][:10])
        sock.sendall(head)
        return socket_io.advance(views, len(head))

    real_some = socket_io.send_some
    monkeypatch.setattr(socket_io, "send_some", takes_ten_bytes)

    async def scenario() -> None:
        received: list[list[Any]] = []
        got = asyncio.Event()
        server, client = await _pair(received, got)
        try:
            await _connect(client, server)
            batches = [[AppendEntries(1, 2, 3, i, 3, (Entry(3, i + 1, data=b"z" * 900),), 0)]
                       for i in range(6)]
            for batch in batches:
                assert client.send(2, server.address, batch) is True
            while len(received) < len(batches):
                got.clear()
                await asyncio.wait_for(got.wait(), 10)
            assert received == batches and not partial[0]
        finally:
            client.close()
            server.close()

    asyncio.run(scenario())


def _readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "raft-recv"]


async def _readers_done(readers: list[threading.Thread]) -> None:
    """Wait for ``readers`` (connection reader threads) to end, then for what they
    scheduled on the loop."""
    await asyncio.to_thread(lambda: [t.join(10) for t in readers])
    assert not any(t.is_alive() for t in readers)
    await asyncio.sleep(0)  # run the callbacks they handed to the loop


def _gone_scenario(close: str) -> list[int]:
    """Node 7 sends node 2 a message; then ``close`` happens: "sender" closes node 7's
    transport (what the kernel does when its process dies), "receiver" node 2's own, and
    "evicted" has node 8 connect to a node 2 that keeps one peer connection. Returns the
    node ids node 2's ``on_gone`` heard of."""
    async def scenario() -> list[int]:
        gone: list[int] = []
        got = asyncio.Event()
        server = PeerTransport(TOKEN, lambda batch: got.set(), on_gone=gone.append,
                               max_peers=1)
        client = PeerTransport(TOKEN, lambda batch: None)
        newer = PeerTransport(TOKEN, lambda batch: None)
        await server.start("127.0.0.1")
        try:
            await _connect(client, server)
            assert client.send(2, server.address, [TimeoutNow(7, 2, 1)]) is True
            await asyncio.wait_for(got.wait(), 10)
            if close == "sender":
                client.close()
            elif close == "receiver":
                server.close()
            else:  # node 7's reader ends when node 8's connection takes its place
                first = _readers()
                await _connect(newer, server)
                await _readers_done(first)
                server.close()
            await _readers_done(_readers())
        finally:
            for transport in (client, newer, server):
                transport.close()
        return gone

    return asyncio.run(scenario())


def test_a_peer_closing_its_connection_is_reported_with_its_node_id() -> None:
    assert _gone_scenario("sender") == [7]


@pytest.mark.parametrize("close", ["receiver", "evicted"])
def test_connections_closed_on_our_side_report_no_peer_gone(close: str) -> None:
    assert _gone_scenario(close) == []


def test_a_peer_that_goes_is_noticed_on_the_outgoing_side_before_anything_is_sent() -> None:
    """The kernel closes a dead process's sockets; the first write into such a connection
    still succeeds, so a batch sent then would be lost silently (a vote for a restarted
    replica waited a whole election timeout). The connection is watched instead: it is
    seen closed without a send, and the next batch goes to the caller's fallback."""
    async def scenario() -> None:
        received: list[list[Any]] = []
        got = asyncio.Event()
        server, client = await _pair(received, got)
        try:
            await _connect(client, server)
            assert client.send(2, server.address, [TimeoutNow(7, 2, 1)]) is True
            await asyncio.wait_for(got.wait(), 10)
            assert not client.failed(2)
            server.close()  # node 2's process goes
            assert await asyncio.to_thread(client.wait_closed, 2, 10)
            assert client.failed(2) and not client.connected(2)
            assert client.send(2, server.address, [TimeoutNow(7, 2, 1)]) is False
        finally:
            client.close()
            server.close()

    asyncio.run(scenario())


def test_a_large_frame_reports_its_progress_on_both_sides() -> None:
    """While a 64 MiB entry crosses, the sender hears ``on_active`` about the receiver each
    ``PROGRESS_BYTES`` the socket took, and the receiver about the sender (known from an
    earlier frame on that connection) each ``PROGRESS_BYTES`` that arrived: heartbeats
    queue behind such a frame, and these reports stand in for them. Small frames report
    nothing."""
    from consensus.socket_io import PROGRESS_BYTES

    async def scenario() -> tuple[list[int], list[int]]:
        heard_by_server: list[int] = []
        heard_by_client: list[int] = []
        got: list[list[Any]] = []
        arrived = asyncio.Event()

        def on_batch(batch: list[Any]) -> None:
            got.append(batch)
            arrived.set()

        server = PeerTransport(TOKEN, on_batch, on_active=heard_by_server.append)
        client = PeerTransport(TOKEN, lambda batch: None, on_active=heard_by_client.append)
        await server.start("127.0.0.1")
        await client.start("127.0.0.1")  # its loop hears its sender thread's reports
        try:
            await _connect(client, server)
            assert client.send(2, server.address, [TimeoutNow(7, 2, 1)]) is True
            await asyncio.wait_for(arrived.wait(), 10)  # node 2 now knows the sender: 7
            assert heard_by_server == [] and heard_by_client == []  # a small frame
            arrived.clear()
            big = [AppendEntries(7, 2, 3, 9, 2, (Entry(3, 10, data=os.urandom(64 << 20)),), 9)]
            assert client.send(2, server.address, big) is True
            await asyncio.wait_for(arrived.wait(), 30)
            await asyncio.sleep(0)  # the callbacks the threads scheduled before the batch
            return heard_by_server, heard_by_client
        finally:
            client.close()
            server.close()

    by_server, by_client = asyncio.run(scenario())
    expected = (64 << 20) // PROGRESS_BYTES
    assert by_server and set(by_server) == {7} and len(by_server) >= expected - 1
    assert by_client and set(by_client) == {2} and len(by_client) >= expected - 1
