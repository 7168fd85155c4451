"""Errors raised by the workers package. One base class, specific subclasses."""

from __future__ import annotations


class WorkersError(Exception):
    """Base class of every error the workers package raises."""


class ModelFactoryError(WorkersError):
    """A model spec could not be resolved or the factory did not return a usable module."""


class DataError(WorkersError):
    """A data loader could not be resolved or returned data that cannot be trained on."""


class ScheduleError(WorkersError, ValueError):
    """A batch schedule was asked for something its sizes cannot provide."""


class GradientTaskError(WorkersError):
    """A gradient task was given inputs that do not match the model or the shard layout."""


class LossError(WorkersError):
    """A loss spec could not be resolved, or the loss broke its contract (per-sample
    losses of shape (b,)) or does not fit the model's outputs and the targets."""


class MetricError(WorkersError):
    """A metric spec could not be resolved, or the metric broke its contract (per-sample
    values of shape (b,)) or does not fit the model's outputs and the targets."""
