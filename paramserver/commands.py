"""The Raft commands of a shard group and their byte codec (no pickle).

Wire format: ``b"RPS1"``, a 4-byte little-endian header length, a JSON header (sorted keys,
no whitespace) and the raw little-endian buffers of the arrays it lists, in the listed order.
Encoding is a pure function of the value, so equal commands give equal bytes on every replica.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from consensus.buffers import gather
from consensus.types import Payload
from paramserver.errors import CommandDecodeError

MAGIC = b"RPS1"
_DTYPES: dict[str, np.dtype[Any]] = {"f32": np.dtype("<f4"), "i64": np.dtype("<i8")}
_NAMES: dict[np.dtype[Any], str] = {np.dtype("<f4"): "f32", np.dtype("<i8"): "i64"}
CommandKind = Literal["sync", "async"]


_ALIGN = 8  # the header is space-padded so the first array starts 8-byte aligned

GATHER_BYTES = 1 << 20
"""Frames at least this large are assembled by numpy (``consensus.buffers.gather``), which
copies with the GIL released: ``bytes.join`` of a large model's round (hundreds of MB) holds
the GIL for the whole copy, and the replica's ticks and heartbeats wait behind it."""

Frame = Payload
"""An encoded frame, proposed as a Raft entry's payload as it is: ``bytes`` when small, a
buffer of its own (a memoryview) when large."""


def frame_parts(header: Mapping[str, Any], arrays: Mapping[str, npt.NDArray[Any]]) -> list[Any]:
    """The buffers whose concatenation is :func:`encode_frame`'s result, without joining them.

    Array buffers are zero-copy views of C-contiguous little-endian inputs (a converted copy
    otherwise), so callers that only hash or write the frame never materialise it. The views
    alias ``arrays``: consume the parts before mutating them.
    """
    names = sorted(arrays)
    specs: list[tuple[str, str, list[int]]] = []
    body: list[Any] = []
    for name in names:
        array = arrays[name]
        dtype = np.dtype(array.dtype).newbyteorder("<")
        if dtype not in _NAMES:
            raise ValueError(f"array {name!r} has dtype {dtype}; only float32 and int64 encode")
        specs.append((name, _NAMES[dtype], list(array.shape)))
        body.append(np.ascontiguousarray(array, dtype).reshape(-1).data.cast("B"))
    head = json.dumps({"h": dict(header), "a": specs}, sort_keys=True, separators=(",", ":"))
    raw = head.encode()
    raw += b" " * (-(len(MAGIC) + 4 + len(raw)) % _ALIGN)  # JSON allows trailing whitespace
    return [MAGIC, struct.pack("<I", len(raw)), raw, *body]


def encode_frame(header: Mapping[str, Any], arrays: Mapping[str, npt.NDArray[Any]]) -> Frame:
    """Encode a JSON-able header and named float32/int64 arrays (sorted by name).

    One copy of the array data, straight from the arrays' memory: joined into ``bytes`` below
    :data:`GATHER_BYTES`, gathered into a new buffer without the GIL at or above it.
    """
    parts = frame_parts(header, arrays)
    if sum(len(p) for p in parts) < GATHER_BYTES:  # the parts are byte-format buffers
        return b"".join(parts)
    return gather(parts)


