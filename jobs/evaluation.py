"""Test-set evaluation: the one function the driver (each epoch end, the final model) and
``python -m jobs.evaluate`` share, so both report the same numbers for the same weights."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from workers.data import Dataset
from workers.datasets import OpenedDataset
from workers.model_state import load_state
from workers.objective import Objective

BATCH = 4096
"""Test samples per forward pass, at most."""
BATCH_BYTES = 64 << 20
"""Bytes of test samples per forward pass, at most (at least one sample): a dataset read
by index is never held whole, whatever its size."""


def batch_rows(sample_bytes: int) -> int:
    """Test samples per forward pass for samples of ``sample_bytes``: ``BATCH``, or fewer
    so that a batch holds at most ``BATCH_BYTES``."""
    return max(1, min(BATCH, BATCH_BYTES // max(sample_bytes, 1)))


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
                   data: Dataset | OpenedDataset,
                   objective: Objective | None = None) -> Evaluation:
    """Load ``state`` (every parameter and buffer, ``workers.model_state.load_state``:
    ModelFactoryError when it does not match the model) into ``model`` and evaluate it on
    ``data``'s test split with ``objective``'s loss and metric (default: cross-entropy and
    accuracy), in eval mode, without gradients, in batches of ``batch_rows`` samples (a
    dataset read by index: each batch fetched by index, so the test split is never held
    whole)."""
    objective = objective or Objective()
    load_state(model, state)
    model.eval()
    metric_sum, loss_sum = 0.0, 0.0
    samples = data.n_test
    rows = batch_rows(data.sample_bytes)
    with torch.no_grad():
        for start in range(0, samples, rows):
            x, y = data.test_batch(start, min(start + rows, samples))
            xb, yb = torch.from_numpy(x), torch.from_numpy(y)
            outputs = model(xb)
            loss_sum += float(objective.loss.summed(outputs, yb))
            metric_sum += objective.metric.summed(outputs, yb)
    metric = None if objective.metric.fn is None else metric_sum / samples
    return Evaluation(loss=loss_sum / samples, metric=metric,
                      metric_name=objective.metric.name, samples=samples)
