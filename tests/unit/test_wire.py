"""The peer frame codec (consensus.wire): round trips, and refusal of anything else.

Nothing here opens a socket; frames are built in memory.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import struct
import typing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus import types, wire
from consensus.types import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    EntryKind,
    InstallSnapshot,
    InstallSnapshotResponse,
    RequestVote,
    RequestVoteResponse,
    SnapshotMeta,
    TimeoutNow,
)
from consensus.wire import WireFormatError

EVERY_MESSAGE: list[Any] = [
    RequestVote(1, 2, 3, 10, 2, pre_vote=True),
    RequestVote(1, 2, 3, 10, 2, transfer=True),
    RequestVoteResponse(2, 1, 3, True),
    RequestVoteResponse(2, 1, 3, False, pre_vote=True),
    AppendEntries(1, 2, 3, 9, 2, (Entry(3, 10, EntryKind.NORMAL, b"x" * 70_000),
                                  Entry(3, 11, EntryKind.CONF_CHANGE, b"cc"),
                                  Entry(3, 12, EntryKind.NOOP, b"")), 9, ctx=4),
    AppendEntries(1, 2, 3, 0, 0, (), 0),
    AppendEntriesResponse(2, 1, 3, False, hint_index=5, hint_term=2, ctx=7, rejected_index=9),
    InstallSnapshot(1, 2, 3, SnapshotMeta(8, 2, (1, 2, 3), (4,)), 0, b"snap", True),
    InstallSnapshot(1, 2, 3, SnapshotMeta(8, 2, ()), 1 << 40, b"", False),
    InstallSnapshotResponse(2, 1, 3, 8, 4, True),
    TimeoutNow(1, 2, 3),
]
FIELDS = {  # what the codec writes, per type: a new field must be added to consensus.wire
    RequestVote: ("src", "dst", "term", "last_log_index", "last_log_term", "pre_vote",
                  "transfer"),
    RequestVoteResponse: ("src", "dst", "term", "granted", "pre_vote"),
    AppendEntries: ("src", "dst", "term", "prev_log_index", "prev_log_term", "entries",
                    "leader_commit", "ctx"),
    AppendEntriesResponse: ("src", "dst", "term", "success", "match_index", "hint_index",
                            "hint_term", "ctx", "rejected_index"),
    InstallSnapshot: ("src", "dst", "term", "meta", "offset", "data", "done"),
    InstallSnapshotResponse: ("src", "dst", "term", "meta_index", "next_offset", "done"),
    TimeoutNow: ("src", "dst", "term"),
    Entry: ("term", "index", "kind", "data"),
    SnapshotMeta: ("index", "term", "voters", "learners"),
}


def frame(batch: list[Any]) -> bytes:
    return b"".join(bytes(b) for b in wire.encode(batch))


def test_the_codec_knows_every_message_type_and_every_field() -> None:
    assert set(typing.get_args(types.Message)) == set(FIELDS) - {Entry, SnapshotMeta}
    for cls, names in FIELDS.items():
        assert tuple(f.name for f in dataclasses.fields(cls)) == names, cls.__name__
    assert {type(m) for m in EVERY_MESSAGE} == set(typing.get_args(types.Message))


def test_every_message_type_round_trips() -> None:
    decoded = wire.decode(frame(EVERY_MESSAGE))
    assert decoded == EVERY_MESSAGE
    assert [type(m) for m in decoded] == [type(m) for m in EVERY_MESSAGE]
    entries = decoded[4].entries
    assert all(type(e.kind) is EntryKind for e in entries)
    # small entries are copied out of the frame; large ones are read-only views of it
    assert all(type(e.data) is bytes for e in entries if len(e.data) < 64 << 10)
    large = [e.data for e in entries if len(e.data) >= 64 << 10]
    assert large and all(isinstance(d, memoryview) and d.readonly for d in large)
    assert type(decoded[0].pre_vote) is bool
    assert wire.decode(frame([])) == []


ids = st.integers(1, 2**64 - 1)
u64 = st.integers(0, 2**64 - 1)
small = st.integers(0, 1000)
blobs = st.binary(max_size=300)


@st.composite
def appends(draw: st.DrawFn) -> AppendEntries:
    prev, prev_term = draw(small), draw(small)
    terms = sorted(draw(st.lists(st.integers(prev_term, prev_term + 50), max_size=6)))
    term = draw(st.integers(max([prev_term, *terms]), 2000))
    entries = tuple(Entry(t, prev + 1 + i, draw(st.sampled_from(EntryKind)), draw(blobs))
                    for i, t in enumerate(terms))
    return AppendEntries(draw(ids), draw(ids), term, prev, prev_term, entries, draw(u64),
                         draw(u64))


members = st.lists(ids, unique=True, max_size=5).map(tuple)
messages = st.one_of(
    st.builds(RequestVote, ids, ids, u64, u64, u64, st.booleans(), st.booleans()),
    st.builds(RequestVoteResponse, ids, ids, u64, st.booleans(), st.booleans()),
    appends(),
    st.builds(AppendEntriesResponse, ids, ids, u64, st.booleans(), u64, u64, u64, u64),
    st.builds(InstallSnapshot, ids, ids, u64, st.builds(SnapshotMeta, u64, u64, members,
                                                        members), u64, blobs, st.booleans()),
    st.builds(InstallSnapshotResponse, ids, ids, u64, u64, u64, st.booleans()),
    st.builds(TimeoutNow, ids, ids, u64),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(messages, max_size=8))
def test_any_batch_round_trips(batch: list[Any]) -> None:
    assert wire.decode(frame(batch)) == batch


@settings(max_examples=300, deadline=None)
@given(st.lists(messages, min_size=1, max_size=4), st.data())
def test_a_corrupted_frame_decodes_to_messages_or_raises_the_typed_error(
        batch: list[Any], data: st.DataObject) -> None:
    raw = bytearray(frame(batch))
    at = data.draw(st.integers(0, len(raw) - 1))
    raw[at] = data.draw(st.integers(0, 255))
    _decodes_to_a_valid_batch_or_is_refused(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_decode_to_a_valid_batch_or_raise_the_typed_error(raw: bytes) -> None:
    with pytest.raises(WireFormatError):
        wire.decode(raw[:15])  # shorter than a preamble
    _decodes_to_a_valid_batch_or_is_refused(raw)
    _decodes_to_a_valid_batch_or_is_refused(wire.MAGIC + raw)


def _decodes_to_a_valid_batch_or_is_refused(raw: bytes | bytearray) -> None:
    """No other exception escapes, and what is accepted is a batch the codec would write."""
    try:
        decoded = wire.decode(raw)
    except WireFormatError:
        return
    assert frame(decoded) == bytes(raw)


def test_every_truncation_of_a_frame_is_refused() -> None:
    raw = frame(EVERY_MESSAGE[:9])
    for cut in [*range(0, 200), *range(len(raw) - 200, len(raw))]:
        with pytest.raises(WireFormatError):
            wire.decode(raw[:cut])
    with pytest.raises(WireFormatError, match="announces"):
        wire.decode(raw + b"\0")


def test_large_payloads_are_sent_from_the_entries_own_bytes_not_copied() -> None:
    big, other = os.urandom(1 << 20), os.urandom(1 << 20)
    batch = [AppendEntries(1, 2, 3, 0, 0, (Entry(3, 1, data=big), Entry(3, 2, data=b"s"),
                                           Entry(3, 3, data=other)), 0)]
    buffers = wire.encode(batch)
    views = [b for b in buffers if isinstance(b, memoryview)]
    assert [v.obj for v in views] == [big, other]  # views of the entries, not copies
    assert sum(len(b) for b in buffers if not isinstance(b, memoryview)) < 1000


def _preamble(header: int, payload: int, magic: bytes = wire.MAGIC) -> bytes:
    return wire.PREAMBLE.pack(magic, header, payload)


def _with_header(header: bytes, payload: bytes = b"") -> bytes:
    return _preamble(len(header), len(payload)) + header + payload


def _heartbeat_header(**change: int) -> bytearray:
    """The header of one AppendEntries with one entry of 2 bytes (fields overridable)."""
    f = {"tag": 3, "src": 1, "dst": 2, "term": 5, "prev": 9, "prev_term": 4, "commit": 9,
         "ctx": 0, "n": 1, "e_term": 5, "e_index": 10, "kind": 0, "size": 2} | change
    return bytearray(struct.pack(">IBQQQQQQQIQQBQ", 1, f["tag"], f["src"], f["dst"], f["term"],
                                 f["prev"], f["prev_term"], f["commit"], f["ctx"], f["n"],
                                 f["e_term"], f["e_index"], f["kind"], f["size"]))


def test_a_hand_built_frame_decodes_and_each_bad_field_is_refused() -> None:
    good = _with_header(bytes(_heartbeat_header()), b"ok")
    assert wire.decode(good) == [AppendEntries(1, 2, 5, 9, 4, (Entry(5, 10, data=b"ok"),), 9)]
    bad = {
        "unknown message tag": {"tag": 99},
        "src must be a positive node id": {"src": 0},
        "dst must be a positive node id": {"dst": 0},
        "consecutive": {"e_index": 12},
        "outside": {"e_term": 6},  # newer than the message's term
        "unknown kind": {"kind": 7},
        "describes 3 payload bytes": {"size": 3},
        "truncated": {"n": 2},
    }
    for reason, change in bad.items():
        with pytest.raises(WireFormatError, match=reason):
            wire.decode(_with_header(bytes(_heartbeat_header(**change)), b"ok"))
    old_term = _heartbeat_header(e_term=3)  # older than prev_log_term
    with pytest.raises(WireFormatError, match="outside"):
        wire.decode(_with_header(bytes(old_term), b"ok"))


def test_flags_must_be_zero_or_one_and_members_distinct() -> None:
    vote = struct.pack(">IBQQQBB", 1, 2, 1, 2, 3, 2, 0)  # RequestVoteResponse, granted=2
    with pytest.raises(WireFormatError, match="granted must be a flag"):
        wire.decode(_with_header(vote))
    snap = bytearray(frame([InstallSnapshot(1, 2, 3, SnapshotMeta(8, 2, (1, 2)), 0, b"", True)]))
    voters_at = len(snap) - 16
    snap[voters_at:voters_at + 8] = struct.pack(">Q", 2)  # voters (2, 2)
    with pytest.raises(WireFormatError, match="distinct positive"):
        wire.decode(snap)


def test_oversized_frames_are_refused_from_the_preamble_alone() -> None:
    with pytest.raises(WireFormatError, match="exceeds the limit of 1000"):
        wire.parse_preamble(_preamble(20, 1001), max_payload=1000)
    with pytest.raises(WireFormatError, match="outside"):
        wire.parse_preamble(_preamble(wire.HEADER_ALLOWANCE + 1, 0), max_payload=1000)
    with pytest.raises(WireFormatError, match="magic"):
        wire.parse_preamble(_preamble(20, 0, magic=b"\0\0\0\x20"), max_payload=1000)
    assert wire.parse_preamble(_preamble(20, 1000), max_payload=1000) == (20, 1000)


def test_read_batch_checks_the_header_before_it_reads_the_payload() -> None:
    """A frame announcing an oversized payload is refused after its 16-byte preamble, and
    one with a bad header after the header: the payload is never asked for."""
    asked: list[int] = []

    def reader(raw: bytes) -> Any:
        pos = 0

        def read(n: int) -> bytes:
            nonlocal pos
            asked.append(n)
            chunk, pos = raw[pos:pos + n], pos + n
            return chunk
        return read

    with pytest.raises(WireFormatError):
        wire.read_batch(reader(_preamble(20, 1 << 40) + b"\0" * 100), max_payload=1 << 20)
    assert asked == [wire.PREAMBLE.size]
    asked.clear()
    bad = _heartbeat_header(kind=9)
    with pytest.raises(WireFormatError):
        wire.read_batch(reader(_preamble(len(bad), 2) + bytes(bad) + b"ok"), 1 << 20)
    assert asked == [wire.PREAMBLE.size, len(bad)]


def su(text: str) -> bytes:
    """A pickle SHORT_BINUNICODE opcode."""
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def _global_call(module: str, name: str, arg: str) -> bytes:
    """A protocol-4 pickle calling ``module``.``name``(``arg``), written as raw opcodes."""
    return b"\x80\x04" + su(module) + su(name) + b"\x93" + su(arg) + b"\x85R."


@pytest.mark.parametrize("module,name", [
    ("consensus.types", "enum.bltns.eval"), ("consensus.types", "enum.bltns.exec"),
    ("consensus.types", "dataclass.__globals__"), ("consensus.types", "enum.sys.exit"),
    ("builtins", "eval"), ("os", "system"),
])
def test_pickles_naming_callables_are_refused_and_run_nothing(
        module: str, name: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    arg = code if name.endswith(("eval", "exec")) else f"touch {marker}"
    crafted = [_global_call(module, name, arg),
               pickle.dumps([EVERY_MESSAGE[0]], protocol=5)]
    for payload in crafted:
        for candidate in (payload, _preamble(len(payload), 0) + payload,
                          _with_header(b"\0\0\0\x01\x03", payload)):
            with pytest.raises(WireFormatError):
                wire.decode(candidate)
    assert not marker.exists()


def test_unencodable_messages_raise_the_typed_error() -> None:
    with pytest.raises(WireFormatError, match="not a Raft message"):
        wire.encode([object()])  # type: ignore[list-item]
    with pytest.raises(WireFormatError, match="cannot encode"):
        wire.encode([TimeoutNow(1, 2, -1)])
    with pytest.raises(WireFormatError, match="flag"):
        wire.encode([RequestVoteResponse(1, 2, 3, 2)])  # type: ignore[arg-type]


def test_split_keeps_order_and_every_frame_within_its_bounds() -> None:
    msgs = [AppendEntries(1, 2, 3, i, 3, (Entry(3, i + 1, data=b"x" * 400),), 0)
            for i in range(10)] + [TimeoutNow(1, 2, 3)]
    frames = wire.split(msgs, max_payload=1000)
    assert frames is not None
    assert [m for f in frames for m in f] == msgs
    assert [len(f) for f in frames] == [2, 2, 2, 2, 3]
    assert all(sum(wire.payload_bytes(m) for m in f) <= 1000 for f in frames)
    assert wire.split(msgs, max_payload=399) is None  # one entry alone is too large
    assert wire.split([], max_payload=1) == [[]]
