"""``ReplicaAPI``: what clients and the layer above call on a replica actor.

Proposals (one entry per call, answered once applied), linearizable reads (ReadIndex),
membership changes, leadership transfer and the service hook. A mixin of
``consensus.replica.RaftReplica``, which owns the state these methods use (declared below);
every method runs on the replica's event loop.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from consensus.access import service_method
from consensus.core import RaftNode
from consensus.errors import NotLeaderError, ProposalDroppedError, ProposalTimeoutError
from consensus.replica_snapshots import ReplicaSnapshots
from consensus.session import Envelope, encode_batch
from consensus.state_machine import StateMachine
from consensus.types import ConfChange, ConfChangeKind, EntryKind, Payload, Role

__all__ = ["ReplicaAPI", "Waiter"]


@dataclass(slots=True)
class Waiter:
    """A proposer waiting for the entry at an index, proposed in ``term``."""

    term: int
    future: asyncio.Future[list[bytes]]


class ReplicaAPI:
    """The client-facing methods of a replica (see the module docstring)."""

    group: str
    index: int
    node_id: int
    state_machine: StateMachine
    _node: RaftNode
    _snaps: ReplicaSnapshots
    _waiters: dict[int, Waiter]
    _reads: dict[bytes, asyncio.Future[int]]
    _read_ids: itertools.count[int]
    _wake: asyncio.Event
    _service: Any

    async def wait_applied(self, target: int | Callable[[], bool],
                           timeout: float | None = None) -> None:
        raise NotImplementedError  # RaftReplica's

    async def apply_idle(self) -> None:
        raise NotImplementedError  # RaftReplica's

    def is_leader(self) -> bool:
        return self._node.role == Role.LEADER

    @property
    def term(self) -> int:
        return self._node.term

    def _require_leader(self) -> None:
        if not self.is_leader():
            raise NotLeaderError(
                f"replica {self.index} of {self.group} is not the leader", self._node.leader
            )

    async def _await(self, fut: asyncio.Future[Any], timeout: float | None, what: str) -> Any:
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise ProposalTimeoutError(
                f"replica {self.index} of {self.group}: {what} timed out after {timeout} s"
            ) from None

    async def propose_envelopes(self, envelopes: list[Envelope], timeout: float) -> list[Any]:
        """Append one entry holding ``envelopes``; wait until applied; return their results.

        Raises NotLeaderError (with the leader hint), ProposalDroppedError (the index got
        another entry; retry with the same seqs) or ProposalTimeoutError (outcome unknown).
        """
        return await self.propose_entry(encode_batch(envelopes), timeout)

    async def propose_entry(self, data: Payload, timeout: float,
                            kind: EntryKind = EntryKind.NORMAL) -> list[Any]:
        """Like :meth:`propose_envelopes` with the entry already encoded: a batch of
        ``session.encode_batch`` or a run of ``session.encode_run`` (what ``RaftGroup``'s
        coalescer sends), or, with ``kind=COMMAND``, one bare command
        (:meth:`propose_command`). Raises StorageFullError once this replica's disk cannot
        hold its next snapshot."""
        self._require_leader()
        if self._snaps.storage_full is not None:
            raise self._snaps.storage_full
        index = self._node.propose(data, kind)
        fut = self._wait_index(index)
        self._wake.set()
        raw: list[bytes] = await self._await(fut, timeout, f"proposal at index {index}")
        return [pickle.loads(r) for r in raw]

    async def propose_command(self, command: Payload, timeout: float) -> Any:
        """Propose one command without a client session (no dedup) as its own entry: the
        entry's bytes ARE the command, never copied into an envelope (a large model's round
        is hundreds of MB). Returns its result; raises like :meth:`propose_envelopes`."""
        results = await self.propose_entry(command, timeout, EntryKind.COMMAND)
        return results[0]

    def _wait_index(self, index: int) -> asyncio.Future[list[bytes]]:
        old = self._waiters.get(index)
        if old is not None and not old.future.done():
            old.future.set_exception(ProposalDroppedError(f"index {index} was re-proposed"))
        fut: asyncio.Future[list[bytes]] = asyncio.get_running_loop().create_future()
        self._waiters[index] = Waiter(term=self._node.term, future=fut)
        return fut

    async def propose(self, client_id: str, seq: int, command: bytes, timeout: float,
                      ack: int = 0) -> Any:
        """Propose one client command (dedup on ``(client_id, seq)``); returns its result."""
        results = await self.propose_envelopes([Envelope(client_id, seq, command, ack)], timeout)
        return results[0]

    async def read(self, query: Any, timeout: float) -> Any:
        """Linearizable read (ReadIndex, thesis §6.4): ``state_machine.query(query)``."""
        self._require_leader()
        ctx = f"{self.node_id}:{next(self._read_ids)}".encode()
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._reads[ctx] = fut
        try:
            self._node.read_index(ctx)
            self._wake.set()
            index = await self._await(fut, timeout, "read index")
        finally:
            self._reads.pop(ctx, None)
        await self.wait_applied(index, timeout)
        await self.apply_idle()
        return self.state_machine.query(query)

    async def change_member(self, kind: int, node_id: int, timeout: float) -> int:
        """Propose adding/removing/promoting ``node_id`` (single-server change); wait for it
        to apply. A change already in force (a retry whose first answer was lost) proposes
        nothing and returns once the entry that made it so is applied."""
        self._require_leader()
        cc = ConfChange(ConfChangeKind(kind), node_id)
        done = self._node.change_in_force(cc)
        if done is not None:
            await self.wait_applied(done, timeout)
            return done
        index = self._node.propose_conf_change(cc)
        fut = self._wait_index(index)
        self._wake.set()
        await self._await(fut, timeout, f"membership change at {index}")
        return index

    async def transfer_leadership(self, to_index: int) -> None:
        """Ask the core to hand leadership to replica ``to_index`` (thesis §3.10)."""
        self._node.transfer_leadership(to_index + 1)
        self._wake.set()

    async def call_service(self, method: str, *args: Any, leader_only: bool = True) -> Any:
        """Call ``method`` on this replica's service object (await it if it is async).

        Only the methods the service lists in ``service_methods`` are callable; any other
        name raises ServiceMethodError (naming the allowed set) and runs nothing."""
        if self._service is None:
            raise AttributeError(f"group {self.group} was created without a service")
        bound = service_method(self._service, method, self.group)
        if leader_only:
            self._require_leader()
        result = bound(*args)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def snapshot_bytes(self) -> bytes:
        """The user state machine's ``snapshot()`` (taken between applies)."""
        await self.apply_idle()
        data = self.state_machine.snapshot()
        return data if isinstance(data, bytes) else bytes(data)

    async def ping(self) -> int:
        return self.node_id
