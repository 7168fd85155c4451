"""workers: stateless gradient tasks, model building, data loading and the batch schedule.

Imports torch, numpy and ray only; knows nothing of Raft or the parameter server.
"""

from workers.data import DataLoader, Dataset, load, load_digits, resolve_data, synthetic, validate
from workers.errors import (
    DataError,
    GradientTaskError,
    ModelFactoryError,
    ScheduleError,
    WorkersError,
)
from workers.models import ModelFactory, ModelSpec, build_model, initial_parameters, resolve_model
from workers.schedule import BatchSchedule, check_split

__all__ = [
    "BatchSchedule",
    "DataError",
    "DataLoader",
    "Dataset",
    "GradientTaskError",
    "ModelFactory",
    "ModelFactoryError",
    "ModelSpec",
    "ScheduleError",
    "WorkersError",
    "build_model",
    "check_split",
    "initial_parameters",
    "load",
    "load_digits",
    "resolve_data",
    "resolve_model",
    "synthetic",
    "validate",
]
