"""``tree_sum``: the fixed pairwise tree every round's gradients are added by.

The order of float additions decides the bits of a sum. Adding in one fixed tree over the
inputs' order, ``((a0+a1)+(a2+a3))+...``, makes a round's sum the same on every replica and
in every run, whatever order the contributions arrived in (``paramserver.aggregator``), and
is the shape of the micro-batch tree (``paramserver.microbatch``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]


def tree_sum(arrays: Sequence[F32], out: F32 | None = None) -> F32:
    """Sum float32 arrays by a fixed pairwise tree over their order: ((a0+a1)+(a2+a3))+...

    The result is a new array (or ``out``, which must not alias an input); inputs are never
    modified. The first tree level writes into fresh buffers (the first one ``out``), every
    later level adds in place into those, so a sum of ``n`` arrays allocates ``n // 2`` buffers.
    """
    if not arrays:
        raise ValueError("tree_sum needs at least one array")
    if len(arrays) == 1:
        if out is None:
            return np.array(arrays[0], dtype=np.float32, copy=True)
        np.copyto(out, arrays[0])
        return out
    level: list[F32] = []
    for i in range(0, len(arrays) - 1, 2):
        target = out if i == 0 and out is not None else None
        level.append(np.add(arrays[i], arrays[i + 1], out=target, dtype=np.float32))
    if len(arrays) % 2:
        level.append(arrays[-1])  # an input: only ever the right operand below
    while len(level) > 1:
        paired = [np.add(level[i], level[i + 1], out=level[i]) for i in range(0, len(level) - 1,
                                                                               2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]
