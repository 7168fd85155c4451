"""``PeerTransport``: replica-to-replica Raft messages over TCP, on threads of their own.

A Ray actor call costs 1.5-3 ms per hop on a busy host (submission, scheduling onto the
actor's loop, a reply); Raft's commit path has two peer hops and every heartbeat two more.
Replicas therefore exchange messages over plain TCP connections (one per direction and
peer, pickled batches with a 4-byte length prefix), the way PySyncObj and etcd do. Ray
stays the control plane: a replica learns a peer's address by an actor call
(``RaftReplica.transport_address``), and when no connection is up, the caller sends the
batch as a Ray actor call instead.

The bytes move on threads with blocking sockets, never on the replica's event loop: a
round of a large model is an entry of tens or hundreds of MB, and asyncio's stream buffers
copy such a frame several times while holding the GIL (measured: a 20M-parameter model's
replicas spent about 40 % of their time in the event loop's socket buffers, and their
ticks stalled past the election timeout). Each outgoing connection has a sender thread that
pickles queued batches and ``sendall``s them; each incoming one a reader thread that
receives a frame into one preallocated buffer (the GIL is released while the kernel fills
it), decodes it and hands the messages to the loop with ``call_soon_threadsafe``.

Delivery is best effort, as Raft assumes: it tolerates loss, duplication and reordering. A
broken connection is dropped (its queued batches are lost) and reopened on a later send; a
peer whose queue holds more than ``_MAX_QUEUED`` payload bytes gets new batches dropped (Raft
resends). Each connection starts with the group's secret token (compared in constant time,
read under a short timeout with a bounded size), so a stranger on the network cannot inject
messages; traffic is not encrypted (like Ray's own unencrypted gRPC by default). Batches
are pickled, but unpickled with an allow-list: only the message types of
``consensus.types`` (and plain data) can come out, never an arbitrary callable.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import pickle
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from consensus.buffers import ViewReader, empty_buffer
from consensus.types import AppendEntries, InstallSnapshot

__all__ = ["PeerTransport"]

log = logging.getLogger(__name__)

_LEN = struct.Struct(">I")
_MAX_FRAME = 1 << 30
_MAX_QUEUED = 256 << 20  # drop (Raft retries) rather than queue more for a slow peer
_HANDSHAKE_S = 5.0  # a connection must present its token within this
_CONNECT_S = 2.0


class _MessageUnpickler(pickle.Unpickler):
    """Unpickles Raft message batches; refuses every global outside ``consensus.types``."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "consensus.types" and not name.startswith("_"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"peer batch names {module}.{name}; only Raft messages "
                                     "(consensus.types) are accepted")


def loads_batch(data: Any) -> list[Any]:
    """Decode a batch (a bytes-like frame) received from a peer (see ``_MessageUnpickler``);
    each payload is copied once, out of ``data``."""
    batch = _MessageUnpickler(ViewReader(data)).load()
    if not isinstance(batch, list):
        raise pickle.UnpicklingError("a peer batch must be a list of messages")
    return batch


def payload_bytes(batch: list[Any]) -> int:
    """The entry and snapshot bytes a batch carries (what its frame's size is made of)."""
    size = 0
    for msg in batch:
        if isinstance(msg, AppendEntries):
            size += sum(len(e.data) for e in msg.entries)
        elif isinstance(msg, InstallSnapshot):
            size += len(msg.data)
    return size


def _recv_exactly(sock: socket.socket, size: int) -> memoryview:
    """``size`` bytes from ``sock`` into one buffer; ConnectionError if it closes first."""
    buf = empty_buffer(size)
    view = buf
    while view:
        got = sock.recv_into(view)
        if got == 0:
            raise ConnectionError("peer closed the connection")
        view = view[got:]
    return buf


def _recv_frame(sock: socket.socket, limit: int) -> memoryview:
    (size,) = _LEN.unpack(_recv_exactly(sock, _LEN.size))
    if size > limit:
        raise ValueError(f"frame of {size} bytes exceeds the limit of {limit}")
    return _recv_exactly(sock, size)


