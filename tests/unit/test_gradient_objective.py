"""The gradient task with the job's objective: the default classification path is bit for
bit a plain torch ``F.cross_entropy(reduction="sum")``; token and regression losses give
the summed per-sample gradients; a loss that breaks the contract is a typed error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workers.errors import LossError
from workers.gradient import TaskSpec, compute_gradients
from workers.models import ModelSpec, build_model, initial_parameters, resolve_model
from workers.objective import resolve_objective


def whole_layout(model: nn.Module) -> tuple[tuple[tuple[str, str, int, int], ...], ...]:
    names = [n for n, _ in model.named_parameters()]
    return (tuple((n, n, 0, 0) for n in names),)


def run(spec: ModelSpec, x: np.ndarray, y: np.ndarray, idx: np.ndarray,
        objective: object = None) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    model = build_model(spec, seed=3)
    layout = whole_layout(model)
    params = initial_parameters(model)
    kwargs = {} if objective is None else {"objective": objective}
    task = TaskSpec(model=spec, seed=3, layout=layout, **kwargs)  # type: ignore[arg-type]
    grads, info = compute_gradients(task, x, y, idx, [params])
    return grads[0][1], info


def reference(spec: ModelSpec, loss_of: object) -> dict[str, torch.Tensor]:
    model = build_model(spec, seed=3)
    loss = loss_of(model)  # type: ignore[operator]
    loss.backward()
    return {n: p.grad for n, p in model.named_parameters()}  # type: ignore[misc]


def test_default_classification_is_bitwise_plain_torch() -> None:
    spec = resolve_model("mlp", in_features=6, num_classes=4)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    y = rng.integers(0, 4, size=40)
    idx = np.arange(3, 40, 2)
    grads, info = run(spec, x, y, idx)
    xb, yb = torch.from_numpy(x[idx]), torch.from_numpy(y[idx])
    model = build_model(spec, seed=3)
    logits = model(xb)
    loss = F.cross_entropy(logits, yb, reduction="sum")
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None
        assert np.array_equal(grads[name], p.grad.numpy()), name
    assert info["loss_sum"] == float(loss.detach())  # not a re-summed per-sample loss
    assert info["correct"] == int((logits.argmax(dim=1) == yb).sum())


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(9, 5)
        self.head = nn.Linear(5, 9)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(torch.tanh(self.embed(tokens)))
        return out


def test_token_cross_entropy_is_the_summed_per_sample_token_mean() -> None:
    spec = resolve_model(TinyLM, in_features=7, num_classes=9)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 9, size=(12, 7))
    y = rng.integers(0, 9, size=(12, 7))
    idx = np.array([0, 4, 5, 9])
    grads, info = run(spec, x, y, idx)
    xb, yb = torch.from_numpy(x[idx]), torch.from_numpy(y[idx])

    def token_mean_times_batch(model: nn.Module) -> torch.Tensor:
        logits = model(xb)
        return F.cross_entropy(logits.reshape(-1, 9), yb.reshape(-1)) * len(idx)

    expected = reference(spec, token_mean_times_batch)
    for name, g in expected.items():
        np.testing.assert_allclose(grads[name], g.numpy(), rtol=1e-5, atol=1e-7)
    assert 0.0 <= float(info["correct"]) <= len(idx)  # per-sample token accuracy, summed


def test_mse_regression_gradients_and_no_metric() -> None:
    spec = resolve_model(lambda: nn.Linear(3, 2), in_features=3, num_classes=2)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    y = rng.normal(size=(8, 2)).astype(np.float32)
    idx = np.arange(8)
    grads, info = run(spec, x, y, idx, resolve_objective("mse"))
    xb, yb = torch.from_numpy(x), torch.from_numpy(y)
    expected = reference(spec, lambda m: F.mse_loss(m(xb), yb, reduction="none").mean(1).sum())
    for name, g in expected.items():
        np.testing.assert_allclose(grads[name], g.numpy(), rtol=1e-5, atol=1e-7)
    assert info["correct"] == 0.0


def test_a_loss_of_the_wrong_shape_fails_the_task_naming_the_shape() -> None:
    spec = resolve_model(lambda: nn.Linear(3, 2), in_features=3, num_classes=2)
    x = np.zeros((6, 3), np.float32)
    y = np.zeros((6, 2), np.float32)
    objective = resolve_objective(lambda o, t: F.mse_loss(o, t, reduction="none"), "none")
    with pytest.raises(LossError, match=r"returned shape \(4, 2\) for a micro-batch of 4 "
                                        r"samples; it must return per-sample values of shape "
                                        r"\(4,\)"):
        run(spec, x, y, np.arange(4), objective)
