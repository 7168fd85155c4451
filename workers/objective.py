"""A job's objective: the loss its tasks minimize and the metric they report.

The metric defaults by the loss: ``accuracy`` for ``cross_entropy``, none otherwise. What
a job reports as its score (each epoch's test evaluation, ``final_test_accuracy``) is the
metric's mean, or without a metric the mean loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workers.loss import DEFAULT_LOSS, LossFn, LossSpec, resolve_loss
from workers.metric import MetricFn, MetricSpec, resolve_metric


@dataclass(frozen=True, kw_only=True)
class Objective:
    """A resolved loss and metric."""

    loss: LossSpec = field(default_factory=lambda: resolve_loss(DEFAULT_LOSS))
    metric: MetricSpec = field(default_factory=lambda: resolve_metric("accuracy"))

    @property
    def reads_class_ids(self) -> bool:
        """The loss or the metric takes the targets as class ids of the outputs (so they
        are range-checked against the model's output width)."""
        return self.loss.reads_class_ids or self.metric.reads_class_ids

    @property
    def score_name(self) -> str:
        """What the job's score is: the metric's name, or ``loss`` without a metric."""
        return "loss" if self.metric.fn is None else self.metric.name


def default_metric(loss: str | LossFn) -> str:
    """The metric a loss gets when none is named: ``accuracy`` for ``cross_entropy``,
    ``none`` for any other."""
    return "accuracy" if loss == DEFAULT_LOSS else "none"


def score_name(loss: str, metric: str | None) -> str:
    """``Objective.score_name`` of ``resolve_objective(loss, metric)``, without importing
    anything: ``accuracy``, ``loss`` (no metric) or the metric's spec."""
    chosen = default_metric(loss) if metric is None else metric
    return "loss" if chosen == "none" else chosen


def resolve_objective(loss: str | LossFn = DEFAULT_LOSS,
                      metric: str | MetricFn | None = None) -> Objective:
    """The ``Objective`` of a loss and a metric spec (None: ``default_metric(loss)``).
    Raises ``LossError`` / ``MetricError`` for specs that do not resolve."""
    chosen = default_metric(loss) if metric is None else metric
    return Objective(loss=resolve_loss(loss), metric=resolve_metric(chosen))
