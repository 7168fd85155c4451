"""How a committed entry's bytes become state-machine commands, and their results.

A ``COMMAND`` entry is one command as it is (no client session); a ``NORMAL`` entry is a
batch or a run of enveloped client commands, deduplicated by the session table. A machine
whose class sets ``command_views`` gets read-only views of its commands where they lie in
the entry; any other gets each command as its own ``bytes`` (``StateMachine.apply``).
Every result is pickled; a command that raises yields a pickled ``CommandError`` (the same
on every replica: application is deterministic).
"""

from __future__ import annotations

import pickle
from typing import Any

from consensus.replica_context import CommandError
from consensus.session import (
    EnvelopeError,
    SessionTable,
    decode_batch,
    decode_run,
    is_run,
)
from consensus.state_machine import StateMachine
from consensus.types import Entry, EntryKind


def run_command(machine: StateMachine, command: bytes | memoryview) -> Any:
    """``machine.apply(command)``, or a CommandError with what it raised."""
    try:
        return machine.apply(command)  # type: ignore[arg-type]  # a view: command_views
    except Exception as exc:  # deterministic: every replica records the same error
        return CommandError(f"{type(exc).__name__}: {exc}")


def execute(entry: Entry, machine: StateMachine, sessions: SessionTable) -> list[bytes]:
    """(apply thread) The pickled results of ``entry``'s commands, in order (none for a
    no-op or a membership change)."""
    views = bool(getattr(machine, "command_views", False))

    def run(command: bytes | memoryview) -> Any:
        return run_command(machine, command)

    if entry.kind == EntryKind.COMMAND:  # one bare command (ReplicaApi.propose_command)
        data = entry.data
        return [pickle.dumps(run(memoryview(data).toreadonly() if views else bytes(data)))]
    if entry.kind != EntryKind.NORMAL or not entry.data:
        return []
    try:
        if is_run(entry.data):
            return sessions.apply_run(decode_run(entry.data, views), run)
        return [sessions.apply(e, run) for e in decode_batch(entry.data, views)]
    except EnvelopeError as exc:
        return [pickle.dumps(CommandError(str(exc)))]
