"""The training loss: built-in ``cross_entropy`` and ``mse``, ``package.module:fn`` specs.

Contract (docs/DESIGN.md): a loss is ``fn(outputs, targets) -> per-sample losses``, a float
tensor of shape ``(b,)`` for a micro-batch of ``b`` samples. A gradient task SUMS them and
the server divides by the global batch, so the result does not depend on the worker split.

- ``cross_entropy`` (the default): integer class ids as targets. Outputs ``(b, C)`` for
  targets ``(b,)``; for targets ``(b, d1, ...)`` either the class dimension last, outputs
  ``(b, d1, ..., C)`` (a language model's ``(b, T, V)`` for ``(b, T)``), or torch's layout,
  outputs ``(b, C, d1, ...)``; when both fit (``T == V``), the class dimension is last. A
  sample's loss is the mean over its positions. Targets must be ``0 <= y < C``.
- ``mse``: a sample's mean squared error over its values. Outputs and targets have one
  shape, or outputs ``(b, ..., 1)`` for targets ``(b, ...)``; integer targets are compared
  as the outputs' float dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workers.errors import LossError
from workers.spec_import import import_spec_callable

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
BUILTIN_LOSSES = ("cross_entropy", "mse")
DEFAULT_LOSS = "cross_entropy"


def class_dim(outputs: torch.Tensor, targets: torch.Tensor, what: str,
              error: type[Exception]) -> int:
    """The dimension of ``outputs`` that holds the classes of the class ids ``targets``
    (see the module doc); ``error`` naming ``what`` when the shapes do not pair up."""
    out, tgt = tuple(outputs.shape), tuple(targets.shape)
    if outputs.ndim == targets.ndim + 1 and out[:1] == tgt[:1]:
        if out[:-1] == tgt:
            return outputs.ndim - 1
        if out[2:] == tgt[1:]:
            return 1
    raise error(
        f"{what} needs outputs of shape (batch, classes) for targets of shape (batch,), "
        f"(batch, ..., classes) or (batch, classes, ...) for targets (batch, ...); got "
        f"outputs {out} and targets {tgt}")


def require_integer_targets(targets: torch.Tensor, what: str, error: type[Exception]) -> None:
    """``error`` unless ``targets`` have an integer dtype (class ids)."""
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise error(
            f"{what} needs integer class ids as targets, got {targets.dtype}: return the "
            "labels as an integer array from the loader (e.g. y.astype(numpy.int64)), or "
            "use a loss for float targets (--loss mse or package.module:fn)")


def check_class_ids(outputs: torch.Tensor, targets: torch.Tensor, dim: int, what: str,
                    error: type[Exception]) -> None:
    """``error`` unless ``targets`` are integer class ids ``0 <= y < outputs.shape[dim]``."""
    require_integer_targets(targets, what, error)
    if targets.numel() == 0:
        return
    classes = int(outputs.shape[dim])
    low, high = int(targets.min()), int(targets.max())
    if low < 0 or high >= classes:
        bad = low if low < 0 else high
        raise error(
            f"{what} got target {bad}, but the model outputs {classes} classes: targets "
            f"must be class ids 0 <= y < {classes}; relabel the data or widen the model's "
            "last layer")


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy of logits ``outputs`` for class ids ``targets`` (the mean
    over a sample's positions when it has several); shape ``(b,)``."""
    require_integer_targets(targets, "cross_entropy", LossError)
    dim = class_dim(outputs, targets, "cross_entropy", LossError)
    check_class_ids(outputs, targets, dim, "cross_entropy", LossError)
    logits = outputs.movedim(dim, 1) if dim != 1 else outputs
    per_position = F.cross_entropy(logits, targets, reduction="none")
    if per_position.ndim == 1:
        return per_position
    return per_position.reshape(per_position.shape[0], -1).mean(dim=1)


def mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error over a sample's values; shape ``(b,)``."""
    if not outputs.is_floating_point():
        raise LossError(f"mse needs float outputs, got {outputs.dtype}")
    target = targets
    if tuple(outputs.shape) == (*targets.shape, 1):
        target = targets.unsqueeze(-1)
    if outputs.shape != target.shape:
        raise LossError(
            f"mse needs outputs of the targets' shape (or one more trailing dimension of "
            f"size 1), got outputs {tuple(outputs.shape)} and targets {tuple(targets.shape)}")
    if target.dtype != outputs.dtype:
        target = target.to(outputs.dtype)
    squared = F.mse_loss(outputs, target, reduction="none")
    return squared.reshape(squared.shape[0], -1).mean(dim=1)


def check_per_sample(values: object, samples: int, what: str,
                     error: type[Exception]) -> torch.Tensor:
    """``values`` when it is a float tensor of shape ``(samples,)``; else ``error`` saying
    that ``what`` must return one value per sample."""
    if not isinstance(values, torch.Tensor):
        raise error(f"{what} returned {type(values).__name__}; it must return a tensor of "
                    f"per-sample values, shape ({samples},)")
    if tuple(values.shape) != (samples,):
        raise error(
            f"{what} returned shape {tuple(values.shape)} for a micro-batch of {samples} "
            f"samples; it must return per-sample values of shape ({samples},): reduce "
            "every dimension but the batch, and do not sum or average over the batch")
    if not values.is_floating_point():
        raise error(f"{what} returned {values.dtype} values; they must be float")
    return values


@dataclass(frozen=True, kw_only=True)
class LossSpec:
    """A resolved loss: its per-sample function and the name messages use."""

    name: str
    fn: LossFn

    @property
    def reads_class_ids(self) -> bool:
        """The built-in cross-entropy: targets are class ids of the outputs."""
        return self.fn is cross_entropy

    def per_sample(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss of each sample, shape ``(b,)``; ``LossError`` when the function breaks
        the contract."""
        values = self.fn(outputs, targets)
        return check_per_sample(values, int(outputs.shape[0]), f"loss {self.name}", LossError)

    def summed(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The sum over the micro-batch of the per-sample losses (what a task
        differentiates). Logits ``(b, C)`` with class ids ``(b,)`` under ``cross_entropy``
        take ``F.cross_entropy(reduction="sum")`` itself, bit for bit."""
        if self.reads_class_ids and outputs.ndim == 2 and targets.ndim == 1:
            require_integer_targets(targets, "cross_entropy", LossError)
            dim = class_dim(outputs, targets, "cross_entropy", LossError)
            check_class_ids(outputs, targets, dim, "cross_entropy", LossError)
            return F.cross_entropy(outputs, targets, reduction="sum")
        return self.per_sample(outputs, targets).sum()


def loss_name(fn: LossFn) -> str:
    """``module:qualname`` of a loss function (how messages name a callable loss)."""
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


def resolve_loss(spec: str | LossFn) -> LossSpec:
    """``cross_entropy`` / ``mse`` / ``package.module:fn`` or a callable, as a ``LossSpec``.
    Raises ``LossError`` for an unknown name, a module that does not import, a missing or
    non-callable attribute. Imports the module; calls nothing."""
    if callable(spec):
        return LossSpec(name=loss_name(spec), fn=spec)
    if spec == "cross_entropy":
        return LossSpec(name=spec, fn=cross_entropy)
    if spec == "mse":
        return LossSpec(name=spec, fn=mse)
    if ":" not in spec:
        raise LossError(f"unknown loss {spec!r}: use one of {', '.join(BUILTIN_LOSSES)} or "
                        "'package.module:fn' (fn(outputs, targets) -> per-sample losses)")
    fn = import_spec_callable(spec, "loss", LossError)
    return LossSpec(name=spec, fn=fn)  # type: ignore[arg-type]
