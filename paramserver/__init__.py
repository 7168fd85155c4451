"""paramserver: sharded parameters replicated by Raft.

The pure parts (plan, optimizers, locks, aggregator, shard state machine, command codec,
checkpoints) import no Ray; ``ParameterServer`` and ``ShardService`` (the Ray edges) are
imported lazily on first access.
"""

from typing import TYPE_CHECKING, Any

from paramserver.aggregator import RoundAggregator, SubmitOutcome
from paramserver.checkpoint import (
    Checkpoint,
    checkpoint_incarnation,
    export_state_dict,
    latest_checkpoint,
    read_checkpoint,
    write_checkpoint,
)
from paramserver.commands import RestoreCommand, RoundCommand, decode_command
from paramserver.config import AggregatorConfig
from paramserver.errors import (
    ApplyFailedError,
    CheckpointCorruptError,
    CommandDecodeError,
    ConfigError,
    FutureRoundError,
    GradientShapeError,
    InvalidContributionError,
    LockTimeoutError,
    NonFiniteGradientError,
    ParamServerError,
    PlanError,
    RankOutOfRangeError,
    StaleRoundError,
    UnknownLayerError,
    UnknownQueryError,
)
from paramserver.locks import LayerLocks
from paramserver.optim import OptimizerConfig, optimizer_step
from paramserver.plan import Piece, ShardPlan
from paramserver.schedule import ScheduleConfig, learning_rate
from paramserver.server_config import ServerConfig
from paramserver.shard import ShardStateMachine
from paramserver.shard_state import ApplyResult, ShardState
from paramserver.tree_sum import tree_sum

if TYPE_CHECKING:
    from paramserver.server import ParameterServer
    from paramserver.service import ShardService

_LAZY = {"ParameterServer": "paramserver.server", "ShardService": "paramserver.service"}


def __getattr__(name: str) -> Any:
    """Import the Ray-dependent names on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'paramserver' has no attribute {name!r}")


__all__ = [
    "AggregatorConfig",
    "ApplyFailedError",
    "ApplyResult",
    "Checkpoint",
    "CheckpointCorruptError",
    "CommandDecodeError",
    "ConfigError",
    "FutureRoundError",
    "GradientShapeError",
    "InvalidContributionError",
    "LayerLocks",
    "LockTimeoutError",
    "NonFiniteGradientError",
    "OptimizerConfig",
    "ParamServerError",
    "ParameterServer",
    "Piece",
    "PlanError",
    "RankOutOfRangeError",
    "RestoreCommand",
    "RoundAggregator",
    "RoundCommand",
    "ScheduleConfig",
    "ServerConfig",
    "ShardPlan",
    "ShardService",
    "ShardState",
    "ShardStateMachine",
    "StaleRoundError",
    "SubmitOutcome",
    "UnknownLayerError",
    "UnknownQueryError",
    "checkpoint_incarnation",
    "decode_command",
    "export_state_dict",
    "latest_checkpoint",
    "learning_rate",
    "optimizer_step",
    "read_checkpoint",
    "tree_sum",
    "write_checkpoint",
]
