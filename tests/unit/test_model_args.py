"""Model factory arguments: ``--model-arg key=value`` / ``TrainConfig.model_kwargs`` reach
the factory in the preflight, the driver and the gradient tasks, and summary.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from jobs import api
from jobs import driver as driver_mod
from jobs.config import TrainConfig
from jobs.driver import Driver
from jobs.errors import ConfigError
from jobs.model_args import parse_model_arg
from jobs.train import parse_config
from tests.unit.test_driver_lifecycle import FakeBackend
from workers.errors import ModelFactoryError

DATA = "synthetic:8x3x32x16"  # 8 features, 3 classes


def make_model(in_features: int, hidden: int = 4, classes: int = 3) -> torch.nn.Module:
    """A factory that cannot know the data's width: it is a model argument."""
    return torch.nn.Sequential(torch.nn.Linear(in_features, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, classes))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("width=64", ("width", 64)), ("p=0.5", ("p", 0.5)), ("on=true", ("on", True)),
     ("x=null", ("x", None)), ("act=relu", ("act", "relu")), ('name="64"', ("name", "64")),
     ("v=-1e-3", ("v", -1e-3)), ("s=NaN", ("s", "NaN")), ("e=", ("e", "")),
     ("eq=a=b", ("eq", "a=b"))],
)
def test_values_are_json_scalars_when_they_parse_else_strings(
    text: str, expected: tuple[str, object]
) -> None:
    assert parse_model_arg(text) == expected
    assert type(parse_model_arg(text)[1]) is type(expected[1])


def test_the_cli_collects_model_args_into_the_config() -> None:
    config = parse_config(["--model", f"{__name__}:make_model", "--model-arg", "in_features=8",
                           "--model-arg", "hidden=16"])
    assert config.model_kwargs == {"in_features": 8, "hidden": 16}
    assert config == TrainConfig(model=f"{__name__}:make_model",
                                 model_kwargs={"in_features": 8, "hidden": 16})
    assert parse_config([]).model_kwargs == {}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"1x": 1}, "must be a Python identifier"), ({"w": [1, 2]}, "values must be JSON scalars"),
     ({"w": float("inf")}, "must be a finite number"), ([("w", 1)], "must be a dict")],
)
def test_the_api_refuses_bad_model_kwargs(kwargs: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TrainConfig(model_kwargs=kwargs)


def test_the_config_keeps_its_own_copy_of_the_kwargs() -> None:
    given: dict[str, Any] = {"in_features": 8}
    config = TrainConfig(model_kwargs=given)
    given["in_features"] = 9
    assert config.model_kwargs == {"in_features": 8}


def test_the_preflight_builds_the_factory_with_its_kwargs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The width is an argument: without it the factory cannot be called, with a wrong one
    the model does not fit the data; both are refused before Ray starts."""
    seen: dict[str, Any] = {}

    class RecordingDriver:
        def __init__(self, config: TrainConfig, **kwargs: Any) -> None:
            seen["config"] = config

        def run(self) -> str:
            return "ran"

    monkeypatch.setattr(api, "Driver", RecordingDriver)
    config = TrainConfig(data=DATA, model_kwargs={"in_features": 8})
    assert api.train(config, model=make_model) == "ran"  # type: ignore[comparison-overlap]
    assert seen["config"].model_kwargs == {"in_features": 8}
    with pytest.raises(ModelFactoryError, match="missing a required argument: 'in_features'"):
        api.train(TrainConfig(data=DATA), model=make_model)
    with pytest.raises(ConfigError, match="fails on one sample"):
        api.train(TrainConfig(data=DATA, model_kwargs={"in_features": 5}), model=make_model)


def test_the_driver_builds_with_the_kwargs_and_records_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(driver_mod, "ensure_ray", lambda address: None)
    monkeypatch.setattr(driver_mod, "cluster_cpus", lambda: 8)
    monkeypatch.setattr(Driver, "_train", lambda self, *args: (1.0, 0))
    backend = FakeBackend()
    config = TrainConfig(model=f"{__name__}:make_model", data=DATA, epochs=1, global_batch=16,
                         out=str(tmp_path), progress=False, job="kwargs",
                         model_kwargs={"in_features": 8, "hidden": 5})
    Driver(config, backend=backend).run()
    initial = backend.servers[0].state
    assert initial["0.weight"].shape == (5, 8) and initial["2.weight"].shape == (3, 5)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["config"]["model_kwargs"] == {"in_features": 8, "hidden": 5}
    assert np.isfinite(summary["final_test_accuracy"])
