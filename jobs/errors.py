"""Errors raised by the jobs package. One base class, specific subclasses."""

from __future__ import annotations


class JobsError(Exception):
    """Base class of every error the jobs package raises."""


class ConfigError(JobsError, ValueError):
    """A training config field or combination of fields is invalid; the message says the fix."""


class TrainingError(JobsError):
    """Training stopped: a round could not complete. The last checkpoint is left intact."""


class RoundsLostError(TrainingError):
    """Rounds cannot be completed in place: their gradients died with a node after some shard
    had applied them (shard versions differ; the old parameters are gone). The driver
    continues from the last checkpoint (same model bits); with none yet, training stops."""


class ResumeError(JobsError):
    """``resume`` was asked for but the output folder holds nothing to resume from."""


class OutputExistsError(ConfigError):
    """A fresh run's output folder holds an earlier run's results; nothing was changed
    (``jobs.outputs``: resume it, overwrite it, or choose another folder)."""


class GpuUnavailableError(TrainingError):
    """``--gpu`` waited for an autoscaler to add GPU nodes, and none came in time."""
