"""``PeerTransport``: replica-to-replica Raft messages over TCP, on threads of their own.

A Ray actor call costs 1.5-3 ms per hop on a busy host (submission, scheduling onto the
actor's loop, a reply); Raft's commit path has two peer hops and every heartbeat two more.
Replicas therefore exchange messages over plain TCP connections (one per direction and
peer), the way PySyncObj and etcd do. Ray stays the control plane: a replica learns a
peer's address by an actor call (``ReplicaActor.transport_address``), and when no connection
is up, the caller sends the batch as a Ray actor call instead.

The bytes move on threads with blocking sockets, never on the replica's event loop: a
round of a large model is an entry of tens or hundreds of MB, and asyncio's stream buffers
copy such a frame several times while holding the GIL (measured: a 20M-parameter model's
replicas spent about 40 % of their time in the event loop's socket buffers, and their
ticks stalled past the election timeout). Each outgoing connection has a sender thread that
encodes queued batches (``consensus.wire``: an explicit codec of the message types, no
pickle) and sends the header and the payload buffers in one vectored ``sendmsg``, without
joining them; each incoming one a reader thread that checks a frame's header, receives its
payload into one preallocated buffer (the GIL is released while the kernel fills it),
copies each entry out of it once and hands the messages to the loop with
``call_soon_threadsafe``.

Security. A connection starts with a challenge-response handshake (``consensus.handshake``):
both sides prove, by an HMAC over fresh nonces, that they hold the group's secret token,
which never crosses the wire; a recorded handshake cannot be replayed. Until then a
connection is read only the handshake's fixed few dozen bytes, within ``handshake_s``. At
most ``max_pending`` connections may be in their handshake (a new one closes the oldest, so
idle strangers cannot lock peers out) and at most ``max_peers`` authenticated ones stay open
(a new one closes the oldest: a peer that restarted leaves a dead one behind). Every frame
is bounded by ``max_entry_bytes`` of payload plus ``wire.HEADER_ALLOWANCE`` of header, and a
malformed or oversized one drops the connection. Traffic is not encrypted, nor protected
against an attacker on the path who can rewrite TCP streams (like Ray's own unencrypted
gRPC by default).

Delivery is best effort, as Raft assumes: it tolerates loss, duplication and reordering. A
broken connection is dropped (its queued batches are lost) and reopened on a later send.
An outgoing connection is also watched for its peer closing it (a process that exited or
was killed: the kernel closes its sockets), so a batch for a peer that went is not written
into a dead socket, where the first write still succeeds and the batch is silently lost
(a vote for a replica that restarted would wait a whole election timeout for the next
try); the caller's fallback takes it instead, and learns the peer's new address. A
peer whose queue holds more than ``_MAX_QUEUED`` payload bytes gets new batches dropped (Raft
resends). A batch larger than one frame goes as several frames (one ``on_batch`` each); a
message that does not fit in a frame at all is left to the caller's fallback.

Every message after a large frame on a connection waits behind it, heartbeats too; while
such a frame crosses, both ends report its progress (``on_active``, every
``socket_io.PROGRESS_BYTES`` moved), which ``RaftNode.peer_active`` counts as a heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial

from consensus import socket_io, wire
from consensus.errors import ConfigError
from consensus.handshake import ACCEPTED, HandshakeError, client_handshake, server_handshake
from consensus.types import Message

__all__ = ["PeerTransport"]

log = logging.getLogger(__name__)

_MAX_QUEUED = 256 << 20  # drop (Raft retries) rather than queue more for a slow peer
_HANDSHAKE_S = 2.0  # a connection must complete its handshake within this
_CONNECT_S = 2.0
_MAX_PENDING = 16  # connections in their handshake at once
_MAX_PEERS = 64  # authenticated incoming connections kept open
_MAX_ENTRY_BYTES = 1 << 30
_DIRECT_BYTES = 64 << 10  # a batch up to this payload goes out from the caller's thread
_REPORT_S = 10.0  # refused connections are logged at most this often


class _Throttled:
    """A warning logged at most once per ``_REPORT_S`` (a stranger cannot flood the log);
    the next one counts those it left out."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = -_REPORT_S
        self._left_out = 0

    def warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last < _REPORT_S:
                self._left_out += 1
                return
            left_out, self._left_out, self._last = self._left_out, 0, now
        log.warning(message + (f" ({left_out} more like it not logged)" if left_out else ""),
                    *args)


