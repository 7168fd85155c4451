"""The reported metric: built-in ``accuracy``, ``none``, or ``package.module:fn`` specs.

Contract (docs/DESIGN.md): a metric is ``fn(outputs, targets) -> per-sample values``, a
tensor of shape ``(b,)``, computed without gradients; tasks sum them, and a round's or the
test set's metric is that sum over its samples divided by their count. ``accuracy``:
whether a sample's highest output is its class id (the fraction of a sample's positions
that are, for targets of shape ``(b, T, ...)``), in the layouts of
``workers.loss.cross_entropy``. ``none``: no metric.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from workers.errors import MetricError
from workers.loss import (
    check_class_ids,
    check_per_sample,
    class_dim,
    loss_name,
    require_integer_targets,
)
from workers.spec_import import import_spec_callable

MetricFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
BUILTIN_METRICS = ("accuracy", "none")


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample accuracy (float, shape ``(b,)``) of the highest output against the class
    ids ``targets``."""
    require_integer_targets(targets, "accuracy", MetricError)
    dim = class_dim(outputs, targets, "accuracy", MetricError)
    check_class_ids(outputs, targets, dim, "accuracy", MetricError)
    hits = (outputs.argmax(dim=dim) == targets).to(torch.float32)
    if hits.ndim == 1:
        return hits
    return hits.reshape(hits.shape[0], -1).mean(dim=1)


@dataclass(frozen=True, kw_only=True)
class MetricSpec:
    """A resolved metric: its per-sample function (None: no metric) and its name."""

    name: str
    fn: MetricFn | None

    @property
    def reads_class_ids(self) -> bool:
        """The built-in accuracy: targets are class ids of the outputs."""
        return self.fn is accuracy

    def per_sample(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The metric of each sample, shape ``(b,)`` (no gradient); zeros without a metric;
        ``MetricError`` when the function breaks the contract."""
        samples = int(outputs.shape[0])
        if self.fn is None:
            return torch.zeros(samples, dtype=torch.float32)
        with torch.no_grad():
            values = self.fn(outputs.detach(), targets)
        return check_per_sample(values, samples, f"metric {self.name}", MetricError)

    def summed(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        """The sum of the per-sample values over the micro-batch (0.0 without a metric).
        Logits ``(b, C)`` with class ids ``(b,)`` under ``accuracy`` count the samples
        whose argmax is their label, exactly."""
        if self.fn is None:
            return 0.0
        if self.reads_class_ids and outputs.ndim == 2 and targets.ndim == 1:
            check_class_ids(outputs, targets, 1, "accuracy", MetricError)
            return float(int((outputs.argmax(dim=1) == targets).sum()))
        return float(self.per_sample(outputs, targets).sum())


NO_METRIC = MetricSpec(name="none", fn=None)


def resolve_metric(spec: str | MetricFn) -> MetricSpec:
    """``accuracy`` / ``none`` / ``package.module:fn`` or a callable, as a ``MetricSpec``.
    Raises ``MetricError`` for an unknown name, a module that does not import, a missing
    or non-callable attribute. Imports the module; calls nothing."""
    if callable(spec):
        return MetricSpec(name=loss_name(spec), fn=spec)
    if spec == "accuracy":
        return MetricSpec(name=spec, fn=accuracy)
    if spec == "none":
        return NO_METRIC
    if ":" not in spec:
        raise MetricError(f"unknown metric {spec!r}: use one of {', '.join(BUILTIN_METRICS)} "
                          "or 'package.module:fn' (fn(outputs, targets) -> per-sample values)")
    fn = import_spec_callable(spec, "metric", MetricError)
    return MetricSpec(name=spec, fn=fn)  # type: ignore[arg-type]
