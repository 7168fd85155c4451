"""Exactly-once client commands: the envelope codec and the replicated session table.

A client tags each command with ``(client_id, seq)`` and, with it, ``ack``: every seq below
``ack`` has been answered to the client, so replicas may forget those results (Raft thesis
§6.3). One log entry holds a *batch* of envelopes (so a single entry can carry many small
commands). On apply, :class:`SessionTable` runs a command at most once per ``(client_id,
seq)`` and returns the cached result to a retry. The table is part of the replicated state:
it is serialized into the snapshot next to the user state machine's image, so dedup holds on
every replica, across leader changes, restarts and snapshot installs.

Encoding (all big-endian, no pickle for commands):
  batch    := MAGIC u32:count envelope*
  envelope := u16:len(client_id) u64:seq u64:ack u32:len(command) client_id command
  run      := RUN_MAGIC u16:len(client_id) u64:first_seq u64:ack u32:count client_id
              u32:len(command)*count command*
A *run* is the compact form of a batch from one client with consecutive seqs (what
``RaftGroup`` sends): one header, so decoding and dedup cost no per-command objects.
Results are pickled with the stdlib (they come from our own state machine) and cached as bytes.
A ``seq`` of 0 means "no dedup" (used by replica-local service proposals).
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from consensus.errors import ConsensusError
from consensus.types import Payload

_MAGIC = b"RPB1"
_RUN_MAGIC = b"RPR1"
_RUN = struct.Struct(">HQQI")  # len(client_id), first seq, ack, count
_ENVELOPE = struct.Struct(">HQQI")
_COUNT = struct.Struct(">I")
_SNAP_MAGIC = b"RPS1"
_CLIENT = struct.Struct(">HQI")  # len(client_id), floor, number of cached results
_RESULT = struct.Struct(">QI")  # seq, len(result)


class EnvelopeError(ConsensusError, ValueError):
    """Bytes are not a valid command batch or session image; nothing was applied."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """One client command. ``seq`` >= 1 enables dedup; ``ack`` <= seq forgets older results."""

    client_id: str
    seq: int
    command: bytes | memoryview
    """Its own bytes; a read-only view of the entry only when decoded with ``views``."""
    ack: int = 0


def encode_batch(envelopes: Sequence[Envelope]) -> bytes:
    """Encode envelopes as one log-entry payload."""
    parts: list[bytes | memoryview] = [_MAGIC, _COUNT.pack(len(envelopes))]
    for env in envelopes:
        cid = env.client_id.encode()
        parts.append(_ENVELOPE.pack(len(cid), env.seq, env.ack, len(env.command)))
        parts.append(cid)
        parts.append(env.command)
    return b"".join(parts)


def decode_batch(data: bytes | memoryview, views: bool = False) -> list[Envelope]:
    """Inverse of :func:`encode_batch`; raises EnvelopeError on malformed bytes. With
    ``views``, each command is a read-only view of ``data`` instead of a copy (a large
    command is then never copied on its way to the state machine)."""
    if data[:4] != _MAGIC or len(data) < 8:
        raise EnvelopeError("payload is not a command batch (bad magic); propose via RaftGroup")
    (count,) = _COUNT.unpack_from(data, 4)
    view, pos, out = memoryview(data), 8, []
    try:
        for _ in range(count):
            cid_len, seq, ack, cmd_len = _ENVELOPE.unpack_from(data, pos)
            pos += _ENVELOPE.size
            cid = bytes(view[pos:pos + cid_len]).decode()
            pos += cid_len
            part = view[pos:pos + cmd_len]
            command: bytes | memoryview = part.toreadonly() if views else bytes(part)
            pos += cmd_len
            if len(command) != cmd_len:
                raise EnvelopeError("command batch truncated")
            out.append(Envelope(client_id=cid, seq=seq, command=command, ack=ack))
    except (struct.error, UnicodeDecodeError) as exc:
        raise EnvelopeError(f"command batch malformed: {exc}") from exc
    if pos != len(data):
        raise EnvelopeError("command batch has trailing bytes")
    return out


@dataclass(frozen=True, slots=True)
class CommandRun:
    """Commands of one client with seqs ``first_seq, first_seq + 1, ...`` (one log entry)."""

    client_id: str
    first_seq: int
    commands: list[bytes | memoryview]
    ack: int = 0


def encode_run(client_id: str, first_seq: int, commands: Sequence[Payload], ack: int) -> bytes:
    """Encode a run (see the module docstring); ``first_seq`` >= 1."""
    cid = client_id.encode()
    lengths = struct.pack(f">{len(commands)}I", *map(len, commands))
    return b"".join([_RUN_MAGIC, _RUN.pack(len(cid), first_seq, ack, len(commands)), cid,
                     lengths, *commands])


def is_run(data: bytes | memoryview) -> bool:
    """True if ``data`` was made by :func:`encode_run` (else it is a batch)."""
    return data[:4] == _RUN_MAGIC


def decode_run(data: bytes | memoryview, views: bool = False) -> CommandRun:
    """Inverse of :func:`encode_run`; raises EnvelopeError on malformed bytes. Each command
    is its own ``bytes`` whatever ``data`` is, or with ``views`` a read-only view of it."""
    if data[:4] != _RUN_MAGIC:
        raise EnvelopeError("payload is not a command run (bad magic); propose via RaftGroup")
    try:
        cid_len, first, ack, count = _RUN.unpack_from(data, 4)
        pos = 4 + _RUN.size
        cid = bytes(data[pos:pos + cid_len]).decode()
        pos += cid_len
        lengths = struct.unpack_from(f">{count}I", data, pos)
    except (struct.error, UnicodeDecodeError) as exc:
        raise EnvelopeError(f"command run malformed: {exc}") from exc
    pos += 4 * count
    if first < 1 or pos + sum(lengths) != len(data):
        raise EnvelopeError("command run truncated or with trailing bytes")
    whole = memoryview(data).toreadonly()
    commands: list[bytes | memoryview] = []
    for size in lengths:
        commands.append(whole[pos:pos + size] if views else bytes(whole[pos:pos + size]))
        pos += size
    return CommandRun(cid, first, commands, ack)


@dataclass(slots=True)
class _Client:
    floor: int = 0  # every seq < floor was acknowledged by the client and forgotten
    results: dict[int, bytes] = field(default_factory=dict)  # seq -> pickled result


class SessionTable:
    """Applied-side dedup table: client_id -> (acknowledged floor, cached results).

    Mutated only by :meth:`apply` (in log order) and :meth:`restore`; deterministic, so it is
    byte-identical on every replica that applied the same log.
    """

    def __init__(self) -> None:
        self._clients: dict[str, _Client] = {}

    def apply(self, env: Envelope, run: Callable[[Any], Any]) -> bytes:
        """Run ``env.command`` with ``run`` unless already applied; return the pickled result.

        A retry of an applied seq returns the cached result. A seq below the client's ack
        floor (answered and forgotten) returns a pickled :class:`DuplicateCommand` marker.
        """
        if env.seq == 0:
            return pickle.dumps(run(env.command))
        client = self._clients.setdefault(env.client_id, _Client())
        if env.seq < client.floor:
            result = pickle.dumps(DuplicateCommand(env.client_id, env.seq))
        elif env.seq in client.results:
            result = client.results[env.seq]
        else:
            result = pickle.dumps(run(env.command))
            client.results[env.seq] = result
        if env.ack > client.floor:
            client.floor = env.ack
            for seq in [s for s in client.results if s < env.ack]:
                del client.results[seq]
        return result

    def apply_run(self, run_: CommandRun, run: Callable[[Any], Any]) -> list[bytes]:
        """:meth:`apply` for every command of ``run_`` in seq order (same results, same
        table afterwards), without per-command envelopes."""
        client = self._clients.setdefault(run_.client_id, _Client())
        results = client.results
        out = []
        seq = run_.first_seq
        for command in run_.commands:
            if seq < client.floor:
                result = pickle.dumps(DuplicateCommand(run_.client_id, seq))
            else:
                cached = results.get(seq)
                if cached is None:
                    cached = results[seq] = pickle.dumps(run(command))
                result = cached
            out.append(result)
            seq += 1
        if run_.ack > client.floor:
            client.floor = run_.ack
            for old in [s for s in results if s < run_.ack]:
                del results[old]
        return out

    def cached(self, client_id: str, seq: int) -> bytes | None:
        """The cached pickled result of ``(client_id, seq)``, if still held."""
        client = self._clients.get(client_id)
        return None if client is None else client.results.get(seq)

    def encode(self) -> bytes:
        """Serialize deterministically (clients and seqs sorted)."""
        parts = [_SNAP_MAGIC, _COUNT.pack(len(self._clients))]
        for cid in sorted(self._clients):
            client, raw = self._clients[cid], cid.encode()
            parts.append(_CLIENT.pack(len(raw), client.floor, len(client.results)) + raw)
            for seq in sorted(client.results):
                result = client.results[seq]
                parts.append(_RESULT.pack(seq, len(result)) + result)
        return b"".join(parts)

    def restore(self, data: bytes) -> None:
        """Replace the table with one produced by :meth:`encode`; EnvelopeError if malformed."""
        if data[:4] != _SNAP_MAGIC:
            raise EnvelopeError("session image has a bad magic")
        clients: dict[str, _Client] = {}
        try:
            (count,) = _COUNT.unpack_from(data, 4)
            pos = 8
            for _ in range(count):
                cid_len, floor, n = _CLIENT.unpack_from(data, pos)
                pos += _CLIENT.size
                cid = data[pos:pos + cid_len].decode()
                pos += cid_len
                client = clients[cid] = _Client(floor=floor)
                for _ in range(n):
                    seq, size = _RESULT.unpack_from(data, pos)
                    pos += _RESULT.size
                    client.results[seq] = data[pos:pos + size]
                    pos += size
        except (struct.error, UnicodeDecodeError) as exc:
            raise EnvelopeError(f"session image malformed: {exc}") from exc
        if pos != len(data):
            raise EnvelopeError("session image has trailing bytes")
        self._clients = clients


@dataclass(frozen=True, slots=True)
class DuplicateCommand:
    """Result of a command whose seq was already acknowledged and forgotten (a late retry)."""

    client_id: str
    seq: int


_IMAGE = struct.Struct(">4sQ")
_IMAGE_MAGIC = b"RPI1"


def encode_image(sessions: bytes, user_snapshot: bytes) -> bytes:
    """Combine the session table and the user state machine's snapshot into one Raft image."""
    return _IMAGE.pack(_IMAGE_MAGIC, len(sessions)) + sessions + user_snapshot


def image_parts(sessions: bytes, user_parts: list[Any]) -> list[Any]:
    """The buffers whose concatenation is ``encode_image(sessions, b"".join(user_parts))``."""
    return [_IMAGE.pack(_IMAGE_MAGIC, len(sessions)), sessions, *user_parts]


def decode_image(data: bytes) -> tuple[bytes, bytes]:
    """Split an image from :func:`encode_image` into (sessions, user snapshot)."""
    if len(data) < _IMAGE.size:
        raise EnvelopeError("snapshot image too short")
    magic, size = _IMAGE.unpack_from(data, 0)
    if magic != _IMAGE_MAGIC or _IMAGE.size + size > len(data):
        raise EnvelopeError("snapshot image header is invalid")
    start = _IMAGE.size
    return data[start:start + size], data[start + size:]
