"""Peer transport security: the challenge-response handshake, what a connection may send
before and after it, and the caps on connections. Real localhost TCP, no Ray.

Nothing is slept on. "Nothing was delivered" is checked with a sentinel: after the hostile
connection was closed by the server, a legitimate peer sends a batch; anything the hostile
one had delivered would have reached the loop before it.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from consensus import handshake, socket_io, transport, wire
from consensus.handshake import HELLO, HandshakeError, client_handshake, proof
from consensus.transport import PeerTransport
from consensus.types import AppendEntries, Entry, TimeoutNow

TOKEN = os.urandom(32)
SENTINEL = [TimeoutNow(9, 2, 1)]


class Server:
    """A listening PeerTransport and what it delivered."""

    def __init__(self, **options: Any) -> None:
        self.received: list[list[Any]] = []
        self.got = asyncio.Event()
        self.transport = PeerTransport(TOKEN, self._on_batch, **options)
        self.address: tuple[str, int] = ("", 0)

    def _on_batch(self, batch: list[Any]) -> None:
        self.received.append(batch)
        self.got.set()

    async def delivered_only_the_sentinel(self, prior: int = 0) -> bool:
        """Send the sentinel from a fresh legitimate peer; whether it was the only batch
        delivered after the first ``prior`` ones."""
        client = PeerTransport(TOKEN, lambda batch: None)
        try:
            client.send(2, self.address, [])
            assert await asyncio.to_thread(client.wait_connected, 2, 10)
            assert client.send(2, self.address, SENTINEL)
            while SENTINEL not in self.received:
                self.got.clear()
                await asyncio.wait_for(self.got.wait(), 10)
            return self.received[prior:] == [SENTINEL]
        finally:
            client.close()


@asynccontextmanager
async def serving(**options: Any) -> AsyncIterator[Server]:
    server = Server(**options)
    server.address = await server.transport.start("127.0.0.1")
    try:
        yield server
    finally:
        server.transport.close()


def dial(address: tuple[str, int]) -> socket.socket:
    return socket.create_connection(address, timeout=10)


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closes ``sock`` (EOF or reset) within 10 s; reads at most 1 KiB
    of whatever it still sends first."""
    sock.settimeout(10)
    try:
        while sock.recv(1024):
            pass
    except ConnectionResetError:
        pass
    return True


def read(sock: socket.socket, size: int) -> bytes:
    return handshake.recv_within(sock, size, time.monotonic() + 10)


def answer(sock: socket.socket) -> bytes:
    """The server's answer to a proof: ACCEPTED, or b"" when it closes the connection."""
    sock.settimeout(10)
    try:
        got = sock.recv(1)
    except ConnectionResetError:
        return b""
    if not got:
        return b""
    assert closed_by_server(sock) if got != handshake.ACCEPTED else True
    return got


def authenticated(address: tuple[str, int], token: bytes = TOKEN) -> socket.socket:
    sock = dial(address)
    client_handshake(sock, token, 10)
    return sock


