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


class ConfigError(ConsensusError, ValueError):
    """A configuration value is out of range; the message says which and what is allowed."""
