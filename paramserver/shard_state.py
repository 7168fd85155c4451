"""The plain data around ``paramserver.shard``: a shard's state as checkpoints store it,
what an apply did, and a preview kept for the apply of the same command."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["ApplyResult", "Preview", "ShardState"]

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What applying a round did; a pure function of the command (a re-apply returns it too)."""

    round: int
    version: int
    stepped: bool


@dataclass(slots=True)
class ShardState:
    """Plain data of one shard: what checkpoints store and ``from_state`` rebuilds from."""

    version: int
    params: dict[str, npt.NDArray[Any]]
    """The shard's tensors by piece key: parameters (float32) and buffers (float32 or
    int64, see ``Piece.buffer``)."""
    optimizer_state: dict[str, dict[str, npt.NDArray[Any]]]
    """Per parameter key (buffers have none): the optimizer's named arrays."""
    layer_versions: dict[str, int] = field(default_factory=dict)
    async_steps: dict[int, int] = field(default_factory=dict)
    """``async`` mode: per rank, the watermark of applied contribution steps: every step up
    to it was applied (for exactly-once; see ``paramserver.async_steps``)."""
    async_early: dict[int, tuple[int, ...]] = field(default_factory=dict)
    """``async`` mode: per rank, the steps above its watermark applied out of order."""


@dataclass(frozen=True, slots=True)
class Preview:
    """A command's outcome computed ahead by ``preview``, adopted by a matching ``apply``."""

    command: bytes | memoryview
    """The previewed command, by reference (the proposer's own buffer, which no one writes)."""
    base: int
    """The generation of the state it was computed from; valid only while it is current."""
    state: ShardState
    result: ApplyResult
