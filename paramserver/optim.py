"""Server-side optimizers that run torch's own CPU kernels on numpy arrays, in place.

Each update issues the same ATen calls, with the same scalars, in the same order as torch's
single-tensor CPU path (``torch.optim.SGD/Adam/AdamW`` with ``foreach=False``, the CPU
default; checked against torch 2.13), on zero-copy ``torch.from_numpy`` views of the arrays,
so the result is bit-identical to ``torch.optim``. Optimizer state is per piece: a mapping of
state names (``momentum_buffer`` / ``exp_avg`` / ``exp_avg_sq``) to float32 numpy arrays,
plus ``step`` as a 0-d int64 array (the layout checkpoints and snapshots store).

Determinism contract (what replicas rely on): a step depends only on its inputs. torch's
elementwise CPU kernels give every element the same bits wherever it falls in a vector or a
thread's chunk (tests check this), so the intra-op thread count does not matter; the AVX2 and
AVX512 kernels agree, but torch's scalar ``DEFAULT`` capability (``ATEN_CPU_CAPABILITY=default``
or a CPU without AVX2) does not use fused multiply-adds and rounds differently: every
replica of a shard must run the same torch build on an AVX2-or-better CPU.

Threads: the kernels release the GIL, so different pieces may be stepped concurrently from
different threads; steps of ONE piece (its param and state arrays) must not overlap.
``torch`` is imported here only: the rest of ``paramserver`` uses numpy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from paramserver.errors import ConfigError, GradientShapeError

F32 = npt.NDArray[np.float32]
OptimizerKind = Literal["sgd", "adam", "adamw"]
PieceState = MutableMapping[str, npt.NDArray[Any]]
KERNEL_CAPABILITY: str = torch.backends.cpu.get_cpu_capability()
"""The torch CPU kernel set in use (``AVX2``/``AVX512`` agree bitwise; ``DEFAULT`` differs)."""


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


def single_threaded_kernels() -> None:
    """Make torch's kernels run on the calling thread alone, without intra-op threads: for a
    pool thread that steps chunks, where the pool is the parallelism. The setting is per
    thread (torch's OpenMP backend), so the rest of the process keeps its own."""
    torch.set_num_threads(1)


def _tensor(array: npt.NDArray[Any]) -> torch.Tensor:
    """A zero-copy tensor over ``array``'s memory (read-only arrays are only ever read).

    ``torch.from_numpy`` warns on read-only arrays, so those go through DLPack, which marks
    them read-only; a numpy too old to export read-only DLPack gets a private copy instead.
    """
    if array.flags.writeable:
        return torch.from_numpy(array)
    try:
        return torch.utils.dlpack.from_dlpack(array)
    except (BufferError, RuntimeError, TypeError):
        return torch.from_numpy(array.copy())


def _scratch(like: F32) -> tuple[F32, torch.Tensor]:
    """A new uninitialised float32 numpy array shaped like ``like``, and its tensor view."""
    array = np.empty(like.shape, np.float32)
    return array, torch.from_numpy(array)


def _owned(array: npt.NDArray[Any] | None) -> npt.NDArray[Any] | None:
    """``array`` itself when it may be updated in place, else a writable copy (or None)."""
    if array is None or array.flags.writeable:
        return array
    return array.copy()


def new_state(config: OptimizerConfig) -> dict[str, npt.NDArray[Any]]:
    """Fresh state for one piece: ``step`` 0, buffers created lazily on the first step."""
    return {"step": np.zeros((), np.int64)}


def check_state(key: str, shape: tuple[int, ...], state: Mapping[str, npt.NDArray[Any]]) -> None:
    """Raise GradientShapeError unless ``state`` fits a piece of ``shape``: an integral 0-d
    ``step`` and float32 buffers of exactly ``shape``. ``key`` names the piece in messages."""
    step = state.get("step")
    if step is None or np.shape(step) != () or not np.issubdtype(np.asarray(step).dtype,
                                                                 np.integer):
        raise GradientShapeError(f"layer {key!r}: optimizer state needs a 0-d integer 'step', "
                                 f"got {None if step is None else np.asarray(step).dtype}")
    for name, value in state.items():
        if name != "step" and (value.dtype != np.float32 or tuple(value.shape) != shape):
            raise GradientShapeError(
                f"layer {key!r}: optimizer state {name!r} is {value.dtype} {value.shape}, the "
                f"piece needs float32 {shape}")


def _check_inputs(param: F32, grad: F32) -> None:
    if param.dtype != np.float32 or grad.dtype != np.float32 or param.shape != grad.shape:
        raise GradientShapeError(f"optimizer step needs float32 param and grad of one shape, "
                                 f"got {param.dtype} {param.shape} and {grad.dtype} {grad.shape}")
    if not param.flags.writeable:
        raise GradientShapeError("the parameter array is read-only; the step updates it in "
                                 "place: pass a writable copy")


def sgd_step(param: F32, grad: F32, state: PieceState, lr: float, cfg: OptimizerConfig) -> None:
    """One torch.optim.SGD step (dampening 0, foreach=False). Mutates ``param`` and ``state``.

    Same calls as torch: ``g = grad.add(param, alpha=wd)``; ``buf.mul_(m).add_(g)`` (or a
    copy of ``g`` on the first step); nesterov ``g = g.add(buf, alpha=m)``; finally
    ``param.add_(g, alpha=-lr)``. ``grad`` is never modified; the momentum buffer is updated
    in place when writable (a read-only one is copied first). At most two temporaries of the
    piece's size (weight decay, then nesterov reuses it in place).
    """
    p, g = _tensor(param), _tensor(grad)
    scratch: F32 | None = None  # a temporary of ours that ``g`` views, free to overwrite
    if cfg.weight_decay != 0:
        scratch, g_out = _scratch(param)
        g = torch.add(g, p, alpha=cfg.weight_decay, out=g_out)
    if cfg.momentum != 0:
        buf_array = _owned(state.get("momentum_buffer"))
        if buf_array is None:  # torch: buf = grad.detach().clone()
            buf_array = scratch if scratch is not None else grad.copy()
            scratch = None  # now the buffer: never overwrite it
            buf = _tensor(buf_array)
        else:
            buf = _tensor(buf_array)
            buf.mul_(cfg.momentum).add_(g, alpha=1 - 0.0)  # alpha = 1 - dampening
        state["momentum_buffer"] = buf_array
        if cfg.nesterov:
            g = (torch.add(g, buf, alpha=cfg.momentum, out=g) if scratch is not None
                 else g.add(buf, alpha=cfg.momentum))
        else:
            g = buf
    p.add_(g, alpha=-lr)
    state["step"] = np.asarray(int(state["step"]) + 1, np.int64)


def adam_step(param: F32, grad: F32, state: PieceState, lr: float, cfg: OptimizerConfig,
              *, spare_grad: bool = False) -> None:
    """One torch.optim.Adam / AdamW step (no amsgrad, foreach=False). Mutates ``param`` and
    ``state``.

    Same calls as torch: AdamW ``param.mul_(1 - lr * wd)`` / Adam ``g = grad.add(param,
    alpha=wd)``; ``exp_avg.lerp_(g, 1 - beta1)``; ``exp_avg_sq.mul_(beta2).addcmul_(g, g,
    value=1 - beta2)``; ``denom = (exp_avg_sq.sqrt() / bias_correction2 ** 0.5).add_(eps)``
    (written into one temporary with ``out=``, reusing the weight-decay one when present);
    ``param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)``. ``grad`` is not
    modified unless ``spare_grad`` (the caller's own temporary: ``denom`` is then written
    into it once it is spent, one temporary fewer); the moment buffers are updated in place
    when writable (copied when read-only).
    """
    beta1, beta2 = cfg.betas
    step = int(state["step"]) + 1
    p, g = _tensor(param), _tensor(grad)
    scratch: torch.Tensor | None = None
    if cfg.weight_decay != 0:
        if cfg.kind == "adamw":
            p.mul_(1 - lr * cfg.weight_decay)
        else:
            scratch = g if spare_grad else _scratch(param)[1]
            g = torch.add(g, p, alpha=cfg.weight_decay, out=scratch)
    exp_avg = _owned(state.get("exp_avg"))
    exp_avg_sq = _owned(state.get("exp_avg_sq"))
    if exp_avg is None or exp_avg_sq is None:
        exp_avg = np.zeros(param.shape, np.float32)
        exp_avg_sq = np.zeros(param.shape, np.float32)
    m, v = _tensor(exp_avg), _tensor(exp_avg_sq)
    m.lerp_(g, 1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = bias_correction2**0.5
    if scratch is None and spare_grad:
        scratch = g  # the caller's temporary, spent like g
    denom = scratch if scratch is not None else torch.empty_like(p)  # g is spent: reuse it
    torch.sqrt(v, out=denom)
    denom.div_(bias_correction2_sqrt).add_(cfg.eps)
    p.addcdiv_(m, denom, value=-step_size)
    state["exp_avg"] = exp_avg
    state["exp_avg_sq"] = exp_avg_sq
    state["step"] = np.asarray(step, np.int64)


def optimizer_step(
    param: F32, grad: F32, state: PieceState, lr: float, cfg: OptimizerConfig, *,
    spare_grad: bool = False,
) -> None:
    """Step one piece with ``cfg``'s optimizer at learning rate ``lr``; mutates in place.

    ``param`` (writable) and ``grad`` must be float32 arrays of the same shape, else
    GradientShapeError before anything changes; ``grad`` is the MEAN gradient and is not
    modified, unless ``spare_grad`` says it is the caller's temporary, which the step may
    then overwrite (Adam writes its denominator there: one piece-sized temporary fewer,
    the same bits). Blocks the calling thread for the step (the GIL is released in the
    kernels).
    """
    _check_inputs(param, grad)
    if cfg.kind == "sgd":
        sgd_step(param, grad, state, lr, cfg)
    else:
        adam_step(param, grad, state, lr, cfg, spare_grad=spare_grad and grad.flags.writeable)
