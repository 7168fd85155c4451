"""Preflight: load the data, build the model and run it on one sample, before anything starts.

A job's model and data come from the user (``--model``/``--data`` specs or callables), so
they are checked against each other in the driver's process, on the CPU, before Ray starts,
the output folder is touched or a round runs:

- the loader and the factory are called; an exception they raise becomes a ``DataError`` /
  ``ModelFactoryError`` naming the spec (the original is its ``__cause__``);
- the model runs forward on the first training sample, with the cross-entropy loss of its
  label: a model that cannot take the data's feature rows, or that outputs fewer classes
  than the labels need, is a ``ConfigError`` naming both specs and the fix.

The check leaves no trace: it runs on a model of its own, under a forked torch RNG.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jobs.errors import ConfigError
from workers.data import Arrays, DataLoader, Dataset, load
from workers.errors import DataError, ModelFactoryError, WorkersError
from workers.models import ModelFactory, build_model, callable_key, resolve_model


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
              model_kwargs: Mapping[str, object] | None = None) -> CheckedJob:
    """Load ``data``, build ``model(**model_kwargs)`` (seeded) and run it on one training
    sample (CPU).

    Raises ``DataError`` (the loader raised, or returned unusable arrays),
    ``ModelFactoryError`` (the factory raised, or returned no usable module) or
    ``ConfigError`` (the model does not fit the data). Writes nothing.
    """
    data_name, model_name = spec_name("data", data), spec_name("model", model)
    dataset = _load(data, data_name)
    with torch.random.fork_rng(devices=[]):
        built = _build(model, model_name, dataset, seed, model_kwargs or {})
        check_fit(built, dataset, model_name=model_name, data_name=data_name)
    return CheckedJob(dataset=dataset)


def _load(data: str | DataLoader, name: str) -> Dataset:
    try:
        return load(data)
    except WorkersError:
        raise
    except Exception as exc:
        raise DataError(f"{name} raised {_describe(exc)}; fix the loader or what it reads "
                        "(--debug shows the traceback)") from exc


def _build(model: str | ModelFactory, name: str, dataset: Dataset, seed: int,
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


def check_fit(model: nn.Module, dataset: Dataset, *, model_name: str, data_name: str) -> None:
    """Run ``model`` forward on the first training sample and take the loss of its label, as
    a gradient task would; raises ``ConfigError`` when the model does not fit the data. Runs
    in eval mode (a batch of one is no batch for batch norm); restores the module's mode."""
    x = torch.from_numpy(np.ascontiguousarray(dataset.x_train[:1]))
    y = torch.from_numpy(np.ascontiguousarray(dataset.y_train[:1]))
    features = dataset.in_features
    was_training = model.training
    model.eval()
    try:
        out = model(x)
    except Exception as exc:
        raise ConfigError(
            f"{model_name} fails on one sample of {data_name} (a batch of shape (1, "
            f"{features})): {_describe(exc)}; the model must take rows of {features} "
            f"float32 features (e.g. a first layer nn.Linear({features}, ...))") from exc
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(
            f"{model_name} returned {shape} for a batch of shape (1, {features}) of "
            f"{data_name}; the model must return logits of shape (batch, classes)")
    width, classes = int(out.shape[1]), dataset.num_classes
    if width < classes:
        raise ConfigError(
            f"{model_name} outputs {width} classes but {data_name} has labels up to "
            f"{classes - 1} (y_train); give the model's last layer {classes} outputs, or "
            f"relabel the data to 0..{width - 1}")
    if not out.is_floating_point():
        raise ConfigError(f"{model_name} returned {out.dtype} logits; they must be float")
    loss = F.cross_entropy(out, y, reduction="sum")
    if not loss.requires_grad:
        raise ConfigError(
            f"{model_name}'s output does not depend on its parameters (no gradient); do not "
            "detach it or run the forward under torch.no_grad()")


def _describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
