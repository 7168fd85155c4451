"""The preflight: a model that does not fit the data is refused before Ray starts, naming the
specs; models that do fit (batch norm, dropout, built-ins) pass and leave no trace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from jobs import api
from jobs import driver as driver_mod
from jobs.config import TrainConfig
from jobs.errors import ConfigError
from jobs.preflight import preflight, spec_name
from workers.data import Arrays
from workers.errors import DataError, ModelFactoryError


def five_labels() -> Arrays:
    x = np.random.default_rng(1).normal(size=(16, 6)).astype(np.float32)
    y = np.arange(16) % 5
    return x, y, x[:4], y[:4]


def fits() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 5))


class Detached(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(x).detach()
        return out


class Flat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(x).sum(dim=1)
        return out


def test_a_fitting_model_passes_and_leaves_no_trace() -> None:
    """Batch norm on one sample would fail in train mode; the check runs in eval mode, and
    neither the torch RNG nor the data it returns differ from a plain load."""
    state = torch.random.get_rng_state()
    checked = preflight(fits, five_labels, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    for got, want in zip(checked.loader(), five_labels(), strict=True):
        np.testing.assert_array_equal(got, want)
    assert checked.dataset.num_classes == 5
    preflight("mlp", five_labels, seed=0)
    preflight("cnn", "digits", seed=0)


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (lambda: nn.Linear(6, 4), r"outputs 4 classes but data loader .*five_labels has "
                                  r"labels up to 4 \(y_train\); give the model's last layer 5"),
        (lambda: nn.Linear(7, 5), r"fails on one sample .*\(1, 6\).*mat1 and mat2.*"
                                  r"nn\.Linear\(6, \.\.\.\)"),
        (Flat, r"returned \(1,\) for a batch of shape \(1, 6\).*\(batch, classes\)"),
        (Detached, "does not depend on its parameters"),
    ],
    ids=["too-few-outputs", "input-width", "not-2d", "detached"],
)
def test_a_model_that_does_not_fit_is_a_config_error(model: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        preflight(model, five_labels, seed=0)


def test_a_raising_loader_or_factory_is_named_and_chained() -> None:
    def unmounted() -> Arrays:
        raise OSError("disk not mounted")

    with pytest.raises(DataError, match=r"data loader .*unmounted raised OSError: disk not "
                                         r"mounted; fix the loader") as data_exc:
        preflight(fits, unmounted, seed=0)
    assert isinstance(data_exc.value.__cause__, OSError)

    def broken() -> nn.Module:
        raise KeyError("weights")

    with pytest.raises(ModelFactoryError, match=r"model factory .*broken raised KeyError: "
                                                r"'weights'; fix the factory") as model_exc:
        preflight(broken, five_labels, seed=0)
    assert isinstance(model_exc.value.__cause__, KeyError)


def test_specs_are_named_as_flags_or_callables() -> None:
    assert spec_name("model", "pkg.mod:make") == "--model pkg.mod:make"
    assert spec_name("data", five_labels) == f"data loader {__name__}:five_labels"
    assert spec_name("model", fits) == f"model factory {__name__}:fits"


def test_train_refuses_a_misfit_before_ray_or_the_output_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_ray(address: str | None) -> None:
        raise AssertionError("Ray started for a job whose model does not fit its data")

    monkeypatch.setattr(driver_mod, "ensure_ray", no_ray)
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="outputs 4 classes"):
        api.train(TrainConfig(out=str(out)), model=lambda: nn.Linear(6, 4), data=five_labels)
    assert not out.exists()


def test_train_loads_the_data_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    seen: dict[str, Any] = {}

    def counted() -> Arrays:
        calls.append(1)
        return five_labels()

    class RecordingDriver:
        def __init__(self, config: TrainConfig, **kwargs: Any) -> None:
            seen.update(kwargs)

        def run(self) -> str:
            return "ran"

    monkeypatch.setattr(api, "Driver", RecordingDriver)
    assert api.train(TrainConfig(), model=fits, data=counted) == "ran"  # type: ignore[comparison-overlap]
    assert seen["model"] is fits
    np.testing.assert_array_equal(seen["data"]()[1], five_labels()[1])
    assert calls == [1]
