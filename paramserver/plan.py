"""The shard plan: which tensor (or row slice of a large tensor) lives on which shard.

A plan is plain, deterministic data: the same shapes, shard count and ``split_bytes`` always
give the same plan, so every process can rebuild it (or load it from JSON) and agree.
:func:`auto_shards` picks a shard count from the model's size and the cluster's CPUs.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from paramserver.errors import PlanError

F32 = npt.NDArray[np.float32]
FLOAT32_BYTES = 4
BUFFER_DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype(np.float32),
                                           "int64": np.dtype(np.int64)}
"""How tensors are held: parameters as float32, buffers as float32 or int64."""
AUTO_SHARD_BYTES = 256 << 20
"""``auto_shards`` aims at about one shard per this much shard state (parameters plus
optimizer state)."""


@dataclass(frozen=True, slots=True)
class Piece:
    """A whole tensor (``key == tensor``) or its rows ``start:stop`` (key ``tensor#start:stop``).

    ``shape`` is the piece's own shape. A 0-d tensor is one piece with ``start=0, stop=1``.
    """

    key: str
    tensor: str
    start: int
    stop: int
    shape: tuple[int, ...]
    buffer: bool = False
    """A module buffer (BatchNorm's running statistics, ...): replaced each round by the
    round's forward, never optimized; always a whole tensor."""
    dtype: str = "float32"
    """The array dtype: float32 for a parameter, float32 or int64 for a buffer."""

    @property
    def nbytes(self) -> int:
        """Size in bytes (float32: 4 per element, int64: 8)."""
        return BUFFER_DTYPES[self.dtype].itemsize * math.prod(self.shape)

    @property
    def whole(self) -> bool:
        """True when the piece is an entire tensor."""
        return self.key == self.tensor

    def cut(self, full: npt.NDArray[np.generic]) -> npt.NDArray[Any]:
        """This piece's part of the full tensor, as a contiguous copy of its ``dtype``."""
        part = full if self.whole else full[self.start : self.stop]
        return np.array(part, dtype=BUFFER_DTYPES[self.dtype], order="C", copy=True)


def _rows(shape: tuple[int, ...]) -> int:
    return shape[0] if shape else 1


def _pieces_of(name: str, shape: tuple[int, ...], split_bytes: int) -> list[Piece]:
    """One piece, or near-equal row slices of at most ``split_bytes`` each (if rows allow)."""
    nbytes = FLOAT32_BYTES * math.prod(shape)
    if nbytes <= split_bytes or len(shape) == 0 or shape[0] < 2:
        return [Piece(name, name, 0, _rows(shape), shape)]
    row_bytes = FLOAT32_BYTES * math.prod(shape[1:])
    rows_per = max(1, split_bytes // max(row_bytes, 1))
    count = min(shape[0], math.ceil(shape[0] / rows_per))
    bounds = [i * shape[0] // count for i in range(count + 1)]
    return [
        Piece(f"{name}#{a}:{b}", name, a, b, (b - a, *shape[1:]))
        for a, b in itertools.pairwise(bounds)
    ]


def count_pieces(shapes: Mapping[str, tuple[int, ...]], split_bytes: int) -> int:
    """How many pieces ``ShardPlan.build`` cuts ``shapes`` into: the most shards that can all
    hold something."""
    if split_bytes < FLOAT32_BYTES:
        raise PlanError(f"split_bytes={split_bytes} must be >= {FLOAT32_BYTES}")
    return sum(len(_pieces_of(name, tuple(shape), split_bytes)) for name, shape in shapes.items())


def auto_shards(param_bytes: int, optimizer_state_factor: float, cpus: int, replicas: int, *,
                pieces: int | None = None, shard_bytes: int = AUTO_SHARD_BYTES) -> int:
    """The shard count for ``shards="auto"``, a pure function of its arguments.

    About one shard per ``shard_bytes`` of shard state (``param_bytes`` times
    ``optimizer_state_factor``: 1 for SGD, 2 with a momentum buffer, 3 for Adam's two
    moments), rounded up; at least 1; at most ``max(1, cpus // replicas)``, so every replica
    of every shard can have a CPU of its own; and at most ``pieces`` (see
    :func:`count_pieces`) when given, so no shard is empty.
    """
    if param_bytes < 0:
        raise PlanError(f"param_bytes={param_bytes} must be >= 0")
    if not optimizer_state_factor >= 1:
        raise PlanError(f"optimizer_state_factor={optimizer_state_factor} must be >= 1 "
                        "(the parameters themselves)")
    if cpus < 0 or replicas < 1:
        raise PlanError(f"need cpus >= 0 and replicas >= 1, got cpus={cpus}, "
                        f"replicas={replicas}")
    if shard_bytes < 1:
        raise PlanError(f"shard_bytes={shard_bytes} must be >= 1")
    wanted = math.ceil(param_bytes * optimizer_state_factor / shard_bytes)
    count = min(wanted, max(1, cpus // replicas))
    if pieces is not None:
        count = min(count, pieces)
    return max(1, count)


class ShardPlan:
    """An assignment of pieces to ``shards`` shards. Immutable after construction."""

    def __init__(
        self, shapes: Mapping[str, tuple[int, ...]], assignment: Sequence[Sequence[Piece]]
    ) -> None:
        """Build from explicit data; checks that the pieces tile every tensor exactly once."""
        self._shapes = {name: tuple(int(d) for d in shape) for name, shape in shapes.items()}
        self._shards = [sorted(group, key=lambda p: p.key) for group in assignment]
        if not self._shards:
            raise PlanError("a plan needs at least one shard; pass shards >= 1")
        self._check_tiling()

    def _check_tiling(self) -> None:
        covered: dict[str, list[tuple[int, int]]] = {name: [] for name in self._shapes}
        for piece in (p for group in self._shards for p in group):
            if piece.tensor not in covered:
                raise PlanError(f"piece {piece.key!r} names unknown tensor {piece.tensor!r}")
            covered[piece.tensor].append((piece.start, piece.stop))
        for name, spans in covered.items():
            spans.sort()
            ends = [0] + [b for _, b in spans]
            if [a for a, _ in spans] != ends[:-1] or ends[-1] != _rows(self._shapes[name]):
                raise PlanError(f"pieces of {name!r} do not tile its rows exactly: {spans}")

    @classmethod
    def build(
        cls, shapes: Mapping[str, tuple[int, ...]], shards: int, *, split_bytes: int = 4 << 20,
        buffers: Mapping[str, str] | None = None,
    ) -> ShardPlan:
        """Greedy bytes-balancing plan: largest piece first onto the lightest shard.

        Tensors above ``split_bytes`` (as float32) are cut into row slices. Ties break by key
        and shard index, so the plan is a pure function of the arguments. Shards may be empty.
        ``buffers`` maps the tensors of ``shapes`` that are module buffers to their dtype
        (``"float32"`` or ``"int64"``, see :func:`buffer_dtypes`): each is one whole piece,
        placed after every parameter piece (so the parameters' placement is that of the
        same model without buffers). PlanError for a buffer ``shapes`` lacks or a bad dtype.
        """
        if shards < 1:
            raise PlanError(f"shards={shards} must be >= 1")
        if split_bytes < FLOAT32_BYTES:
            raise PlanError(f"split_bytes={split_bytes} must be >= {FLOAT32_BYTES}")
        if not shapes:
            raise PlanError("the model has no tensors; pass at least one shape")
        buffers = dict(buffers or {})
        unknown = sorted(set(buffers) - set(shapes))
        if unknown:
            raise PlanError(f"buffers {unknown[:3]} are not among the model's tensors")
        for name, dtype in sorted(buffers.items()):
            if dtype not in BUFFER_DTYPES:
                raise PlanError(f"buffer {name!r} has dtype {dtype!r}; use one of "
                                f"{sorted(BUFFER_DTYPES)}")
        pieces = [
            piece
            for name in sorted(set(shapes) - set(buffers))
            for piece in _pieces_of(name, tuple(shapes[name]), split_bytes)
        ]
        pieces.sort(key=lambda p: (-p.nbytes, p.key))
        kept = [Piece(name, name, 0, _rows(tuple(shapes[name])), tuple(shapes[name]), True,
                      buffers[name]) for name in sorted(buffers)]
        kept.sort(key=lambda p: (-p.nbytes, p.key))
        loads = [0] * shards
        groups: list[list[Piece]] = [[] for _ in range(shards)]
        for piece in [*pieces, *kept]:
            target = min(range(shards), key=lambda s: (loads[s], s))
            groups[target].append(piece)
            loads[target] += piece.nbytes
        return cls(shapes, groups)

    @property
    def shards(self) -> int:
        """Number of shards (some may be empty)."""
        return len(self._shards)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Full tensor shapes by name (a copy)."""
        return dict(self._shapes)

    @property
    def nbytes(self) -> int:
        """Bytes of every piece of every shard: one copy of the model's tensors."""
        return sum(p.nbytes for group in self._shards for p in group)

    @property
    def buffers(self) -> dict[str, str]:
        """The tensors that are module buffers, with their dtype (empty for most models)."""
        return {p.tensor: p.dtype for group in self._shards for p in group if p.buffer}

    def pieces(self, shard: int) -> list[Piece]:
        """The pieces of ``shard``, sorted by key."""
        if not 0 <= shard < self.shards:
            raise PlanError(f"shard={shard} is outside 0..{self.shards - 1}")
        return list(self._shards[shard])

    def layout(self) -> list[list[tuple[str, str, int, int]]]:
        """Per shard: (key, tensor, start, stop), plain data for processes without paramserver."""
        return [[(p.key, p.tensor, p.start, p.stop) for p in group] for group in self._shards]

    def split(self, full: Mapping[str, npt.NDArray[np.generic]]
              ) -> list[dict[str, npt.NDArray[Any]]]:
        """Cut full tensors into per-shard pieces (float32; a buffer in its own dtype).
        Raises PlanError on a mismatch."""
        if set(full) != set(self._shapes):
            missing = sorted(set(self._shapes) - set(full))
            extra = sorted(set(full) - set(self._shapes))
            raise PlanError(f"tensors do not match the plan: missing {missing}, extra {extra}")
        for name, array in full.items():
            if tuple(np.shape(array)) != self._shapes[name]:
                raise PlanError(
                    f"tensor {name!r} has shape {np.shape(array)}, plan expects "
                    f"{self._shapes[name]}; rebuild the plan for this model"
                )
        return [{p.key: p.cut(np.asarray(full[p.tensor])) for p in g} for g in self._shards]

    def join(self, parts: Sequence[Mapping[str, npt.NDArray[np.generic]]]
             ) -> dict[str, npt.NDArray[Any]]:
        """Reassemble full tensors from per-shard pieces (inverse of :meth:`split`): float32,
        and a buffer in its own dtype."""
        if len(parts) != self.shards:
            raise PlanError(f"got {len(parts)} shard parts, the plan has {self.shards}")
        dtypes = self.buffers
        out = {name: np.empty(shape, BUFFER_DTYPES[dtypes.get(name, "float32")])
               for name, shape in self._shapes.items()}
        for group, part in zip(self._shards, parts, strict=True):
            for piece in group:
                if piece.key not in part:
                    raise PlanError(f"piece {piece.key!r} is missing from its shard's part")
                value = np.asarray(part[piece.key], BUFFER_DTYPES[piece.dtype])
                if value.shape != piece.shape:
                    raise PlanError(f"piece {piece.key!r} has shape {value.shape}, "
                                    f"expected {piece.shape}")
                if piece.whole:
                    out[piece.tensor][...] = value
                else:
                    out[piece.tensor][piece.start : piece.stop] = value
        return out

    def table(self) -> str:
        """A printable table: shard, its pieces, and megabytes per piece and per shard."""
        lines = []
        for s, group in enumerate(self._shards):
            total = sum(p.nbytes for p in group) / 1e6
            lines.append(f"shard {s}: {len(group)} pieces, {total:.3f} MB")
            lines.extend(f"    {p.key:<40} {p.nbytes / 1e6:10.3f} MB" for p in group)
        return "\n".join(lines)

    def to_json(self) -> str:
        """Plain JSON (tensor shapes and explicit assignment) that :meth:`from_json` reloads.
        A piece is ``[key, tensor, start, stop, shape]``, a buffer's with ``"buffer", dtype``
        appended."""
        data = {
            "shapes": {name: list(shape) for name, shape in sorted(self._shapes.items())},
            "shards": [[[p.key, p.tensor, p.start, p.stop, list(p.shape),
                         *(["buffer", p.dtype] if p.buffer else [])] for p in group]
                       for group in self._shards],
        }
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ShardPlan:
        """Reload a plan written by :meth:`to_json`; PlanError if it is malformed."""
        try:
            data = json.loads(text)
            shapes = {name: tuple(shape) for name, shape in data["shapes"].items()}
            groups = [[_piece_from_json(entry) for entry in group] for group in data["shards"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise PlanError(f"plan JSON is malformed ({exc}); rewrite it with to_json()") from exc
        return cls(shapes, groups)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ShardPlan):
            return NotImplemented
        return self._shapes == other._shapes and self._shards == other._shards

    def __hash__(self) -> int:
        return hash(self.to_json())


def _piece_from_json(entry: Sequence[Any]) -> Piece:
    """A piece from its ``to_json`` list; ValueError when it is not one."""
    if len(entry) == 5:
        key, tensor, start, stop, shape = entry
        return Piece(key, tensor, int(start), int(stop), tuple(shape))
    key, tensor, start, stop, shape, kind, dtype = entry
    if kind != "buffer" or dtype not in BUFFER_DTYPES:
        raise ValueError(f"piece {key!r} has kind {kind!r} and dtype {dtype!r}")
    return Piece(key, tensor, int(start), int(stop), tuple(shape), True, dtype)


def buffer_dtypes(tensors: Mapping[str, npt.NDArray[Any]], names: Iterable[str]
                  ) -> dict[str, str]:
    """``names`` (buffers among ``tensors``) mapped to the dtype ``ShardPlan.build`` keeps
    them in: ``"float32"`` for a floating-point array, ``"int64"`` for an integer or
    boolean one. PlanError for a name ``tensors`` lacks or another dtype."""
    out: dict[str, str] = {}
    for name in sorted(names):
        if name not in tensors:
            raise PlanError(f"buffer {name!r} is not among the model's tensors")
        kind = np.asarray(tensors[name]).dtype.kind
        if kind not in "fiub":
            raise PlanError(f"buffer {name!r} has dtype {np.asarray(tensors[name]).dtype}; "
                            "buffers must be floating-point, integer or boolean")
        out[name] = "float32" if kind == "f" else "int64"
    return out
