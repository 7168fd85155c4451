"""``--log-to``: config validation, the CLI flag, the missing-package error before anything
starts, the fan-out of one record to every tracker, and the driver closing its trackers."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from jobs import driver as driver_mod
from jobs.config import TrainConfig
from jobs.driver import Driver
from jobs.errors import ConfigError, TrainingError
from jobs.metrics import MetricsLog, read_metrics, round_record
from jobs.preflight import preflight
from jobs.round_result import RoundResult
from jobs.tracking import (
    Trackers,
    TrackerUnavailableError,
    flatten_config,
    require_backends,
    round_scalars,
)
from jobs.train import main, parse_config
from tests.unit.test_driver_lifecycle import FakeBackend
from tests.unit.test_driver_lifecycle import config as lifecycle_config
from workers.data import Arrays


def result(round: int = 3) -> RoundResult:
    return RoundResult(round=round, contributors=2, samples=32, loss_sum=16.0, correct=8,
                       publish_s=0.5, compute_s=1.0, aggregate_s=0.25, commit_s=0.125,
                       wall_s=4.0, devices=("cpu",), leader_changes=(1, 2), failovers=1)


class Recorder:
    """A tracker that records its calls; raises from ``log_round`` when ``fail``."""

    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[tuple[str, Any]] = []

    def log_config(self, config: dict[str, Any]) -> None:
        self.calls.append(("config", config))

    def log_round(self, step: int, record: dict[str, Any]) -> None:
        if self.fail:
            raise OSError("disk full")
        self.calls.append(("round", (step, record)))

    def close(self, *, failed: bool = False) -> None:
        self.calls.append(("close", failed))


def test_log_to_keeps_jsonl_first_and_each_name_once() -> None:
    assert TrainConfig().log_to == ("jsonl",)
    assert TrainConfig(log_to=("tensorboard",)).log_to == ("jsonl", "tensorboard")
    assert TrainConfig(log_to=("mlflow", "tensorboard", "mlflow", "jsonl")).log_to == (
        "jsonl", "mlflow", "tensorboard")
    assert TrainConfig(log_to="mlflow").log_to == ("jsonl", "mlflow")  # type: ignore[arg-type]
    assert TrainConfig(log_to=()).log_to == ("jsonl",)


@pytest.mark.parametrize("log_to", [("wandb",), ("tensorboard", "TensorBoard"), 3])
def test_an_unknown_tracker_is_refused_naming_the_allowed_ones(log_to: Any) -> None:
    with pytest.raises(ConfigError, match="tensorboard, mlflow"):
        TrainConfig(log_to=log_to)


def test_the_cli_collects_repeated_log_to(tmp_path: Path) -> None:
    out = ["--out", str(tmp_path)]
    assert parse_config(out).log_to == ("jsonl",)
    assert parse_config([*out, "--log-to", "tensorboard", "--log-to", "mlflow"]).log_to == (
        "jsonl", "tensorboard", "mlflow")
    assert parse_config([*out, "--log-to", "jsonl"]).log_to == ("jsonl",)
    assert TrainConfig().log_to == ("jsonl",)  # the default was not appended to


def test_the_cli_refuses_an_unknown_tracker(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_config(["--log-to", "wandb"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'wandb'" in err and "mlflow" in err


@pytest.mark.parametrize(("backend", "module", "package"),
                         [("mlflow", "mlflow", "mlflow-skinny"),
                          ("tensorboard", "tensorboardX", "tensorboardX")])
def test_a_missing_package_is_a_typed_error_naming_the_install(
    monkeypatch: pytest.MonkeyPatch, backend: str, module: str, package: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
    with pytest.raises(TrackerUnavailableError) as raised:
        require_backends(("jsonl", backend))
    assert str(raised.value).startswith(
        f"--log-to {backend} needs the {package} package: pip install 'raftps[tracking]'")
    assert isinstance(raised.value, ConfigError)
    require_backends(("jsonl",))  # nothing to import for metrics.jsonl


def test_the_preflight_checks_trackers_before_loading_anything(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)
    loaded: list[bool] = []

    def loader() -> Arrays:
        loaded.append(True)
        raise AssertionError("the data is loaded only once the trackers are there")

    with pytest.raises(TrackerUnavailableError):
        preflight("mlp", loader, 0, log_to=("jsonl", "mlflow"))
    assert loaded == []


def test_the_cli_exits_2_with_one_line_before_ray_or_out_is_touched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import ray

    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    out = tmp_path / "run"
    started = ray.is_initialized()
    code = main(["--model", "mlp", "--data", "synthetic:8x3x32x16", "--out", str(out),
                 "--log-to", "tensorboard"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert "--log-to tensorboard needs the tensorboardX package: pip install " in err
    assert not out.exists() and ray.is_initialized() == started


def test_round_scalars_are_the_records_numbers() -> None:
    record = round_record(result(), epoch=1, test_accuracy=0.5)
    assert round_scalars(record) == {
        "epoch": 1.0, "loss": 0.5, "accuracy": 0.25, "samples": 32.0, "contributors": 2.0,
        "samples_per_s": 8.0, "publish_s": 0.5, "compute_s": 1.0, "aggregate_s": 0.25,
        "commit_s": 0.125, "failovers": 1.0, "test_accuracy": 0.5, "leader_changes": 3.0,
        "leader_changes.shard-0": 1.0, "leader_changes.shard-1": 2.0}
    no_leaders = round_record(replace(result(), leader_changes=()), epoch=0)
    assert "leader_changes" not in round_scalars(no_leaders)


def test_metrics_jsonl_lines_are_unchanged(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl", start_round=0)
    written = log.append(result(0), epoch=0, test_accuracy=0.5)
    assert read_metrics(tmp_path / "metrics.jsonl") == [written]
    assert written == {"round": 0, "epoch": 0, "loss": 0.5, "accuracy": 0.25, "samples": 32,
                       "contributors": 2, "samples_per_s": 8.0, "publish_s": 0.5,
                       "compute_s": 1.0, "aggregate_s": 0.25, "commit_s": 0.125,
                       "devices": ["cpu"], "leader_changes": [1, 2], "failovers": 1,
                       "test_accuracy": 0.5}


def test_flatten_config_nests_and_stringifies() -> None:
    flat = flatten_config(TrainConfig(model_kwargs={"hidden": 8}, log_to=("mlflow",)).to_dict())
    assert flat["model_kwargs.hidden"] == "8"
    assert flat["log_to"] == '["jsonl", "mlflow"]'
    assert flat["lr"] == "0.05" and flat["max_rounds"] == "None"
    assert all(isinstance(v, str) for v in flat.values())


def test_a_failing_tracker_is_dropped_and_the_others_go_on(
    capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = Recorder(), Recorder(fail=True)
    trackers = Trackers([("mlflow", bad), ("tensorboard", good)])
    trackers.log_round(0, {"round": 0})
    trackers.log_round(1, {"round": 1})
    trackers.close()
    assert good.calls == [("round", (0, {"round": 0})), ("round", (1, {"round": 1})),
                          ("close", False)]
    assert bad.calls == []  # never closed either: it is dropped at its first failure
    err = capsys.readouterr().err
    assert err.count("--log-to mlflow: logging round 0 failed (OSError: disk full)") == 1


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    """No Ray, no rounds; the driver's trackers are one ``Recorder``."""
    tracker = Recorder()
    monkeypatch.setattr(driver_mod, "ensure_ray", lambda address: None)
    monkeypatch.setattr(driver_mod, "cluster_cpus", lambda: 8)
    monkeypatch.setattr(Driver, "_train", lambda self, *args: (1.0, 0))
    monkeypatch.setattr(driver_mod, "open_trackers",
                        lambda config, *, resume: Trackers([("rec", tracker)]))
    return tracker


def test_the_driver_logs_the_config_used_and_closes_its_trackers(
    tmp_path: Path, recorded: Recorder
) -> None:
    Driver(lifecycle_config(tmp_path, shards="auto"), backend=FakeBackend()).run()
    (kind, config), close = recorded.calls
    assert kind == "config" and isinstance(config["shards"], int)  # resolved first
    assert close == ("close", False)


def test_a_failed_job_closes_its_trackers_as_failed(
    tmp_path: Path, recorded: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(self: Driver, *args: object) -> tuple[float, int]:
        raise TrainingError("a gradient task failed")

    monkeypatch.setattr(Driver, "_train", fail)
    with pytest.raises(TrainingError):
        Driver(lifecycle_config(tmp_path), backend=FakeBackend()).run()
    assert recorded.calls[-1] == ("close", True)
