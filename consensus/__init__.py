"""Raft consensus: an IO-free core, durable storage, a Ray replica actor and a client."""

from consensus.errors import (
    ConfigError,
    ConsensusError,
    NotLeaderError,
    ProposalDroppedError,
    ProposalTimeoutError,
    StorageCorruptError,
)
from consensus.state_machine import StateMachine

__all__ = [
    "ConfigError",
    "ConsensusError",
    "NotLeaderError",
    "ProposalDroppedError",
    "ProposalTimeoutError",
    "StateMachine",
    "StorageCorruptError",
]