_refusals = _Throttled()


class _Outbound:
    """One peer's outgoing connection: a queue of batches drained by a sender thread.

    A small batch (at most ``_DIRECT_BYTES`` of payload) finds the queue empty and the
    socket free most of the time: it is then written from the caller's thread (the event
    loop) without blocking, sparing a thread hand-off per message on the commit path, and
    whatever the socket did not take goes to the front of the queue for the sender thread.
    ``_send_lock`` is held by whoever writes the socket, and the sender thread takes an item
    off the queue only while holding it, so frames never interleave or reorder."""

    def __init__(self, address: tuple[str, int], token: bytes, handshake_s: float,
                 progress: Callable[[], None] | None = None) -> None:
        self.address = address
        self._progress = progress
        self._token = token
        self._handshake_s = handshake_s
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        # a batch, or the unsent rest of a frame a direct send began (raw views)
        self._queue: deque[tuple[list[Message] | list[memoryview], int, bool]] = deque()
        self._queued = 0
        self.up = False  # authenticated: batches now go out
        self.settled = threading.Event()  # up, or failed before it got there
        self.dead = False  # the connection failed or was closed: make a new one
        self.gone = threading.Event()  # set once dead (for tests and diagnostics)
        self._sock: socket.socket | None = None
        threading.Thread(target=self._run, name=f"raft-send-{address[1]}", daemon=True).start()

    def put(self, batch: list[Message], size: int) -> None:
        """Send or queue ``batch`` of ``size`` payload bytes (dropped when the peer is too
        far behind: Raft resends)."""
        with self._cond:
            if self._queued + size > _MAX_QUEUED and self._queue:
                return
            direct = (size <= _DIRECT_BYTES and self.up and not self.dead and not self._queue
                      and self._send_lock.acquire(blocking=False))
            if not direct:
                self._queue.append((batch, size, False))
                self._queued += size
                self._cond.notify()
                return
        try:
            self._send_direct(batch)
        finally:
            self._send_lock.release()

    def _send_direct(self, batch: list[Message]) -> None:
        """(caller's thread, holding ``_send_lock``) Write ``batch`` without blocking; queue
        the rest of its frame, first in line."""
        sock = self._sock
        assert sock is not None
        try:
            buffers = wire.encode(batch)
        except wire.WireFormatError as exc:
            log.error("batch to %s not sent: %s", self.address, exc)
            return
        try:
            rest = socket_io.send_some(sock, buffers)
        except OSError as exc:
            log.debug("connection to %s failed: %s", self.address, exc)
            self.close()
            return
        if rest:
            with self._cond:
                self._queue.appendleft((rest, 0, True))
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self.dead = True
            self._cond.notify()
        self.gone.set()
        sock = self._sock
        if sock is not None:
            socket_io.shut(sock)

    def _watch(self, sock: socket.socket) -> None:
        """(watcher thread) The peer never writes on this connection after the handshake:
        the read returns when its side closed (or reset) it, or when this side shut it."""
        with contextlib.suppress(OSError):
            while sock.recv(4096):
                pass  # nothing is expected; whatever comes is ignored
        self.close()

    def _take(self) -> tuple[list[Message] | list[memoryview], bool] | None:
        """(sender thread) Wait for an item; return it with ``_send_lock`` held (the caller
        releases it), or None once the connection is dead."""
        while True:
            with self._cond:
                while not self._queue and not self.dead:
                    self._cond.wait()
                if self.dead:
                    return None
            self._send_lock.acquire()
            with self._cond:
                if self._queue and not self.dead:
                    item, size, raw = self._queue.popleft()
                    self._queued -= size
                    return item, raw
            self._send_lock.release()

    def _run(self) -> None:
        try:
            sock = socket.create_connection(self.address, timeout=_CONNECT_S)
            self._sock = sock
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client_handshake(sock, self._token, self._handshake_s)
            sock.settimeout(None)
            threading.Thread(target=self._watch, args=(sock,),
                             name=f"raft-watch-{self.address[1]}", daemon=True).start()
            self.up = True
            self.settled.set()
            while (taken := self._take()) is not None:
                item, raw = taken
                try:
                    buffers = item if raw else wire.encode(item)  # type: ignore[arg-type]
                    socket_io.send_buffers(sock, buffers, self._progress)
                except wire.WireFormatError as exc:
                    log.error("batch to %s not sent: %s", self.address, exc)
                finally:
                    self._send_lock.release()
        except HandshakeError as exc:
            _refusals.warn("connection to peer %s refused: %s", self.address, exc)
        except OSError as exc:
            log.debug("connection to %s failed: %s", self.address, exc)
        finally:
            self.dead = True
            self.settled.set()
            self.gone.set()
            if self._sock is not None:
                socket_io.shut(self._sock)  # ends the watcher's read
                self._sock.close()


