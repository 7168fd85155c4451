"""jobs: the driver (epochs, rounds, modes), config, CLI ``python -m jobs.train``, outputs."""

from jobs.api import train
from jobs.config import TrainConfig
from jobs.driver import Driver, TrainResult
from jobs.errors import ConfigError, JobsError, ResumeError, RoundsLostError, TrainingError

__all__ = [
    "ConfigError",
    "Driver",
    "JobsError",
    "ResumeError",
    "RoundsLostError",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "train",
]
