"""The frame format of Raft messages between replicas (``consensus.transport``).

A frame is one batch of messages, in three parts (all integers big-endian):

- a preamble: ``magic (4 bytes) | header bytes (u32) | payload bytes (u64)``;
- a header: ``message count (u32)``, then per message a one-byte tag and its fixed fields
  (node ids, terms, indexes as u64; flags as one byte, 0 or 1), an AppendEntries followed by
  one ``term | index | kind | payload bytes`` record per entry, an InstallSnapshot by its
  voters and learners;
- the payload: every entry's data and every snapshot chunk, concatenated in header order.

Only the message types of ``consensus.types`` can be described, so decoding a frame never
looks up a name and never runs code: it reads integers and byte strings and builds the
dataclasses itself. Every field is checked (range, flags, entry kinds, node ids, entries at
consecutive indexes with non-decreasing terms no newer than the message, payload sizes that
add up exactly); anything else raises :class:`WireFormatError`, and the transport drops
the connection.

Large payloads are not concatenated to send: :func:`encode` returns the header and views
of the payloads (small ones gathered into one buffer) for one vectored send, and a reader
receives the payload into one buffer: a large entry's data is a read-only view of it, a
small one's is copied out.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any

from consensus.types import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    EntryKind,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    Payload,
    RequestVote,
    RequestVoteResponse,
    SnapshotMeta,
    TimeoutNow,
)

__all__ = ["HEADER_ALLOWANCE", "MAGIC", "PREAMBLE", "WireFormatError", "build", "decode",
           "encode", "header_bytes", "parse_header", "parse_preamble", "payload_bytes",
           "read_batch", "split"]

MAGIC = b"RPB1"
PREAMBLE = struct.Struct(">4sIQ")  # magic, header bytes, payload bytes
HEADER_ALLOWANCE = 8 << 20
"""Most header bytes one frame may hold on top of its payload (about 370,000 entries)."""

_COPY_BELOW = 64 << 10  # payloads smaller than this are gathered into one send buffer
_COUNT = struct.Struct(">I")
_RV = struct.Struct(">BQQQQQBB")  # tag, src, dst, term, last index, last term, pre, transfer
_RVR = struct.Struct(">BQQQBB")  # tag, src, dst, term, granted, pre_vote
_AE = struct.Struct(">BQQQQQQQI")  # tag, src, dst, term, prev idx/term, commit, ctx, entries
_ENTRY = struct.Struct(">QQBQ")  # term, index, kind, payload bytes
_AER = struct.Struct(">BQQQBQQQQQ")  # tag, src, dst, term, success, match, hints, ctx, rejected
_IS = struct.Struct(">BQQQQQQQBII")  # tag, src, dst, term, meta idx/term, offset, size,
#                                     done, voters, learners
_VOTER = struct.Struct(">Q")  # one voter or learner id
_ISR = struct.Struct(">BQQQQQB")  # tag, src, dst, term, meta index, next offset, done
_TN = struct.Struct(">BQQQ")  # tag, src, dst, term

_TAG_RV, _TAG_RVR, _TAG_AE, _TAG_AER, _TAG_IS, _TAG_ISR, _TAG_TN = range(1, 8)
_KINDS = {kind.value: kind for kind in EntryKind}
_FIXED_BYTES: dict[type, int] = {
    RequestVote: _RV.size, RequestVoteResponse: _RVR.size, AppendEntries: _AE.size,
    AppendEntriesResponse: _AER.size, InstallSnapshot: _IS.size,
    InstallSnapshotResponse: _ISR.size, TimeoutNow: _TN.size,
}


class WireFormatError(ValueError):
    """Bytes that are not a well-formed frame of Raft messages (or a message that cannot
    be written as one); the transport drops the connection that carried them."""


# ------------------------------------------------------------------------------ sizes


def _nbytes(data: Any) -> int:
    return data.nbytes if isinstance(data, memoryview) else len(data)


def payload_bytes(msg: Message) -> int:
    """The entry or snapshot bytes ``msg`` carries."""
    if isinstance(msg, AppendEntries):
        return sum(_nbytes(e.data) for e in msg.entries)
    if isinstance(msg, InstallSnapshot):
        return _nbytes(msg.data)
    return 0


def header_bytes(msg: Message) -> int:
    """The header bytes ``msg`` takes in a frame."""
    fixed = _FIXED_BYTES.get(type(msg))
    if fixed is None:
        raise WireFormatError(f"{type(msg).__name__} is not a Raft message (consensus.types)")
    if isinstance(msg, AppendEntries):
        return fixed + _ENTRY.size * len(msg.entries)
    if isinstance(msg, InstallSnapshot):
        return fixed + _VOTER.size * (len(msg.meta.voters) + len(msg.meta.learners))
    return fixed


def split(batch: Sequence[Message], max_payload: int) -> list[list[Message]] | None:
    """``batch`` cut, in order, into frames of at most ``max_payload`` payload bytes and
    ``HEADER_ALLOWANCE`` header bytes each; None if one message alone exceeds a bound."""
    frames: list[list[Message]] = []
    current: list[Message] = []
    payload, header = 0, _COUNT.size
    for msg in batch:
        size, head = payload_bytes(msg), header_bytes(msg)
        if size > max_payload or _COUNT.size + head > HEADER_ALLOWANCE:
            return None
        if current and (payload + size > max_payload or header + head > HEADER_ALLOWANCE):
            frames.append(current)
            current, payload, header = [], 0, _COUNT.size
        current.append(msg)
        payload += size
        header += head
    if current or not frames:
        frames.append(current)
    return frames


# ---------------------------------------------------------------------------- encoding


def encode(batch: Sequence[Message]) -> list[Any]:
    """The frame of ``batch`` as buffers to send in order (the preamble and header first,
    then the payloads: large ones as views of the messages' own bytes, not copied).
    Raises WireFormatError for an object that is not a message or a field out of range."""
    head = bytearray(PREAMBLE.size)
    head += _COUNT.pack(len(batch))
    payloads: list[memoryview] = []
    for msg in batch:
        try:
            _encode_one(msg, head, payloads)
        except struct.error as exc:
            raise WireFormatError(f"cannot encode {msg!r:.200}: {exc}") from None
    size = sum(p.nbytes for p in payloads)
    if len(head) - PREAMBLE.size > HEADER_ALLOWANCE:
        raise WireFormatError(f"a batch of {len(batch)} messages needs "
                              f"{len(head) - PREAMBLE.size} header bytes, more than "
                              f"{HEADER_ALLOWANCE}; send it in smaller frames (split)")
    PREAMBLE.pack_into(head, 0, MAGIC, len(head) - PREAMBLE.size, size)
    out: list[Any] = [head]
    gathered: bytearray | None = head
    for part in payloads:
        if part.nbytes >= _COPY_BELOW:
            out.append(part)
            gathered = None
        elif part.nbytes:
            if gathered is None:
                gathered = bytearray()
                out.append(gathered)
            gathered += part
    return out


def _flag(value: bool) -> int:
    if value not in (0, 1):
        raise struct.error(f"a flag must be a bool, got {value!r:.40}")
    return 1 if value else 0


def _view(data: Any) -> memoryview:
    try:
        return memoryview(data).cast("B")
    except (TypeError, ValueError) as exc:
        raise struct.error(f"a payload must be contiguous bytes, got {type(data).__name__}: "
                           f"{exc}") from None


def _encode_one(msg: Message, head: bytearray, payloads: list[memoryview]) -> None:
    if isinstance(msg, AppendEntries):
        head += _AE.pack(_TAG_AE, msg.src, msg.dst, msg.term, msg.prev_log_index,
                         msg.prev_log_term, msg.leader_commit, msg.ctx, len(msg.entries))
        for e in msg.entries:
            view = _view(e.data)
            head += _ENTRY.pack(e.term, e.index, int(e.kind), view.nbytes)
            payloads.append(view)
    elif isinstance(msg, AppendEntriesResponse):
        head += _AER.pack(_TAG_AER, msg.src, msg.dst, msg.term, _flag(msg.success),
                          msg.match_index, msg.hint_index, msg.hint_term, msg.ctx,
                          msg.rejected_index)
    elif isinstance(msg, RequestVote):
        head += _RV.pack(_TAG_RV, msg.src, msg.dst, msg.term, msg.last_log_index,
                         msg.last_log_term, _flag(msg.pre_vote), _flag(msg.transfer))
    elif isinstance(msg, RequestVoteResponse):
        head += _RVR.pack(_TAG_RVR, msg.src, msg.dst, msg.term, _flag(msg.granted),
                          _flag(msg.pre_vote))
    elif isinstance(msg, InstallSnapshot):
        view = _view(msg.data)
        meta = msg.meta
        head += _IS.pack(_TAG_IS, msg.src, msg.dst, msg.term, meta.index, meta.term,
                         msg.offset, view.nbytes, _flag(msg.done), len(meta.voters),
                         len(meta.learners))
        for member in (*meta.voters, *meta.learners):
            head += _VOTER.pack(member)
        payloads.append(view)
    elif isinstance(msg, InstallSnapshotResponse):
        head += _ISR.pack(_TAG_ISR, msg.src, msg.dst, msg.term, msg.meta_index,
                          msg.next_offset, _flag(msg.done))
    elif isinstance(msg, TimeoutNow):
        head += _TN.pack(_TAG_TN, msg.src, msg.dst, msg.term)
    else:
        raise WireFormatError(f"{type(msg).__name__} is not a Raft message (consensus.types)")


# ---------------------------------------------------------------------------- decoding

# A decoded header: per message, its type, its fixed fields, and its payload layout (the
# entries' (term, index, kind, size), or a snapshot's (meta, size)).
_Plan = list[tuple[int, tuple[Any, ...], Any]]


def parse_preamble(data: Any, max_payload: int) -> tuple[int, int]:
    """(header bytes, payload bytes) of a frame's preamble, both within their bounds."""
    if len(data) != PREAMBLE.size:
        raise WireFormatError(f"a frame preamble is {PREAMBLE.size} bytes, got {len(data)}")
    magic, header, payload = PREAMBLE.unpack(data)
    if magic != MAGIC:
        raise WireFormatError(f"not a Raft message frame (magic {bytes(magic)!r}, expected "
                              f"{MAGIC!r}): is the peer running another version?")
    if not _COUNT.size <= header <= HEADER_ALLOWANCE:
        raise WireFormatError(f"frame header of {header} bytes is outside [{_COUNT.size}, "
                              f"{HEADER_ALLOWANCE}]")
    if payload > max_payload:
        raise WireFormatError(f"frame payload of {payload} bytes exceeds the limit of "
                              f"{max_payload} (RaftGroupConfig.peer_max_entry_bytes)")
    return header, payload


def _node(value: int, what: str) -> int:
    if value < 1:
        raise WireFormatError(f"{what} must be a positive node id, got {value}")
    return value


def _bool(value: int, what: str) -> bool:
    if value > 1:
        raise WireFormatError(f"{what} must be a flag byte (0 or 1), got {value}")
    return value == 1


def parse_header(data: Any, payload_size: int) -> _Plan:
    """Check a frame's header against its payload size; the messages it describes."""
    view = memoryview(data).cast("B")
    try:
        plan, end = _parse(view)
    except struct.error:
        raise WireFormatError(f"frame header of {len(view)} bytes is truncated") from None
    if end != len(view):
        raise WireFormatError(f"frame header has {len(view) - end} trailing bytes")
    described = 0
    for tag, _, layout in plan:
        if tag == _TAG_AE:
            described += sum(size for _, _, _, size in layout)
        elif tag == _TAG_IS:
            described += layout[1]
    if described != payload_size:
        raise WireFormatError(f"frame header describes {described} payload bytes, the "
                              f"preamble announces {payload_size}")
    return plan


def _parse(view: memoryview) -> tuple[_Plan, int]:
    (count,), pos = _COUNT.unpack_from(view, 0), _COUNT.size
    plan: _Plan = []
    for _ in range(count):
        if pos >= len(view):
            raise struct.error("truncated")
        tag = view[pos]
        if tag == _TAG_AE:
            _, src, dst, term, prev, prev_term, commit, ctx, n = _AE.unpack_from(view, pos)
            pos += _AE.size
            if n * _ENTRY.size > len(view) - pos:
                raise struct.error("truncated")
            entries = []
            last_term = prev_term
            for i in range(n):
                e_term, index, kind, size = _ENTRY.unpack_from(view, pos)
                pos += _ENTRY.size
                if index != prev + 1 + i:
                    raise WireFormatError(f"AppendEntries after index {prev} carries entry "
                                          f"{index} at position {i}: entries must be "
                                          "consecutive")
                if not last_term <= e_term <= term:
                    raise WireFormatError(f"entry {index} has term {e_term}, outside "
                                          f"[{last_term}, {term}]")
                if kind not in _KINDS:
                    raise WireFormatError(f"entry {index} has unknown kind {kind}")
                last_term = e_term
                entries.append((e_term, index, _KINDS[kind], size))
            fields: tuple[Any, ...] = (_node(src, "src"), _node(dst, "dst"), term, prev,
                                       prev_term, commit, ctx)
            plan.append((tag, fields, entries))
        elif tag == _TAG_AER:
            _, src, dst, term, ok, match, hint, hint_term, ctx, rejected = _AER.unpack_from(
                view, pos)
            pos += _AER.size
            plan.append((tag, (_node(src, "src"), _node(dst, "dst"), term,
                               _bool(ok, "success"), match, hint, hint_term, ctx, rejected),
                         None))
        elif tag == _TAG_RV:
            _, src, dst, term, last, last_term, pre, transfer = _RV.unpack_from(view, pos)
            pos += _RV.size
            plan.append((tag, (_node(src, "src"), _node(dst, "dst"), term, last, last_term,
                               _bool(pre, "pre_vote"), _bool(transfer, "transfer")), None))
        elif tag == _TAG_RVR:
            _, src, dst, term, granted, pre = _RVR.unpack_from(view, pos)
            pos += _RVR.size
            plan.append((tag, (_node(src, "src"), _node(dst, "dst"), term,
                               _bool(granted, "granted"), _bool(pre, "pre_vote")), None))
        elif tag == _TAG_IS:
            (_, src, dst, term, index, m_term, offset, size, done, n_voters,
             n_learners) = _IS.unpack_from(view, pos)
            pos += _IS.size
            voters, pos = _members(view, pos, n_voters, "voters")
            learners, pos = _members(view, pos, n_learners, "learners")
            meta = SnapshotMeta(index, m_term, voters, learners)
            plan.append((tag, (_node(src, "src"), _node(dst, "dst"), term, meta, offset,
                               _bool(done, "done")), (meta, size)))
        elif tag == _TAG_ISR:
            _, src, dst, term, index, offset, done = _ISR.unpack_from(view, pos)
            pos += _ISR.size
            plan.append((tag, (_node(src, "src"), _node(dst, "dst"), term, index, offset,
                               _bool(done, "done")), None))
        elif tag == _TAG_TN:
            _, src, dst, term = _TN.unpack_from(view, pos)
            pos += _TN.size
            plan.append((tag, (_node(src, "src"), _node(dst, "dst"), term), None))
        else:
            raise WireFormatError(f"unknown message tag {tag} at header byte {pos}")
    return plan, pos


def _members(view: memoryview, pos: int, n: int, what: str) -> tuple[tuple[int, ...], int]:
    """``n`` node ids from ``pos`` (distinct, positive), and the position after them."""
    if n * _VOTER.size > len(view) - pos:
        raise struct.error("truncated")
    members = struct.unpack_from(f">{n}Q", view, pos)
    if len(set(members)) != n or (n and min(members) < 1):
        raise WireFormatError(f"snapshot {what} must be distinct positive node ids, got "
                              f"{members[:16]}")
    return members, pos + n * _VOTER.size


def _entry_data(view: memoryview, pos: int, size: int) -> Payload:
    """A large entry's bytes stay where they were received (a read-only view: the buffer is
    this frame's own), a small one is copied out so that it does not pin the frame."""
    part = view[pos:pos + size]
    return part.toreadonly() if size >= _COPY_BELOW else bytes(part)


def build(plan: _Plan, payload: Any) -> list[Message]:
    """The messages of a parsed header, out of ``payload`` (a buffer no one else writes):
    large entries are views of it (see ``_entry_data``), everything else is copied once."""
    view = memoryview(payload).cast("B")
    pos = 0
    batch: list[Message] = []
    for tag, fields, layout in plan:
        if tag == _TAG_AE:
            entries = []
            for term, index, kind, size in layout:
                entries.append(Entry(term, index, kind, _entry_data(view, pos, size)))
                pos += size
            src, dst, term, prev, prev_term, commit, ctx = fields
            batch.append(AppendEntries(src, dst, term, prev, prev_term, tuple(entries),
                                       commit, ctx))
        elif tag == _TAG_AER:
            batch.append(AppendEntriesResponse(*fields))
        elif tag == _TAG_RV:
            batch.append(RequestVote(*fields))
        elif tag == _TAG_RVR:
            batch.append(RequestVoteResponse(*fields))
        elif tag == _TAG_IS:
            size = layout[1]
            src, dst, term, meta, offset, done = fields
            batch.append(InstallSnapshot(src, dst, term, meta, offset,
                                         bytes(view[pos:pos + size]), done))
            pos += size
        elif tag == _TAG_ISR:
            batch.append(InstallSnapshotResponse(*fields))
        else:
            batch.append(TimeoutNow(*fields))
    return batch


def read_batch(read: Callable[[int], Any], max_payload: int) -> list[Message]:
    """Read one frame with ``read(n)`` (exactly ``n`` bytes) and decode it. The header is
    checked before the payload is read, so a bad frame costs at most its header."""
    header, payload = parse_preamble(read(PREAMBLE.size), max_payload)
    plan = parse_header(read(header), payload)
    return build(plan, read(payload) if payload else b"")


def decode(frame: Any, max_payload: int = 1 << 62) -> list[Message]:
    """Decode one whole frame held in memory (``frame`` is bytes-like; large entries are
    views of it, so it must not be written to afterwards)."""
    view = memoryview(frame).cast("B")
    header, payload = parse_preamble(view[:PREAMBLE.size], max_payload)
    if len(view) != PREAMBLE.size + header + payload:
        raise WireFormatError(f"frame of {len(view)} bytes, its preamble announces "
                              f"{PREAMBLE.size + header + payload}")
    plan = parse_header(view[PREAMBLE.size:PREAMBLE.size + header], payload)
    return build(plan, view[PREAMBLE.size + header:])
