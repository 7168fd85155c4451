"""The per-replica service of one parameter shard: aggregation on the leader, publication anywhere.

A ``ShardService`` is built on every replica of a shard's Raft group (``service=`` of
``RaftGroup.create``). It is the only paramserver code that runs inside the replica actor:

* ``submit`` (leader only) admits a worker's contribution into the ``RoundAggregator`` and,
  when a round completes, proposes its ONE encoded ``RoundCommand`` through Raft and waits
  until it is applied here.
* ``step_round`` (leader only, sync without backup workers) takes every rank's contribution
  to a round at once and answers with the NEXT parameters as soon as the round is
  aggregated, computed on a copy, while the round's command commits in the background (the
  pipelined sync round; see the method).
* ``pull`` (any replica) waits until the shard's version reaches ``min_version`` and returns
  the parameters as an object-store ref, put once per version and shared by every reader.
* ``export`` / ``wait_version`` / ``info`` serve the driver's checkpoints and barriers.

These (and ``close_round``) are the service's public methods (``service_methods``): the
replica's ``call_service`` refuses any other name.

Two doors lead into the one aggregator, and they differ on a round that is not the next one
on purpose. ``step_round`` serves only the driver's live pipeline, whose round ids are the
shard's next versions: a round this shard applied already means the caller is behind, so it
raises StaleRoundError (the driver then pulls again). Every re-sent contribution (a replay
after a failover, a nudge, the server facade's own re-submission) goes through ``submit`` with
``replay=True``, where an applied round is success (``duplicate``) and a round ahead waits
for the ones before it. Either way the aggregator admits each rank once and a round applies
exactly once; the rules differ only in what the caller is told.

All methods run on the replica's event loop thread, while applies run in the replica's
apply thread: they read the state machine only through its thread-safe readers (one
version, never a mix; see ``ShardStateMachine``). The heavy arithmetic of ``step_round``
(the sum, the preview) runs in a compute thread, so heartbeats go on meanwhile.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from paramserver.aggregator import RoundAggregator
from paramserver.commands import Frame
from paramserver.config import AggregatorConfig
from paramserver.errors import ApplyFailedError, PlanError, StaleRoundError
from paramserver.shard import ShardStateMachine
from paramserver.shard_state import ShardState

F32 = npt.NDArray[np.float32]


class ShardContext(Protocol):
    """What the service needs from its replica (``consensus.replica.ReplicaContext``)."""

    def is_leader(self) -> bool: ...

    async def propose(self, command: Frame, timeout: float = 10.0) -> Any: ...

    @property
    def state_machine(self) -> Any: ...

    async def wait_applied(self, target: Any, timeout: float | None = None) -> None: ...

    @property
    def term(self) -> int: ...

    @property
    def leader_changes(self) -> int: ...


class Publisher(Protocol):
    """Puts a value into the object store and returns a ref (``ray.put``)."""

    def __call__(self, value: Any) -> Any: ...


_T = TypeVar("_T")

OFF_LOOP_BYTES = 1 << 20
"""A shard with at least this many bytes of parameters admits contributions and copies its
state (``pull``, ``export``) on its compute thread (``ShardService._on_compute``)."""


def _seconds(proposal: asyncio.Future[float] | None) -> float:
    """A finished background proposal's commit seconds; 0.0 if none, running or failed."""
    if proposal is None or not proposal.done() or proposal.cancelled():
        return 0.0
    return 0.0 if proposal.exception() is not None else proposal.result()


def _aggregate_and_preview(
    aggregator: RoundAggregator, machine: ShardStateMachine, round: int,
    values: Sequence[tuple[int, Mapping[str, F32]]], param_version: int,
) -> tuple[tuple[Frame, ...], dict[str, F32]]:
    """(compute thread) Admit every rank's contribution; the round's ONE command and the
    parameters its apply will produce."""
    commands: tuple[Frame, ...] = ()
    for rank, (samples, grads) in enumerate(values):
        commands += aggregator.submit(round, rank, grads, samples, param_version).commands
    if len(commands) != 1:
        raise PlanError(f"round {round} produced {len(commands)} commands from "
                        f"{len(values)} contributions; step_round needs sync mode "
                        "without backup workers and one contribution per rank")
    return commands, machine.preview(commands[0])


def _ray_put(value: Any) -> Any:
    import ray  # the one IO edge of this module

    return ray.put(value)


