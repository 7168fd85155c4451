"""``PeerTransport``: replica-to-replica Raft messages over asyncio TCP streams.

A Ray actor call costs 1.5-3 ms per hop on a busy host (submission, scheduling onto the
actor's loop, a reply); Raft's commit path has two peer hops and every heartbeat two more.
Replicas therefore exchange messages over plain TCP connections between their event loops
(one per direction and peer, pickled batches with a 4-byte length prefix), the way
PySyncObj and etcd do. Ray stays the control plane: a replica learns a peer's address by
an actor call (``RaftReplica.transport_address``), and when no connection is up, the
caller sends the batch as a Ray actor call instead.

Delivery is best effort, like the Ray path: Raft tolerates loss, duplication and
reordering. A broken connection is dropped (its queued bytes are lost) and reopened on a later
send. Each connection starts with the group's secret token (compared in constant time), so a
stranger on the network cannot inject messages; traffic is not encrypted (like Ray's own
unencrypted gRPC by default). Batches are pickled, but unpickled with an allow-list: only the
message types of ``consensus.types`` (and plain data) can come out, never an arbitrary
callable, so even a peer holding the token cannot run code here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import logging
import pickle
import struct
from collections.abc import Callable
from typing import Any

__all__ = ["PeerTransport"]

log = logging.getLogger(__name__)

_LEN = struct.Struct(">I")
_MAX_FRAME = 1 << 30
_MAX_BUFFERED = 256 << 20  # drop (Raft retries) rather than buffer more for a slow peer


class _MessageUnpickler(pickle.Unpickler):
    """Unpickles Raft message batches; refuses every global outside ``consensus.types``."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "consensus.types" and not name.startswith("_"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"peer batch names {module}.{name}; only Raft messages "
                                     "(consensus.types) are accepted")


def loads_batch(data: bytes) -> list[Any]:
    """Decode a batch received from a peer (see ``_MessageUnpickler``)."""
    batch = _MessageUnpickler(io.BytesIO(data)).load()
    if not isinstance(batch, list):
        raise pickle.UnpicklingError("a peer batch must be a list of messages")
    return batch


class PeerTransport:
    """Listens for peers and keeps one outgoing connection per peer (one event loop).

    ``on_batch(messages)`` is called on the loop thread for each received batch. ``send``
    never blocks: it returns False when no connection is up yet (one is being opened); the
    caller then uses its fallback path.
    """

    def __init__(self, token: bytes, on_batch: Callable[[list[Any]], None]) -> None:
        if len(token) < 16:
            raise ValueError("the peer token must be at least 16 random bytes")
        self._token = token
        self._on_batch = on_batch
        self._server: asyncio.Server | None = None
        self._writers: dict[int, asyncio.StreamWriter] = {}
        self._dialing: dict[int, asyncio.Task[None]] = {}
        self.address: tuple[str, int] | None = None

    async def start(self, host: str) -> tuple[str, int]:
        """Listen on ``host`` (an ephemeral port); returns the address peers should dial."""
        self._server = await asyncio.start_server(self._serve, host, 0)
        port = self._server.sockets[0].getsockname()[1]
        self.address = (host, int(port))
        return self.address

    def send(self, node_id: int, address: tuple[str, int] | None, batch: list[Any]) -> bool:
        """Queue ``batch`` to ``node_id`` at ``address``; False if not connected (yet)."""
        writer = self._writers.get(node_id)
        if writer is not None and writer.is_closing():
            self._writers.pop(node_id, None)
            writer = None
        if writer is None:
            if address is not None and node_id not in self._dialing:
                task = asyncio.get_running_loop().create_task(self._dial(node_id, address))
                self._dialing[node_id] = task
            return False
        if writer.transport.get_write_buffer_size() > _MAX_BUFFERED:
            return True  # peer far behind: drop this batch, Raft will resend
        data = pickle.dumps(batch, protocol=5)
        # Two writes, not ``prefix + data``: a concatenation copies every (1 MB) payload once
        # more; the transport sends from the buffers it is given when the socket keeps up.
        writer.write(_LEN.pack(len(data)))
        writer.write(data)
        return True

    def forget(self, node_id: int) -> None:
        """Close the connection to ``node_id`` (its address changed or it was removed)."""
        writer = self._writers.pop(node_id, None)
        if writer is not None:
            writer.close()

    async def _dial(self, node_id: int, address: tuple[str, int]) -> None:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(*address), 2.0)
            writer.write(_LEN.pack(len(self._token)) + self._token)
            self._writers[node_id] = writer
        except (OSError, TimeoutError) as exc:
            log.debug("dial %s at %s failed: %s", node_id, address, exc)
        finally:
            self._dialing.pop(node_id, None)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            token = await self._read_frame(reader)
            if not hmac.compare_digest(token, self._token):
                log.warning("peer connection with a wrong token refused")
                return
            while True:
                self._on_batch(loads_batch(await self._read_frame(reader)))
        except pickle.UnpicklingError as exc:
            log.warning("peer connection closed: %s", exc)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, EOFError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _read_frame(reader: asyncio.StreamReader) -> bytes:
        (size,) = _LEN.unpack(await reader.readexactly(_LEN.size))
        if size > _MAX_FRAME:
            raise ValueError(f"frame of {size} bytes exceeds the limit")
        return await reader.readexactly(size)

    def close(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
        for task in self._dialing.values():
            task.cancel()
        with contextlib.suppress(Exception):
            self._dialing.clear()
