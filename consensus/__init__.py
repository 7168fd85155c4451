"""Raft consensus: an IO-free core, durable storage, a Ray replica actor and a client.

``RaftGroup`` (and the Ray-dependent modules behind it) is imported lazily, on first access,
so that the IO-free core, storage and simulator never import Ray.
"""

from typing import TYPE_CHECKING, Any

from consensus.config import RaftConfig
from consensus.core import RaftNode
from consensus.errors import (
    ConfigError,
    ConsensusError,
    NotLeaderError,
    ProposalDroppedError,
    ProposalTimeoutError,
    StorageCorruptError,
    StorageFullError,
)
from consensus.replica_config import RaftGroupConfig
from consensus.session import DuplicateCommand, Envelope, EnvelopeError, SessionTable
from consensus.state_machine import StateMachine
from consensus.storage import SqliteStorage, StorageConfig

if TYPE_CHECKING:
    from consensus.group import RaftGroup
    from consensus.replica import CommandError, RaftReplica, ReplicaContext

_LAZY = {
    "RaftGroup": "consensus.group",
    "CommandError": "consensus.replica",
    "RaftReplica": "consensus.replica",
    "ReplicaContext": "consensus.replica",
}


def __getattr__(name: str) -> Any:
    """Import the Ray-dependent names on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'consensus' has no attribute {name!r}")


__all__ = [
    "CommandError",
    "ConfigError",
    "ConsensusError",
    "DuplicateCommand",
    "Envelope",
    "EnvelopeError",
    "NotLeaderError",
    "ProposalDroppedError",
    "ProposalTimeoutError",
    "RaftConfig",
    "RaftGroup",
    "RaftGroupConfig",
    "RaftNode",
    "RaftReplica",
    "ReplicaContext",
    "SessionTable",
    "SqliteStorage",
    "StateMachine",
    "StorageConfig",
    "StorageCorruptError",
    "StorageFullError",
]
