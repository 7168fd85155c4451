"""A leader's preview of a round: the parameters ``apply(command)`` will leave, computed on
a clone of one version of the shard while the command commits (``ShardStateMachine.preview``).

Two forms. A small shard previews on a copy of its whole state and keeps the outcome
(``Preview``), so that the apply of the same bytes adopts it instead of stepping again. A
shard larger than ``shard.LEAN_PREVIEW_BYTES`` previews lean: its clone's arrays are frozen
views of the live state, each stepped layer's parameters are copies (copy-on-write), its new
optimizer state is dropped at once, and nothing is kept: a copy of a large shard's whole
state (Adam triples it) would cost more memory than the second step costs time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from paramserver.commands import Command, Frame
from paramserver.shard_state import Preview, ShardState

if TYPE_CHECKING:
    from paramserver.shard import ShardStateMachine

F32 = npt.NDArray[np.float32]

__all__ = ["frozen_view", "full_preview", "lean_preview"]


def frozen_view(array: F32) -> F32:
    """A read-only view of a frozen array (its flag cannot be set back to writable)."""
    view = array.view()
    view.flags.writeable = False
    return view


def _clone(machine: ShardStateMachine, state: ShardState, *,
           keep_stepped_state: bool) -> ShardStateMachine:
    clone = type(machine).__new__(type(machine))
    clone._setup(machine._pieces.values(), machine.optimizer, machine.schedule,
                 machine.write_timeout_s)
    clone._keep_stepped_state = keep_stepped_state
    clone._set(state)
    return clone


def full_preview(machine: ShardStateMachine, decoded: Command, command: Frame,
                 timeout: float) -> dict[str, F32]:
    """Step a copy of one version of ``machine``'s state; keep the outcome for the apply of
    ``command`` to adopt when the command stepped and no apply ran meanwhile."""
    base, state = machine._gate.read(
        lambda deadline, locked: (machine._generation, machine._copy_state(deadline, locked)),
        timeout)
    clone = _clone(machine, state, keep_stepped_state=True)
    result = clone._apply_decoded(decoded)
    after = ShardState(clone._version, clone._params, clone._opt, clone._layer_versions,
                       clone._async_steps, clone._async_early)
    for array in after.params.values():
        array.flags.writeable = False
    if result is not None and result.stepped and machine._mutex.acquire(blocking=False):
        try:  # the mutex is free: no apply runs, so the base stays valid while we store
            if machine._generation == base:
                machine._pending = Preview(command, base, after, result)
        finally:
            machine._mutex.release()
    return {k: frozen_view(a) for k, a in after.params.items()}


def lean_preview(machine: ShardStateMachine, decoded: Command,
                 timeout: float) -> dict[str, F32]:
    """Step a clone of frozen views of the live state under its read gate (an apply waits
    for it meanwhile); nothing is kept to adopt."""
    with machine._gate.read_lock(timeout):
        views = ShardState(
            machine._version, {k: frozen_view(a) for k, a in machine._params.items()},
            {k: {n: frozen_view(a) for n, a in s.items()} for k, s in machine._opt.items()},
            dict(machine._layer_versions), dict(machine._async_steps),
            dict(machine._async_early))
        clone = _clone(machine, views, keep_stepped_state=False)
        clone._apply_decoded(decoded)
    return {k: frozen_view(a) for k, a in clone._params.items()}
