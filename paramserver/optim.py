"""Server-side optimizers in float32 numpy that match ``torch.optim`` step for step.

Each update follows torch's single-tensor CPU code path operation by operation, including its
rounding: torch's vectorised ``add(alpha=)`` and ``lerp`` kernels use a fused multiply-add
(one rounding), which :func:`_fma` reproduces by computing in float64 (the product of two
float32 values is exact there) and rounding once to float32. Optimizer state is per piece:
a mapping of state names (``momentum_buffer`` / ``exp_avg`` / ``exp_avg_sq``) to float32
arrays, plus ``step`` as a 0-d int64 array. Steps mutate the parameter and state in place and
depend only on their inputs, so replicas that apply the same gradients stay byte-identical.
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from paramserver.errors import ConfigError

F32 = npt.NDArray[np.float32]
OptimizerKind = Literal["sgd", "adam", "adamw"]
PieceState = MutableMapping[str, npt.NDArray[Any]]


@dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """The server-side optimizer applied to every shard (same meaning as in ``torch.optim``)."""

    kind: OptimizerKind = "sgd"
    """``sgd`` (torch.optim.SGD), ``adam`` (torch.optim.Adam) or ``adamw`` (torch.optim.AdamW)."""
    lr: float = 0.01
    """Base learning rate; the schedule scales it per round."""
    momentum: float = 0.0
    """SGD momentum factor in [0, 1); 0 disables the momentum buffer."""
    nesterov: bool = False
    """SGD Nesterov momentum; needs ``momentum > 0``."""
    weight_decay: float = 0.0
    """L2 penalty (sgd, adam) or decoupled weight decay (adamw); >= 0."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam(W) moment decay rates, each in [0, 1)."""
    eps: float = 1e-8
    """Adam(W) denominator term; > 0."""

    def __post_init__(self) -> None:
        if self.kind not in ("sgd", "adam", "adamw"):
            raise ConfigError(f"optimizer kind {self.kind!r} is unknown; use sgd, adam or adamw")
        if not (math.isfinite(self.lr) and self.lr >= 0):
            raise ConfigError(f"lr={self.lr} must be a finite number >= 0")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum={self.momentum} must be in [0, 1)")
        if self.nesterov and (self.kind != "sgd" or self.momentum <= 0):
            raise ConfigError("nesterov=True needs kind='sgd' and momentum > 0; set nesterov=False")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay={self.weight_decay} must be a finite number >= 0")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"betas={self.betas} must be two numbers, each in [0, 1)")
        if not self.eps > 0:
            raise ConfigError(f"eps={self.eps} must be > 0")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (for checkpoint manifests)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OptimizerConfig:
        """Inverse of :meth:`to_dict`; validates like the constructor."""
        fields = dict(data)
        fields["betas"] = tuple(fields.get("betas", (0.9, 0.999)))
        return cls(**fields)

    def state_names(self) -> tuple[str, ...]:
        """The float32 state arrays one piece carries once it has stepped."""
        if self.kind == "sgd":
            return ("momentum_buffer",) if self.momentum > 0 else ()
        return ("exp_avg", "exp_avg_sq")


def _fma(a: npt.ArrayLike, b: npt.ArrayLike, c: npt.ArrayLike, out: F32 | None = None) -> F32:
    """``a * b + c`` rounded once to float32, like a hardware fused multiply-add.

    The product of two float32 values is exact in float64, so one float64 temporary holds it;
    the sum is formed in float64 and cast straight into ``out`` (a fresh array when None).
    ``out`` may alias ``c`` (the update is elementwise); ``a`` and ``b`` are not modified.
    """
    wide = np.multiply(a, b, dtype=np.float64)
    if out is None:
        return np.add(wide, c, dtype=np.float64).astype(np.float32)
    np.add(wide, c, out=out, dtype=np.float64, casting="same_kind")
    return out


def _add(x: F32, other: F32, alpha: float, out: F32 | None = None) -> F32:
    """torch ``x.add(other, alpha=alpha)`` on CPU float32 (an FMA with alpha cast to float32).

    Writes into ``out`` when given (it may alias ``x``), else returns a fresh array.
    """
    return _fma(np.float64(np.float32(alpha)), other, x, out)


