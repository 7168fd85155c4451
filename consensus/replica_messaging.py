"""How a replica talks to its peers (``RaftReplica`` mixes this in): messages a peer
delivers are stepped into the core at once, what the core allows before a Ready is durable
(heartbeats, their answers) goes out while that Ready is in flight, and the transport's
reports (bytes of a large frame moving, a peer closing its connection) reach the core.

Delivery is best effort: the core tolerates loss, duplication and reordering, and nothing
here blocks the loop on a peer."""

from __future__ import annotations

import asyncio
import logging
import time

from consensus.core import RaftNode
from consensus.peers import PeerRouter
from consensus.replica_context import replica_name
from consensus.transport import PeerTransport
from consensus.types import Message

__all__ = ["ReplicaMessaging"]

log = logging.getLogger(__name__)


class ReplicaMessaging:
    """A replica's peer messaging (attributes set by ``RaftReplica``)."""

    group: str
    node_id: int
    _names: list[str]
    _node: RaftNode
    _router: PeerRouter
    _transport: PeerTransport | None
    _wake: asyncio.Event
    _busy: bool

    def _send_early(self) -> None:
        """While a Ready is in flight, send what the core allows before it is durable."""
        if self._busy:
            early = self._node.early_messages()
            if early:
                self._router.send(early)

    def _peer_name(self, node_id: int) -> str:
        index = node_id - 1
        return self._names[index] if index < len(self._names) else replica_name(self.group, index)

    async def deliver(self, messages: list[Message]) -> None:
        """Step peer messages into the core (never blocks). Peers reach it through
        ``ReplicaActor.deliver``, which checks the group's secret first."""
        self._on_batch(messages)

    async def transport_address(self) -> tuple[str, int] | None:
        """Where peers reach this replica over TCP (None: Ray calls only)."""
        while self._transport is not None and self._transport.address is None:
            await asyncio.sleep(0.01)  # the drive loop is starting the listener
        return None if self._transport is None else self._transport.address

    def _on_batch(self, messages: list[Message]) -> None:
        now = time.monotonic()
        for msg in messages:
            self._router.heard(msg.src, now)
            try:
                self._node.step(msg)
            except Exception:
                log.exception("replica %s: step(%s) failed", self.node_id, type(msg).__name__)
        self._send_early()
        self._wake.set()

    def _node_active(self, node_id: int) -> None:
        """Bytes of a large frame moved between a peer and us: it is alive and connected
        (``RaftNode.peer_active``: a follower keeps its leader's lease meanwhile)."""
        self._node.peer_active(node_id)

    def _on_gone(self, node_id: int) -> None:
        """A peer's process closed its connection to us: if it led, campaign soon instead
        of after a whole election timeout (``RaftNode.peer_gone``)."""
        self._node.peer_gone(node_id)
        self._wake.set()
