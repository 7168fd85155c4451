"""The contract a replicated state machine implements to run inside a Raft group."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from consensus.types import Payload


@runtime_checkable
class StateMachine(Protocol):
    """A deterministic state machine driven by the Raft log.

    Every replica applies the same commands in the same order, so ``apply`` must depend
    only on the machine's state and the command (no clock, no randomness, no IO), and
    ``snapshot`` must return the same bytes on every replica that applied the same log.
    """

    def apply(self, command: bytes) -> Any:
        """Apply one committed command and return its result (must be picklable).

        A machine whose class sets ``command_views = True`` is handed a read-only
        ``memoryview`` of the command where it lies in the log entry instead of a copy (a
        large command is then never copied on its way in); it may keep the view, which
        keeps the entry's buffer alive, but must not assume it is ``bytes``."""

    def snapshot(self) -> Payload:
        """Serialize the whole state. Called between applies, never concurrently."""

    def restore(self, data: bytes) -> None:
        """Replace the whole state with one produced by ``snapshot``."""

    def query(self, query: Any) -> Any:
        """Answer a read-only query against the current state (used by linearizable reads)."""
