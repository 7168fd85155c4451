"""The per-replica service of one parameter shard: aggregation on the leader, publication anywhere.

A ``ShardService`` is built on every replica of a shard's Raft group (``service=`` of
``RaftGroup.create``). It is the only paramserver code that runs inside the replica actor:

* ``submit`` (leader only) admits a worker's contribution into the ``RoundAggregator`` and,
  when a round completes, proposes its ONE encoded ``RoundCommand`` through Raft and waits
  until it is applied here.
* ``pull`` (any replica) waits until the shard's version reaches ``min_version`` and returns
  the parameters as an object-store ref, put once per version and shared by every reader.
* ``export`` / ``wait_version`` / ``info`` serve the driver's checkpoints and barriers.

All methods run on the replica's event loop thread, between applies, so they see the state
machine between rounds and never concurrently with ``apply``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from paramserver.aggregator import RoundAggregator
from paramserver.config import AggregatorConfig
from paramserver.errors import ApplyFailedError, PlanError
from paramserver.shard import ShardState, ShardStateMachine

F32 = npt.NDArray[np.float32]


class ShardContext(Protocol):
    """What the service needs from its replica (``consensus.replica.ReplicaContext``)."""

    def is_leader(self) -> bool: ...

    async def propose(self, command: bytes, timeout: float = 10.0) -> Any: ...

    @property
    def state_machine(self) -> Any: ...

    async def wait_applied(self, target: Any, timeout: float | None = None) -> None: ...


class Publisher(Protocol):
    """Puts a value into the object store and returns a ref (``ray.put``)."""

    def __call__(self, value: Any) -> Any: ...


def _ray_put(value: Any) -> Any:
    import ray  # the one IO edge of this module

    return ray.put(value)


class ShardService:
    """Leader-side round aggregation and replica-side parameter publication for one shard."""

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

    @property
    def _machine(self) -> ShardStateMachine:
        machine = self._ctx.state_machine
        if not isinstance(machine, ShardStateMachine):
            raise TypeError(f"ShardService needs a ShardStateMachine, got {type(machine).__name__}")
        return machine

    def _fresh_aggregator(self) -> RoundAggregator:
        """The aggregator, rebuilt from the applied version when missing."""
        machine = self._machine
        if self._aggregator is None:
            shapes = {k: tuple(v.shape) for k, v in machine.params().items()}
            self._aggregator = RoundAggregator(self._config, shapes, start_round=machine.version)
        self._aggregator.advance(machine.version)
        return self._aggregator

    async def submit(
        self, round: int, rank: int, contribution: tuple[int, Mapping[str, F32]],
        param_version: int,
    ) -> dict[str, int | bool]:
        """Admit ``rank``'s (samples, summed gradients) for ``round``; leader only.

        Returns ``{"accepted", "duplicate", "received", "version"}``. When the contribution
        completes a round, blocks until that round's command is applied on this replica.
        Raises the aggregator's typed errors (changing nothing) or the consensus errors of a
        failed proposal; after a failed proposal the aggregator is dropped, so a re-submission
        of the round's contributions (by the driver) rebuilds it from the applied version.
        """
        samples, grads = contribution
        outcome = self._fresh_aggregator().submit(round, rank, grads, samples, param_version)
        await self._commit(outcome.commands)
        return {"accepted": outcome.accepted, "duplicate": outcome.duplicate,
                "received": outcome.received, "version": self._machine.version}

    async def close_round(self, round: int) -> int:
        """The straggler deadline of ``round`` passed: complete it with N-b contributions."""
        await self._commit(self._fresh_aggregator().close_round(round))
        return self._machine.version

    async def _commit(self, commands: tuple[bytes, ...]) -> None:
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

    async def wait_version(self, version: int, timeout: float | None = None) -> int:
        """Block until this replica applied ``version`` rounds; returns its version."""
        machine = self._machine
        await self._ctx.wait_applied(lambda: machine.version >= version, timeout)
        return machine.version

    async def pull(self, min_version: int, timeout: float | None = None) -> list[Any]:
        """Parameters at a version >= ``min_version`` as ``[version, ref]`` (the ref wrapped in
        a list so Ray passes it through). Puts them in the object store once per version."""
        version = await self.wait_version(min_version, timeout)
        if self._published is None or self._published[0] != version:
            self._published = (version, self._publish(self._machine.params()))
        return [version, self._published[1]]

    def export(self, version: int) -> ShardState:
        """A deep copy of the shard at exactly ``version`` (for a consistent checkpoint cut)."""
        state = self._machine.export_state()
        if state.version != version:
            raise PlanError(f"shard is at version {state.version}, not {version}; "
                            "checkpoints are cut only after every shard applied the round")
        return state

    def info(self) -> dict[str, Any]:
        """Version, digest of the shard's bytes, and whether this replica leads."""
        machine = self._machine
        return {"version": machine.version, "digest": machine.digest(),
                "leader": self._ctx.is_leader()}