def decode_frame(data: bytes | memoryview) -> tuple[dict[str, Any], dict[str, npt.NDArray[Any]]]:
    """Inverse of :func:`encode_frame`; CommandDecodeError on any malformed input.

    The arrays are read-only views into ``data`` (no copy on little-endian hosts); they keep
    ``data`` alive. Callers that need to mutate or keep them past a mutable buffer copy them.
    """
    view = memoryview(data).cast("B")
    if len(view) < 8 or bytes(view[:4]) != MAGIC:
        raise CommandDecodeError("bytes do not start with the RPS1 command magic")
    (size,) = struct.unpack("<I", view[4:8])
    try:
        meta = json.loads(bytes(view[8 : 8 + size]))
        header, specs = meta["h"], meta["a"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CommandDecodeError(f"command header is malformed: {exc}") from exc
    arrays: dict[str, npt.NDArray[Any]] = {}
    offset = 8 + size
    for name, dname, shape in specs:
        dtype = _DTYPES.get(dname)
        if dtype is None:
            raise CommandDecodeError(f"array {name!r} has unknown dtype tag {dname!r}")
        nbytes = dtype.itemsize * math.prod(shape)
        if offset + nbytes > len(view):
            raise CommandDecodeError(f"array {name!r} is truncated")
        flat = np.frombuffer(view[offset : offset + nbytes], dtype=dtype)
        if not dtype.isnative:
            flat = flat.astype(dtype.newbyteorder("="))
        flat.flags.writeable = False
        arrays[name] = flat.reshape(shape)
        offset += nbytes
    if offset != len(view):
        raise CommandDecodeError(f"{len(view) - offset} trailing bytes after the last array")
    return header, arrays


@dataclass(frozen=True, slots=True)
class RoundCommand:
    """One completed aggregation round, replicated through Raft and applied by every replica.

    ``grads`` holds the SUM over the contributions of ``ranks`` (``samples`` samples in all);
    the state machine steps with ``sum / samples``. ``buffers`` holds the shard's new module
    buffers (float32 or int64; those of the lowest rank's contribution), which replace the
    old ones. ``nonfinite_skip`` marks a round committed as a no-op step (it only advances
    the version); its ``grads`` and ``buffers`` are empty.

    Frame: the arrays are ``grads`` and ``buffers`` by piece key; the header lists the
    buffer keys under ``"buffers"``, present only when there are some (so a command of a
    shard without buffers has the bytes it always had).
    """

    round: int
    kind: CommandKind
    samples: int
    ranks: tuple[int, ...]
    grads: dict[str, npt.NDArray[np.float32]] = field(default_factory=dict)
    nonfinite_skip: bool = False
    buffers: dict[str, npt.NDArray[Any]] = field(default_factory=dict)

    def encode(self) -> Frame:
        """Deterministic bytes for the Raft log. ValueError when a key is both a gradient
        and a buffer."""
        header: dict[str, Any] = {"type": "round", "round": self.round, "kind": self.kind,
                                  "samples": self.samples, "ranks": list(self.ranks),
                                  "nonfinite_skip": self.nonfinite_skip}
        if not self.buffers:
            return encode_frame(header, self.grads)
        both = sorted(set(self.grads) & set(self.buffers))
        if both:
            raise ValueError(f"keys {both[:3]} are both gradients and buffers")
        header["buffers"] = sorted(self.buffers)
        return encode_frame(header, {**self.grads, **self.buffers})


@dataclass(frozen=True, slots=True)
class RestoreCommand:
    """Replace the shard's whole state with ``snapshot`` (e.g. loading a checkpoint via Raft)."""

    snapshot: bytes | memoryview

    def encode(self) -> Frame:
        """Deterministic bytes for the Raft log."""
        blob = np.frombuffer(self.snapshot, dtype=np.uint8)
        padded = np.zeros(math.ceil(len(blob) / 8) * 8, np.uint8)
        padded[: len(blob)] = blob
        return encode_frame({"type": "restore", "size": len(blob)},
                            {"snapshot": padded.view("<i8")})


Command = RoundCommand | RestoreCommand


def decode_command(data: bytes | memoryview) -> Command:
    """Decode bytes written by ``RoundCommand.encode`` or ``RestoreCommand.encode``."""
    header, arrays = decode_frame(data)
    try:
        if header["type"] == "round":
            names = header.get("buffers", [])
            if not isinstance(names, list) or not set(names) <= set(arrays):
                raise CommandDecodeError(f"round buffer keys {names!r} do not name its arrays")
            buffers = {k: arrays[k] for k in names}
            grads = {k: v.astype(np.float32, copy=False) for k, v in arrays.items()
                     if k not in buffers}
            if header["kind"] not in ("sync", "async"):
                raise CommandDecodeError(f"round kind {header['kind']!r} is unknown")
            return RoundCommand(
                round=int(header["round"]), kind=header["kind"], samples=int(header["samples"]),
                ranks=tuple(int(r) for r in header["ranks"]), grads=grads,
                nonfinite_skip=bool(header["nonfinite_skip"]), buffers=buffers,
            )
        if header["type"] == "restore":
            return RestoreCommand(arrays["snapshot"].tobytes()[: int(header["size"])])
    except (KeyError, TypeError, ValueError) as exc:
        raise CommandDecodeError(f"command fields are malformed: {exc}") from exc
    raise CommandDecodeError(f"command type {header.get('type')!r} is unknown")