class PeerTransport:
    """Listens for peers and keeps one outgoing connection per peer (module docstring).

    ``on_batch(messages)`` is called on the event loop thread that ran ``start``, once per
    received frame. ``send`` never blocks: it returns False when no connection is up yet
    (one is being opened) or a message is too large for a frame; the caller then uses its
    fallback path. ``max_entry_bytes``: most payload bytes (entries, a snapshot chunk) in
    one frame, sent or accepted; ``handshake_s``, ``max_pending``, ``max_peers``: see the
    module docstring.
    """

    def __init__(self, token: bytes, on_batch: Callable[[list[Message]], None], *,
                 on_gone: Callable[[int], None] | None = None,
                 on_active: Callable[[int], None] | None = None,
                 max_entry_bytes: int = _MAX_ENTRY_BYTES, handshake_s: float = _HANDSHAKE_S,
                 max_pending: int = _MAX_PENDING, max_peers: int = _MAX_PEERS) -> None:
        if len(token) < 16:
            raise ConfigError("the peer token must be at least 16 random bytes")
        if max_entry_bytes < 1:
            raise ConfigError(f"max_entry_bytes must be >= 1, got {max_entry_bytes}")
        if not handshake_s > 0:
            raise ConfigError(f"handshake_s must be > 0 seconds, got {handshake_s}")
        if max_pending < 1 or max_peers < 1:
            raise ConfigError(f"max_pending and max_peers must be >= 1, got {max_pending} "
                              f"and {max_peers}")
        self._token = token
        self._on_batch = on_batch
        self._on_gone = on_gone
        self._on_active = on_active
        self._max_entry_bytes = max_entry_bytes
        self._handshake_s = handshake_s
        self._max_pending = max_pending
        self._max_peers = max_peers
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: socket.socket | None = None
        self._out: dict[int, _Outbound] = {}
        self._lock = threading.Lock()
        self._pending: dict[socket.socket, None] = {}  # in their handshake, oldest first
        self._peers: dict[socket.socket, None] = {}  # authenticated, oldest first
        self._evicted: set[socket.socket] = set()  # peers closed here to make room
        self.peak_pending = 0  # the most connections ever in their handshake at once
        self._closed = False
        self.address: tuple[str, int] | None = None

    async def start(self, host: str) -> tuple[str, int]:
        """Listen on ``host`` (an ephemeral port); returns the address peers should dial."""
        self._loop = asyncio.get_running_loop()
        server = socket.create_server((host, 0), backlog=1024)
        self._server = server
        port = server.getsockname()[1]
        threading.Thread(target=self._accept, name="raft-accept", daemon=True).start()
        self.address = (host, int(port))
        return self.address

    def send(self, node_id: int, address: tuple[str, int] | None,
             batch: list[Message]) -> bool:
        """Queue ``batch`` to ``node_id`` at ``address``; False if not connected (yet), or
        if a message of it does not fit in one frame."""
        out = self._out.get(node_id)
        if out is not None and (out.dead or (address is not None and out.address != address)):
            out.close()
            out = None
            del self._out[node_id]
        if out is None:
            if address is not None and not self._closed:
                self._out[node_id] = _Outbound(address, self._token, self._handshake_s,
                                               partial(self._active, node_id))
            return False
        if not out.up:
            return False
        try:
            frames = wire.split(batch, self._max_entry_bytes)
        except wire.WireFormatError:
            return False
        if frames is None:
            return False
        for frame in frames:
            out.put(frame, sum(wire.payload_bytes(m) for m in frame))
        return True

    def failed(self, node_id: int) -> bool:
        """Whether the last connection made to ``node_id`` failed or was closed by the peer
        (its address may be stale: a peer that restarted listens elsewhere)."""
        out = self._out.get(node_id)
        return out is not None and out.dead

    def connected(self, node_id: int) -> bool:
        """Whether batches to ``node_id`` go out over TCP now."""
        out = self._out.get(node_id)
        return out is not None and out.up and not out.dead

    def wait_connected(self, node_id: int, timeout: float) -> bool:
        """Block (a thread, not the loop) until the connection to ``node_id`` is up, has
        failed, or ``timeout`` passed; whether it is up. For tests and diagnostics."""
        out = self._out.get(node_id)
        return out is not None and out.settled.wait(timeout) and out.up and not out.dead

    def wait_closed(self, node_id: int, timeout: float) -> bool:
        """Block (a thread, not the loop) until the connection to ``node_id`` is closed or
        failed, or ``timeout`` passed; whether it is. For tests and diagnostics."""
        out = self._out.get(node_id)
        return out is not None and out.gone.wait(timeout)

    def forget(self, node_id: int) -> None:
        """Close the connection to ``node_id`` (its address changed or it was removed)."""
        out = self._out.pop(node_id, None)
        if out is not None:
            out.close()

    def _accept(self) -> None:
        server = self._server
        while server is not None and not self._closed:
            try:
                conn, _ = server.accept()
            except OSError:
                return  # closed
            with self._lock:
                self._pending[conn] = None
                oldest = next(iter(self._pending)) if len(self._pending) > self._max_pending \
                    else None
                if oldest is not None:
                    del self._pending[oldest]
                self.peak_pending = max(self.peak_pending, len(self._pending))
            if oldest is not None:
                socket_io.shut(oldest)
            threading.Thread(target=self._serve, args=(conn,), name="raft-recv",
                             daemon=True).start()

    def _admit(self, conn: socket.socket) -> bool:
        """(reader thread) Move an authenticated ``conn`` from pending to the peers; False
        if it was closed meanwhile."""
        with self._lock:
            if conn not in self._pending or self._closed:
                return False
            del self._pending[conn]
            self._peers[conn] = None
            oldest = next(iter(self._peers)) if len(self._peers) > self._max_peers else None
            if oldest is not None:
                del self._peers[oldest]
                self._evicted.add(oldest)
        if oldest is not None:
            socket_io.shut(oldest)
        return True

    def _serve(self, conn: socket.socket) -> None:
        """(reader thread) Authenticate the peer, then decode frames until it goes. When an
        authenticated peer's side closes the connection (its process exited or was
        killed: the kernel closes its sockets), ``on_gone`` hears the node id its messages
        came from."""
        sender: int | None = None
        try:
            server_handshake(conn, self._token, self._handshake_s)
            if not self._admit(conn):
                return
            conn.sendall(ACCEPTED)
            conn.settimeout(None)
            while not self._closed:
                progress = None if sender is None else partial(self._active, sender)
                batch = wire.read_batch(partial(socket_io.recv_exactly, conn, progress=progress),
                                        self._max_entry_bytes)
                loop = self._loop
                if loop is None or loop.is_closed():
                    return
                sender = batch[-1].src if batch else sender
                loop.call_soon_threadsafe(self._on_batch, batch)
        except HandshakeError as exc:
            _refusals.warn("peer connection refused: %s", exc)
        except wire.WireFormatError as exc:
            _refusals.warn("peer connection closed: %s", exc)
        except ConnectionError:
            self._gone(conn, sender)  # closed by the peer (a reset, or the end of stream)
        except (OSError, RuntimeError):
            pass  # closed here, timed out, or the loop is gone
        finally:
            with self._lock:
                self._pending.pop(conn, None)
                self._peers.pop(conn, None)
                self._evicted.discard(conn)
            conn.close()

    def _active(self, node_id: int) -> None:
        """(a sender or reader thread) Bytes of a frame to or from ``node_id`` moved."""
        loop = self._loop
        if self._on_active is None or self._closed or loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._on_active, node_id)

    def _gone(self, conn: socket.socket, sender: int | None) -> None:
        """(reader thread) Report that ``sender``'s connection was closed by its side (not
        by this transport: closing, or making room for a newer peer connection)."""
        loop = self._loop
        with self._lock:
            ours = conn in self._evicted
        if (ours or sender is None or self._on_gone is None or self._closed or loop is None
                or loop.is_closed()):
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._on_gone, sender)

    def close(self) -> None:
        """Stop listening and close every connection."""
        self._closed = True
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
        for out in self._out.values():
            out.close()
        self._out.clear()
        with self._lock:
            inbound = [*self._pending, *self._peers]
        for conn in inbound:
            socket_io.shut(conn)
