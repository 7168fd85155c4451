"""``RaftGroup``: create a replicated state machine on Ray and talk to it, exactly once.

Usage::

    group = RaftGroup.create("job/shard-0", replicas=3, state_machine=MyMachine,
                             storage_dir="/var/lib/raftps")
    result = group.propose(b"command")      # applied exactly once, on every replica
    value = group.read(query)                # linearizable (ReadIndex)
    group.status(); group.snapshots(); group.replace(1); group.shutdown()

Replicas are Ray actors named ``<group>/replica-<r>`` in ``namespace`` (``max_restarts=-1``:
a crashed replica is restarted by Ray and reloads its sqlite storage; ``max_task_retries=0``:
the client retries itself). They are placed with a SPREAD placement group (one bundle per
replica, soft, so a single node also works) and need ``num_cpus`` (0 by default).

Exactly once: each ``RaftGroup`` is a client with a random id and a sequence counter. A
command keeps its seq across retries (timeouts, NotLeaderError, leader death), so a retry of
a command that already applied returns the cached result instead of applying again. The
client discovers the leader from NotLeaderError hints, then by asking every replica. When the
deadline passes, ``ProposalTimeoutError`` is raised (the command may or may not have applied;
retrying it through the same client is not possible, so use a fresh command). All methods are
thread-safe and block for at most their ``timeout``.
"""

from __future__ import annotations

import contextlib
import secrets
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from consensus.coalescer import ProposalCoalescer, ProposalFuture
from consensus.errors import ConsensusError, NotLeaderError, ProposalTimeoutError
from consensus.failures import Failure, classify, root_cause
from consensus.leader_discovery import LeaderDiscovery
from consensus.replacement import Replacer, due_for_replacement
from consensus.replica import CommandError, ReplicaContext, replica_name
from consensus.replica_actor import ReplicaActor
from consensus.replica_config import RaftGroupConfig
from consensus.replica_env import replica_env_vars
from consensus.session import encode_run
from consensus.state_machine import StateMachine
from consensus.types import ConfChangeKind, Payload

__all__ = ["CommandError", "RaftGroup", "RaftGroupConfig", "statuses_of"]

_DEFAULT_STORAGE = Path(tempfile.gettempdir()) / "raftps-raft"
_Call = Callable[[Any, float], Any]
_INLINE_BYTES = 64 << 10  # smaller proposals are sent inline with the actor call
_INLINE_FACTORY_BYTES = 64 << 10  # below Ray's 100 KiB limit for inline task arguments


def statuses_of(groups: Sequence[RaftGroup], timeout: float) -> list[list[dict[str, Any]]]:
    """``RaftGroup.status`` of every group in ``groups``, asked at once: one wait of at most
    ``timeout`` for all (a replica that is down, or restarting, never answers in time),
    not one per group."""
    asked = [group._ask_status() for group in groups]
    refs = [ref for _, group_refs in asked for ref in group_refs]
    ready = ray.wait(refs, num_returns=len(refs), timeout=timeout)[0] if refs else []
    done = set(ready)
    return [group._read_status(indices, group_refs, done)
            for group, (indices, group_refs) in zip(groups, asked, strict=True)]


def _logged_voters(statuses: Sequence[dict[str, Any]]) -> set[int]:
    """The member indices named by the newest log among the replicas that answered (empty
    if none did): membership changes are log entries, so the longest log knows them all."""
    known = [s for s in statuses if s.get("voters")]
    if not known:
        return set()
    return set(max(known, key=lambda s: (s["last_index"], s["term"]))["voters"])


def _logged_members(statuses: Sequence[dict[str, Any]]) -> set[int]:
    """Voters and learners named by the newest log among the replicas that answered."""
    known = [s for s in statuses if s.get("voters")]
    if not known:
        return set()
    newest = max(known, key=lambda s: (s["last_index"], s["term"]))
    return {*newest["voters"], *newest.get("learners", ())}


class _GroupMembers:
    """``consensus.replacement.MemberOps`` over a ``RaftGroup``'s actors."""

    def __init__(self, group: RaftGroup) -> None:
        self.group = group

    def statuses(self) -> list[dict[str, Any]]:
        return self.group.status()

    def change(self, kind: ConfChangeKind, replica: int, timeout: float) -> None:
        node_id = replica + 1
        secret = self.group.secret
        self.group._submit(lambda h, t: h.change_member.remote(secret, int(kind), node_id, t),
                           timeout, f"{kind.name.lower()} replica {replica}")

    def spawn_joiner(self, like: int, timeout: float) -> int:
        return self.group._spawn_joiner(like, timeout)

    def stop(self, replica: int) -> None:
        self.group._stop(replica)


