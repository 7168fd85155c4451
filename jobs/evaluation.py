"""Test-set evaluation: the one function the driver (each epoch end, the final model) and
``python -m jobs.evaluate`` share, so both report the same numbers for the same weights."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from workers.data import Dataset
from workers.model_state import load_state

BATCH = 4096
"""Test samples per forward pass."""


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A model's result on a data set's test split."""

    loss: float
    """Mean cross-entropy over the test samples (the training loss's reduction, per sample)."""
    accuracy: float
    """Fraction of test samples whose highest logit is their label."""
    samples: int
    """Test samples evaluated."""


def evaluate_model(model: torch.nn.Module, state: Mapping[str, np.ndarray],
                   data: Dataset) -> Evaluation:
    """Load ``state`` (every parameter and buffer, ``workers.model_state.load_state``:
    ModelFactoryError when it does not match the model) into ``model`` and evaluate it on
    ``data``'s test split, in eval mode, without gradients."""
    load_state(model, state)
    model.eval()
    correct, loss_sum = 0, 0.0
    with torch.no_grad():
        for start in range(0, len(data.x_test), BATCH):
            xb = torch.from_numpy(data.x_test[start:start + BATCH])
            yb = torch.from_numpy(data.y_test[start:start + BATCH])
            logits = model(xb)
            loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(dim=1) == yb).sum())
    samples = len(data.x_test)
    return Evaluation(loss=loss_sum / samples, accuracy=correct / samples, samples=samples)
