"""Preflight: load the data, build the model and run it on one sample, before anything starts.

A job's model and data come from the user (``--model``/``--data`` specs or callables), so
they are checked against each other in the driver's process, on the CPU, before Ray starts,
the output folder is touched or a round runs:

- the loader and the factory are called; an exception they raise becomes a ``DataError`` /
  ``ModelFactoryError`` naming the spec (the original is its ``__cause__``);
- the model runs forward on the first training sample, with the job's loss and metric of
  its target (``--loss``, ``--metric``): a model that cannot take the data's samples, that
  outputs fewer classes than the labels need (a loss or metric on class ids), or a loss or
  metric that does not return one value per sample, is a ``ConfigError`` naming the specs
  and the fix.
- every experiment tracker asked for (``log_to``) has its package installed: a missing one
  is a ``jobs.tracking.TrackerUnavailableError`` (a ``ConfigError``) naming the install.

``preflight_dataset`` does the same for a dataset read by index (``--dataset``): it opens
the dataset, checks a sample of its items for one shape and dtype (a ``ConfigError``
otherwise) and runs the model on its first training sample; the driver reuses what it opened.

The check leaves no trace: it runs on a model of its own, under a forked torch RNG.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from jobs.errors import ConfigError
from jobs.tracking import require_backends
from workers.data import Arrays, DataLoader, Dataset, load
from workers.datasets import DatasetSpec, InconsistentItemsError, OpenedDataset, open_dataset
from workers.datasets.source import describe_spec
from workers.errors import DataError, LossError, MetricError, ModelFactoryError, WorkersError
from workers.loss import DEFAULT_LOSS, LossFn, class_dim, require_integer_targets
from workers.metric import MetricFn
from workers.models import ModelFactory, build_model, callable_key, resolve_model
from workers.objective import Objective, resolve_objective


@dataclass(frozen=True, kw_only=True)
class CheckedJob:
    """A job whose model and data passed the preflight: the validated data, loaded once."""

    dataset: Dataset

    def loader(self) -> Arrays:
        """The validated arrays, as a data loader returns them (no second load)."""
        return self.dataset.arrays()


def spec_name(flag: str, spec: str | ModelFactory | DataLoader) -> str:
    """How messages name a spec: ``--model mymod:factory`` for a string, else ``model
    factory mymod:factory`` / ``data loader mymod:load`` for a callable."""
    if isinstance(spec, str):
        return f"--{flag} {spec}"
    kind = "model factory" if flag == "model" else "data loader"
    return f"{kind} {callable_key(spec)}"


def preflight(model: str | ModelFactory, data: str | DataLoader, seed: int,
              model_kwargs: Mapping[str, object] | None = None, *,
              log_to: Sequence[str] = (), loss: str | LossFn = DEFAULT_LOSS,
              metric: str | MetricFn | None = None) -> CheckedJob:
    """Check that the trackers of ``log_to`` are installed, load ``data``, build
    ``model(**model_kwargs)`` (seeded) and run it on one training sample (CPU), with the
    ``loss`` and ``metric`` (``workers.objective.resolve_objective``).

    Raises ``TrackerUnavailableError`` (a tracker's package is missing), ``DataError`` (the
    loader raised, or returned unusable arrays), ``ModelFactoryError`` (the factory raised,
    or returned no usable module) or ``ConfigError`` (the model does not fit the data or
    the loss, a loss or metric spec does not resolve, a target is out of range).
    Writes nothing.
    """
    require_backends(log_to)
    try:
        objective = resolve_objective(loss, metric)
    except (LossError, MetricError) as exc:
        raise ConfigError(str(exc)) from exc
    data_name, model_name = spec_name("data", data), spec_name("model", model)
    loss_label = f"--loss {loss}" if isinstance(loss, str) else f"loss {objective.loss.name}"
    dataset = _load(data, data_name)
    with torch.random.fork_rng(devices=[]):
        built = _build(model, model_name, dataset, seed, model_kwargs or {})
        check_fit(built, dataset, model_name=model_name, data_name=data_name,
                  objective=objective, loss_label=loss_label)
    return CheckedJob(dataset=dataset)


def preflight_dataset(model: str | ModelFactory, dataset: DatasetSpec | OpenedDataset,
                      seed: int, model_kwargs: Mapping[str, object] | None = None, *,
                      log_to: Sequence[str] = (), loss: str | LossFn = DEFAULT_LOSS,
                      metric: str | MetricFn | None = None) -> OpenedDataset:
    """``preflight`` for a dataset addressed by index (``workers.datasets``): open it (the
    driver reads a sample of its items and, for integer targets, the targets; a ray.data
    split is materialized, so Ray must be up), then the same checks on its first training
    sample. Items of different shapes or dtypes are a ``ConfigError`` naming two of them;
    a spec that does not open is a ``DataError``. Returns the opened dataset (the driver
    reuses it). Writes nothing."""
    require_backends(log_to)
    try:
        objective = resolve_objective(loss, metric)
    except (LossError, MetricError) as exc:
        raise ConfigError(str(exc)) from exc
    model_name = spec_name("model", model)
    loss_label = f"--loss {loss}" if isinstance(loss, str) else f"loss {objective.loss.name}"
    if isinstance(dataset, OpenedDataset):
        opened, data_name = dataset, dataset.name
    else:
        data_name = describe_spec(dataset)
        opened = _open(dataset, data_name)
    with torch.random.fork_rng(devices=[]):
        built = _build(model, model_name, opened, seed, model_kwargs or {})
        check_fit(built, opened, model_name=model_name, data_name=data_name,
                  objective=objective, loss_label=loss_label)
    return opened


def _open(dataset: DatasetSpec, name: str) -> OpenedDataset:
    try:
        return open_dataset(dataset)
    except InconsistentItemsError as exc:
        raise ConfigError(str(exc)) from exc
    except WorkersError:
        raise
    except Exception as exc:
        raise DataError(f"{name} raised {_describe(exc)}; fix the dataset or what it reads "
                        "(--debug shows the traceback)") from exc


def _load(data: str | DataLoader, name: str) -> Dataset:
    try:
        return load(data)
    except WorkersError:
        raise
    except Exception as exc:
        raise DataError(f"{name} raised {_describe(exc)}; fix the loader or what it reads "
                        "(--debug shows the traceback)") from exc


def _build(model: str | ModelFactory, name: str, dataset: Dataset | OpenedDataset, seed: int,
           model_kwargs: Mapping[str, object]) -> nn.Module:
    spec = resolve_model(model, in_features=dataset.in_features,
                         num_classes=dataset.num_classes, model_kwargs=model_kwargs)
    try:
        return build_model(spec, seed)
    except WorkersError:
        raise
    except Exception as exc:
        raise ModelFactoryError(f"{name} raised {_describe(exc)}; fix the factory "
                                "(--debug shows the traceback)") from exc


def check_fit(model: nn.Module, dataset: Dataset | OpenedDataset, *, model_name: str,
              data_name: str,
              objective: Objective | None = None,
              loss_label: str = "--loss cross_entropy") -> None:
    """Run ``model`` forward on the first training sample and take the loss (and metric) of
    its target, as a gradient task would; raises ``ConfigError`` when the model does not fit
    the data or the loss: a forward that fails, outputs that are no float tensor with the
    batch first, targets out of the model's class range (when the loss or metric reads
    class ids: every target of both splits is checked), or a loss or metric that does not
    return one value per sample (``workers.loss``: shape ``(b,)``, checked on a batch of
    two). Runs in eval mode (a batch of one is no batch for batch norm); restores the
    module's mode. ``loss_label`` names the loss in messages."""
    objective = objective or Objective()
    first_x, first_y = dataset.first_sample()
    x, y = torch.from_numpy(first_x), torch.from_numpy(first_y)
    batch = (1, *dataset.sample_shape)
    was_training = model.training
    model.eval()
    try:
        out = model(x)
    except Exception as exc:
        raise ConfigError(
            f"{model_name} fails on one sample of {data_name} (a batch of shape {batch} "
            f"{dataset.x_dtype}): {_describe(exc)}; {_input_hint(dataset)}") from exc
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim < 1 or out.shape[0] != 1:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(
            f"{model_name} returned {shape} for a batch of shape {batch} of {data_name}; "
            "the model must return a tensor whose first dimension is the batch (logits of "
            "shape (batch, classes) for classification)")
    returned = f"{model_name} returned {tuple(out.shape)} for a batch of shape {batch} of " \
               f"{data_name}"
    if not out.is_floating_point():
        raise ConfigError(f"{returned}, of dtype {out.dtype}; outputs must be float")
    if objective.reads_class_ids:
        _check_classes(out, y, dataset, objective, returned=returned, model_name=model_name,
                       data_name=data_name)
    pair_out, pair_y = torch.cat([out, out]), torch.cat([y, y])  # b = 2: a batch reduction shows
    loss = _values(objective.loss.per_sample, pair_out, pair_y, loss_label, returned)
    if not loss.requires_grad:
        raise ConfigError(
            f"{model_name}'s output does not depend on its parameters (no gradient); do not "
            "detach it or run the forward under torch.no_grad()")
    _values(objective.metric.per_sample, pair_out, pair_y, f"--metric {objective.metric.name}",
            returned)