class Recorder:
    """A socket that keeps a copy of everything sent through it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sent = bytearray()

    def sendall(self, data: bytes) -> None:
        self.sent += data
        self.sock.sendall(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def run(scenario: Callable[[], Any]) -> None:
    asyncio.run(scenario())


def test_a_wrong_token_is_refused_by_both_sides() -> None:
    async def scenario() -> None:
        async with serving() as server:
            # a dialer with another token: the server's proof does not verify, no connection
            stranger = PeerTransport(os.urandom(32), lambda batch: None)
            try:
                stranger.send(2, server.address, [])
                assert await asyncio.to_thread(stranger.wait_connected, 2, 10) is False
                assert stranger.send(2, server.address, SENTINEL) is False
            finally:
                stranger.close()

            # a client that answers the challenge with another token's proof is closed on
            def wrong_proof() -> bytes:
                with dial(server.address) as sock:
                    nonce = os.urandom(32)
                    sock.sendall(HELLO.pack(handshake.MAGIC, nonce))
                    challenge = read(sock, 64)
                    sock.sendall(proof(os.urandom(32), b"raftps peer client proof\n", nonce,
                                       challenge[:32]))
                    return answer(sock)

            assert await asyncio.to_thread(wrong_proof) == b""  # no ACCEPTED byte
            assert await server.delivered_only_the_sentinel()

    run(scenario)


def test_a_replayed_handshake_is_refused() -> None:
    async def scenario() -> None:
        async with serving() as server:
            def record() -> tuple[bytes, bytes]:
                with dial(server.address) as sock:
                    recorder = Recorder(sock)
                    client_handshake(recorder, TOKEN, 10)  # type: ignore[arg-type]
                    return bytes(recorder.sent[:HELLO.size]), bytes(recorder.sent[HELLO.size:])

            hello, client_proof = await asyncio.to_thread(record)

            def replay() -> bytes:
                with dial(server.address) as sock:
                    sock.sendall(hello)
                    read(sock, 64)  # a fresh challenge
                    sock.sendall(client_proof)
                    return answer(sock)

            assert await asyncio.to_thread(replay) == b""
            assert await server.delivered_only_the_sentinel()

    run(scenario)


def test_a_replayed_server_challenge_is_refused_by_the_client() -> None:
    """A fake server that answers with a challenge recorded from another connection."""
    async def scenario() -> None:
        async with serving() as server:
            def record_challenge() -> bytes:
                with dial(server.address) as sock:
                    sock.sendall(HELLO.pack(handshake.MAGIC, os.urandom(32)))
                    return read(sock, 64)

            recorded = await asyncio.to_thread(record_challenge)

        def impostor() -> None:
            ours, theirs = socket.socketpair()
            with ours, theirs:
                theirs.sendall(recorded)  # sent before the hello: the client reads it after
                with pytest.raises(HandshakeError, match="proof does not match"):
                    client_handshake(ours, TOKEN, 10)

        await asyncio.to_thread(impostor)

    run(scenario)


def test_a_giant_pre_auth_length_prefix_is_dropped_without_being_buffered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The length-prefixed frames of an older peer, or of a stranger, are never read:
    before authentication a connection is read the fixed hello only."""
    reads: list[int] = []
    buffers: list[int] = []
    real_recv, real_buffer = handshake.recv_within, socket_io.empty_buffer

    def recording_recv(sock: socket.socket, size: int, deadline: float) -> bytes:
        reads.append(size)
        return real_recv(sock, size, deadline)

    def recording_buffer(size: int) -> memoryview:
        buffers.append(size)
        return real_buffer(size)

    monkeypatch.setattr(handshake, "recv_within", recording_recv)
    monkeypatch.setattr(socket_io, "empty_buffer", recording_buffer)

    async def scenario() -> None:
        async with serving(handshake_s=30.0) as server:
            def attack() -> None:
                with dial(server.address) as sock:
                    sock.sendall(struct.pack(">I", 1 << 30) + os.urandom(HELLO.size))
                    assert closed_by_server(sock)

            await asyncio.to_thread(attack)
            assert reads == [HELLO.size] and buffers == []  # the hello's 36 bytes, no more
            assert await server.delivered_only_the_sentinel()

    run(scenario)


def test_a_silent_or_slow_connection_is_dropped_at_the_handshake_deadline() -> None:
    async def scenario() -> None:
        async with serving(handshake_s=0.3) as server:
            def half_hello() -> None:
                with dial(server.address) as sock:
                    sock.sendall(HELLO.pack(handshake.MAGIC, os.urandom(32))[:10])
                    assert closed_by_server(sock)

            def silent_after_the_challenge() -> None:
                with dial(server.address) as sock:
                    sock.sendall(HELLO.pack(handshake.MAGIC, os.urandom(32)))
                    assert len(read(sock, 64)) == 64
                    assert closed_by_server(sock)

            await asyncio.to_thread(half_hello)
            await asyncio.to_thread(silent_after_the_challenge)
            assert await server.delivered_only_the_sentinel()

    run(scenario)


