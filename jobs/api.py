"""``jobs.train(config, model=..., data=...)``: training from a user's own script."""

from __future__ import annotations

from jobs.backend import ServerBackend
from jobs.config import TrainConfig
from jobs.driver import Driver, TrainResult
from jobs.preflight import preflight
from workers.data import DataLoader
from workers.models import ModelFactory


def train(config: TrainConfig | None = None, *, model: ModelFactory | None = None,
          data: DataLoader | None = None, backend: ServerBackend | None = None) -> TrainResult:
    """Run one job to completion and return its ``TrainResult`` (blocks).

    ``model`` (``factory(**config.model_kwargs) -> nn.Module``) and ``data`` (``loader() ->
    (x_train, y_train, x_test, y_test)``) override ``config.model`` / ``config.data``;
    ``backend`` replaces the Raft parameter server (tests use an in-process fake). Starts an
    embedded Ray if none is connected (``config.address`` / ``RAY_ADDRESS`` otherwise). A
    clean finish deletes the shard groups' Raft logs (``config.storage_dir``) unless
    ``config.keep_raft_log``; a failure keeps them. ``config.shards="auto"`` is resolved once
    the model is built and Ray is up; summary.json's ``config.shards`` is the count used.

    Before Ray starts or the output folder is touched, the data is loaded and the model
    built with its ``model_kwargs`` and run on one sample (``jobs.preflight``): a loader or
    factory that raises, a factory that does not take the keyword arguments, or a model
    that does not fit the data, raises ``DataError`` / ``ModelFactoryError`` /
    ``ConfigError`` naming the spec, and nothing changes; so does a ``config.log_to`` tracker
    whose package is not installed (``TrackerUnavailableError``, a ``ConfigError``).
    """
    config = config or TrainConfig()
    checked = preflight(model if model is not None else config.model,
                        data if data is not None else config.data, config.seed,
                        config.model_kwargs, log_to=config.log_to, loss=config.loss,
                        metric=config.metric)
    return Driver(config, model=model, data=checked.loader, backend=backend).run()
