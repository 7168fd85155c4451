"""Experiment tracking (``TrainConfig.log_to``): the job's config once and each round's record,
fanned out to TensorBoard and MLflow next to metrics.jsonl.

metrics.jsonl (``jobs.metrics.MetricsLog``, the ``jsonl`` tracker) is always written: resume
and curves.png read it. Each round, the driver builds one record (``jobs.metrics.round_record``)
and gives that same record to every tracker, so every store holds the same numbers.

The libraries are imported only when asked for. ``require_backends`` (called by the preflight,
before Ray starts or the output folder is touched) raises ``TrackerUnavailableError`` for a
backend whose package is missing. A tracker that cannot be opened raises ``TrackingError``
before any round runs; one that fails while the job trains is warned about once and dropped
(training goes on: metrics.jsonl still has every round).
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from jobs.config import TrainConfig
from jobs.errors import ConfigError, JobsError

LOG = logging.getLogger(__name__)
INSTALL = "pip install 'raftps[tracking]'"
PACKAGES: dict[str, tuple[str, str]] = {"tensorboard": ("tensorboardX", "tensorboardX"),
                                        "mlflow": ("mlflow", "mlflow-skinny")}
"""Per backend that needs a package: the module imported and the pip package that has it."""


class TrackerUnavailableError(ConfigError):
    """``log_to`` names a backend whose package is not installed; nothing was started."""


class TrackingError(JobsError):
    """A tracker could not be opened (its store refused or could not be reached)."""


class Tracker(Protocol):
    """Where a job's config and per-round records go (one backend of ``log_to``)."""

    def log_config(self, config: dict[str, Any]) -> None:
        """Record the job's config (``TrainConfig.to_dict()``), once, before the rounds."""

    def log_round(self, step: int, record: dict[str, Any]) -> None:
        """Record one round: ``record`` is ``jobs.metrics.round_record``'s, ``step`` its round."""

    def close(self, *, failed: bool = False) -> None:
        """Flush and release; ``failed``: the job stopped with an error."""


def require_backends(log_to: Iterable[str]) -> None:
    """Import the package of every backend in ``log_to``; raises ``TrackerUnavailableError``
    naming the flag and the install command for the first one that is missing."""
    for name in log_to:
        if name not in PACKAGES:
            continue
        module, package = PACKAGES[name]
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise TrackerUnavailableError(
                f"--log-to {name} needs the {package} package: {INSTALL} (or pip install "
                f"{package}), or drop --log-to {name}") from exc


def round_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a round record, by metrics.jsonl's field names: every int or float
    field but ``round`` (the step), and ``leader_changes`` as its total over the shards
    plus ``leader_changes.shard-<i>`` per shard (none when the round did not learn them;
    no ``/``: MLflow's file store keeps a metric as a file, so a name cannot also be a
    folder). Strings and other lists (``devices``) are left out."""
    scalars: dict[str, float] = {}
    for key, value in record.items():
        if key == "round" or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            scalars[key] = float(value)
        elif key == "leader_changes" and isinstance(value, list) and value:
            scalars[key] = float(sum(value))
            for shard, count in enumerate(value):
                scalars[f"{key}.shard-{shard}"] = float(count)
    return scalars


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``config`` as flat string pairs: nested mappings become ``outer.inner`` keys; lists
    and tuples are JSON; everything else is ``str``."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, prefix=f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(list(value))
        else:
            flat[name] = str(value)
    return flat


class Trackers:
    """Several trackers used as one. A tracker that raises while logging or closing is
    warned about (log and stderr), once, and dropped; the others carry on."""

    def __init__(self, trackers: Sequence[tuple[str, Tracker]]) -> None:
        self.trackers = list(trackers)

    def names(self) -> list[str]:
        """The backends still in use."""
        return [name for name, _ in self.trackers]

    def log_config(self, config: dict[str, Any]) -> None:
        """``log_config`` on every tracker."""
        self._each(lambda t: t.log_config(config), "logging the config")

    def log_round(self, step: int, record: dict[str, Any]) -> None:
        """``log_round`` on every tracker."""
        self._each(lambda t: t.log_round(step, record), f"logging round {step}")

    def close(self, *, failed: bool = False) -> None:
        """``close`` every tracker, each even if another fails."""
        self._each(lambda t: t.close(failed=failed), "closing")
        self.trackers = []

    def _each(self, call: Any, what: str) -> None:
        kept = []
        for name, tracker in self.trackers:
            try:
                call(tracker)
            except Exception as exc:
                message = (f"--log-to {name}: {what} failed ({type(exc).__name__}: "
                           f"{' '.join(str(exc).split())}); no more metrics go to {name}, "
                           "metrics.jsonl still has every round")
                LOG.warning(message)
                print(message, file=sys.stderr)
                continue
            kept.append((name, tracker))
        self.trackers = kept


def open_trackers(config: TrainConfig, *, resume: bool) -> Trackers:
    """The trackers of ``config.log_to`` besides ``jsonl`` (which the driver writes itself),
    opened: TensorBoard logs to ``<out>/tensorboard``; MLflow to ``MLFLOW_TRACKING_URI`` or
    ``<out>/mlruns`` (``jobs.tracking_mlflow``). ``resume``: the job continues an earlier
    run in ``out`` (MLflow continues that run). Raises ``TrackingError`` when one cannot be
    opened (those opened before it are closed)."""
    opened: list[tuple[str, Tracker]] = []
    try:
        for name in config.log_to:
            if name == "tensorboard":
                from jobs.tracking_tensorboard import TensorBoardTracker

                opened.append((name, TensorBoardTracker(config.out_dir / "tensorboard")))
            elif name == "mlflow":
                from jobs.tracking_mlflow import MlflowTracker

                opened.append((name, MlflowTracker(config, resume=resume)))
    except BaseException:
        Trackers(opened).close(failed=True)
        raise
    return Trackers(opened)
