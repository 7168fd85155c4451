"""``PeerRouter``: how one replica reaches the other replicas of its group.

It keeps, per peer node id, the peer's Ray actor handle (looked up by name on helper
threads, again when the peer has been silent for long: it may have been re-created) and its
TCP address (``consensus.transport``). ``send`` groups outgoing Raft messages by destination
and sends each batch over TCP when a connection is up, else as a Ray actor call
(``ReplicaActor.deliver``, with the group's secret); delivery is best effort, as Raft
assumes. Runs on the replica's event loop; only the lookups run on helper threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from consensus.transport import PeerTransport
from consensus.types import AppendEntries, Message

__all__ = ["PeerRouter"]

_PEER_STALE_S = 2.0  # re-resolve a peer handle we have not heard from for this long
_RELOOK_S = 0.2  # after a failed connection, re-resolve the peer's address at most this often


class PeerRouter:
    """Peer handles and addresses of one replica, and the send path (module docstring).

    ``name_of(node_id)`` gives a peer's actor name; ``transport`` is None when the group's
    peers talk by Ray calls only; ``secret`` is the group's secret, which a peer's
    ``deliver`` requires.
    """

    def __init__(self, name_of: Callable[[int], str], namespace: str | None,
                 transport: PeerTransport | None, secret: bytes) -> None:
        self._name_of = name_of
        self._namespace = namespace
        self.transport = transport
        self._secret = secret
        self._lookups = ThreadPoolExecutor(2, thread_name_prefix="raft-peers")
        self._handles: dict[int, Any] = {}
        self._since: dict[int, float] = {}  # last lookup, per peer
        self._addresses: dict[int, tuple[str, int]] = {}
        self._looking_up: set[int] = set()
        self._heard: dict[int, float] = {}
        self.sent_msgs = self.sent_entries = 0

    def heard(self, node_id: int, now: float) -> None:
        """A message from ``node_id`` arrived (its handle is fresh)."""
        self._heard[node_id] = now

    def send(self, messages: Sequence[Message]) -> None:
        """Send ``messages`` (any destinations), one batch per destination; never blocks."""
        by_dst: dict[int, list[Message]] = defaultdict(list)
        for msg in messages:
            by_dst[msg.dst].append(msg)
        for dst, batch in by_dst.items():
            self.sent_msgs += len(batch)
            self.sent_entries += sum(
                len(m.entries) for m in batch if isinstance(m, AppendEntries))
            handle = self._handle(dst)
            if self.transport is not None:
                if self.transport.failed(dst):
                    self._relook(dst)  # it may have restarted elsewhere: ask its address
                if self.transport.send(dst, self._addresses.get(dst), batch):
                    continue
            if handle is None:
                continue
            try:
                handle.deliver.remote(self._secret, batch)
            except Exception:
                self._handles.pop(dst, None)

    def handle(self, node_id: int) -> Any:
        """The peer's actor handle, or None while it is being looked up (never blocks)."""
        return self._handle(node_id)

    def _relook(self, node_id: int) -> None:
        """The connection to ``node_id`` failed: look its address up again (throttled). A
        restarted peer listens on a new port, and while its messages arrive (by Ray
        calls meanwhile) it never looks stale."""
        if time.monotonic() - self._since.get(node_id, 0.0) > _RELOOK_S:
            self._lookup_soon(node_id)

    def _handle(self, node_id: int) -> Any:
        now = time.monotonic()
        handle = self._handles.get(node_id)
        stale = now - max(self._heard.get(node_id, 0.0), self._since.get(node_id, 0.0))
        # Silent for long: maybe re-created under the same name. Look it up again in the
        # background, and keep using the old handle meanwhile (dropping would starve a
        # campaign whose election timeout exceeds _PEER_STALE_S).
        if handle is None or stale > _PEER_STALE_S:
            self._lookup_soon(node_id)
        return handle

    def _lookup_soon(self, node_id: int) -> None:
        """Look ``node_id``'s handle and address up on a helper thread, unless one is."""
        if node_id not in self._looking_up:
            self._looking_up.add(node_id)
            loop = asyncio.get_running_loop()
            fut = loop.run_in_executor(self._lookups, self._lookup, node_id)
            fut.add_done_callback(functools.partial(self._looked_up, node_id))

    def _lookup(self, node_id: int) -> tuple[Any, tuple[str, int] | None]:
        import ray

        try:
            handle = ray.get_actor(self._name_of(node_id), namespace=self._namespace)
        except ValueError:
            time.sleep(0.1)  # not (yet/again) registered: throttle retries (helper thread)
            return None, None
        address: tuple[str, int] | None = None
        if self.transport is not None:
            with contextlib.suppress(Exception):  # dead or starting: the Ray path is used
                # a future, not ray.get: Ray warns of any ray.get inside an async actor
                found: Any = handle.transport_address.remote().future().result(timeout=2.0)
                address = None if found is None else (str(found[0]), int(found[1]))
        return handle, address

    def _looked_up(self, node_id: int, fut: asyncio.Future[Any]) -> None:
        self._looking_up.discard(node_id)
        handle, address = (None, None) if fut.cancelled() or fut.exception() else fut.result()
        if handle is not None:
            self._handles[node_id] = handle
        if address is not None and self.transport is not None:
            if self._addresses.get(node_id) != address:
                self.transport.forget(node_id)  # re-created elsewhere: reconnect
            self._addresses[node_id] = address
        self._since[node_id] = time.monotonic()  # throttle lookups either way
