"""``RaftReplica``: the asyncio host of one Raft replica (its Ray actor: ``ReplicaActor``).

This is the only consensus module with IO. A tick task calls ``RaftNode.tick`` every
``tick_interval_s`` whatever else runs, and one drive coroutine handles each ``Ready`` in
the order the core requires:

1. persist its hard state, entries and snapshot (``SqliteStorage.save``: small writes
   inline, large ones in the disk thread) and send its messages, grouped per destination;
   a leader sends before it persists (its own write counts only once durable), everyone
   else after;
2. restore its snapshot and apply its committed entries, exactly once through the session
   table (small ones on the loop, large ones in the apply thread);
3. answer ReadIndex requests, resolve proposal waiters, then ``advance``.

While steps 1 and 2 await a thread, the loop keeps running: peer messages and proposals
are stepped into the core and ticks fire between ``ready()`` and ``advance``, and what
``RaftNode.early_messages`` allows goes out before the write is durable. Correctness
relies on that interleaving being legal for the core (the simulator's ``in_flight`` profile
steps nodes while their Ready persists), and the replica's liveness on it: heartbeats and
their answers never wait behind a large entry's fsync or apply.

Peers are reached through ``consensus.replica_messaging`` and ``consensus.peers`` (handles
looked up by actor name in a helper thread; messages over the TCP transport, or by Ray actor
calls while no connection is up).
Delivery is best effort (Raft tolerates loss, duplication and reordering; the core
retries), and nothing here blocks the loop on a peer.

Node ids are replica index + 1 (the core requires positive ids).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn

from consensus.compaction import CompactionPolicy, stagger
from consensus.core import RaftNode
from consensus.entry_commands import execute
from consensus.errors import (
    ProposalDroppedError,
    StorageFullError,
)
from consensus.loop_watchdog import LoopWatchdog
from consensus.lost_state import (
    discard_storage,
    stamp_unsynced,
    unsynced_since_boot,
)
from consensus.payload_release import PayloadRelease, private_bytes
from consensus.peers import PeerRouter
from consensus.replica_api import ReplicaAPI, Waiter
from consensus.replica_config import RaftGroupConfig
from consensus.replica_context import (
    CommandError,
    ReplicaContext,
    replica_name,
    storage_path,
)
from consensus.replica_failures import ReplicaFailures
from consensus.replica_fresh import FreshStart
from consensus.replica_messaging import ReplicaMessaging
from consensus.replica_snapshots import ReplicaSnapshots
from consensus.replica_status import ReplicaStatus
from consensus.session import (
    SessionTable,
    decode_image,
)
from consensus.state_machine import StateMachine
from consensus.storage import SqliteStorage
from consensus.storage_failure import (
    STORAGE_ERRORS,
    FailureRecord,
    StorageFailure,
)
from consensus.transport import PeerTransport
from consensus.types import (
    Entry,
    HardState,
    Ready,
    Snapshot,
    SnapshotMeta,
)

__all__ = ["CommandError", "RaftReplica", "ReplicaContext", "replica_name", "storage_path"]

log = logging.getLogger(__name__)

_INLINE_SAVE_BYTES = 64 << 10  # entry bytes up to which a Ready is persisted on the loop


def _fail_stop() -> NoReturn:
    """Exit the process at once: Ray restarts the actor, which reloads from storage."""
    os._exit(1)


class RaftReplica(ReplicaStatus, ReplicaFailures, FreshStart, ReplicaAPI, ReplicaMessaging):
    """One replica of a Raft group, hosted by the asyncio Ray actor ``ReplicaActor``
    (consensus.replica_actor: the methods other processes may call)."""

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
        peer_token: bytes | None = None,
    ) -> None:
        """Reload term/vote/log/snapshot from storage and start the drive loop.

        ``join``: a fresh replica added to a running group (voters learnt from the leader).
        ``peer_token``: the group's secret, sent with every Raft message to a peer (see
        consensus.replica_actor); with it and ``config.peer_tcp``, peers talk over TCP
        (consensus.transport), else (and while no connection is up) by Ray actor calls.
        Blocks on disk IO. A storage failure (consensus.storage_failure) is recorded; the
        process then exits for Ray to restart it, or, once the same cause was recorded
        ``config.max_storage_failures`` times (a corrupt or foreign database: once), the
        replica stays up out of service.
        """
        self.group, self.index, self.node_id = group, index, index + 1
        self._names, self._namespace, self._config = list(names), namespace, config
        self._db_path = storage_path(storage_dir, group, index)
        self._failures = FailureRecord(self._db_path, replica_name(group, index))
        self._out_of_service: StorageFailure | None = None
        if self._failures.exhausted(config.max_storage_failures):
            self._stay_out_of_service()
            return
        try:
            hard_state, snapshot, entries, power_lost = self._open_storage()
        except STORAGE_ERRORS as exc:
            self._start_failed(exc, _fail_stop)
            return
        empty = hard_state == HardState() and snapshot is None and not entries
        self._check_lost_state(empty, join, power_lost)
        self.state_machine = state_machine()
        self._sessions = SessionTable()
        self.applied_index = self._applied_term = 0
        self._snaps = ReplicaSnapshots(
            self._storage, CompactionPolicy(every_entries=config.snapshot_every,
                                            every_bytes=config.snapshot_log_bytes),
            f"{index} of {group}", snapshot,
            early=stagger(group, index, max(1, len(names))))  # replicas not all at once
        if snapshot is not None:
            self._restore(snapshot)
        # the bootstrap voters, joiners included: the base the log's membership changes
        # replay from when entries, not a snapshot, bring a joiner up to date (a joiner is
        # not among them, so it never campaigns before the log makes it a voter)
        voters = tuple(range(1, len(names) + 1))
        seed = config.seed * 1000 + self.node_id if config.seed is not None else None
        rng = random.Random(seed if seed is not None else os.urandom(16))
        self._node = RaftNode(
            config.raft_config(self.node_id, voters,
                               self.lost_state or self._confirming_fresh), rng,
            hard_state=hard_state, snapshot=snapshot, entries=entries,
        )
        self._disk = ThreadPoolExecutor(1, thread_name_prefix="raft-disk")
        self._applier = ThreadPoolExecutor(1, thread_name_prefix="raft-apply")
        self._releaser = ThreadPoolExecutor(1, thread_name_prefix="raft-release")
        self._idle = asyncio.Event()  # set while no apply runs (see _apply_off_loop)
        self._inline_bytes = config.inline_apply_bytes  # -1 once a small apply was slow
        self._idle.set()
        self._ticker: asyncio.Task[None] | None = None
        self._transport = (PeerTransport(peer_token, self._on_batch, on_gone=self._on_gone,
                                         on_active=self._node_active,
                                         max_entry_bytes=config.peer_max_entry_bytes)
                           if peer_token and config.peer_tcp else None)
        self._router = PeerRouter(self._peer_name, namespace, self._transport, peer_token or b"")
        self._waiters: dict[int, Waiter] = {}
        self._reads: dict[bytes, asyncio.Future[int]] = {}
        self._applied_waiters: list[tuple[int | Callable[[], bool], asyncio.Future[None]]] = []
        self.apply_callbacks: list[Callable[[int], None]] = []
        self._read_ids = itertools.count(1)
        self._readies = 0
        self._peak_private = 0  # the most private memory seen before a release (status)
        self._release = PayloadRelease()
        self._busy = False  # a Ready is being handled (see _run)
        self.leader_changes = 0
        self._leader_seen: tuple[int, int] | None = None
        self._wake = asyncio.Event()
        self._service = service(ReplicaContext(self)) if service is not None else None
        self._task = asyncio.get_running_loop().create_task(self._run())
        if self._confirming_fresh:
            self._fresh_task = asyncio.get_running_loop().create_task(self._confirm_fresh())

    def _open_storage(self) -> tuple[HardState, Snapshot | None, list[Entry], bool]:
        """Open and load this replica's storage; also whether a power loss discarded it."""
        power_lost = unsynced_since_boot(self._db_path)
        if power_lost:  # durability="memory" and the machine restarted: the tail may be gone
            discard_storage(self._db_path)
        self._storage = SqliteStorage(self._db_path, self._config.storage_config())
        if self._config.durability == "memory":
            stamp_unsynced(self._db_path)
        hard_state, snapshot, entries = self._storage.load()
        return hard_state, snapshot, entries, power_lost

    # ------------------------------------------------------------------ drive loop

    async def _run(self) -> None:
        """The drive loop: take each Ready and handle it (persist, send, apply, advance).

        Ticks run in their own task (``_tick_loop``), so logical time never waits behind a
        Ready; while one is in flight (its fsync or apply runs in a thread), the core keeps
        being stepped by arriving messages and ticks, and what ``RaftNode.early_messages``
        allows (heartbeats, their answers) is sent at once (``_send_early``). Correctness
        relies on that interleaving being legal for the core: stepping and ticking between
        ``ready()`` and ``advance`` (tests/sim's ``in_flight`` profile checks it)."""
        if self._transport is not None:
            import ray

            host: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
            await self._transport.start(host)
        self._ticker = asyncio.get_running_loop().create_task(self._tick_loop())
        while True:
            await self._wake.wait()
            await asyncio.sleep(0)  # let calls that arrived together batch into one Ready
            self._wake.clear()
            try:
                while self._node.has_ready():
                    self._busy = True
                    await self._handle_ready(self._node.ready())
            except Exception as exc:
                # Fail-stop: a Ready half done (say, storage failed) leaves the core and the
                # disk disagreeing. Exit; Ray restarts the actor, which reloads from storage
                # (or stays out of service once the same storage failure recurred too often).
                self._record_failure(exc)
                log.exception("replica %s: Ready handling failed; restarting", self.node_id)
                _fail_stop()
            finally:
                self._busy = False

    async def _tick_loop(self) -> None:
        """Tick the core every ``tick_interval_s``, whatever the drive loop is doing."""
        loop = asyncio.get_running_loop()
        tick = self._config.tick_interval_s
        next_tick = loop.time() + tick
        stall_s = tick * self._config.election_ticks / 2
        watchdog = LoopWatchdog(f"replica {self.index} of {self.group}", stall_s + tick)
        watchdog.start()  # names what blocks the loop while it blocks (loop_watchdog)
        try:
            while True:
                await asyncio.sleep(max(0.0, next_tick - loop.time()))
                watchdog.beat()
                late = loop.time() - next_tick
                if late > stall_s:  # something blocked the loop: elections may follow
                    log.warning("replica %s of %s: event loop stalled for %.2f s (election "
                                "timeout %.2f s)", self.index, self.group, late,
                                tick * self._config.election_ticks)
                self._node.tick()
                next_tick = max(next_tick + tick, loop.time())
                self._send_early()
                self._wake.set()
        finally:
            watchdog.stop()

    async def _handle_ready(self, ready: Ready) -> None:
        self._readies += 1
        self._count_leader_change(ready)
        if ready.send_before_persist:  # leader: its append goes out while it syncs (§10.2.1)
            self._router.send(ready.messages)
            await self._persist(ready)
        else:
            await self._persist(ready)
            self._router.send(ready.messages)
        if ready.snapshot is not None or ready.committed_entries:
            await self._apply_off_loop(ready)
        for rs in ready.read_states:
            fut = self._reads.pop(rs.ctx, None)
            if fut is not None and not fut.done():
                fut.set_result(rs.index)
        self._node.advance(ready)
        self._release.persisted(ready.entries)  # payload_release
        if self._release.due(self.applied_index):  # measured while they are still held
            self._peak_private = max(self._peak_private, private_bytes() or 0)
            self._release.release(self._node, self._storage, self.applied_index)
        if ready.committed_entries or ready.snapshot is not None:
            self._after_apply()
            await self._maybe_compact()

    def _count_leader_change(self, ready: Ready) -> None:
        """Count each new (term, leader) this replica learns after the first one: the
        elections a healthy group should never need."""
        if ready.leader is None:
            return
        seen = (ready.term, ready.leader)
        if self._leader_seen is not None and seen != self._leader_seen:
            self.leader_changes += 1
            log.warning("replica %s of %s: leader is now replica %d in term %d (was %d in "
                        "term %d)", self.index, self.group, seen[1] - 1, seen[0],
                        self._leader_seen[1] - 1, self._leader_seen[0])
        self._leader_seen = seen

    async def _apply_off_loop(self, ready: Ready) -> None:
        """Restore ``ready``'s snapshot and apply its committed entries in the apply thread
        (a large round's optimizer step takes long; the loop keeps ticking and stepping
        meanwhile), then resolve the proposals' waiters here, on the loop. Between the
        start and the end, ``apply_idle`` blocks: loop-side readers of the state machine
        wait for it, so they never see a half-applied state. Small entries (at most
        ``inline_apply_bytes``, no snapshot) are applied right here instead: nothing else
        runs on the loop meanwhile, and a thread hand-off would cost more than the apply.
        A state machine whose small apply took longer than a tick (it would stall ticks and
        heartbeats, and elections follow) gets every later apply in the thread."""
        if ready.snapshot is None and sum(
                len(e.data) for e in ready.committed_entries) <= self._inline_bytes:
            started = time.perf_counter()
            applied = self._apply_ready(ready)
            took = time.perf_counter() - started
            if took > self._config.tick_interval_s:
                self._inline_bytes = -1
                log.warning("replica %s of %s: applying %d small entries took %.3f s (more "
                            "than a tick); applying every entry in the apply thread from "
                            "now on", self.index, self.group, len(ready.committed_entries),
                            took)
        else:
            self._idle.clear()
            try:
                applied = await asyncio.get_running_loop().run_in_executor(
                    self._applier, self._apply_ready, ready)
            finally:
                self._idle.set()
        if ready.snapshot is not None:
            self._fail_waiters_upto(ready.snapshot.meta.index)
        for entry, results in applied:
            self._applied(entry, results)

    def _apply_ready(self, ready: Ready) -> list[tuple[Entry, list[bytes]]]:
        """(apply thread) The snapshot, then each new entry: its results, in order."""
        if ready.snapshot is not None:
            self._restore(ready.snapshot)
        fresh = [e for e in ready.committed_entries if e.index > self.applied_index]
        self._snaps.applied(fresh)
        return [(entry, execute(entry, self.state_machine, self._sessions)) for entry in fresh]

    async def apply_idle(self) -> None:
        """Return once no apply runs; the caller then reads the state machine without
        awaiting anything in between (the next apply can only start after it yields)."""
        while not self._idle.is_set():
            await self._idle.wait()

    async def _persist(self, ready: Ready) -> None:
        """Make ``ready``'s hard state/entries/snapshot durable (returns once they are).

        Small writes run inline (an fsync of a few KB costs less than a thread handoff);
        large ones in the disk thread. While that thread writes, the loop steps arriving
        messages and ticks into the core, between this Ready's ``ready()`` and ``advance``:
        the core allows it (module docstring), and it is what keeps heartbeats flowing.
        Storage is only ever used by this coroutine (every executor call is awaited): the
        threads never overlap."""
        hs, entries, snap = ready.hard_state, ready.entries, ready.snapshot
        if not self._storage.needs_sync(hs, entries, snap):
            if hs is not None:  # commit index only: no fsync
                self._storage.save(hs, (), None)
            return
        if snap is None and sum(len(e.data) for e in entries) <= _INLINE_SAVE_BYTES:
            self._storage.save(hs, entries, snap)
            self._failures.healthy_save()
            return
        await asyncio.get_running_loop().run_in_executor(
            self._disk, self._storage.save, hs, entries, snap)
        self._failures.healthy_save()
        self._snaps.note_disk()

    # ------------------------------------------------------------------ apply side

    def _restore(self, snapshot: Snapshot) -> None:
        sessions, user = decode_image(snapshot.data)
        self._sessions.restore(sessions)
        self.state_machine.restore(user)
        self.applied_index = snapshot.meta.index
        self._snaps.restored(snapshot.meta.index)
        self._applied_term = snapshot.meta.term

    def _applied(self, entry: Entry, results: list[bytes]) -> None:
        """(loop) ``entry`` is applied: advance the applied index, answer its proposer."""
        self.applied_index, self._applied_term = entry.index, entry.term
        waiter = self._waiters.pop(entry.index, None)
        if waiter is not None and not waiter.future.done():
            if waiter.term == entry.term:
                waiter.future.set_result(results)
            else:
                waiter.future.set_exception(
                    ProposalDroppedError(f"entry {entry.index} was overwritten; retry")
                )

    def _fail_waiters_upto(self, index: int) -> None:
        for idx in [i for i in self._waiters if i <= index]:
            waiter = self._waiters.pop(idx)
            if not waiter.future.done():
                waiter.future.set_exception(
                    ProposalDroppedError("outcome covered by a snapshot; retry with same seq")
                )

    def _after_apply(self) -> None:
        keep = []
        for target, fut in self._applied_waiters:
            done = target() if callable(target) else self.applied_index >= target
            if done and not fut.done():
                fut.set_result(None)
            elif not fut.done():
                keep.append((target, fut))
        self._applied_waiters = keep
        for callback in self.apply_callbacks:
            try:
                callback(self.applied_index)
            except Exception:
                log.exception("on_apply callback failed")

    async def _maybe_compact(self) -> None:
        """Snapshot and compact when the policy says so (``consensus.compaction``: by entry
        count, or by bytes relative to the state's size). The state is encoded and written
        in the disk thread; the drive loop waits (no apply can run meanwhile), ticks and
        messages go on."""
        if not self._snaps.due(self.applied_index):
            return
        meta = SnapshotMeta(
            index=self.applied_index, term=self._applied_term, voters=self._voters_at_applied(),
            learners=tuple(self._node.learners_at(self.applied_index)),
        )
        try:
            snapshot = await asyncio.get_running_loop().run_in_executor(
                self._disk, self._snaps.write, meta, self._sessions.encode(),
                self.state_machine)
        except StorageFullError as exc:
            self._snaps.disk_full(exc)  # nothing changed; the log keeps growing meanwhile
            return
        released = self._node.compact(snapshot)
        self._snaps.compacted(snapshot)
        # the old image's mapping and the compacted rounds, of files already replaced: the
        # last unmap of a deleted file evicts its pages from the page cache, tenths of a
        # second for hundreds of MB under load, so their last references go in a thread
        self._releaser.submit(released.clear)

    def _voters_at_applied(self) -> tuple[int, ...]:
        return tuple(self._node.voters_at(self.applied_index))

    async def wait_applied(
        self, target: int | Callable[[], bool], timeout: float | None = None
    ) -> None:
        """Block until ``applied_index >= target`` or ``target()`` holds; ProposalTimeoutError."""
        if target() if callable(target) else self.applied_index >= target:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._applied_waiters.append((target, fut))
        await self._await(fut, timeout, "waiting for apply")