class _Outbound:
    """One peer's outgoing connection: a queue of batches drained by a sender thread."""

    def __init__(self, address: tuple[str, int], token: bytes) -> None:
        self.address = address
        self._token = token
        self._cond = threading.Condition()
        self._queue: deque[tuple[list[Any], int]] = deque()
        self._queued = 0
        self.up = False  # the token was sent: batches now go out
        self.up_event = threading.Event()
        self.dead = False  # the connection failed or was closed: make a new one
        self._sock: socket.socket | None = None
        threading.Thread(target=self._run, name=f"raft-send-{address[1]}", daemon=True).start()

    def put(self, batch: list[Any]) -> None:
        """Queue ``batch`` (dropped when the peer is too far behind: Raft resends)."""
        size = payload_bytes(batch)
        with self._cond:
            if self._queued + size > _MAX_QUEUED and self._queue:
                return
            self._queue.append((batch, size))
            self._queued += size
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self.dead = True
            self._cond.notify()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _take(self) -> list[Any] | None:
        with self._cond:
            while not self._queue and not self.dead:
                self._cond.wait()
            if self.dead:
                return None
            batch, size = self._queue.popleft()
            self._queued -= size
            return batch

    def _run(self) -> None:
        try:
            sock = socket.create_connection(self.address, timeout=_CONNECT_S)
            self._sock = sock
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(_LEN.pack(len(self._token)) + self._token)
            self.up = True
            self.up_event.set()
            while (batch := self._take()) is not None:
                data = pickle.dumps(batch, protocol=5)
                sock.sendall(_LEN.pack(len(data)))
                sock.sendall(data)
        except OSError as exc:
            log.debug("connection to %s failed: %s", self.address, exc)
        finally:
            self.dead = True
            if self._sock is not None:
                self._sock.close()


class PeerTransport:
    """Listens for peers and keeps one outgoing connection per peer (module docstring).

    ``on_batch(messages)`` is called on the event loop thread that ran ``start``, once per
    received batch. ``send`` never blocks: it returns False when no connection is up yet
    (one is being opened); the caller then uses its fallback path.
    """

    def __init__(self, token: bytes, on_batch: Callable[[list[Any]], None]) -> None:
        if len(token) < 16:
            raise ValueError("the peer token must be at least 16 random bytes")
        self._token = token
        self._on_batch = on_batch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: socket.socket | None = None
        self._out: dict[int, _Outbound] = {}
        self._closed = False
        self.address: tuple[str, int] | None = None

    async def start(self, host: str) -> tuple[str, int]:
        """Listen on ``host`` (an ephemeral port); returns the address peers should dial."""
        self._loop = asyncio.get_running_loop()
        server = socket.create_server((host, 0))
        self._server = server
        port = server.getsockname()[1]
        threading.Thread(target=self._accept, name="raft-accept", daemon=True).start()
        self.address = (host, int(port))
        return self.address

    def send(self, node_id: int, address: tuple[str, int] | None, batch: list[Any]) -> bool:
        """Queue ``batch`` to ``node_id`` at ``address``; False if not connected (yet)."""
        out = self._out.get(node_id)
        if out is not None and (out.dead or (address is not None and out.address != address)):
            out.close()
            out = None
            del self._out[node_id]
        if out is None:
            if address is not None and not self._closed:
                self._out[node_id] = _Outbound(address, self._token)
            return False
        if not out.up:
            return False
        out.put(batch)
        return True

    def connected(self, node_id: int) -> bool:
        """Whether batches to ``node_id`` go out over TCP now."""
        out = self._out.get(node_id)
        return out is not None and out.up and not out.dead

    def wait_connected(self, node_id: int, timeout: float) -> bool:
        """Block (a thread, not the loop) until the connection to ``node_id`` is up or
        ``timeout`` passed; whether it is up. For tests and diagnostics."""
        out = self._out.get(node_id)
        return out is not None and out.up_event.wait(timeout) and not out.dead

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
            threading.Thread(target=self._serve, args=(conn,), name="raft-recv",
                             daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        """(reader thread) Check the token, then decode batches until the peer goes."""
        try:
            conn.settimeout(_HANDSHAKE_S)
            token = _recv_frame(conn, len(self._token))
            if not hmac.compare_digest(bytes(token), self._token):
                log.warning("peer connection with a wrong token refused")
                return
            conn.settimeout(None)
            while not self._closed:
                batch = loads_batch(_recv_frame(conn, _MAX_FRAME))
                loop = self._loop
                if loop is None or loop.is_closed():
                    return
                loop.call_soon_threadsafe(self._on_batch, batch)
        except pickle.UnpicklingError as exc:
            log.warning("peer connection closed: %s", exc)
        except (OSError, ValueError, EOFError, RuntimeError):
            pass  # closed, timed out, oversized, or the loop is gone
        finally:
            conn.close()

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
