"""Test-set evaluation with the job's objective: classification reports accuracy as
before; a regression without a metric reports its mean loss, and never crashes."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jobs.driver import evaluate
from jobs.evaluation import evaluate_model
from workers.data import validate
from workers.model_state import model_state
from workers.objective import resolve_objective


def test_classification_reports_accuracy_as_a_plain_torch_loop() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=30)
    data = validate((x, y, x, y))
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    result = evaluate_model(model, model_state(model), data)
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
    expected = int((logits.argmax(dim=1) == torch.from_numpy(y)).sum()) / 30
    assert result.accuracy == expected == result.score == evaluate(model, model_state(model),
                                                                    data)
    assert result.loss == float(F.cross_entropy(logits, torch.from_numpy(y),
                                                reduction="sum")) / 30


def test_a_regression_reports_its_mean_loss() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 4)).astype(np.float32)
    y = rng.normal(size=(20,)).astype(np.float32)
    data = validate((x, y, x, y))
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    objective = resolve_objective("mse")
    result = evaluate_model(model, model_state(model), data, objective)
    with torch.no_grad():
        expected = float(F.mse_loss(model(torch.from_numpy(x))[:, 0], torch.from_numpy(y)))
    assert math.isclose(result.loss, expected, rel_tol=1e-6)
    assert result.metric is None and math.isnan(result.accuracy)
    assert evaluate(model, model_state(model), data, objective) == result.loss