def test_a_thousand_idle_connections_do_not_lock_peers_out() -> None:
    """Idle strangers fill the handshake slots (at most ``max_pending`` wait, the oldest
    is closed for a newcomer): an authenticated peer keeps delivering and a new one gets
    in; every idle connection is closed, by a newcomer or at the deadline."""
    async def scenario() -> None:
        async with serving(handshake_s=1.0, max_pending=8) as server:
            peer = PeerTransport(TOKEN, lambda batch: None)
            try:
                peer.send(2, server.address, [])
                assert await asyncio.to_thread(peer.wait_connected, 2, 10)
                idle = await asyncio.to_thread(lambda: [dial(server.address)
                                                        for _ in range(1000)])
                try:
                    assert peer.send(2, server.address, [TimeoutNow(1, 2, 7)])
                    await asyncio.wait_for(server.got.wait(), 10)
                    assert server.received == [[TimeoutNow(1, 2, 7)]]
                    assert await server.delivered_only_the_sentinel(prior=1)  # a newcomer
                    assert await asyncio.to_thread(lambda: all(map(closed_by_server, idle)))
                    assert server.transport.peak_pending <= 8
                finally:
                    for sock in idle:
                        sock.close()
            finally:
                peer.close()

    run(scenario)


def test_authenticated_connections_beyond_the_cap_close_the_oldest() -> None:
    async def scenario() -> None:
        async with serving(max_peers=2) as server:
            def three() -> None:
                first = authenticated(server.address)
                second = authenticated(server.address)
                with first, second, authenticated(server.address) as third:
                    assert closed_by_server(first)
                    for sock in (second, third):  # still served
                        sock.sendall(b"".join(bytes(b) for b in wire.encode(SENTINEL)))

            await asyncio.to_thread(three)
            while len(server.received) < 2:
                server.got.clear()
                await asyncio.wait_for(server.got.wait(), 10)
            assert server.received == [SENTINEL, SENTINEL]

    run(scenario)


def su(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


@pytest.mark.parametrize("attack", ["oversized", "pickle", "bad tag"])
def test_after_authentication_a_bad_frame_drops_the_connection_and_runs_nothing(
        attack: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    buffers: list[int] = []
    real_buffer = socket_io.empty_buffer

    def recording_buffer(size: int) -> memoryview:
        buffers.append(size)
        return real_buffer(size)

    monkeypatch.setattr(socket_io, "empty_buffer", recording_buffer)
    marker = tmp_path / "ran"
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    evil = (b"\x80\x04" + su("consensus.types") + su("enum.bltns.eval") + b"\x93" + su(code)
            + b"\x85R.")
    big = AppendEntries(1, 2, 3, 0, 0, (Entry(3, 1, data=b"x" * 1001),), 0)
    whole = b"".join(bytes(b) for b in wire.encode([big]))
    frames = {
        "oversized": whole[:-1001],  # a valid preamble and header; the payload would follow
        "pickle": evil + pickle.dumps(SENTINEL),
        "bad tag": wire.PREAMBLE.pack(wire.MAGIC, 5, 0) + b"\0\0\0\x01\x63",
    }

    async def scenario() -> None:
        async with serving(max_entry_bytes=1000) as server:
            def send() -> None:
                with authenticated(server.address) as sock:
                    sock.sendall(frames[attack])
                    assert closed_by_server(sock)

            await asyncio.to_thread(send)
            assert await server.delivered_only_the_sentinel()
        assert not marker.exists()
        assert max(buffers) <= 64  # preambles and headers only: no payload was allocated

    run(scenario)


def test_refused_connections_are_logged_at_most_once_per_period(
        caplog: pytest.LogCaptureFixture) -> None:
    throttled = transport._Throttled()
    with caplog.at_level("WARNING", logger="consensus.transport"):
        for i in range(3):
            throttled.warn("peer connection refused: %s", i)
        assert [r.getMessage() for r in caplog.records] == ["peer connection refused: 0"]
        throttled._last -= transport._REPORT_S  # the period is over
        throttled.warn("peer connection refused: %s", 3)
    assert caplog.records[-1].getMessage() == (
        "peer connection refused: 3 (2 more like it not logged)")
