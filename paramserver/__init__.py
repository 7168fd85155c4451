"""paramserver: the sharded parameter server's pure parts (plan, optimizers, locks,
aggregator, shard state machine, command codec, checkpoints)."""

from paramserver.aggregator import RoundAggregator, SubmitOutcome, tree_sum
from paramserver.checkpoint import (
    Checkpoint,
    export_state_dict,
    latest_checkpoint,
    read_checkpoint,
    write_checkpoint,
)
from paramserver.commands import RestoreCommand, RoundCommand, decode_command
from paramserver.config import AggregatorConfig
from paramserver.errors import (
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
from paramserver.shard import ApplyResult, ShardState, ShardStateMachine

__all__ = [
    "AggregatorConfig",
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
    "Piece",
    "PlanError",
    "RankOutOfRangeError",
    "RestoreCommand",
    "RoundAggregator",
    "RoundCommand",
    "ScheduleConfig",
    "ShardPlan",
    "ShardState",
    "ShardStateMachine",
    "StaleRoundError",
    "SubmitOutcome",
    "UnknownLayerError",
    "UnknownQueryError",
    "decode_command",
    "export_state_dict",
    "latest_checkpoint",
    "learning_rate",
    "optimizer_step",
    "read_checkpoint",
    "tree_sum",
    "write_checkpoint",
]
