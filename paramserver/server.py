"""``ParameterServer``: the driver's facade over S shard groups (multi-Raft).

One Raft group per shard, named ``<job>/shard-<s>``, whose replicas (``<job>/shard-<s>/
replica-<r>``) apply ``ShardStateMachine`` commands and host a ``ShardService``. The facade

* pulls parameters (one object-store ref per shard, put once per version by a replica);
* submits a worker's per-shard gradient refs to each shard leader without blocking (``submit``,
  or a whole pipelined round, ``step_round``), and keeps them until every shard applied the
  round. The facade is the one owner of what was handed to the shards: after a leader change
  it re-submits the kept contributions to the new leader, by itself while it waits for a
  version, or when the driver asks (``replay``, after a pipelined round failed); duplicates
  are idempotent and a round applies exactly once;
* waits for a version on every shard, cuts consistent checkpoints, restores them through Raft.

The facade is used from one driver thread; it is not thread-safe.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import ray

from consensus import ConsensusError, RaftGroup
from consensus.discarded_refs import DiscardedRefs
from consensus.failures import is_failover, root_cause
from consensus.storage_failure import failures_note, raise_if_out_of_service
from paramserver import server_health
from paramserver.checkpoint import check_restorable, read_checkpoint, write_checkpoint
from paramserver.commands import RestoreCommand
from paramserver.errors import ApplyFailedError
from paramserver.plan import ShardPlan, buffer_dtypes
from paramserver.server_config import ServerConfig
from paramserver.service import ShardService
from paramserver.shard import ShardStateMachine

LOG = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
_NUDGE_S = 10.0  # wait_version re-sends pending contributions after this long in silence
__all__ = ["LeaderProbe", "ParameterServer", "is_failover", "root_cause"]


class LeaderProbe(Protocol):
    """What ``wait_version`` asks while no shard answers (``jobs.leader_watch.LeaderWatch``)."""

    @property
    def every_s(self) -> float:
        """Seconds of silence before each probe."""

    def moved(self) -> list[int]:
        """The shards whose leader was replaced since the last probe."""


class ParameterServer:
    """Sharded, Raft-replicated parameters for one training job (see the module docstring)."""

    def __init__(self, config: ServerConfig, plan: ShardPlan, groups: list[RaftGroup]) -> None:
        self.config = config
        self.plan = plan
        self.layout = plan.layout()
        self._groups = groups
        self._leaders: list[Any | None] = [None] * plan.shards
        # round -> rank -> (per-shard gradient refs, parameter version they were computed on)
        self._pending: dict[int, dict[int, tuple[list[Any], int]]] = {}
        self._closed: set[int] = set()
        self._inflight: dict[Any, int] = {}  # submit/close call ref -> shard
        self._discarded = DiscardedRefs()  # calls a failover superseded: read when they settle
        self._version = 0

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def create(
        cls, config: ServerConfig, initial: Mapping[str, npt.NDArray[Any]], *,
        buffers: Collection[str] | None = None,
    ) -> ParameterServer:
        """Plan the shards and start S groups of ``config.replicas`` replicas each.

        ``buffers``: the tensors of ``initial`` that are module buffers, replaced by each
        round and never optimized; by default ``initial.buffers`` when ``initial`` has that
        attribute (``workers.model_state.ModelState``), else none.

        Replicas reload any durable state under ``config.storage_dir`` (so re-creating a job
        with the same name resumes its logs). Blocks until every replica answers.
        """
        shapes = {name: tuple(np.shape(value)) for name, value in initial.items()}
        names = getattr(initial, "buffers", ()) if buffers is None else buffers
        plan = ShardPlan.build(shapes, config.shards, split_bytes=config.split_bytes,
                               buffers=buffer_dtypes(initial, names))
        parts = plan.split(initial)
        groups = []
        for s in range(plan.shards):
            machine = partial(ShardStateMachine.blank, plan.pieces(s), config.optimizer,
                              config.schedule)
            service = partial(ShardService, config=config.aggregator())
            groups.append(RaftGroup.create(
                f"{config.job}/shard-{s}", config.replicas, machine, config.storage_dir,
                namespace=config.namespace, config=config.group, service=service,
            ))
        server = cls(config, plan, groups)
        server._seed(parts)
        server._version = server._min_version()
        return server

    def _seed(self, parts: Sequence[Mapping[str, npt.NDArray[Any]]]) -> None:
        """Write the initial parameters as the first log entry of every shard that applied
        no round yet (a RestoreCommand), so they are durable and replicated like any round
        and a restarted replica finds them in its storage. A shard past version 0 reloaded
        its rounds and is left as it is."""
        for s, group in enumerate(self._groups):
            # A linearizable read (ReadIndex): a reloaded log is fully applied before we look.
            if group.read("version", timeout=self.config.rpc_timeout_s) > 0:
                continue
            machine = ShardStateMachine(self.plan.pieces(s), parts[s], self.config.optimizer,
                                        self.config.schedule)
            group.propose(RestoreCommand(machine.snapshot()).encode(),
                          timeout=self.config.rpc_timeout_s)

    def shutdown(self) -> None:
        """Kill every replica of every shard (durable storage stays on disk)."""
        for group in self._groups:
            group.shutdown()

    @property
    def groups(self) -> list[RaftGroup]:
        """The shard groups, by shard index (for operators and tests)."""
        return list(self._groups)

    # ------------------------------------------------------------------ routing

    def _leader(self, shard: int) -> Any:
        handle = self._leaders[shard]
        if handle is None:
            handle = self._groups[shard].leader(timeout=self.config.rpc_timeout_s)
            self._leaders[shard] = handle
        return handle

    def _call_each(self, method: str, *args: Any, leader_only: bool = False) -> list[Any]:
        """Call ``method`` on every shard's leader at once; a shard whose replica failed is
        retried on its (re-discovered) leader until ``rpc_timeout_s``."""
        deadline = time.monotonic() + self.config.rpc_timeout_s
        results: dict[int, Any] = {}
        while len(results) < len(self._groups):
            calls = {self._leader(s).call_service.remote(method, *args, leader_only=leader_only): s
                     for s in range(len(self._groups)) if s not in results}
            ready, _ = ray.wait(list(calls), num_returns=len(calls),
                                timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError(f"{method} did not answer within {self.config.rpc_timeout_s} "
                                   "s; check `ParameterServer.status()`")
            for ref in ready:
                shard = calls[ref]
                try:
                    results[shard] = ray.get(ref, timeout=0)
                except (ray.exceptions.RayError, ConsensusError) as exc:
                    err = root_cause(exc)
                    if not is_failover(err) or time.monotonic() > deadline:
                        raise err from None
                    self._leaders[shard] = None
        return [results[s] for s in range(len(self._groups))]

    # ------------------------------------------------------------------ rounds

    def pull(self, min_version: int) -> list[Any]:
        """One object-store ref per shard to its parameters at a version >= ``min_version``
        (``dict[key, float32 array]``, read-only). Blocks until every shard reached it."""
        answers = self._call_each("pull", min_version, self.config.rpc_timeout_s)
        return [ref for _version, ref in answers]

    def submit(self, round: int, rank: int, grad_refs: Sequence[Any],
               param_version: int) -> None:
        """Hand ``rank``'s contribution to ``round`` (one ref per shard, each resolving to
        ``(samples, {key: summed gradient})``) to every shard leader. Never blocks; errors
        surface in ``wait_version``. The refs are kept until every shard applied the round."""
        self._check_refs(grad_refs)
        self._keep(round, rank, grad_refs, param_version)
        for shard in range(len(self._groups)):
            self._send(shard, round, rank)

    def step_round(self, round: int, grad_refs: Sequence[Sequence[Any]],
                   param_version: int) -> tuple[list[Any], list[Any]]:
        """The pipelined sync round: ``grad_refs[rank][shard]`` for every rank, one
        ``ShardService.step_round`` call per shard, never blocking. Returns two lists of refs
        by shard: the parameters of version ``round + 1`` (a dict each, ready to pass to the
        next round's tasks before they exist) and the call's info dict. The refs are kept
        like ``submit``'s. The round counts as committed only once the NEXT round's infos say
        so (then tell ``applied``) or ``wait_version`` returns; after a failure, ``replay``."""
        for rank, refs in enumerate(grad_refs):
            self._check_refs(refs)
            self._keep(round, rank, refs, param_version)
        params, infos = [], []
        for shard in range(len(self._groups)):
            per_rank = [refs[shard] for refs in grad_refs]
            p_ref, i_ref = self._leader(shard).call_service.options(num_returns=2).remote(
                "step_round", round, param_version, *per_rank, leader_only=True)
            params.append(p_ref)
            infos.append(i_ref)
        return params, infos

    def applied(self, version: int) -> None:
        """The caller learnt that every shard applied ``version`` rounds (from the answers
        of round ``version``'s ``step_round``): the contributions kept for earlier rounds
        are dropped (their gradients can be freed)."""
        self._forget_applied(version)
        self._version = max(self._version, version)

    def replay(self, through: int) -> None:
        """After a pipelined round failed (a leader, replica or node lost): look every
        shard's leader up again and re-submit the kept contributions of the rounds below
        ``through`` (a shard that applied one already counts that as success); drop the kept
        contributions of ``through`` and later (the caller computes those rounds again).
        Never blocks; ``wait_version(through)`` waits for the outcome."""
        self.forget_leaders()
        for round in [r for r in self._pending if r >= through]:
            del self._pending[round]
        self._closed = {r for r in self._closed if r < through}
        for shard in range(len(self._groups)):
            self._send_pending(shard)

    def terms(self, wait_s: float) -> list[int]:
        """Per shard, the highest Raft term its replicas report within ``wait_s`` seconds
        (-1 where none answers; ``server_health.terms``). The pipelined loop asks this when
        a round is late, to learn of a lost leader sooner than Ray reports the calls it
        left unanswered."""
        return server_health.terms(self._groups, wait_s)

    def _check_refs(self, grad_refs: Sequence[Any]) -> None:
        if len(grad_refs) != len(self._groups):
            raise ValueError(f"got {len(grad_refs)} gradient refs for {len(self._groups)} "
                             "shards; the task must return one ref per shard")

    def _keep(self, round: int, rank: int, grad_refs: Sequence[Any],
              param_version: int) -> None:
        self._pending.setdefault(round, {})[rank] = (list(grad_refs), param_version)

    def forget_leaders(self) -> None:
        """Look every shard's leader up again on the next call (after a failover)."""
        self._leaders = [None] * len(self._groups)

    def close_round(self, round: int) -> None:
        """The straggler deadline of ``round`` passed: complete it with N-b contributions."""
        self._closed.add(round)
        for shard in range(len(self._groups)):
            ref = self._leader(shard).call_service.remote("close_round", round, leader_only=True)
            self._inflight[ref] = shard

    def _send(self, shard: int, round: int, rank: int, *, replay: bool = False) -> None:
        refs, param_version = self._pending[round][rank]
        ref = self._leader(shard).call_service.remote(
            "submit", round, rank, refs[shard], param_version, replay, leader_only=True)
        self._inflight[ref] = shard

    def _resubmit(self, shard: int) -> None:
        """After a failure on ``shard``: find its leader again and replay what it may lack."""
        self._leaders[shard] = None
        dropped = [r for r, s in self._inflight.items() if s == shard]
        for ref in dropped:
            del self._inflight[ref]
        self._discarded.add(dropped)
        self._send_pending(shard)

    def _send_pending(self, shard: int) -> None:
        """Re-send every kept contribution (and straggler close) to ``shard``'s leader, in
        round and rank order, as replays: a round the shard applied already is success."""
        for round in sorted(self._pending):
            for rank in sorted(self._pending[round]):
                self._send(shard, round, rank, replay=True)
            if round in self._closed:
                ref = self._leader(shard).call_service.remote("close_round", round,
                                                              leader_only=True)
                self._inflight[ref] = shard

    def _nudge(self, shard: int) -> None:
        """Nothing answered for ``_NUDGE_S``: a round's proposal may have been lost with a
        leadership that nobody saw change (a pipelined round's command is proposed in the
        background). Re-send ``shard``'s pending contributions to its current leader; a
        round it already applied or aggregated answers ``duplicate``, so this is always
        safe."""
        self._leaders[shard] = None
        for round in sorted(self._pending):
            for rank in sorted(self._pending[round]):
                self._send(shard, round, rank, replay=True)

    def wait_version(self, version: int, timeout: float,
                     watch: LeaderProbe | None = None) -> None:
        """Block until every shard applied ``version`` rounds (version v = after round v-1).

        Re-submits a shard's pending contributions when its leader fails: when a call to it
        fails, or, with ``watch``, as soon as ``watch.moved()`` names it (asked after each
        ``watch.every_s`` without an answer; Ray reports a dead leader's calls later).
        Raises the first paramserver error a submission hit (e.g.
        ``NonFiniteGradientError``) or TimeoutError.
        """
        self._await_shards("wait_version", version, timeout, watch)

    def _await_shards(self, method: str, version: int, timeout: float,
                      watch: LeaderProbe | None = None) -> list[Any]:
        """Call ``method(version, timeout)`` on every shard and wait for all answers while
        watching in-flight submissions; after a leader failure, replay the shard's pending
        contributions to its new leader and ask again."""
        deadline = time.monotonic() + timeout

        def ask(shard: int) -> Any:
            return self._leader(shard).call_service.remote(method, version, timeout,
                                                           leader_only=False)

        waits = {ask(s): s for s in range(len(self._groups))}
        results: dict[int, Any] = {}
        quiet_s = _NUDGE_S if watch is None else min(_NUDGE_S, watch.every_s)
        silent_since = time.monotonic()
        while len(results) < len(self._groups):
            pending = list(self._inflight) + list(waits)
            left = max(0.0, deadline - time.monotonic())
            ready, _ = ray.wait(pending, num_returns=1, timeout=min(left, quiet_s))
            now = time.monotonic()
            if not ready and now < deadline:
                moved = [] if watch is None else [s for s in watch.moved() if s not in results]
                for shard in moved:  # its leader was replaced: re-submit, ask the new one
                    self._resubmit(shard)
                    self._discarded.add(r for r, s in waits.items() if s == shard)
                    waits = {r: s for r, s in waits.items() if s != shard}
                    waits[ask(shard)] = shard
                if not moved and now - silent_since >= _NUDGE_S:
                    raise_if_out_of_service(g for s, g in enumerate(self._groups)
                                            if s not in results)
                    for shard in range(len(self._groups)):
                        if shard not in results:
                            self._nudge(shard)
                    silent_since = now
                continue
            if not ready:
                raise TimeoutError(f"shards did not reach version {version} in {timeout} s "
                                   f"(done: {sorted(results)}); check `ParameterServer.status()`"
                                   + failures_note(self._groups))
            silent_since = now
            ref = ready[0]
            is_wait = ref in waits
            shard = waits.pop(ref) if is_wait else self._inflight.pop(ref)
            try:
                answer = ray.get(ref, timeout=0)
            except (ray.exceptions.RayError, ConsensusError) as exc:
                err = root_cause(exc)
                if not is_failover(err):
                    self._forget_applied(version)
                    raise err from None
                self._resubmit(shard)
                if shard not in results:
                    waits = {r: s for r, s in waits.items() if s != shard}
                    waits[ask(shard)] = shard
                continue
            if is_wait:
                results[shard] = answer
        self._forget_applied(version)
        self._version = max(self._version, version)
        return [results[s] for s in range(len(self._groups))]

    def _forget_applied(self, version: int) -> None:
        """Drop the pending contributions every shard has applied by ``version``: whole rounds
        below it, or in ``async`` the contributions (round, rank) numbered below it."""
        workers = self.config.workers
        for round in list(self._pending):
            if self.config.mode == "async":
                ranks = self._pending[round]
                for rank in [k for k in ranks if round * workers + k < version]:
                    del ranks[rank]
                if not ranks:
                    del self._pending[round]
            elif round < version:
                del self._pending[round]
        self._closed = {r for r in self._closed if r >= version}
        if not self._pending:
            self._discarded.add(self._inflight)
            self._inflight.clear()
        else:
            self._discarded.poll()

    @property
    def version(self) -> int:
        """The highest version every shard is known to have applied."""
        return self._version

    def shard_versions(self) -> list[int]:
        """Each shard's applied version, by a linearizable read of its group (so after a
        restart every entry its reloaded log commits is applied first)."""
        return [int(group.read("version", timeout=self.config.rpc_timeout_s))
                for group in self._groups]

    def _min_version(self) -> int:
        return min(int(v) for v in self._call_each("wait_version", 0, self.config.rpc_timeout_s))

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, F32]:
        """The full tensors (row slices joined), by ``state_dict`` key, at the current version."""
        deadline = time.monotonic() + self.config.rpc_timeout_s
        while True:
            refs = self.pull(self._version)
            try:
                parts = ray.get(refs, timeout=max(0.0, deadline - time.monotonic()))
            except ray.exceptions.ObjectLostError:
                # a replica published the values and died before they were read (its node
                # was lost): they are gone with it, so read them again from a live replica
                if time.monotonic() > deadline:
                    raise
                self.forget_leaders()
                continue
            return self.plan.join(parts)

    def round_version(self, round: int) -> int:
        """The shard version after ``round`` driver rounds: one per round, or in ``async``
        one per contribution (``round * workers``)."""
        return round * self.config.workers if self.config.mode == "async" else round

    def checkpoint(self, out_dir: str | Path, round: int) -> Path:
        """Write the consistent cut after driver round ``round`` (every shard exactly at
        ``round_version(round)``) under ``out_dir/checkpoints/round-<round>`` atomically;
        returns that directory. The driver must have no round in flight."""
        states = self._call_each("export", self.round_version(round))
        return write_checkpoint(out_dir, round, self.plan, states, self.config.optimizer,
                                incarnation=self.config.group.incarnation)

    def restore(self, checkpoint: str | Path) -> int:
        """Load a checkpoint into the shards through Raft (every replica restores the same
        bytes) and return its round. Raises, changing nothing, CheckpointCorruptError if the
        files are corrupt and CheckpointMismatchError if they were cut for another shard plan
        or optimizer. A restore that a shard's state machine refused (committed, changing
        nothing there) raises ApplyFailedError naming the shard."""
        loaded = read_checkpoint(checkpoint)
        check_restorable(loaded, self.plan, self.config.optimizer)
        commands = []
        for s, state in enumerate(loaded.shards):
            machine = ShardStateMachine.from_state(self.plan.pieces(s), state,
                                                   self.config.optimizer, self.config.schedule)
            commands.append(RestoreCommand(machine.snapshot()).encode())
        refused = []
        for s, (group, command) in enumerate(zip(self._groups, commands, strict=True)):
            error = getattr(group.propose(command, timeout=self.config.rpc_timeout_s), "error",
                            None)  # consensus.CommandError: the apply raised, nothing changed
            if isinstance(error, str):
                refused.append(f"shard {s}: {error}")
        self._pending.clear()
        self._discarded.add(self._inflight)
        self._inflight.clear()
        if refused:
            raise ApplyFailedError(f"restoring {loaded.path} was refused by "
                                   f"{'; '.join(refused)}; those shards kept their state")
        self._version = loaded.shards[0].version
        return loaded.round

    def heal(self) -> list[tuple[int, int, int]]:
        """Replace the replicas that came back without their storage (a lost node or disk)
        or stayed unreachable longer than ``group.replace_dead_after_s``: ``(shard, old
        index, new index)`` for each; see ``RaftGroup.heal`` (add first, remove last).
        Blocks while a replacement catches up (seconds); call it between rounds (the driver
        does, at epoch ends). A shard whose replacement fails or is refused
        (``QuorumUnsafeError``) is logged with the reason and tried again next time."""
        healed = server_health.heal(self._groups, self.config.rpc_timeout_s)
        if healed:
            self.forget_leaders()
        return healed

    @property
    def parameter_bytes(self) -> int:
        """Bytes of one copy of every shard's parameters and buffers (what a published
        version or a worker's gradients hold in the object store)."""
        return self.plan.nbytes

    def leader_changes(self) -> list[int]:
        """Per shard: the most leader changes any live replica saw since it started (a
        healthy run has none). Cheap: one status call per replica."""
        return server_health.leader_changes(self._groups)

    def replica_stats(self) -> list[list[dict[str, Any]]]:
        """Per shard, per live replica: its index, role, leader changes seen, the most bytes
        its log held on disk (``peak_log_bytes``), its last snapshot's bytes (about the
        shard's state), its peak RSS, what its storage holds now and the CPU seconds its
        process used (``cpu_s``). Cheap: one status call each."""
        return server_health.replica_stats(self._groups)

    def status(self) -> list[dict[str, Any]]:
        """Per shard: name, leader replica, version, and per replica its role, applied index,
        version and digest of the shard's bytes (equal digests = byte-identical replicas).
        A replica that does not answer within 5 s is listed with alive=False and no version
        or digest: status is what an operator reads when things break."""
        return server_health.shard_status(self._groups, min(5.0, self.config.rpc_timeout_s))
