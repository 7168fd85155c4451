"""Test-set evaluation: the one function the driver (each epoch end, the final model) and
``python -m jobs.evaluate`` share, so both report the same numbers for the same weights."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from workers.data import Dataset
from workers.model_state import load_state
from workers.objective import Objective

BATCH = 4096
"""Test samples per forward pass."""


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A model's result on a data set's test split."""

    loss: float
    """Mean per-sample loss over the test samples (the training loss, per sample)."""
    metric: float | None
    """Mean per-sample metric over the test samples; None without a metric."""
    metric_name: str
    """The metric's name (``accuracy`` by default; ``none`` without a metric)."""
    samples: int
    """Test samples evaluated."""

    @property
    def accuracy(self) -> float:
        """The fraction of test samples whose highest output is their label, when the
        metric is ``accuracy``; NaN otherwise."""
        if self.metric_name == "accuracy" and self.metric is not None:
            return self.metric
        return math.nan

    @property
    def score(self) -> float:
        """What a job reports for its test set: the metric, or the loss without one."""
        return self.loss if self.metric is None else self.metric


def evaluate_model(model: torch.nn.Module, state: Mapping[str, np.ndarray],
                   data: Dataset, objective: Objective | None = None) -> Evaluation:
    """Load ``state`` (every parameter and buffer, ``workers.model_state.load_state``:
    ModelFactoryError when it does not match the model) into ``model`` and evaluate it on
    ``data``'s test split with ``objective``'s loss and metric (default: cross-entropy and
    accuracy), in eval mode, without gradients."""
    objective = objective or Objective()
    load_state(model, state)
    model.eval()
    metric_sum, loss_sum = 0.0, 0.0
    with torch.no_grad():
        for start in range(0, len(data.x_test), BATCH):
            xb = torch.from_numpy(data.x_test[start:start + BATCH])
            yb = torch.from_numpy(data.y_test[start:start + BATCH])
            outputs = model(xb)
            loss_sum += float(objective.loss.summed(outputs, yb))
            metric_sum += objective.metric.summed(outputs, yb)
    samples = len(data.x_test)
    metric = None if objective.metric.fn is None else metric_sum / samples
    return Evaluation(loss=loss_sum / samples, metric=metric,
                      metric_name=objective.metric.name, samples=samples)
