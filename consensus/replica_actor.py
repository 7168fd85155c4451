"""``ReplicaActor``: the Ray actor of one replica, and every method other processes can call.

Ray makes each method of an actor's class callable through any handle, ``_``-prefixed ones
included, so the actor is not ``RaftReplica`` itself but this thin class around it: the
replica's drive loop, apply path and helpers stay out of reach. The methods below are the
whole surface:

* reads anyone may call: ``ping``, ``status``, ``read``, ``snapshot_bytes``, and the peer
  handshake ``started_empty`` / ``transport_address``;
* ``call_service``: only the methods the service declares public (``consensus.access``);
* calls that change the group, which take the group's secret as their first argument and
  refuse anything else with ``GroupSecretError`` before doing anything: ``deliver`` (Raft
  messages from a peer), ``propose_entry`` / ``propose`` (log entries), ``change_member`` and
  ``transfer_leadership``. ``RaftGroup`` and the replicas' ``PeerRouter`` pass it.

Ray itself still adds ``__ray_call__`` (runs a caller's closure in the actor) and unpickles
every argument, so code that can reach the cluster can run code in a replica: the secret
keeps callers that use these APIs out of a group that is not theirs; isolating mutually
untrusted users needs separate Ray clusters with token authentication (docs/OPERATIONS.md).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from consensus.access import SecretGate
from consensus.replica import RaftReplica
from consensus.replica_config import RaftGroupConfig
from consensus.replica_context import ReplicaContext
from consensus.state_machine import StateMachine
from consensus.types import Message

__all__ = ["ReplicaActor"]


class ReplicaActor:
    """One replica as a Ray actor (see the module docstring; ``max_concurrency`` >= 100)."""

    def __init__(
        self,
        group: str,
        index: int,
        names: list[str],
        namespace: str | None,
        state_machine: Callable[[], StateMachine],
        storage_dir: str | Path,
        config: RaftGroupConfig,
        service: Callable[[ReplicaContext], Any] | None = None,
        *,
        join: bool = False,
        peer_token: bytes,
    ) -> None:
        """The arguments of ``RaftReplica``; ``peer_token`` is the group's secret (at least
        16 bytes), required here: it authenticates peers and the group's client."""
        self._gate = SecretGate(peer_token, f"replica {index} of {group}")
        self._replica = RaftReplica(group, index, names, namespace, state_machine,
                                    storage_dir, config, service, join=join,
                                    peer_token=peer_token)
        # What exists now (imported modules, the loaded state) lives as long as the process.
        # Out of the cyclic collector's reach, it is not walked by each gc.collect(), which
        # Ray's GC thread runs with the GIL held: a full collection of a replica's 200k+
        # objects takes tenths of a second under load, a stall for ticks and heartbeats.
        gc.freeze()

    # ------------------------------------------------------------------ reads

    async def ping(self) -> int:
        """This replica's node id (index + 1): it is up."""
        return await self._replica.ping()

    async def status(self) -> dict[str, Any]:
        """``RaftReplica.status`` plus ``refused_calls``: calls refused for a missing or
        wrong group secret since this replica started."""
        status = await self._replica.status()
        status["refused_calls"] = self._gate.refused
        return status

    async def read(self, query: Any, timeout: float) -> Any:
        """Linearizable read (ReadIndex): ``state_machine.query(query)`` on the leader."""
        return await self._replica.read(query, timeout)

    async def snapshot_bytes(self) -> bytes:
        """The user state machine's ``snapshot()`` (taken between applies)."""
        return await self._replica.snapshot_bytes()

    async def started_empty(self) -> bool:
        """Whether this replica found no durable state when it started (peer handshake)."""
        return await self._replica.started_empty()

    async def transport_address(self) -> tuple[str, int] | None:
        """Where peers reach this replica over TCP (None: Ray calls only)."""
        return await self._replica.transport_address()

    async def call_service(self, method: str, *args: Any, leader_only: bool = True) -> Any:
        """A public method of the service (``ServiceMethodError`` for any other name)."""
        return await self._replica.call_service(method, *args, leader_only=leader_only)

    # ------------------------------------------------------------------ group secret

    async def deliver(self, secret: bytes, messages: list[Message]) -> None:
        """Step a peer's Raft messages into the core (fire-and-forget from peers)."""
        self._gate.admit(secret, "deliver")
        await self._replica.deliver(messages)

    async def propose_entry(self, secret: bytes, data: bytes, timeout: float) -> list[Any]:
        """Append one entry holding a batch encoded by the session codec; wait until it is
        applied; return its commands' results (``RaftReplica.propose_entry``)."""
        self._gate.admit(secret, "propose_entry")
        return await self._replica.propose_entry(data, timeout)

    async def propose(self, secret: bytes, client_id: str, seq: int, command: bytes,
                      timeout: float, ack: int = 0) -> Any:
        """Propose one client command, deduplicated on ``(client_id, seq)``."""
        self._gate.admit(secret, "propose")
        return await self._replica.propose(client_id, seq, command, timeout, ack)

    async def change_member(self, secret: bytes, kind: int, node_id: int,
                            timeout: float) -> int:
        """Propose a single-server membership change; wait for it to apply."""
        self._gate.admit(secret, "change_member")
        return await self._replica.change_member(kind, node_id, timeout)

    async def transfer_leadership(self, secret: bytes, to_index: int) -> None:
        """Ask this (leading) replica to hand leadership to replica ``to_index``."""
        self._gate.admit(secret, "transfer_leadership")
        await self._replica.transfer_leadership(to_index)