def _lerp_(start: F32, end: F32, weight: float) -> None:
    """In place ``start.lerp_(end, weight)`` (torch CPU float32, scalar weight)."""
    w = np.float32(weight)
    diff = np.subtract(end, start)
    if abs(float(w)) < 0.5:
        _fma(np.float64(w), diff, start, start)
    else:
        _fma(np.float64(w - np.float32(1.0)), diff, end, start)


def _owned(array: npt.NDArray[Any] | None) -> npt.NDArray[Any] | None:
    """``array`` itself when it may be updated in place, else a writable copy (or None)."""
    if array is None or array.flags.writeable:
        return array
    return array.copy()


def new_state(config: OptimizerConfig) -> dict[str, npt.NDArray[Any]]:
    """Fresh state for one piece: ``step`` 0, buffers created lazily on the first step."""
    return {"step": np.zeros((), np.int64)}


def sgd_step(param: F32, grad: F32, state: PieceState, lr: float, cfg: OptimizerConfig) -> None:
    """One torch.optim.SGD step (dampening 0). Mutates ``param`` and ``state`` in place.

    ``grad`` is never modified; the momentum buffer is updated in place when it is writable.
    """
    if cfg.weight_decay != 0:
        grad = _add(grad, param, cfg.weight_decay)
    if cfg.momentum != 0:
        buf = _owned(state.get("momentum_buffer"))
        if buf is None:
            buf = grad.copy()
        else:
            # buf.mul_(momentum).add_(grad): an FMA with alpha 1 rounds like a float32 add
            # (float64 holds the exact sum's correct rounding), so plain float32 ops suffice.
            np.multiply(buf, np.float32(cfg.momentum), out=buf)
            np.add(buf, grad, out=buf)
        state["momentum_buffer"] = buf
        grad = _add(grad, buf, cfg.momentum) if cfg.nesterov else buf
    _add(param, grad, -lr, out=param)
    state["step"] = np.asarray(int(state["step"]) + 1, np.int64)


def adam_step(param: F32, grad: F32, state: PieceState, lr: float, cfg: OptimizerConfig) -> None:
    """One torch.optim.Adam / AdamW step (no amsgrad). Mutates ``param`` and ``state``.

    ``grad`` is never modified; the moment buffers are updated in place when writable.
    """
    beta1, beta2 = cfg.betas
    step = int(state["step"]) + 1
    if cfg.weight_decay != 0:
        if cfg.kind == "adamw":
            np.multiply(param, np.float32(1 - lr * cfg.weight_decay), out=param)
        else:
            grad = _add(grad, param, cfg.weight_decay)
    exp_avg = _owned(state.get("exp_avg"))
    exp_avg_sq = _owned(state.get("exp_avg_sq"))
    if exp_avg is None or exp_avg_sq is None:
        exp_avg = np.zeros_like(param)
        exp_avg_sq = np.zeros_like(param)
    _lerp_(exp_avg, grad, 1 - beta1)
    # addcmul(value=v): self + v * g * g, contracted by the compiler into fma(v * g, g, self).
    scaled = np.multiply(grad, np.float32(1 - beta2))
    np.multiply(exp_avg_sq, np.float32(beta2), out=exp_avg_sq)
    _fma(scaled, grad, exp_avg_sq, exp_avg_sq)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    denom = np.sqrt(exp_avg_sq)
    np.divide(denom, np.float32(bias_correction2**0.5), out=denom)
    np.add(denom, np.float32(cfg.eps), out=denom)
    # addcdiv(value=-step_size): self + (value * exp_avg) / denom.
    update = np.multiply(exp_avg, np.float32(-step_size))
    np.divide(update, denom, out=update)
    np.add(param, update, out=param)
    state["exp_avg"] = exp_avg
    state["exp_avg_sq"] = exp_avg_sq
    state["step"] = np.asarray(step, np.int64)


def optimizer_step(
    param: F32, grad: F32, state: PieceState, lr: float, cfg: OptimizerConfig
) -> None:
    """Step one piece with ``cfg``'s optimizer at learning rate ``lr``; mutates in place.

    ``param`` and ``grad`` must be float32 arrays of the same shape; ``grad`` is the MEAN
    gradient and is not modified.
    """
    if cfg.kind == "sgd":
        sgd_step(param, grad, state, lr, cfg)
    else:
        adam_step(param, grad, state, lr, cfg)
