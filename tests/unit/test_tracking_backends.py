"""The TensorBoard and MLflow trackers, fed synthetic round records and read back with the
real libraries: TensorBoard event files record by record (TFRecord framing, CRCs checked),
MLflow through ``MlflowClient`` on the file store the tracker wrote."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from jobs.config import TrainConfig
from jobs.metrics import round_record
from jobs.round_result import RoundResult
from jobs.tracking import TrackingError, open_trackers
from jobs.tracking_mlflow import RUN_FILE, MlflowTracker
from jobs.tracking_tensorboard import TensorBoardTracker

LOSSES = (2.0, 1.25, 0.5, 0.25)


def record(round: int, *, loss: float | None = None) -> dict[str, Any]:
    """A round of 64 samples with loss ``LOSSES[round]`` and known times."""
    loss = LOSSES[round] if loss is None else loss
    result = RoundResult(round=round, contributors=2, samples=64, loss_sum=64 * loss,
                         correct=16 * (round + 1), publish_s=0.125, compute_s=0.5,
                         aggregate_s=0.0625, commit_s=0.25, wall_s=2.0,
                         devices=("cpu",), leader_changes=(0, round))
    return round_record(result, epoch=0, test_accuracy=0.75 if round == 3 else None)


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC-32C of ``data``."""
    from tensorboardX.crc32c import crc32c

    x = int(crc32c(data))
    return ((((x >> 15) | (x << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(logdir: Path) -> list[Any]:
    """Every event in ``logdir``'s event files, in TensorBoard's (file name) order."""
    from tensorboardX.proto.event_pb2 import Event

    events = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            header = data[at:at + 8]
            (length,) = struct.unpack("<Q", header)
            assert struct.unpack("<I", data[at + 8:at + 12])[0] == masked_crc(header)
            body = data[at + 12:at + 12 + length]
            assert struct.unpack("<I", data[at + 12 + length:at + 16 + length])[0] == (
                masked_crc(body))
            events.append(Event.FromString(body))
            at += 16 + length
    return events


def scalars(events: list[Any], tag: str) -> dict[int, float]:
    """step -> value of ``tag``, the last written winning (TensorBoard's view)."""
    return {e.step: v.simple_value for e in events if e.HasField("summary")
            for v in e.summary.value if v.tag == tag}


def test_tensorboard_holds_each_rounds_scalars_and_the_config(tmp_path: Path) -> None:
    tracker = TensorBoardTracker(tmp_path / "tensorboard")
    tracker.log_config({"model": "mlp", "lr": 0.05})
    for r in range(4):
        tracker.log_round(r, record(r))
    tracker.close()

    events = read_events(tmp_path / "tensorboard")
    assert scalars(events, "loss") == dict(enumerate(LOSSES))
    assert scalars(events, "accuracy") == {r: 16 * (r + 1) / 64 for r in range(4)}
    assert scalars(events, "samples_per_s") == dict.fromkeys(range(4), 32.0)
    for tag, seconds in (("publish_s", 0.125), ("compute_s", 0.5), ("aggregate_s", 0.0625),
                         ("commit_s", 0.25)):
        assert scalars(events, tag) == dict.fromkeys(range(4), seconds)
    assert scalars(events, "leader_changes") == {r: float(r) for r in range(4)}
    assert scalars(events, "leader_changes.shard-1") == {r: float(r) for r in range(4)}
    assert scalars(events, "test_accuracy") == {3: 0.75}
    texts = [v.tensor.string_val[0].decode() for e in events if e.HasField("summary")
             for v in e.summary.value if v.tag.startswith("config")]
    assert len(texts) == 1 and '"model": "mlp"' in texts[0]


def test_tensorboard_resumed_at_a_round_purges_the_later_events(tmp_path: Path) -> None:
    first = TensorBoardTracker(tmp_path)
    for r in range(4):
        first.log_round(r, record(r))
    first.close()
    resumed = TensorBoardTracker(tmp_path)  # resumed from a checkpoint at round 2
    resumed.log_round(2, record(2, loss=9.0))
    resumed.close()

    events = read_events(tmp_path)
    starts = [e.step for e in events if e.HasField("session_log")
              and e.session_log.status == e.session_log.START]
    assert starts == [0, 2]  # TensorBoard drops what the first file has from round 2 on
    second = events[[i for i, e in enumerate(events) if e.HasField("session_log")][1]:]
    assert scalars(second, "loss") == {2: 9.0}


@pytest.fixture
def file_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MLFLOW_TRACKING_URI, and MLFLOW_ALLOW_FILE_STORE unset (restored afterwards)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "unset")  # recorded, so undone after
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")


def mlflow_run(out: Path) -> tuple[Any, str]:
    """The client of the run ``out/mlflow-run.json`` records, and its id."""
    from mlflow.tracking import MlflowClient

    recorded = json.loads((out / RUN_FILE).read_text())
    return MlflowClient(tracking_uri=recorded["tracking_uri"]), recorded["run_id"]


def history(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_mlflow_run_holds_params_and_per_round_metrics(tmp_path: Path, file_store: None) -> None:
    config = TrainConfig(model="mlp", out=str(tmp_path), job="tracking-unit",
                         model_kwargs={"note": "x" * 7000}, log_to=("mlflow",))
    tracker = MlflowTracker(config, resume=False)
    tracker.log_config(config.to_dict())
    for r in range(4):
        tracker.log_round(r, record(r))
    tracker.close()

    client, run_id = mlflow_run(tmp_path)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert (tmp_path / "mlruns").is_dir()  # the default: a file store in --out
    assert history(client, run_id, "loss") == list(enumerate(LOSSES))
    assert history(client, run_id, "compute_s") == [(r, 0.5) for r in range(4)]
    assert history(client, run_id, "leader_changes") == [(r, float(r)) for r in range(4)]
    assert history(client, run_id, "test_accuracy") == [(3, 0.75)]
    run = client.get_run(run_id)
    params = run.data.params
    assert params["model"] == "mlp" and params["job"] == "tracking-unit"
    assert params["log_to"] == '["jsonl", "mlflow"]'
    assert 0 < len(params["model_kwargs.note"]) < 7000  # cut to MLflow's limit
    assert run.info.run_name == tmp_path.name
    assert run.data.tags["raftps.out"] == str(tmp_path.resolve())
    assert client.get_experiment(run.info.experiment_id).name == "tracking-unit"


def test_mlflow_resume_continues_the_same_run(tmp_path: Path, file_store: None) -> None:
    config = TrainConfig(model="mlp", out=str(tmp_path), job="tracking-unit")
    first = MlflowTracker(config, resume=False)
    first.log_config(config.to_dict())
    first.log_round(0, record(0))
    first.close(failed=True)
    client, run_id = mlflow_run(tmp_path)
    assert client.get_run(run_id).info.status == "FAILED"

    resumed_config = TrainConfig(model="mlp", out=str(tmp_path), job="tracking-unit",
                                 resume=True)
    resumed = MlflowTracker(resumed_config, resume=True)
    assert resumed.run_id == run_id
    resumed.log_config(resumed_config.to_dict())  # a param cannot change: the first stays
    resumed.log_round(1, record(1))
    resumed.close()
    assert client.get_run(run_id).info.status == "FINISHED"
    assert client.get_run(run_id).data.params["resume"] == "False"
    assert history(client, run_id, "loss") == [(0, LOSSES[0]), (1, LOSSES[1])]

    fresh = MlflowTracker(config, resume=False)  # an --overwrite run: a run of its own
    fresh.close()
    assert fresh.run_id != run_id


def test_mlflow_uses_the_users_tracking_uri(tmp_path: Path, file_store: None,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    store = (tmp_path / "shared-store").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the user's own file store
    out = tmp_path / "out"
    tracker = MlflowTracker(TrainConfig(out=str(out)), resume=False)
    tracker.log_round(0, record(0))
    tracker.close()
    client, run_id = mlflow_run(out)
    assert client.tracking_uri == store
    assert history(client, run_id, "loss") == [(0, LOSSES[0])]
    assert not (out / "mlruns").exists()


def test_a_store_that_cannot_be_opened_is_a_tracking_error_and_writes_nothing(
    tmp_path: Path, file_store: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://tracking")
    config = TrainConfig(out=str(tmp_path), log_to=("tensorboard", "mlflow"))
    with pytest.raises(TrackingError, match="cannot open a run at nosuchscheme://tracking"):
        open_trackers(config, resume=False)
    assert list(tmp_path.iterdir()) == []  # tensorboard, opened first, was closed unused
