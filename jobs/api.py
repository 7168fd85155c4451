"""``jobs.train(config, model=..., data=...)``: training from a user's own script."""

from __future__ import annotations

from jobs.backend import ServerBackend
from jobs.config import TrainConfig
from jobs.driver import Driver, TrainResult, ensure_ray
from jobs.errors import ConfigError
from jobs.preflight import preflight, preflight_dataset
from workers.data import DataLoader
from workers.datasets.source import DatasetFn, DatasetSpec, is_npy
from workers.models import ModelFactory


def train(config: TrainConfig | None = None, *, model: ModelFactory | None = None,
          data: DataLoader | None = None, backend: ServerBackend | None = None,
          dataset: DatasetFn | None = None) -> TrainResult:
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

    ``dataset`` (a callable returning ``{"train": ds, "test": ds}``, docs/DESIGN.md,
    "Datasets") overrides ``config.dataset``: a dataset the gradient tasks read by index,
    in place of ``data``. Its preflight opens it (Ray is connected first unless it is an
    ``npy:`` directory: a ray.data split is materialized into the object store) and checks
    a sample of its items: items of different shapes raise ``ConfigError``.
    """
    config = config or TrainConfig()
    source: DatasetSpec | None = dataset if dataset is not None else config.dataset
    if source is not None:
        if data is not None:
            raise ConfigError("data and dataset are two sources for one job; pass one")
        if not is_npy(source):
            ensure_ray(config.address)
        opened = preflight_dataset(model if model is not None else config.model, source,
                                   config.seed, config.model_kwargs, log_to=config.log_to,
                                   loss=config.loss, metric=config.metric)
        return Driver(config, model=model, dataset=opened, backend=backend).run()
    checked = preflight(model if model is not None else config.model,
                        data if data is not None else config.data, config.seed,
                        config.model_kwargs, log_to=config.log_to, loss=config.loss,
                        metric=config.metric)
    return Driver(config, model=model, data=checked.loader, backend=backend).run()
