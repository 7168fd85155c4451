"""A model's trained state: its parameters and buffers, as the parameter server holds them.

Tensor names are ``state_dict()`` keys (docs/DESIGN.md, "Model factory"). Parameters are
stepped by the server's optimizer; buffers, the persistent ones that ``state_dict`` holds
(BatchNorm's running statistics and batch counter, and the like), are replaced each round by
what the round's forward left in them (docs/DESIGN.md, "Rounds"). Floating-point buffers
are kept as float32, like the parameters; integer and boolean ones as int64.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from workers.errors import ModelFactoryError

__all__ = ["ModelState", "buffer_dtype", "load_state", "model_state", "state_buffers"]


class ModelState(dict[str, np.ndarray]):
    """Parameters and buffers by ``state_dict`` key, as numpy arrays (a plain dict), plus
    ``buffers``: the keys that are buffers. ``paramserver.ParameterServer.create`` reads
    ``buffers`` to keep those tensors out of the optimizer."""

    buffers: frozenset[str]

    def __init__(self, params: Mapping[str, np.ndarray],
                 buffers: Mapping[str, np.ndarray]) -> None:
        both = sorted(set(params) & set(buffers))
        if both:
            raise ModelFactoryError(f"tensors {both[:3]} are both parameters and buffers")
        super().__init__({**params, **buffers})
        self.buffers = frozenset(buffers)


def buffer_dtype(tensor: torch.Tensor) -> np.dtype[Any]:
    """How a buffer is held: float32 for a floating-point tensor, int64 for an integer or
    boolean one. ModelFactoryError for any other (a complex buffer)."""
    if tensor.is_complex():
        raise ModelFactoryError(f"a {tensor.dtype} buffer cannot be trained here; keep "
                                "buffers real (floating-point, integer or boolean)")
    return np.dtype(np.float32 if tensor.is_floating_point() else np.int64)


def state_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """The module's persistent buffers by ``state_dict`` key, in module order (a buffer
    registered with ``persistent=False`` is no part of the state, and is left alone)."""
    keys = model.state_dict(keep_vars=True).keys()
    return {name: buf for name, buf in model.named_buffers() if name in keys}


def model_state(model: nn.Module) -> ModelState:
    """``model``'s parameters (float32) and persistent buffers as numpy copies."""
    params = {name: p.detach().to(torch.float32).cpu().numpy().copy()
              for name, p in model.named_parameters()}
    buffers = {name: np.array(b.detach().cpu().numpy(), buffer_dtype(b), copy=True)
               for name, b in state_buffers(model).items()}
    return ModelState(params, buffers)


def load_state(model: nn.Module, state: Mapping[str, np.ndarray]) -> None:
    """Load ``state`` (every parameter and persistent buffer by key) into ``model`` with a
    strict ``load_state_dict``: a key of the model's ``state_dict`` that is another name of a
    tied tensor takes that tensor's value, extra state (``get_extra_state``) stays the
    module's own. Raises ModelFactoryError, changing nothing, when ``state`` lacks a tensor
    of the model or holds one the model lacks."""
    model.load_state_dict(full_state_dict(model, state), strict=True)


def full_state_dict(model: nn.Module, state: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Every key of ``model.state_dict()`` mapped to a torch tensor of ``state`` (see
    :func:`load_state`); what ``model.safetensors`` holds. ModelFactoryError when ``state``
    lacks a tensor of the model or holds one the model lacks."""
    first: dict[int, str] = {}  # a tied tensor's first name, the one the state holds
    for name, tensor in [*model.named_parameters(remove_duplicate=False),
                         *model.named_buffers(remove_duplicate=False)]:
        first.setdefault(id(tensor), name)
    out: dict[str, Any] = {}
    missing: list[str] = []
    for key, value in model.state_dict(keep_vars=True).items():
        if not isinstance(value, torch.Tensor):
            out[key] = value  # extra state
            continue
        source = key if key in state else first.get(id(value), key)
        if source not in state:
            missing.append(key)
            continue
        out[key] = torch.from_numpy(np.array(state[source]))
    if missing:
        raise ModelFactoryError(
            f"the trained state lacks {len(missing)} tensor(s) of the model, e.g. "
            f"{missing[:3]}; use the model the job was trained with")
    unknown = sorted(set(state) - set(out))
    if unknown:
        raise ModelFactoryError(
            f"the trained state holds {len(unknown)} tensor(s) the model lacks, e.g. "
            f"{unknown[:3]}; use the model the job was trained with")
    return out