class StoredFactory:
    """Calls the factory at ``holder[0][which]``, a ``(state_machine, service)`` pair kept in
    the object store by the group that spawned the replica (see ``RaftGroup.create``). The
    ref rides inside a list so Ray hands it over as a ref and does not free it after the
    actor's first start."""

    def __init__(self, holder: list[Any], which: int) -> None:
        self.holder, self.which = holder, which

    def __call__(self, *args: Any) -> Any:
        # A replica is an async actor, where ray.get warns on every job: wait on the ref's
        # future instead (resolved by Ray's own threads).
        factories = self.holder[0].future().result()
        return factories[self.which](*args)


def replica_bundle(num_cpus: float) -> dict[str, float]:
    """The placement-group bundle of one replica: its ``num_cpus`` when it asks for CPUs,
    else one byte of Ray's logical ``memory`` (a bundle may not be empty). Never a sliver
    of CPU: 0.001 CPU on a node of C CPUs leaves room for only C - 1 one-CPU tasks there."""
    return {"CPU": float(num_cpus)} if num_cpus > 0 else {"memory": 1.0}

class RaftGroup:
    """Client of one Raft group (see the module docstring). Create it with :meth:`create`."""

    def __init__(
        self, name: str, namespace: str, config: RaftGroupConfig, spawn: Callable[..., Any],
        handles: dict[int, Any], pg: PlacementGroup, secret: bytes,
    ) -> None:
        self.name, self.namespace, self.config = name, namespace, config
        self._spawn, self._handles, self._pg = spawn, handles, pg
        self._secret = secret
        self._bundle = {i: i for i in handles}
        self._next_index = max(handles) + 1
        self._client_id = uuid.uuid4().hex
        self._lock = threading.Lock()
        self._seq = 0
        self._in_flight: set[int] = set()
        self._discovery = LeaderDiscovery(name, handles)
        self._dead_since: dict[int, float] = {}  # replica index -> first status unanswered
        self._unanswered: dict[int, Any] = {}  # replica index -> its status call still out
        self._replacer = Replacer(_GroupMembers(self), name)
        self._coalescer = ProposalCoalescer(
            self.propose_batch, max_inflight=config.client_max_inflight_batches,
            max_batch_bytes=config.client_max_batch_bytes)

    @classmethod
    def create(
        cls,
        name: str,
        replicas: int = 3,
        state_machine: Callable[[], StateMachine] | None = None,
        storage_dir: str | Path = _DEFAULT_STORAGE,
        *,
        namespace: str | None = None,
        config: RaftGroupConfig | None = None,
        service: Callable[[ReplicaContext], Any] | None = None,
        num_cpus: float = 0,
        ready_timeout: float = 60.0,
    ) -> RaftGroup:
        """Start ``replicas`` actors (reloading any storage under ``storage_dir``) and wait
        until each answers. A relative ``storage_dir`` is resolved against the caller's
        working directory (actors run elsewhere). ``state_machine`` is a class or
        zero-argument factory; it and ``service`` are pickled to the replicas. Blocks up to
        ``ready_timeout`` seconds."""
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        if state_machine is None:
            raise ValueError("state_machine is required: a StateMachine class or factory")
        config = config or RaftGroupConfig()
        namespace = namespace or ray.get_runtime_context().namespace
        pg = placement_group([replica_bundle(num_cpus)] * replicas, strategy="SPREAD")
        ray.get(pg.ready(), timeout=ready_timeout)
        names = [replica_name(name, r) for r in range(replicas)]
        storage = str(Path(storage_dir).resolve())
        token = secrets.token_bytes(32)  # the group's secret (consensus.access)
        actor_cls = ray.remote(ReplicaActor)
        # Large factories go into the object store once, referenced from the spawn closure
        # the group keeps, so a replica that Ray restarts after a crash reads them again.
        # Passed inline, Ray would promote them to an object it frees after the first start,
        # and every restart would fail. Small ones travel inline (no object, no Ray warning).
        machine_factory: Callable[[], StateMachine] = state_machine
        service_factory = service
        pickled = ray.cloudpickle.dumps((state_machine, service))  # type: ignore[no-untyped-call]
        if len(pickled) > _INLINE_FACTORY_BYTES:
            stored = [ray.put((state_machine, service))]
            machine_factory = StoredFactory(stored, 0)
            service_factory = StoredFactory(stored, 1) if service is not None else None

        def spawn(index: int, bundle: int, join: bool) -> Any:
            return actor_cls.options(
                name=replica_name(name, index), namespace=namespace, num_cpus=num_cpus,
                max_restarts=-1, max_task_retries=0, max_concurrency=1000,
                runtime_env={"env_vars": replica_env_vars()},  # consensus.replica_env
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    pg, placement_group_bundle_index=bundle),
            ).remote(name, index, names, namespace, machine_factory, storage, config,
                     service_factory, join=join, peer_token=token)

        handles = {r: spawn(r, r, False) for r in range(replicas)}
        ray.get([h.ping.remote() for h in handles.values()], timeout=ready_timeout)
        group = cls(name, namespace, config, spawn, handles, pg, token)
        group._adopt_logged_members(ready_timeout)
        return group

    def _adopt_logged_members(self, timeout: float) -> None:
        """Re-created over storage whose membership changed (``replace``), the group started
        replicas 0..R-1 while its log names other members: start each logged member that
        has no actor, in the bundle of a started replica the log no longer names (that one
        is stopped). A fresh or unchanged group is left as it is."""
        voters = _logged_voters(self.status())
        if not voters:
            return
        missing = sorted(voters - set(self._handles))
        extra = sorted(set(self._handles) - voters)
        for index, spare in zip(missing, extra, strict=False):
            ray.kill(self._handles.pop(spare), no_restart=True)
            bundle = self._bundle.pop(spare)
            handle = self._spawn(index, bundle, False)
            ray.get(handle.ping.remote(), timeout=timeout)
            self._handles[index], self._bundle[index] = handle, bundle
        self._next_index = max(self._next_index, *(i + 1 for i in (*voters, *extra)))

    # ------------------------------------------------------------------ sequencing

    def _take_seqs(self, n: int) -> list[int]:
        with self._lock:
            seqs = list(range(self._seq + 1, self._seq + n + 1))
            self._seq += n
            self._in_flight.update(seqs)
            return seqs

    def _ack(self) -> int:
        """Every seq below this was answered (the replicas may forget those results)."""
        with self._lock:
            return min(self._in_flight) if self._in_flight else self._seq + 1

    def _done(self, seqs: Sequence[int]) -> None:
        with self._lock:
            self._in_flight.difference_update(seqs)

    # ------------------------------------------------------------------ client API

    def propose(self, command: Payload, timeout: float = 10.0) -> Any:
        """Apply ``command`` exactly once and return the state machine's result.

        Concurrent calls (from many threads) are coalesced into shared log entries (client
        group commit, see :mod:`consensus.coalescer`). Blocks up to about ``timeout``."""
        future = self.propose_async(command, timeout)
        try:
            return future.result(timeout=timeout + 1.0)
        except TimeoutError:  # ProposalFuture.result's
            raise ProposalTimeoutError(
                f"group {self.name}: propose did not complete in {timeout} s") from None

    def propose_async(self, command: Payload, timeout: float = 10.0) -> ProposalFuture:
        """Queue ``command`` (exactly once, coalesced with other queued commands) and return
        a ``ProposalFuture`` of its result (``result``/``exception``/``done``/
        ``add_done_callback``, like ``concurrent.futures.Future`` but not cancellable);
        never blocks. It fails like :meth:`propose` raises."""
        return self._coalescer.submit(command, timeout)

    def propose_batch(self, commands: Sequence[Payload], timeout: float = 10.0) -> list[Any]:
        """Apply ``commands`` in order, as ONE log entry, exactly once; return their results.

        A command the state machine raised on returns a :class:`CommandError`.
        """
        if not commands:
            return []
        seqs = self._take_seqs(len(commands))
        try:
            ack = self._ack()
            data = encode_run(self._client_id, seqs[0], commands, ack)
            # Large payloads go once to the object store and travel by reference on retries.
            payload: Any = ray.put(data) if len(data) > _INLINE_BYTES else data
            result: list[Any] = self._submit(
                lambda h, t: h.propose_entry.remote(self._secret, payload, t), timeout, "propose",
                size=len(data))
            return result
        finally:
            self._done(seqs)

    def read(self, query: Any, timeout: float = 10.0) -> Any:
        """Linearizable read: ``state_machine.query(query)`` on the leader after ReadIndex."""
        return self._submit(lambda h, t: h.read.remote(query, t), timeout, "read")

    def call_service(
        self, method: str, *args: Any, leader_only: bool = True, timeout: float = 10.0
    ) -> Any:
        """Call ``method(*args)`` on the leader's service object (retried only when the call
        did not run: NotLeaderError or a dead replica); with ``leader_only=False`` any live
        replica may answer."""
        def call(h: Any, t: float) -> Any:
            return h.call_service.remote(method, *args, leader_only=leader_only)
        return self._submit(call, timeout, f"service {method}", any_replica=not leader_only)

    def _submit(self, call: _Call, timeout: float, what: str, any_replica: bool = False,
                size: int = 0) -> Any:
        """Run ``call`` on the leader until it answers or ``timeout`` passes. One attempt
        may take ``attempt_timeout_s`` plus ``size`` bytes at ``attempt_bytes_per_s``: an
        attempt that times out is re-proposed, and re-proposing a large entry before the
        first copy could even be written would only add load."""
        deadline = time.monotonic() + timeout
        per_attempt = self.config.attempt_timeout_s + size / self.config.attempt_bytes_per_s
        while (remaining := deadline - time.monotonic()) > 0:
            index = self._discovery.target(remaining, any_replica)
            if index is None:
                time.sleep(min(0.02, remaining))
                continue
            attempt = min(remaining, per_attempt)
            try:
                done, value = self._discovery.wait_or_switch(call(self._handles[index], attempt),
                                                              index, attempt + 1.0)
                if done:
                    return value
            except Exception as exc:  # consensus.failures: RETRY goes on, the rest surfaces
                err = root_cause(exc)
                if isinstance(err, NotLeaderError):
                    self._discovery.not_leader(index, err.leader_hint)
                elif classify(err) is Failure.RETRY:
                    # not a ConsensusError: dead or restarting, avoid it a while
                    self._discovery.failed(index, dead=not isinstance(err, ConsensusError))
                else:
                    raise err from None
        raise ProposalTimeoutError(f"group {self.name}: {what} did not complete in {timeout} s")

    def leader(self, timeout: float = 10.0) -> Any:
        """The current leader's actor handle (discovered; blocks up to ``timeout``)."""
        return self._handles[self._discovery.discover(timeout)]

    def leader_index(self, timeout: float = 10.0) -> int:
        """The replica index of the current leader (see :meth:`leader`)."""
        handle = self.leader(timeout)
        return next(i for i, h in self._handles.items() if h == handle)

    def transfer_leadership(self, to: int, timeout: float = 10.0) -> None:
        """Hand leadership to replica ``to`` (thesis §3.10); blocks until it leads."""
        if to not in self._handles:
            raise ValueError(f"replica {to} is not a member of {self.name}")
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            current = self.leader_index(remaining)
            if current == to:
                return
            with contextlib.suppress(Exception):
                ray.get(self._handles[current].transfer_leadership.remote(self._secret, to),
                        timeout=max(0.1, remaining))
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        raise ProposalTimeoutError(f"group {self.name}: replica {to} did not take over")

    @property
    def secret(self) -> bytes:
        """The group's secret, which its replicas require of every call that changes the
        group (Raft messages, proposals, membership, leadership; ``consensus.access``).
        Keep it in this process; never log it."""
        return self._secret

    def handles(self) -> list[Any]:
        """Actor handles of the current members, by replica index."""
        return [self._handles[i] for i in sorted(self._handles)]

    def indices(self) -> list[int]:
        """Replica indices of the current members (node id = index + 1)."""
        return sorted(self._handles)

    def status(self, timeout: float = 2.0) -> list[dict[str, Any]]:
        """Each member's view; replicas that do not answer within ``timeout`` get alive=False."""
        return statuses_of([self], timeout)[0]

    def _ask_status(self) -> tuple[list[int], list[Any]]:
        """A status call per member; a member that left the last one unanswered (down, or
        restarting) keeps that call, so its answer, once it is back, is there at once."""
        indices = sorted(self._handles)
        for gone in set(self._unanswered) - set(indices):
            del self._unanswered[gone]
        for index in indices:
            if index not in self._unanswered:
                self._unanswered[index] = self._handles[index].status.remote()
        return indices, [self._unanswered[i] for i in indices]

    def _read_status(self, indices: list[int], refs: list[Any],
                     done: set[Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for index, ref in zip(indices, refs, strict=True):
            entry = {"name": replica_name(self.name, index), "namespace": self.namespace,
                     "index": index, "alive": False}
            if ref in done:
                if self._unanswered.get(index) is ref:
                    del self._unanswered[index]
                with contextlib.suppress(Exception):
                    entry = ray.get(ref, timeout=0)
            if entry.get("alive"):
                self._dead_since.pop(index, None)
            else:
                self._dead_since.setdefault(index, time.monotonic())
            out.append(entry)
        return out

    def snapshots(self, timeout: float = 10.0) -> dict[str, bytes]:
        """Each live member's ``state_machine.snapshot()`` bytes, by actor name."""
        indices = sorted(self._handles)
        refs = [self._handles[i].snapshot_bytes.remote() for i in indices]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        done = set(ready)
        out: dict[str, bytes] = {}
        for index, ref in zip(indices, refs, strict=True):
            if ref in done:
                try:
                    out[replica_name(self.name, index)] = ray.get(ref, timeout=0)
                except Exception:
                    continue
        return out

    # ------------------------------------------------------------------ membership

    def heal(self, timeout: float = 60.0,
             statuses: list[dict[str, Any]] | None = None) -> dict[int, int]:
        """Replace every voter that reports ``lost_state`` (Ray restarted it without its
        storage: see ``RaftConfig.lost_state``), then every voter that answered no status
        call for longer than ``config.replace_dead_after_s``; returns {old index: new
        index}, empty when all is well. Each replacement adds first (a learner, promoted
        once caught up) and removes last (see ``consensus.replacement``), resuming one an
        earlier call left unfinished; a step that would leave no quorum of live, caught-up
        voters raises QuorumUnsafeError and changes nothing. Actors the membership no
        longer names are stopped. Blocks for one status round (none when ``statuses`` are
        given: ``statuses_of`` asks several groups at once), plus up to ``timeout`` per
        replacement."""
        if statuses is None:
            statuses = self.status()
        members = _logged_members(statuses)
        if members:  # known from the newest log: an actor it does not name was removed
            joining = set(self._replacer.pending.values())
            for index in sorted(set(self._handles) - members - joining):
                self._stop(index)
        voters = sorted(_logged_voters(statuses))
        due = due_for_replacement(statuses, voters, self._dead_since, time.monotonic(),
                                  self.config.replace_dead_after_s)
        due += [old for old in self._replacer.pending if old not in due]
        return {old: self._replacer.replace(old, timeout) for old in due}

    def replace(self, replica: int, timeout: float = 60.0) -> int:
        """Replace replica ``replica`` (gone for good): start a fresh one (new index, empty
        storage) in its bundle, add it as a learner, promote it once it caught up by
        snapshot, then remove ``replica`` and stop its actor. Returns the new replica's
        index. Every step already done succeeds, so a call that failed part way is resumed
        by the next one. Blocks up to ``timeout``."""
        if replica not in self._handles and replica not in self._replacer.pending:
            raise ValueError(f"replica {replica} is not a member of {self.name}")
        return self._replacer.replace(replica, timeout)

    def _spawn_joiner(self, like: int, timeout: float) -> int:
        bundle = self._bundle.get(like, like)
        new_index, self._next_index = self._next_index, self._next_index + 1
        handle = self._spawn(new_index, bundle, True)
        ray.get(handle.ping.remote(), timeout=max(1.0, timeout))
        self._handles[new_index] = handle
        self._bundle[new_index] = bundle
        return new_index

    def _stop(self, replica: int) -> None:
        handle = self._handles.pop(replica, None)
        self._bundle.pop(replica, None)
        self._dead_since.pop(replica, None)
        self._discovery.forget(replica)
        if handle is not None:
            with contextlib.suppress(Exception):  # already dead is fine
                ray.kill(handle, no_restart=True)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Kill every replica (no restart) and free the placement group; storage stays.

        Blocks (up to ``timeout``) until the actor names are free again, so the same group
        can be re-created at once (it then reloads its storage)."""
        self._coalescer.close()
        names = [replica_name(self.name, i) for i in self._handles]
        for handle in self._handles.values():
            ray.kill(handle, no_restart=True)
        self._handles.clear()
        remove_placement_group(self._pg)
        deadline = time.monotonic() + timeout
        for name in names:
            while time.monotonic() < deadline:
                try:
                    ray.get_actor(name, namespace=self.namespace)
                except ValueError:
                    break
                time.sleep(0.02)
