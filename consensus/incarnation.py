"""Group incarnations: which history a replica's storage belongs to.

A group created fresh draws a random incarnation id (:func:`new_incarnation`); every replica
of it stamps the id into its database and into each snapshot file it writes, and refuses
storage stamped with another id (:class:`IncarnationMismatchError`). So a replica that a new
run places next to an older run's database (same storage path, another node's leftovers, a
restored backup) never reloads that log and never acknowledges entries it does not hold;
it fails with an error naming the path and both ids instead. A group re-created over its own
storage (``--resume``, ``RaftGroup.create`` again) passes the same id and reloads it.
"""

from __future__ import annotations

import re
import secrets

from consensus.errors import ConfigError, ConsensusError

__all__ = ["IncarnationMismatchError", "check_incarnation", "new_incarnation"]

_ID = re.compile(r"^[0-9a-f]{8,64}$")
ID_BYTES = 8
"""Random bytes of a new id (16 hex digits)."""


def new_incarnation() -> str:
    """A fresh random incarnation id: lowercase hex."""
    return secrets.token_hex(ID_BYTES)


def check_incarnation(value: str | None, where: str) -> None:
    """Raise ConfigError unless ``value`` is None or 8-64 lowercase hex digits (``where``
    names the setting in the message)."""
    if value is not None and (not isinstance(value, str) or not _ID.match(value)):
        raise ConfigError(f"{where} must be 8-64 lowercase hex digits (e.g. from "
                          f"consensus.incarnation.new_incarnation()) or None, got {value!r}")


class IncarnationMismatchError(ConsensusError):
    """Raft storage belongs to another incarnation of the group (another run's history).

    Raised before anything is written or deleted; ``found`` is None when the storage holds
    state but no id (written without one)."""

    def __init__(self, path: str, expected: str, found: str | None) -> None:
        have = f"incarnation {found}" if found is not None else "no incarnation id"
        super().__init__(
            f"Raft storage {path} holds {have}, but this group is incarnation {expected}: it "
            "is another run's log, left on this node. Delete it (or the whole storage "
            "directory) on this node, or give the group another storage_dir; nothing was "
            "changed.")
        self.path = path
        self.expected = expected
        self.found = found

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.path, self.expected, self.found))
