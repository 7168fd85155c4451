"""Errors raised by the consensus package. One base class, specific subclasses."""

from __future__ import annotations


class ConsensusError(Exception):
    """Base class of every error the consensus package raises."""


class NotLeaderError(ConsensusError):
    """This replica is not the leader; ``leader_hint`` names the one it believes leads, if any."""

    def __init__(self, message: str, leader_hint: int | None = None) -> None:
        super().__init__(message)
        self.leader_hint = leader_hint

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.leader_hint))


class ProposalDroppedError(ConsensusError):
    """A proposal was dropped (leadership changed, or a transfer is in progress); retry it."""


class ProposalTimeoutError(ConsensusError):
    """A proposal or read did not complete within its timeout; it may or may not have applied."""


class StorageCorruptError(ConsensusError):
    """Durable Raft state failed an integrity check. The message names the file."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(
            f"Raft storage {path} is corrupt: {detail}. Restore this replica from a peer "
            "(RaftGroup.replace) or delete the file to rejoin as a new member."
        )
        self.path = path
        self.detail = detail

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.path, self.detail))


class StorageFullError(ConsensusError):
    """The filesystem under Raft storage cannot hold a write. Raised before the write starts
    (free-space check) or when it fails with ENOSPC / SQLITE_FULL; either way the previous
    durable state is intact. The message names the path, the bytes needed and the bytes free.

    ``needed`` is None when the writer could not tell (sqlite ran out mid-transaction);
    ``free`` is None when the filesystem could not be asked.
    """

    def __init__(self, path: str, needed: int | None, free: int | None) -> None:
        need = f"needs {needed} bytes" if needed is not None else "needs more space"
        have = f"{free} bytes are free" if free is not None else "free space is unknown"
        super().__init__(
            f"Raft storage {path} is out of disk space: {need}, {have} on that filesystem. "
            "Free space there, or point storage_dir (RaftGroup / ServerConfig) at a "
            "filesystem with room; the previous durable state is unchanged."
        )
        self.path = path
        self.needed = needed
        self.free = free

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.path, self.needed, self.free))


class ConfigError(ConsensusError, ValueError):
    """A configuration value is out of range; the message says which and what is allowed."""


class QuorumUnsafeError(ConsensusError):
    """A membership change was refused before it started: the group after it would not have
    a quorum of live, caught-up voters, so it could not commit (the group would stall).
    Nothing changed; the message names the members and what to bring back first."""
