"""Whether a piece's optimizer state fits an optimizer: the check before a shard adopts
state it did not compute itself (a snapshot, a checkpoint, a RestoreCommand).

A piece that has stepped ``k > 0`` times carries exactly the buffers its optimizer keeps
(``OptimizerConfig.state_names``: ``momentum_buffer`` for SGD with momentum, ``exp_avg`` and
``exp_avg_sq`` for Adam(W), none for plain SGD); one that never stepped carries none. Any
other set means the state was written by another optimizer, and stepping it would mix
the two silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from paramserver.errors import GradientShapeError, OptimizerStateError
from paramserver.optim import OptimizerConfig, check_state


def describe(optimizer: OptimizerConfig) -> str:
    """A short name of ``optimizer`` as the CLI spells it (``adam``, ``momentum 0.9``)."""
    if optimizer.kind == "sgd":
        return f"momentum {optimizer.momentum}" if optimizer.momentum > 0 else "sgd"
    return optimizer.kind


def check_fits(key: str, shape: tuple[int, ...], state: Mapping[str, npt.NDArray[Any]],
               optimizer: OptimizerConfig) -> None:
    """Raise OptimizerStateError unless ``state`` is valid state of ``optimizer`` for a piece
    of ``shape``: a 0-d integer ``step``, float32 buffers of ``shape``, and exactly the
    buffers ``optimizer`` keeps after that many steps. ``key`` names the piece."""
    try:
        check_state(key, shape, state)
    except GradientShapeError as exc:
        raise OptimizerStateError(str(exc)) from None
    steps = int(np.asarray(state["step"]))
    buffers = sorted(set(state) - {"step"})
    expected = sorted(optimizer.state_names()) if steps > 0 else []
    if buffers != expected:
        raise OptimizerStateError(
            f"layer {key!r}: the optimizer state after {steps} steps holds "
            f"{buffers or 'no buffers'}, but the {describe(optimizer)} optimizer keeps "
            f"{expected or 'no buffers'}; the state was written by another optimizer: "
            "restore it with the optimizer it was trained with")
