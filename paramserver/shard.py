"""The shard state machine: one shard's parameters, buffers and optimizer state, driven by Raft.

Implements ``consensus.StateMachine``. ``apply`` depends only on the state and the command
bytes (the learning rate is a pure function of the round), so replicas that applied the same
log are byte-identical: ``snapshot()`` returns equal bytes, ``digest()`` equal hashes.
Version ``v`` means rounds ``0..v-1`` are applied; the next command must be round ``v``.
Buffers (pieces with ``buffer=True``: BatchNorm's running statistics, ...) are state like the
parameters, published, snapshotted and checkpointed with them, but never optimized: a round
replaces them with the command's ``buffers``.

Threads. ``apply``/``restore`` may run on a worker thread while any other thread reads.
In a replica that is what happens: a large round is applied in the replica's apply thread
(``consensus.replica``) while its event loop reads the same shard for ``pull`` (the
parameters it publishes), ``export`` and ``info`` (``paramserver.service``); the leader's
``preview`` runs in the service's compute thread, while no apply runs. The rules:

- Writers run one at a time (a mutex). Every change of the state happens while the writer
  holds the shard's VersionGate and then every layer's write lock (sorted key order,
  one deadline of ``write_timeout_s``), so the gate's seqlock stamp, the machine's
  ``sequence`` number, is odd exactly while the state may be changing. A writer that does not
  get its locks in time raises LockTimeoutError having changed nothing and holding nothing.
  The layers of a round are stepped in parallel on a small thread pool.
- Readers (``read_params``, ``params``, ``export_state``, ``snapshot``, ``digest``,
  ``params_digest``, ``query``, ``preview``) are safe on any thread, concurrently with apply:
  they read optimistically against ``sequence`` and retry when it moved (a layer copy that
  overlaps a write waits for it on that layer's read lock); after two failed tries they hold
  the gate's read lock, which at most one apply then waits for (``VersionGate.read``). A
  read returns the state of exactly one version, never a mix, or raises LockTimeoutError
  after ``timeout`` seconds.
- Arrays handed out without a copy (``params()``, ``read_params(copy=False)``, the result of
  ``preview``) are frozen (read-only, also for the shard): a later step copies such a layer
  before updating it (copy-on-write), so they keep showing the version they came from.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import numpy.typing as npt

from consensus.buffers import same_bytes
from paramserver.async_steps import record, taken
from paramserver.commands import (
    Command,
    Frame,
    RestoreCommand,
    RoundCommand,
    decode_command,
    encode_frame,
    frame_parts,
)
from paramserver.errors import (
    CommandDecodeError,
    FutureRoundError,
    GradientShapeError,
    LockTimeoutError,
    UnknownLayerError,
    UnknownQueryError,
)
from paramserver.layer_step import step_layers
from paramserver.locks import LayerLocks, VersionGate, remaining
from paramserver.optim import OptimizerConfig, new_state
from paramserver.optimizer_state import check_fits
from paramserver.plan import BUFFER_DTYPES, Piece
from paramserver.schedule import ScheduleConfig, learning_rate
from paramserver.shard_image import image_digest, image_frame, read_image, tensors_digest
from paramserver.shard_preview import frozen_view, full_preview, lean_preview
from paramserver.shard_state import ApplyResult, Preview, ShardState

LOG = logging.getLogger(__name__)
F32 = npt.NDArray[np.float32]
OptState = dict[str, dict[str, npt.NDArray[Any]]]
WRITE_TIMEOUT_S = 30.0
"""Default deadline for a writer to take the gate and all layer write locks."""
READ_TIMEOUT_S = 30.0
"""Default deadline for a consistent read."""
LEAN_PREVIEW_BYTES = 256 << 20
"""A shard whose parameters and optimizer state exceed this previews lean (``preview``)."""

class ShardStateMachine:
    """Parameters and buffers of ``pieces`` plus the parameters' optimizer state; applies
    RoundCommands exactly once.

    See the module docstring for which calls may overlap. Dict fields holding the state
    (``_params``, ``_opt`` and the per-layer state dicts, ``_layer_versions``,
    ``_async_steps``, ``_async_early``) are replaced, never mutated, so a reader iterating
    one never races.
    """

    def __init__(
        self, pieces: Sequence[Piece], params: Mapping[str, npt.NDArray[Any]],
        optimizer: OptimizerConfig, schedule: ScheduleConfig | None = None, *,
        write_timeout_s: float = WRITE_TIMEOUT_S,
    ) -> None:
        self._setup(pieces, optimizer, schedule, write_timeout_s)
        self._check_params(params)
        keys = sorted(self._pieces)
        self._set(ShardState(0, {k: np.array(params[k], self._dtype(k), copy=True) for k in keys},
                             {k: new_state(optimizer) for k in self._trained},
                             dict.fromkeys(keys, 0)))

    def _setup(self, pieces: Iterable[Piece], optimizer: OptimizerConfig,
               schedule: ScheduleConfig | None, write_timeout_s: float) -> None:
        self._pieces = {p.key: p for p in pieces}
        self._buffers = {k: BUFFER_DTYPES[p.dtype] for k, p in self._pieces.items() if p.buffer}
        self._trained = sorted(k for k in self._pieces if k not in self._buffers)
        self.optimizer = optimizer
        self.schedule = schedule or ScheduleConfig()
        self.write_timeout_s = write_timeout_s
        self._locks = LayerLocks(sorted(self._pieces))
        self._gate = VersionGate()
        self._mutex = threading.Lock()
        self._pending: Preview | None = None
        self._generation = 0  # +1 per _mutation whose body ran (the state may have changed)
        self._keep_stepped_state = True  # False on a lean preview's clone (shard_preview)
        trained_bytes = sum(self._pieces[k].nbytes for k in self._trained)
        self._state_bytes = trained_bytes * (1 + len(optimizer.state_names()))

    def _set(self, state: ShardState) -> None:
        """Make ``state``'s containers the live state (no copy). Construction or _mutation only."""
        self._version = state.version
        self._params = state.params
        self._opt = state.optimizer_state
        self._layer_versions = state.layer_versions
        self._async_steps = state.async_steps
        self._async_early = state.async_early

    @classmethod
    def from_state(
        cls, pieces: Sequence[Piece], state: ShardState, optimizer: OptimizerConfig,
        schedule: ScheduleConfig | None = None,
    ) -> ShardStateMachine:
        """Rebuild a shard from a checkpoint's ShardState (params, optimizer state, version)."""
        machine = cls(pieces, state.params, optimizer, schedule)
        machine._load(state)
        return machine

    @classmethod
    def blank(
        cls, pieces: Sequence[Piece], optimizer: OptimizerConfig,
        schedule: ScheduleConfig | None = None,
    ) -> ShardStateMachine:
        """A shard of zeros at version 0: what a replica starts from before the first log
        entry (the job's initial parameters, a RestoreCommand) is applied. Its factory is
        small, so Ray can restart a replica without the driver's copy of the parameters."""
        zeros = {p.key: np.zeros(p.shape, np.float32) for p in pieces}
        return cls(pieces, zeros, optimizer, schedule)

    def _dtype(self, key: str) -> np.dtype[Any]:
        """How the tensor ``key`` is held: float32, or a buffer's own dtype."""
        return self._buffers.get(key, np.dtype(np.float32))

    def _check_params(self, params: Mapping[str, npt.NDArray[Any]]) -> None:
        if set(params) != set(self._pieces):
            raise UnknownLayerError(
                f"params have keys {sorted(params)} but the shard holds {sorted(self._pieces)}"
            )
        for key, value in params.items():
            if tuple(np.shape(value)) != self._pieces[key].shape:
                raise GradientShapeError(
                    f"layer {key!r} has shape {np.shape(value)}, the plan says "
                    f"{self._pieces[key].shape}"
                )

    def _load(self, state: ShardState) -> None:
        """Replace the state with copies of ``state``. Every layer is validated before any
        changes (shapes, and optimizer state that fits this shard's optimizer): a bad state
        raises UnknownLayerError, GradientShapeError or OptimizerStateError changing
        nothing. Drops a pending preview. Takes the write locks."""
        self._check_params(state.params)
        extra = sorted(set(state.optimizer_state) - set(self._trained))
        if extra:
            raise UnknownLayerError(f"optimizer state names layers {extra} that this shard "
                                    "does not optimize (not on it, or buffers)")
        keys = sorted(self._pieces)
        given = {k: state.optimizer_state[k] if k in state.optimizer_state
                 else new_state(self.optimizer) for k in self._trained}
        for key in self._trained:
            check_fits(key, self._pieces[key].shape, given[key], self.optimizer)
        params = {k: np.array(state.params[k], self._dtype(k), copy=True) for k in keys}
        opt = {k: {n: np.array(a, copy=True) for n, a in given[k].items()}
               for k in self._trained}
        with self._mutation():
            self._pending = None
            self._set(ShardState(
                state.version, params, opt,
                {k: state.layer_versions.get(k, state.version) for k in params},
                dict(state.async_steps), dict(state.async_early)))

    @contextmanager
    def _mutation(self) -> Iterator[None]:
        """Hold the gate's and every layer's write lock (one deadline): the state may change
        inside. Raises LockTimeoutError, holding nothing, when they are not had in time."""
        deadline = time.monotonic() + self.write_timeout_s
        with (self._gate.write(self.write_timeout_s),
              self._locks.write(self._pieces, remaining(deadline))):
            try:
                yield
            finally:
                self._generation += 1

    @property
    def version(self) -> int:
        """Rounds applied (the next command must be this round)."""
        return self._version

    @property
    def sequence(self) -> int:
        """The machine's seqlock number: odd while a writer holds the gate (+2 per writer,
        including one that timed out waiting for a layer lock)."""
        return self._gate.stamp

    @property
    def layer_versions(self) -> dict[str, int]:
        """Per layer: rounds that actually stepped it (skipped rounds do not count)."""
        return dict(self._layer_versions)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Each layer's shape (from the plan; never changes)."""
        return {k: p.shape for k, p in sorted(self._pieces.items())}

    @property
    def buffers(self) -> dict[str, np.dtype[Any]]:
        """The buffer pieces' keys and dtypes (from the plan; never changes)."""
        return dict(sorted(self._buffers.items()))

    @property
    def locks(self) -> LayerLocks:
        """The layer locks guarding parameter writes."""
        return self._locks

    def _copy_params(self, deadline: float | None, locked: bool) -> dict[str, F32]:
        """Copies of the layers, each validated against its layer seqlock unless ``locked``."""
        params = self._params
        if locked:
            return {k: a.copy() for k, a in params.items()}
        return {k: self._locks.read(k, a.copy, remaining(deadline)) for k, a in params.items()}

    def _copy_state(self, deadline: float | None, locked: bool) -> ShardState:
        params = self._copy_params(deadline, locked)
        opt = {k: {n: a.copy() for n, a in s.items()} for k, s in self._opt.items()}
        return ShardState(self._version, params, opt, dict(self._layer_versions),
                          dict(self._async_steps), dict(self._async_early))

    def read_params(self, copy: bool = True,
                    timeout: float | None = READ_TIMEOUT_S) -> tuple[int, dict[str, F32]]:
        """``(version, params)`` of one version, consistent across layers; any thread.

        ``copy=True``: private copies. ``copy=False``: read-only views, frozen so that they
        keep this version's values (the next step then copies each layer before updating
        it: the cost moves to the writer); waits on the gate's read lock while an apply
        runs. LockTimeoutError after ``timeout`` seconds.
        """
        if not copy:
            with self._gate.read_lock(timeout):
                for array in self._params.values():
                    array.flags.writeable = False
                return self._version, {k: frozen_view(a) for k, a in self._params.items()}
        return self._gate.read(
            lambda deadline, locked: (self._version, self._copy_params(deadline, locked)),
            timeout)

    def params(self, copy: bool = False) -> dict[str, F32]:
        """The parameters of one version: frozen read-only views (``copy=False``, see
        ``read_params``) or private copies."""
        return self.read_params(copy)[1]

    def export_state(self, timeout: float | None = READ_TIMEOUT_S) -> ShardState:
        """A deep copy of the shard at one version, as plain data (for checkpoints)."""
        return self._gate.read(self._copy_state, timeout)

    command_views = True
    """Committed commands arrive as read-only views of their log entries, never copied
    (``consensus.state_machine``): a round of a large shard is hundreds of MB; every
    array a command leaves in the state is a copy (``_step_layers``, ``_load``)."""

    def apply(self, command: bytes | memoryview) -> ApplyResult | None:
        """Apply one committed command (see ``_apply_once``). A write that times out on its
        locks changed nothing and is retried here: a Raft apply must not fail on one replica
        for a reason the others do not share (a slow local reader)."""
        while True:
            try:
                return self._apply_once(command)
            except LockTimeoutError:
                LOG.warning("a shard apply waited %.0f s for readers to release its layers; "
                            "retrying", self.write_timeout_s)

    def _apply_once(self, command: bytes | memoryview) -> ApplyResult | None:
        """Apply one committed command. A RoundCommand for an applied round is a no-op that
        returns the same ApplyResult; one past the next round raises FutureRoundError; bad
        commands raise before anything changes. Mutates params, optimizer state, versions.

        Adopts the pending preview's state instead of stepping when ``command`` is byte-equal
        to the previewed one and the state is still the one it was computed from (same bits
        either way); any apply drops the preview. Blocks while the layers step (on the pool)
        and while readers hold locks; LockTimeoutError (nothing changed) after
        ``write_timeout_s``.
        """
        with self._mutex:
            pending, self._pending = self._pending, None
            if (pending is not None and pending.base == self._generation
                    and same_bytes(pending.command, command)):
                try:
                    with self._mutation():
                        self._set(pending.state)
                except BaseException:
                    self._pending = pending  # unchanged state: the preview still holds
                    raise
                return pending.result
            return self._apply_decoded(decode_command(command))

    def _apply_decoded(self, decoded: Command) -> ApplyResult | None:
        """(writer, mutex held) Apply a decoded command."""
        if isinstance(decoded, RestoreCommand):
            self._restore(decoded.snapshot)
            return None
        if decoded.kind == "async":
            return self._apply_async(decoded)
        result = ApplyResult(decoded.round, decoded.round + 1, not decoded.nonfinite_skip)
        if decoded.round < self._version:
            return result
        if decoded.round > self._version:
            raise FutureRoundError(
                f"command for round {decoded.round} arrived but the shard is at version "
                f"{self._version}; rounds must be applied in order"
            )
        lr = None if decoded.nonfinite_skip else self._check_round(decoded, decoded.round)
        with self._mutation():
            if lr is not None:
                self._step_layers(decoded, lr)
            self._version += 1
        return result

    def preview(self, command: bytes | memoryview) -> dict[str, F32]:
        """The parameters ``apply(command)`` would leave, as frozen read-only arrays,
        computed on a copy of one version of the state; any thread, never blocks an apply.

        A leader publishes them while the command commits (the pipelined sync round). The
        resulting state is kept (one pending preview at most, replacing an older one) when
        the command stepped and no apply ran meanwhile; ``apply`` of the same bytes then
        adopts it instead of stepping again. Raises like ``apply`` for bad commands.

        A shard larger than ``LEAN_PREVIEW_BYTES`` previews lean instead: it keeps one copy
        of its parameters, not of its whole state (Adam's triples it), and the apply steps
        again (``paramserver.shard_preview``).
        """
        decoded = decode_command(command)
        if self._state_bytes > LEAN_PREVIEW_BYTES:
            return lean_preview(self, decoded, READ_TIMEOUT_S)
        return full_preview(self, decoded, command, READ_TIMEOUT_S)

    def _apply_async(self, command: RoundCommand) -> ApplyResult:
        """One contribution of one rank, identified by (rank, step): a step this shard
        applied already is a duplicate (re-proposed by a new leader) and a no-op. Any other
        step, also one that arrives after a later step of the same rank (a straggler),
        steps the parameters and becomes the next version."""
        (rank,) = command.ranks
        if taken(self._async_steps, self._async_early, rank, command.round):
            return ApplyResult(command.round, self._version, False)
        lr = None if command.nonfinite_skip else self._check_round(command, self._version)
        marks, early = record(self._async_steps, self._async_early, rank, command.round)
        with self._mutation():
            if lr is not None:
                self._step_layers(command, lr)
            self._async_steps, self._async_early = marks, early
            self._version += 1
        return ApplyResult(command.round, self._version, not command.nonfinite_skip)

    def _check_round(self, command: RoundCommand, lr_round: int) -> float:
        """Validate a stepping command against the shard; its learning rate."""
        if set(command.grads) != set(self._trained):
            raise UnknownLayerError(f"round {command.round} carries layers "
                                    f"{sorted(command.grads)}, shard holds {self._trained}")
        if set(command.buffers) != set(self._buffers):
            raise UnknownLayerError(f"round {command.round} carries buffers "
                                    f"{sorted(command.buffers)}, shard holds "
                                    f"{sorted(self._buffers)}")
        for key, grad in command.grads.items():
            if grad.shape != self._params[key].shape:
                raise GradientShapeError(f"round {command.round}: layer {key!r} gradient shape "
                                         f"{grad.shape} != {self._params[key].shape}")
        for key, value in command.buffers.items():
            if value.shape != self._params[key].shape or value.dtype != self._buffers[key]:
                raise GradientShapeError(
                    f"round {command.round}: buffer {key!r} is {value.dtype} {value.shape}, "
                    f"the shard holds {self._buffers[key]} {self._params[key].shape}")
        if command.samples < 1:
            raise CommandDecodeError(f"round {command.round} has samples={command.samples}")
        return learning_rate(self.optimizer.lr, self.schedule, lr_round)

    def _step_layers(self, command: RoundCommand, lr: float) -> None:
        """(inside _mutation) Step every parameter layer with its mean gradient
        (``layer_step.step_layers``) and replace every buffer with the command's (a copy).
        Inputs are validated before; an error here (a bug, MemoryError) may leave some layers
        stepped in place, and the shard must then be restored from a snapshot."""
        stepped, opt = step_layers(self._params, self._opt, self._trained, command.grads,
                                   command.samples, lr, self.optimizer,
                                   keep_state=self._keep_stepped_state)
        self._params = {k: stepped[k] if k in stepped
                        else np.array(command.buffers[k], self._buffers[k], copy=True)
                        for k in self._params}
        self._opt = opt
        self._layer_versions = {k: v + 1 for k, v in self._layer_versions.items()}

    def snapshot(self, timeout: float | None = READ_TIMEOUT_S) -> Frame:
        """Deterministic bytes of the whole state at one version (equal on replicas that
        applied the same log); any thread."""
        return self._gate.read(lambda _d, _l: encode_frame(*self._snapshot_frame()), timeout)

    def snapshot_parts(self) -> list[Any]:
        """The buffers whose concatenation is ``snapshot()``, without joining them (a large
        shard's image is hundreds of MB). They alias the live state: the host consumes them
        before the next apply (the replica does, between applies)."""
        return frame_parts(*self._snapshot_frame())

    def _snapshot_frame(self) -> tuple[dict[str, Any], dict[str, npt.NDArray[Any]]]:
        """The header and arrays ``snapshot`` encodes (the arrays alias the live state)."""
        return image_frame(self._version, self._params, self._opt, self._layer_versions,
                           self._async_steps, self._async_early)

    def restore(self, data: bytes) -> None:
        """Replace the whole state with bytes from ``snapshot``; raises (changing nothing) if
        they do not fit this shard's pieces. Drops a pending preview. Writer: blocks like
        ``apply``."""
        with self._mutex:
            self._pending = None
            self._restore(data)

    def _restore(self, data: bytes | memoryview) -> None:
        self._load(read_image(data, self._dtype))

    def digest(self, timeout: float | None = READ_TIMEOUT_S) -> str:
        """SHA-256 (hex) of ``snapshot()``: params, optimizer state and versions, at one
        version; any thread. Hashes the frame's buffers one by one, without materialising
        the snapshot bytes."""
        return self._gate.read(lambda _d, _l: image_digest(*self._snapshot_frame()), timeout)

    def params_digest(self, timeout: float | None = READ_TIMEOUT_S) -> str:
        """SHA-256 (hex) of the tensor bytes alone (parameters and buffers, no optimizer
        state), in key order, at one version."""
        return self._gate.read(lambda _d, _l: tensors_digest(self._params), timeout)

    def query(self, query: Any) -> Any:
        """Read-only queries: "version", "layer_versions", "digest", "params" (copies of one
        version), or ("param", key) for one layer's copy (consistent within the layer)."""
        if query == "version":
            return self._version
        if query == "layer_versions":
            return self.layer_versions
        if query == "digest":
            return self.digest()
        if query == "params":
            return self.params(copy=True)
        if isinstance(query, tuple) and len(query) == 2 and query[0] == "param":
            key = query[1]
            if key not in self._pieces:
                raise UnknownLayerError(f"layer {key!r} is not on this shard")
            return self._locks.read(key, lambda: self._params[key].copy(), READ_TIMEOUT_S)
        raise UnknownQueryError(f"unknown query {query!r}; use version, layer_versions, "
                                "digest, params or ('param', key)")