class ShardService:
    """Leader-side round aggregation and replica-side parameter publication for one shard."""

    service_methods: ClassVar[frozenset[str]] = frozenset({
        "submit", "close_round", "step_round", "wait_version", "pull", "export", "info"})
    """What ``call_service`` may reach (``consensus.access``): the calls of
    ``paramserver.ParameterServer``. Everything else (``_commit`` and the other helpers,
    which bypass the aggregator's checks) is refused."""

    def __init__(
        self, ctx: ShardContext, config: AggregatorConfig, *, commit_timeout_s: float = 30.0,
        publish: Publisher = _ray_put,
    ) -> None:
        self._ctx = ctx
        self._config = config
        self._commit_timeout_s = commit_timeout_s
        self._publish = publish
        self._aggregator: RoundAggregator | None = None
        self._published: tuple[int, Any] | None = None
        self._proposals: dict[int, asyncio.Future[float]] = {}  # step_round: round -> commit_s
        self._compute = ThreadPoolExecutor(1, thread_name_prefix="shard-compute")
        self._large: bool | None = None  # the shard's size sends admissions off the loop

    @property
    def _machine(self) -> ShardStateMachine:
        machine = self._ctx.state_machine
        if not isinstance(machine, ShardStateMachine):
            raise TypeError(f"ShardService needs a ShardStateMachine, got {type(machine).__name__}")
        return machine

    def _current_aggregator(self) -> RoundAggregator:
        """The aggregator, rebuilt from the applied version when missing or when the shard
        went back to an older version (a checkpoint restored in place)."""
        machine = self._machine
        if self._aggregator is None or machine.version < self._aggregator.applied_version:
            self._aggregator = RoundAggregator(self._config, machine.shapes,
                                               start_round=machine.version,
                                               buffers=machine.buffers)
        self._aggregator.advance(machine.version)
        return self._aggregator

    async def submit(
        self, round: int, rank: int, contribution: tuple[int, Mapping[str, F32]],
        param_version: int, replay: bool = False,
    ) -> dict[str, int | bool]:
        """Admit ``rank``'s (samples, summed gradients) for ``round``; leader only.

        Returns ``{"accepted", "duplicate", "received", "version"}``. When the contribution
        completes a round, blocks until that round's command is applied on this replica.
        Raises the aggregator's typed errors (changing nothing) or the consensus errors of a
        failed proposal; after a failed proposal the aggregator is dropped, so a re-submission
        of the round's contributions (by the driver) rebuilds it from the applied version.
        ``replay``: the driver re-sends a contribution after a failover; a round this shard
        already applied is then an answer (``duplicate``), not a StaleRoundError, and a
        round ahead of the next one waits until the rounds before it applied (the driver
        replays several rounds at once, in order), never a FutureRoundError.
        """
        samples, grads = contribution
        if replay and round > self._machine.version:
            # replayed rounds arrive together, each needing the one before it applied
            await self.wait_version(round, self._commit_timeout_s)
        try:
            outcome = await self._on_compute(
                lambda: self._current_aggregator().submit(round, rank, grads, samples,
                                                          param_version))
        except StaleRoundError:
            if not replay:
                raise
            return {"accepted": False, "duplicate": True, "received": 0,
                    "version": self._machine.version}
        await self._commit(outcome.commands)
        return {"accepted": outcome.accepted, "duplicate": outcome.duplicate,
                "received": outcome.received, "version": self._machine.version}

    async def close_round(self, round: int) -> int:
        """The straggler deadline of ``round`` passed: complete it with N-b contributions."""
        await self._commit(await self._on_compute(
            lambda: self._current_aggregator().close_round(round)))
        return self._machine.version

    async def _on_compute(self, work: Callable[[], _T]) -> _T:
        """Run ``work`` on the compute thread when this shard is large, inline when it is
        small (a thread hand-off would cost more): an aggregator call that may complete a
        round (its sum, checks and encoding), or a copy of the state. Each takes long for
        a large shard, and on the loop the ticks and heartbeats would wait behind it. The
        choice is the shard's, so its aggregator calls never run on two threads at once."""
        if self._large is None:
            self._large = sum(4 * math.prod(shape)
                              for shape in self._machine.shapes.values()) >= OFF_LOOP_BYTES
        if not self._large:
            return work()
        return await asyncio.get_running_loop().run_in_executor(self._compute, work)

    async def _commit(self, commands: tuple[Frame, ...]) -> None:
        try:
            for command in commands:
                result = await self._ctx.propose(command, self._commit_timeout_s)
                error = getattr(result, "error", None)  # consensus.replica.CommandError
                if isinstance(error, str):
                    raise ApplyFailedError(
                        f"a committed round command failed to apply on every replica: {error}")
        except BaseException:
            self._aggregator = None
            raise
        if commands and self._aggregator is not None:
            self._aggregator.advance(self._machine.version)

    async def step_round(
        self, round: int, param_version: int, *contributions: tuple[int, Mapping[str, F32]],
    ) -> tuple[dict[str, F32], dict[str, Any]]:
        """One pipelined sync round on the leader: rank ``i``'s contribution is
        ``contributions[i]`` (the driver passes each task's ref as a top-level argument, so
        Ray resolves it before the call runs).

        Once all N are in AND round ``round - 1`` is applied here (if that round's background
        proposal failed, its error is raised), aggregates them into the round's ONE command,
        starts proposing it and answers at once with ``(params, info)``: ``params`` are the
        parameters of version ``round + 1``, computed on a copy (``preview``: bit-identical to
        what ``apply`` will produce), so that the next round's gradients are computed while
        this one commits. ``info`` = {"round", "applied" (this replica's applied version, so
        >= ``round``: the previous round IS committed), "aggregate_s", "commit_s" (the
        previous round's propose-to-apply seconds, 0 if unknown)}. A caller may treat round r
        as committed only once round r+1's info (or ``wait_version``) says so; if this leader
        fails first, it re-submits round r's contributions elsewhere and gets the same bits.
        Raises StaleRoundError when the shard already applied ``round``, and the
        aggregator's typed errors.
        """
        commit_s = await self._previous_round_applied(round)
        machine = self._machine
        if machine.version != round:
            raise StaleRoundError(f"round {round} is already applied here (shard version "
                                  f"{machine.version}); resume from a pull of the version")
        t2 = time.perf_counter()
        aggregator = self._current_aggregator()
        try:
            # the sum and the optimizer step of a large shard take long: off the loop, so
            # heartbeats go on; no apply runs meanwhile (this round is not proposed yet and
            # round - 1 is applied)
            commands, params = await asyncio.get_running_loop().run_in_executor(
                self._compute, _aggregate_and_preview, aggregator, machine, round,
                contributions, param_version)
        except BaseException:
            self._aggregator = None
            raise
        proposal = asyncio.ensure_future(self._timed_commit(commands))
        proposal.add_done_callback(_seconds)  # a failure nobody awaits is still retrieved
        self._proposals[round] = proposal
        if self._published is not None and self._published[0] < round:
            self._published = None  # a pulled older version: no one pulls it again
        for old in [r for r in self._proposals if r < round - 1]:
            del self._proposals[old]
        info = {"round": round, "applied": machine.version,
                "aggregate_s": time.perf_counter() - t2, "commit_s": commit_s,
                "term": self._ctx.term, "leader_changes": self._ctx.leader_changes}
        return params, info

    async def _timed_commit(self, commands: tuple[Frame, ...]) -> float:
        t0 = time.perf_counter()
        await self._commit(commands)
        return time.perf_counter() - t0

    async def _previous_round_applied(self, round: int) -> float:
        """Wait until version >= ``round``; re-raise the failure of round - 1's proposal if it
        is ours. Returns that proposal's commit seconds (0.0 if it was not ours)."""
        machine = self._machine
        prior = self._proposals.get(round - 1)
        if machine.version >= round:
            return _seconds(prior)
        applied = asyncio.ensure_future(self.wait_version(round, self._commit_timeout_s))
        waits: set[asyncio.Future[Any]] = {applied}
        if prior is not None:
            waits.add(prior)
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if prior is not None and prior in done:
                commit_s = prior.result()  # raises the proposal's failure
                await applied
                return commit_s
            applied.result()
            return 0.0
        finally:
            applied.cancel()

    async def wait_version(self, version: int, timeout: float | None = None) -> int:
        """Block until this replica applied ``version`` rounds; returns its version."""
        machine = self._machine
        await self._ctx.wait_applied(lambda: machine.version >= version, timeout)
        return machine.version

    async def pull(self, min_version: int, timeout: float | None = None) -> list[Any]:
        """Parameters at a version >= ``min_version`` as ``[version, ref]`` (the ref wrapped in
        a list so Ray passes it through). Puts them in the object store once per version."""
        await self.wait_version(min_version, timeout)
        if self._published is None or self._published[0] != self._machine.version:
            self._published = await self._on_compute(self._read_and_publish)
        return [self._published[0], self._published[1]]

    def _read_and_publish(self) -> tuple[int, Any]:
        # a consistent read of one version even while an apply runs in its thread
        # (per-layer seqlocks validated by the machine's version gate); the put copies
        version, params = self._machine.read_params(copy=False)
        return version, self._publish(params)

    async def export(self, version: int) -> ShardState:
        """A deep copy of the shard at exactly ``version`` (for a consistent checkpoint cut;
        consistent even while an apply runs)."""
        state = await self._on_compute(self._machine.export_state)
        if state.version != version:
            raise PlanError(f"shard is at version {state.version}, not {version}; "
                            "checkpoints are cut only after every shard applied the round")
        return state

    def info(self) -> dict[str, Any]:
        """Version, digest of the shard's bytes, whether this replica leads, its term and
        the leader changes it saw (the digest is of one version, even during an apply)."""
        machine = self._machine
        return {"version": machine.version, "digest": machine.digest(),
                "leader": self._ctx.is_leader(), "term": self._ctx.term,
                "leader_changes": self._ctx.leader_changes}