def _check_classes(out: torch.Tensor, y: torch.Tensor, dataset: Dataset | OpenedDataset,
                   objective: Objective, *, returned: str, model_name: str,
                   data_name: str) -> None:
    what = "cross_entropy" if objective.loss.reads_class_ids else "accuracy"
    try:
        require_integer_targets(y, what, LossError)
        dim = class_dim(out, y, what, LossError)
    except LossError as exc:
        raise ConfigError(f"{returned}: {exc}") from exc
    width = int(out.shape[dim])
    for name, (low, high) in dataset.label_ranges().items():
        if high >= width:
            raise ConfigError(
                f"{model_name} outputs {width} classes but {data_name} has labels up to "
                f"{high} ({name}); give the model's last layer {high + 1} outputs, or "
                f"relabel the data to 0..{width - 1}")
        if low < 0:
            raise ConfigError(
                f"{data_name} has label {low} ({name}), but {what} takes class ids "
                f"0 <= y < {width}; relabel the data")
    if width < 2 and objective.loss.reads_class_ids:
        raise ConfigError(
            f"{model_name} outputs 1 class; cross_entropy needs >= 2 (does {data_name} hold "
            "a single class?); give the model >= 2 outputs or pick another --loss")


def _values(per_sample: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
            out: torch.Tensor, y: torch.Tensor, label: str, returned: str) -> torch.Tensor:
    """``per_sample(out, y)``; its contract errors and any exception become a
    ``ConfigError`` naming ``label``."""
    try:
        return per_sample(out, y)
    except (LossError, MetricError) as exc:
        raise ConfigError(f"{label} does not fit: {returned}, targets "
                          f"{tuple(y.shape[1:])} per sample; {exc}") from exc
    except Exception as exc:
        raise ConfigError(
            f"{label} raised {_describe(exc)} on outputs {tuple(out.shape)} and targets "
            f"{tuple(y.shape)} ({y.dtype}); fix it to take the model's outputs and the "
            "loader's targets (--debug shows the traceback)") from exc


def _input_hint(dataset: Dataset | OpenedDataset) -> str:
    features, shape = dataset.in_features, dataset.sample_shape
    if dataset.x_dtype == np.int64:
        return (f"the model must take int64 inputs of shape (batch, {', '.join(map(str, shape))})"
                " (integer features are passed as int64, e.g. token ids for an nn.Embedding; "
                "return float features from the loader if they are values)")
    if len(shape) == 1:
        return (f"the model must take rows of {features} float32 features (e.g. a first "
                f"layer nn.Linear({features}, ...))")
    return f"the model must take float32 inputs of shape (batch, {', '.join(map(str, shape))})"


def _describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
