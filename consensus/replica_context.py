"""What replica-hosted code sees: ``ReplicaContext`` (for service objects), ``CommandError``,
and the naming of a replica's actor and database."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consensus.state_machine import StateMachine
from consensus.types import Payload

if TYPE_CHECKING:
    from consensus.replica import RaftReplica


def storage_path(storage_dir: str | Path, group: str, index: int) -> Path:
    """Where replica ``index`` of ``group`` keeps its database."""
    return Path(storage_dir) / group.replace("/", "_") / f"replica-{index}.db"


def replica_name(group: str, index: int) -> str:
    """The Ray actor name of replica ``index`` of ``group``."""
    return f"{group}/replica-{index}"


@dataclass(frozen=True, slots=True)
class CommandError:
    """The state machine raised while applying a command (same on every replica)."""

    error: str


class ReplicaContext:
    """What a service object (built on every replica by ``service(ctx)``) may use."""

    def __init__(self, replica: RaftReplica) -> None:
        self._replica = replica
        self.group = replica.group
        self.index = replica.index

    def is_leader(self) -> bool:
        """True while this replica believes it leads (it may be deposed without knowing)."""
        return self._replica.is_leader()

    async def propose(self, command: Payload, timeout: float = 10.0) -> Any:
        """Propose ``command`` (no client dedup) here, as its own entry (never copied into
        an envelope); NotLeaderError if not the leader."""
        return await self._replica.propose_command(command, timeout)

    @property
    def state_machine(self) -> StateMachine:
        """The live state machine: read it right after ``apply_idle`` (applies run in a
        thread) or through its own thread-safe readers; never mutate it directly."""
        return self._replica.state_machine

    async def apply_idle(self) -> None:
        """Return once no apply is running; read the state machine right after, without
        awaiting in between (applies run in a thread; see ``RaftReplica.apply_idle``)."""
        await self._replica.apply_idle()

    @property
    def leader_changes(self) -> int:
        """New (term, leader) pairs this replica learnt after its first one."""
        return self._replica.leader_changes

    @property
    def term(self) -> int:
        """This replica's current term."""
        return self._replica.term

    @property
    def applied_index(self) -> int:
        return self._replica.applied_index

    async def wait_applied(
        self, target: int | Callable[[], bool], timeout: float | None = None
    ) -> None:
        """Block until ``applied_index >= target`` (or ``target()`` is true after an apply)."""
        await self._replica.wait_applied(target, timeout)

    def on_apply(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(applied_index)`` after each batch of applies (on the loop thread)."""
        self._replica.apply_callbacks.append(callback)
