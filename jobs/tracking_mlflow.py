"""The ``mlflow`` tracker: one MLflow run per job, via ``mlflow.tracking.MlflowClient``.

Where: ``MLFLOW_TRACKING_URI`` when it is set (a server, a database, a folder), else the file
store ``<out>/mlruns`` (for which this process sets ``MLFLOW_ALLOW_FILE_STORE=true`` unless it
is set: MLflow 3 asks for that opt-in to use a file store). The experiment is the job name
(``TrainConfig.job``), the run is named after the output folder and tagged ``raftps.out``
with its absolute path. ``<out>/mlflow-run.json`` records the run, so ``resume`` continues the
same run (at the same tracking URI); a fresh job starts a new one.

The config goes in as params (``jobs.tracking.flatten_config``, values cut to MLflow's length
limit; on a resumed run only the params the run does not have yet), each round's numbers as
metrics at step = the round (``jobs.tracking.round_scalars``), sent in batches at most every
``flush_every_s`` seconds and on close. The client is used directly, never MLflow's global
active run, so a script's own ``mlflow.start_run()`` is left alone. Close ends the run
``FINISHED``, or ``FAILED`` when the job failed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from consensus.atomic_file import write_atomic
from jobs.config import TrainConfig
from jobs.tracking import TrackingError, flatten_config, round_scalars

RUN_FILE = "mlflow-run.json"
PARAMS_PER_BATCH = 100  # MLflow's MAX_PARAMS_TAGS_PER_BATCH
METRICS_PER_BATCH = 1000  # MLflow's MAX_METRICS_PER_BATCH
KEY_LENGTH = 250  # MLflow's MAX_ENTITY_KEY_LENGTH
VALUE_LENGTH = 500
"""Longest param value sent: MLflow's limit where it says (``MAX_PARAM_VAL_LENGTH``), else
500, the smallest limit MLflow servers have had."""


def tracking_uri(out: Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the file store ``<out>/mlruns`` (a file URI)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or (out.resolve() / "mlruns").as_uri()


def value_length() -> int:
    """The longest param value the installed MLflow accepts (``VALUE_LENGTH`` if unknown)."""
    try:
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH
    except ImportError:
        return VALUE_LENGTH
    return int(MAX_PARAM_VAL_LENGTH)


class MlflowTracker:
    """One run of ``config``'s job; opening it creates (or, with ``resume``, reopens) the run.
    Raises ``TrackingError`` when the tracking store refuses or cannot be reached."""

    def __init__(self, config: TrainConfig, *, resume: bool, flush_every_s: float = 1.0) -> None:
        from mlflow.tracking import MlflowClient

        out = config.out_dir
        self.uri = tracking_uri(out)
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.flush_every_s = flush_every_s
        self._pending: list[Any] = []
        self._flushed_at = time.monotonic()
        self._run_file = out / RUN_FILE
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            self.run_id = (self._resumed_run() if resume else None) or self._new_run(config)
        except Exception as exc:
            raise TrackingError(
                f"--log-to mlflow: cannot open a run at {self.uri} ({type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:300]}); check MLFLOW_TRACKING_URI, or drop "
                "--log-to mlflow") from exc
        out.mkdir(parents=True, exist_ok=True)
        record = {"tracking_uri": self.uri, "run_id": self.run_id}
        write_atomic(self._run_file, (json.dumps(record) + "\n").encode())

    def _resumed_run(self) -> str | None:
        """The run ``<out>/mlflow-run.json`` names, reopened; None when there is none here."""
        try:
            recorded = json.loads(self._run_file.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(recorded, dict) or recorded.get("tracking_uri") != self.uri:
            return None
        run_id = str(recorded.get("run_id"))
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
        except MlflowException:
            return None  # deleted from the store since
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def _new_run(self, config: TrainConfig) -> str:
        experiment = self.client.get_experiment_by_name(config.job)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(config.job))
        out = config.out_dir
        run = self.client.create_run(
            experiment_id, run_name=out.resolve().name,
            tags={"raftps.out": str(out.resolve()), "raftps.model": config.model,
                  "raftps.data": config.data})
        return str(run.info.run_id)

    def log_config(self, config: dict[str, Any]) -> None:
        """The flattened config as params (those the run does not have yet)."""
        from mlflow.entities import Param

        have = self.client.get_run(self.run_id).data.params
        limit = value_length()
        params = [Param(key[:KEY_LENGTH], value[:limit])
                  for key, value in flatten_config(config).items()
                  if key[:KEY_LENGTH] not in have]
        for at in range(0, len(params), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[at:at + PARAMS_PER_BATCH])

    def log_round(self, step: int, record: dict[str, Any]) -> None:
        """Queue the round's metrics at ``step``; sent once ``flush_every_s`` has passed."""
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        self._pending.extend(Metric(key, value, now_ms, step)
                             for key, value in round_scalars(record).items())
        if time.monotonic() - self._flushed_at >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        """Send the queued metrics."""
        pending, self._pending = self._pending, []
        for at in range(0, len(pending), METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=pending[at:at + METRICS_PER_BATCH])
        self._flushed_at = time.monotonic()

    def close(self, *, failed: bool = False) -> None:
        """Send what is queued and end the run ``FINISHED`` (``FAILED`` if ``failed``)."""
        try:
            self.flush()
        finally:
            self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")
