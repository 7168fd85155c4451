"""Errors raised by the paramserver package: one base class, specific subclasses.

Every input error also subclasses ``ValueError``. Errors whose ``__init__`` takes more than a
message implement ``__reduce__`` so that they survive pickling across Ray.
"""

from __future__ import annotations


class ParamServerError(Exception):
    """Base class of every error the paramserver package raises."""


class ConfigError(ParamServerError, ValueError):
    """A configuration value is out of range; the message says which and what is allowed."""


class PlanError(ParamServerError, ValueError):
    """A shard plan cannot be built or does not fit the tensors it is given."""


class StaleRoundError(ParamServerError, ValueError):
    """A contribution is for a round that already completed or is too stale to accept."""


class FutureRoundError(ParamServerError, ValueError):
    """A contribution or command is for a round further ahead than the mode allows."""


class InvalidContributionError(ParamServerError, ValueError):
    """A contribution's metadata is invalid (e.g. ``samples`` < 1)."""


class GradientShapeError(ParamServerError, ValueError):
    """A gradient has the wrong shape or dtype, or a layer is missing from a contribution."""


class UnknownLayerError(ParamServerError, ValueError):
    """A gradient or query names a layer (piece key) this shard does not hold."""


class UnknownQueryError(ParamServerError, ValueError):
    """A state-machine query is not one the shard answers."""


class RankOutOfRangeError(ParamServerError, ValueError):
    """A worker rank is outside ``0..workers-1``."""


class CommandDecodeError(ParamServerError, ValueError):
    """Bytes handed to the command codec are not a well-formed command."""


class NonFiniteGradientError(ParamServerError, ValueError):
    """A gradient holds NaN or Inf; names the rank, the round and the first bad layer."""

    def __init__(self, rank: int, round: int, layer: str) -> None:
        super().__init__(
            f"rank {rank} sent a non-finite gradient (NaN/Inf) for layer {layer!r} in round "
            f"{round}; lower the learning rate (--lr), clip gradients (--clip-grad-norm), or "
            "set --nonfinite-policy skip-round (nonfinite_policy='skip-round') to commit such "
            "rounds as no-op steps"
        )
        self.rank = rank
        self.round = round
        self.layer = layer

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.rank, self.round, self.layer))


class CheckpointCorruptError(ParamServerError):
    """A checkpoint file failed a hash, shape or format check; names the file."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(
            f"checkpoint file {path} is corrupt: {detail}; resume from an older checkpoint "
            "(delete this round's directory) or restart training from scratch"
        )
        self.path = path
        self.detail = detail

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.path, self.detail))


class NonFiniteSumError(NonFiniteGradientError):
    """Every contribution of a round was finite but their float32 sum is not (an overflow);
    names the round and the first bad layer. ``rank`` is -1: no single rank sent it."""

    def __init__(self, round: int, layer: str) -> None:
        ParamServerError.__init__(
            self,
            f"the sum of round {round}'s gradients for layer {layer!r} overflows float32 "
            "(every contribution was finite); lower the learning rate (--lr), clip gradients "
            "(--clip-grad-norm), or set --nonfinite-policy skip-round "
            "(nonfinite_policy='skip-round') to commit such rounds as no-op steps",
        )
        self.rank = -1
        self.round = round
        self.layer = layer

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.round, self.layer))


class CheckpointMismatchError(ParamServerError, ValueError):
    """A checkpoint is intact but does not fit this run (another optimizer or shard plan);
    the message says which flag to change. Nothing was restored."""


class OptimizerStateError(ParamServerError, ValueError):
    """Optimizer state handed to a shard does not fit its optimizer (other state buffers)
    or its layer shapes; names the layer. The shard did not change."""


class LockTimeoutError(ParamServerError, TimeoutError):
    """A layer lock was not acquired within its timeout; nothing stays locked."""


class ApplyFailedError(ParamServerError):
    """A committed command raised in the state machine (deterministically, on every replica);
    the shard did not change. This indicates a bug or a mismatched checkpoint, not bad input."""
