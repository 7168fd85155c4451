"""metrics.jsonl: one JSON line per committed round, appended and flushed as rounds commit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jobs.round_result import RoundResult


class MetricsLog:
    """Appends one line per round to ``path``; on resume keeps only rounds before ``start``.

    Line fields: round, epoch, loss (mean over the round's samples), accuracy (train batch),
    samples, contributors, samples_per_s, publish_s, compute_s, aggregate_s, commit_s,
    devices (where the gradient tasks ran), leader_changes (per shard, so far) and failovers
    (driver recoveries so far), and ``test_accuracy`` on a round that ends an epoch.
    """

    def __init__(self, path: Path, *, start_round: int) -> None:
        self.path = path
        kept = [r for r in read_metrics(path) if int(r["round"]) < start_round]
        with path.open("w", encoding="utf-8") as fh:
            for record in kept:
                fh.write(json.dumps(record) + "\n")

    def append(self, result: RoundResult, *, epoch: int,
               test_accuracy: float | None = None) -> dict[str, Any]:
        """Write one round's line (flushed); returns the record written."""
        record = round_record(result, epoch=epoch, test_accuracy=test_accuracy)
        self.log_round(result.round, record)
        return record

    def log_config(self, config: dict[str, Any]) -> None:
        """Nothing: summary.json holds the config (``jobs.tracking.Tracker``)."""

    def log_round(self, step: int, record: dict[str, Any]) -> None:
        """Append ``record`` (a ``round_record``) as one flushed line; ``step`` is its round."""
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def close(self, *, failed: bool = False) -> None:
        """Nothing to release: every line is written and closed as it is appended."""


def round_record(result: RoundResult, *, epoch: int,
                 test_accuracy: float | None = None) -> dict[str, Any]:
    """One round's metrics as metrics.jsonl holds them (fields: see ``MetricsLog``); the one
    record that every tracker of the job is given."""
    samples = max(result.samples, 1)
    record: dict[str, Any] = {
        "round": result.round,
        "epoch": epoch,
        "loss": result.loss_sum / samples,
        "accuracy": result.correct / samples,
        "samples": result.samples,
        "contributors": result.contributors,
        "samples_per_s": result.samples / result.wall_s if result.wall_s > 0 else 0.0,
        "publish_s": result.publish_s,
        "compute_s": result.compute_s,
        "aggregate_s": result.aggregate_s,
        "commit_s": result.commit_s,
        "devices": list(result.devices),
        "leader_changes": list(result.leader_changes),
        "failovers": result.failovers,
    }
    if test_accuracy is not None:
        record["test_accuracy"] = test_accuracy
    return record


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl (empty if the file does not exist)."""
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
