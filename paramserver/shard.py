"""The shard state machine: one shard's parameters and optimizer state, driven by Raft.

Implements ``consensus.StateMachine``. ``apply`` depends only on the state and the command
bytes (the learning rate is a pure function of the round), so replicas that applied the same
log are byte-identical: ``snapshot()`` returns equal bytes, ``digest()`` equal hashes.
Version ``v`` means rounds ``0..v-1`` are applied; the next command must be round ``v``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from paramserver.commands import (
    RestoreCommand,
    RoundCommand,
    decode_command,
    decode_frame,
    encode_frame,
    frame_parts,
)
from paramserver.errors import (
    CommandDecodeError,
    FutureRoundError,
    GradientShapeError,
    UnknownLayerError,
    UnknownQueryError,
)
from paramserver.locks import LayerLocks
from paramserver.optim import OptimizerConfig, new_state, optimizer_step
from paramserver.plan import Piece
from paramserver.schedule import ScheduleConfig, learning_rate

F32 = npt.NDArray[np.float32]
WRITE_TIMEOUT_S = 30.0


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
    params: dict[str, F32]
    optimizer_state: dict[str, dict[str, npt.NDArray[Any]]]
    layer_versions: dict[str, int] = field(default_factory=dict)
    async_steps: dict[int, int] = field(default_factory=dict)
    """``async`` mode: per rank, the last contribution step applied (for exactly-once)."""


class ShardStateMachine:
    """Parameters of ``pieces`` plus optimizer state; applies RoundCommands exactly once.

    Writes take the layer locks (sorted order), so readers on other threads can copy layers
    with ``params(copy=True)`` while a round applies. ``apply``/``snapshot``/``restore`` are
    called by one thread (the Raft apply loop).
    """

    def __init__(
        self, pieces: Sequence[Piece], params: Mapping[str, npt.NDArray[Any]],
        optimizer: OptimizerConfig, schedule: ScheduleConfig | None = None,
    ) -> None:
        self._pieces = {p.key: p for p in pieces}
        self.optimizer = optimizer
        self.schedule = schedule or ScheduleConfig()
        self._check_params(params)
        self._params = {k: np.array(params[k], np.float32, copy=True) for k in sorted(params)}
        self._opt: dict[str, dict[str, npt.NDArray[Any]]] = {
            k: new_state(optimizer) for k in self._params}
        self._version = 0
        self._async_steps: dict[int, int] = {}
        self._layer_versions = dict.fromkeys(self._params, 0)
        self._locks = LayerLocks(self._params)

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
        self._check_params(state.params)
        extra = sorted(set(state.optimizer_state) - set(self._pieces))
        if extra:
            raise UnknownLayerError(f"optimizer state names layers {extra} not on this shard")
        params = {k: np.array(state.params[k], np.float32, copy=True) for k in sorted(self._pieces)}
        opt = {k: {n: np.array(a, copy=True) for n, a in state.optimizer_state.get(
            k, new_state(self.optimizer)).items()} for k in params}
        with self._locks.write(params, WRITE_TIMEOUT_S):
            self._params, self._opt = params, opt
            self._version = state.version
            self._async_steps = dict(state.async_steps)
            self._layer_versions = {k: state.layer_versions.get(k, state.version) for k in params}

    @property
    def version(self) -> int:
        """Rounds applied (the next command must be this round)."""
        return self._version

    @property
    def layer_versions(self) -> dict[str, int]:
        """Per layer: rounds that actually stepped it (skipped rounds do not count)."""
        return dict(self._layer_versions)

    @property
    def locks(self) -> LayerLocks:
        """The layer locks guarding parameter writes."""
        return self._locks

    def params(self, copy: bool = False) -> dict[str, F32]:
        """The shard's parameters: read-only views (``copy=False``) or consistent copies."""
        if copy:
            return {k: self._locks.read(k, a.copy) for k, a in self._params.items()}
        views = {}
        for key, array in self._params.items():
            view = array.view()
            view.flags.writeable = False
            views[key] = view
        return views

    def export_state(self) -> ShardState:
        """A deep copy of the shard as plain data (for checkpoints)."""
        return ShardState(
            version=self._version, params=self.params(copy=True),
            optimizer_state={k: {n: a.copy() for n, a in s.items()} for k, s in self._opt.items()},
            layer_versions=dict(self._layer_versions), async_steps=dict(self._async_steps),
        )

    def apply(self, command: bytes) -> ApplyResult | None:
        """Apply one committed command. A RoundCommand for an applied round is a no-op that
        returns the same ApplyResult; one past the next round raises FutureRoundError; bad
        commands raise before anything changes. Mutates params, optimizer state, versions."""
        decoded = decode_command(command)
        if isinstance(decoded, RestoreCommand):
            self.restore(decoded.snapshot)
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
        if not decoded.nonfinite_skip:
            self._step(decoded)
        self._version += 1
        return result

    def preview(self, command: bytes) -> dict[str, F32]:
        """The parameters ``apply(command)`` would leave, computed on a copy of the state;
        changes nothing here. A leader publishes them while the command commits (the
        pipelined sync round); ``apply`` later computes the same bits, being deterministic."""
        clone = ShardStateMachine.__new__(ShardStateMachine)
        clone._pieces = self._pieces
        clone.optimizer, clone.schedule = self.optimizer, self.schedule
        clone._params = {k: a.copy() for k, a in self._params.items()}
        clone._opt = {k: {n: a.copy() for n, a in s.items()} for k, s in self._opt.items()}
        clone._version = self._version
        clone._async_steps = dict(self._async_steps)
        clone._layer_versions = dict(self._layer_versions)
        clone._locks = LayerLocks(clone._params)
        clone.apply(command)
        return clone._params

    def _apply_async(self, command: RoundCommand) -> ApplyResult:
        """One contribution of one rank, identified by (rank, step): a step at or below the
        rank's last applied one is a duplicate (re-proposed by a new leader) and a no-op.
        Otherwise it steps the parameters and becomes the next version."""
        (rank,) = command.ranks
        if command.round <= self._async_steps.get(rank, -1):
            return ApplyResult(command.round, self._version, False)
        if not command.nonfinite_skip:
            self._step(command, lr_round=self._version)
        self._async_steps[rank] = command.round
        self._version += 1
        return ApplyResult(command.round, self._version, not command.nonfinite_skip)

    def _step(self, command: RoundCommand, lr_round: int | None = None) -> None:
        if set(command.grads) != set(self._params):
            raise UnknownLayerError(f"round {command.round} carries layers "
                                    f"{sorted(command.grads)}, shard holds {sorted(self._params)}")
        for key, grad in command.grads.items():
            if grad.shape != self._params[key].shape:
                raise GradientShapeError(f"round {command.round}: layer {key!r} gradient shape "
                                         f"{grad.shape} != {self._params[key].shape}")
        if command.samples < 1:
            raise CommandDecodeError(f"round {command.round} has samples={command.samples}")
        at = command.round if lr_round is None else lr_round
        lr = learning_rate(self.optimizer.lr, self.schedule, at)
        scale = np.float32(command.samples)
        with self._locks.write(self._params, WRITE_TIMEOUT_S):
            for key in sorted(self._params):
                mean = command.grads[key] / scale
                optimizer_step(self._params[key], mean, self._opt[key], lr, self.optimizer)
                self._layer_versions[key] += 1

    def snapshot(self) -> bytes:
        """Deterministic bytes of the whole state (equal on replicas that applied the same log)."""
        return encode_frame(*self._snapshot_frame())

    def _snapshot_frame(self) -> tuple[dict[str, Any], dict[str, npt.NDArray[Any]]]:
        """The header and arrays ``snapshot`` encodes (the arrays alias the live state)."""
        arrays: dict[str, npt.NDArray[Any]] = {}
        for key in sorted(self._params):
            arrays[f"p/{key}"] = self._params[key]
            for name, value in self._opt[key].items():
                arrays[f"o/{key}/{name}"] = value
        header = {"version": self._version, "layer_versions": self._layer_versions,
                  "async_steps": {str(k): v for k, v in sorted(self._async_steps.items())}}
        return header, arrays

    def restore(self, data: bytes) -> None:
        """Replace the whole state with bytes from ``snapshot``; raises (changing nothing) if
        they do not fit this shard's pieces."""
        header, arrays = decode_frame(data)
        params: dict[str, F32] = {}
        opt: dict[str, dict[str, npt.NDArray[Any]]] = {}
        for name, value in arrays.items():
            kind, _, rest = name.partition("/")
            if kind == "p":
                params[rest] = value.astype(np.float32)
            else:
                key, _, field_name = rest.rpartition("/")
                opt.setdefault(key, {})[field_name] = value
        steps = {int(k): int(v) for k, v in header.get("async_steps", {}).items()}
        self._load(ShardState(int(header["version"]), params, opt,
                              {k: int(v) for k, v in header["layer_versions"].items()}, steps))

    def digest(self) -> str:
        """SHA-256 (hex) of ``snapshot()``: params, optimizer state and versions.

        Hashes the frame's buffers one by one, without materialising the snapshot bytes.
        """
        h = hashlib.sha256()
        for part in frame_parts(*self._snapshot_frame()):
            h.update(part)
        return h.hexdigest()

    def params_digest(self) -> str:
        """SHA-256 (hex) of the parameter bytes alone, in key order."""
        h = hashlib.sha256()
        for key in sorted(self._params):
            h.update(key.encode() + b"\0")
            h.update(np.ascontiguousarray(self._params[key]).reshape(-1).data.cast("B"))
        return h.hexdigest()

    def query(self, query: Any) -> Any:
        """Read-only queries: "version", "layer_versions", "digest", "params" (copies), or
        ("param", key) for one layer's copy."""
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
            if key not in self._params:
                raise UnknownLayerError(f"layer {key!r} is not on this shard")
            return self._locks.read(key, self._params[key].copy)
        raise UnknownQueryError(f"unknown query {query!r}; use version, layer_versions, "
                                "digest, params or ('param', key)")
