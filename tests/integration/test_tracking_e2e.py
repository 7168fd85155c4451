"""``python -m jobs.train --log-to tensorboard --log-to mlflow`` end to end: a small job on the
real server; both stores hold every round's loss, equal to metrics.jsonl's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.metrics import read_metrics
from jobs.tracking_mlflow import RUN_FILE
from jobs.train import main
from tests.unit.test_tracking_backends import read_events, scalars


def test_a_job_logs_every_round_to_tensorboard_and_mlflow(
    tmp_path: Path, ray_session: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "unset")  # recorded, so undone after
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    out = tmp_path / "run"
    code = main(["--model", "mlp", "--data", "synthetic:16x4x256x64", "--workers", "2",
                 "--shards", "1", "--replicas", "1", "--epochs", "1", "--global-batch", "64",
                 "--checkpoint-every", "0", "--timeout", "120", "--job", "tracking-e2e",
                 "--out", str(out), "--log-to", "tensorboard", "--log-to", "mlflow"])
    assert code == 0

    records = read_metrics(out / "metrics.jsonl")
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    assert (out / "curves.png").is_file()
    losses = {r["round"]: r["loss"] for r in records}

    board = scalars(read_events(out / "tensorboard"), "loss")
    assert board == pytest.approx(losses, rel=1e-6)  # float32 in the event file

    recorded = json.loads((out / RUN_FILE).read_text())
    client = MlflowClient(tracking_uri=recorded["tracking_uri"])
    run = client.get_run(recorded["run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "tracking-e2e"
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")}
    assert history == losses
    assert run.data.params["shards"] == "1" and run.data.params["model"] == "mlp"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["log_to"] == ["jsonl", "tensorboard", "mlflow"]
