"""Errors raised by the jobs package. One base class, specific subclasses."""

from __future__ import annotations


class JobsError(Exception):
    """Base class of every error the jobs package raises."""


class ConfigError(JobsError, ValueError):
    """A training config field or combination of fields is invalid; the message says the fix."""


class TrainingError(JobsError):
    """Training stopped: a round could not complete. The last checkpoint is left intact."""


class ResumeError(JobsError):
    """``resume`` was asked for but the output folder holds nothing to resume from."""
