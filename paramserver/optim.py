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


def _fma(a: npt.ArrayLike, b: npt.ArrayLike, c: npt.ArrayLike) -> F32:
    """``a * b + c`` rounded once to float32, like a hardware fused multiply-add."""
    wide = np.asarray(a, np.float64) * np.asarray(b, np.float64) + np.asarray(c, np.float64)
    return wide.astype(np.float32)


def _add(x: F32, other: F32, alpha: float) -> F32:
    """torch ``x.add(other, alpha=alpha)`` on CPU float32 (an FMA with alpha cast to float32)."""
    return _fma(np.float32(alpha), other, x)


def _lerp(start: F32, end: F32, weight: float) -> F32:
    """torch ``start.lerp(end, weight)`` on CPU float32 with a scalar weight."""
    w = np.float32(weight)
    diff = end - start
    if abs(float(w)) < 0.5:
        return _fma(w, diff, start)
    return _fma(w - np.float32(1.0), diff, end)


def new_state(config: OptimizerConfig) -> dict[str, npt.NDArray[Any]]:
    """Fresh state for one piece: ``step`` 0, buffers created lazily on the first step."""
    return {"step": np.zeros((), np.int64)}


def sgd_step(param: F32, grad: F32, state: PieceState, lr: float, cfg: OptimizerConfig) -> None:
    """One torch.optim.SGD step (dampening 0). Mutates ``param`` and ``state`` in place."""
    if cfg.weight_decay != 0:
        grad = _add(grad, param, cfg.weight_decay)
    if cfg.momentum != 0:
        buf = state.get("momentum_buffer")
        buf = grad.copy() if buf is None else _add(buf * np.float32(cfg.momentum), grad, 1.0)
        state["momentum_buffer"] = buf
        grad = _add(grad, buf, cfg.momentum) if cfg.nesterov else buf
    param[...] = _add(param, grad, -lr)
    state["step"] = np.asarray(int(state["step"]) + 1, np.int64)


def adam_step(param: F32, grad: F32, state: PieceState, lr: float, cfg: OptimizerConfig) -> None:
    """One torch.optim.Adam / AdamW step (no amsgrad). Mutates ``param`` and ``state``."""
    beta1, beta2 = cfg.betas
    step = int(state["step"]) + 1
    if cfg.weight_decay != 0:
        if cfg.kind == "adamw":
            param[...] = param * np.float32(1 - lr * cfg.weight_decay)
        else:
            grad = _add(grad, param, cfg.weight_decay)
    exp_avg = state.get("exp_avg")
    exp_avg_sq = state.get("exp_avg_sq")
    if exp_avg is None or exp_avg_sq is None:
        exp_avg = np.zeros_like(param)
        exp_avg_sq = np.zeros_like(param)
    exp_avg = _lerp(exp_avg, grad, 1 - beta1)
    # addcmul(value=v): self + v * g * g, contracted by the compiler into fma(v * g, g, self).
    exp_avg_sq = _fma(np.float32(1 - beta2) * grad, grad, exp_avg_sq * np.float32(beta2))
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    denom = np.sqrt(exp_avg_sq) / np.float32(bias_correction2**0.5) + np.float32(cfg.eps)
    # addcdiv(value=-step_size): self + (value * exp_avg) / denom.
    param[...] = param + (np.float32(-step_size) * exp_avg) / denom
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
