"""Envelope codec and the replicated session table (exactly-once apply)."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consensus.session import (
    CommandRun,
    DuplicateCommand,
    Envelope,
    EnvelopeError,
    SessionTable,
    decode_batch,
    decode_image,
    decode_run,
    encode_batch,
    encode_image,
    encode_run,
    is_run,
)


class Counter:
    def __init__(self) -> None:
        self.applied: list[bytes] = []

    def apply(self, command: bytes) -> int:
        self.applied.append(command)
        return len(self.applied)


def test_batch_round_trip() -> None:
    envs = [Envelope("c1", 1, b"a", 0), Envelope("ñ", 2**40, b"", 7), Envelope("", 0, b"\x00" * 9)]
    assert decode_batch(encode_batch(envs)) == envs


@pytest.mark.parametrize("bad", [b"", b"XXXX\x00\x00\x00\x01", b"RPB1\x00\x00\x00\x02"])
def test_malformed_batch_raises(bad: bytes) -> None:
    with pytest.raises(EnvelopeError):
        decode_batch(bad)


def test_truncated_and_padded_batches_raise() -> None:
    raw = encode_batch([Envelope("c", 1, b"hello")])
    with pytest.raises(EnvelopeError):
        decode_batch(raw[:-1])
    with pytest.raises(EnvelopeError):
        decode_batch(raw + b"!")


def test_retry_returns_cached_result_without_reapplying() -> None:
    table, sm = SessionTable(), Counter()
    first = table.apply(Envelope("c", 1, b"x"), sm.apply)
    retry = table.apply(Envelope("c", 1, b"x"), sm.apply)
    assert pickle.loads(first) == pickle.loads(retry) == 1
    assert sm.applied == [b"x"]


def test_out_of_order_seqs_each_apply_once() -> None:
    table, sm = SessionTable(), Counter()
    for seq in (2, 1, 3, 1, 2):
        table.apply(Envelope("c", seq, f"s{seq}".encode()), sm.apply)
    assert sm.applied == [b"s2", b"s1", b"s3"]


def test_ack_forgets_results_and_late_retry_is_not_reapplied() -> None:
    table, sm = SessionTable(), Counter()
    table.apply(Envelope("c", 1, b"a"), sm.apply)
    table.apply(Envelope("c", 2, b"b", ack=2), sm.apply)
    assert table.cached("c", 1) is None
    late = pickle.loads(table.apply(Envelope("c", 1, b"a"), sm.apply))
    assert late == DuplicateCommand("c", 1)
    assert sm.applied == [b"a", b"b"]


def test_seq_zero_is_never_deduplicated() -> None:
    table, sm = SessionTable(), Counter()
    table.apply(Envelope("svc", 0, b"a"), sm.apply)
    table.apply(Envelope("svc", 0, b"a"), sm.apply)
    assert sm.applied == [b"a", b"a"]


def test_table_encoding_is_deterministic_and_restores_dedup() -> None:
    a, b, sm = SessionTable(), SessionTable(), Counter()
    for cid, seq in (("x", 2), ("y", 5), ("x", 1)):
        a.apply(Envelope(cid, seq, b"c"), sm.apply)
        b.apply(Envelope(cid, seq, b"c"), Counter().apply)
    assert a.encode() != b.encode()  # results differ (b's counter restarts per command)
    assert a.encode().index(b"x") < a.encode().index(b"y")  # clients sorted, not by arrival
    restored = SessionTable()
    restored.restore(a.encode())
    assert restored.encode() == a.encode()
    before = len(sm.applied)
    restored.apply(Envelope("y", 5, b"c"), sm.apply)
    assert len(sm.applied) == before


def test_restore_rejects_garbage_and_keeps_state() -> None:
    table = SessionTable()
    table.apply(Envelope("c", 1, b"a"), Counter().apply)
    image = table.encode()
    with pytest.raises(EnvelopeError):
        table.restore(image[:-2])
    assert table.encode() == image


def test_image_split_round_trip() -> None:
    assert decode_image(encode_image(b"sess", b"user-state")) == (b"sess", b"user-state")
    with pytest.raises(EnvelopeError):
        decode_image(b"short")


def test_run_round_trip_and_malformed_runs_are_rejected() -> None:
    raw = encode_run("cliént", 41, [b"a", b"", b"\x00" * 300], ack=40)
    assert is_run(raw) and not is_run(encode_batch([Envelope("c", 1, b"a")]))
    assert decode_run(raw) == CommandRun("cliént", 41, [b"a", b"", b"\x00" * 300], 40)
    for bad in (raw[:-1], raw + b"!", b"RPB1" + raw[4:], raw[:10]):
        with pytest.raises(EnvelopeError):
            decode_run(bad)


# A client's life: runs of consecutive seqs, some re-sent (retries), with an ack that only
# grows and never passes an unanswered seq.
_runs = st.lists(st.tuples(st.integers(1, 6), st.booleans()), min_size=1, max_size=12)


@given(_runs)
def test_apply_run_equals_applying_its_envelopes_one_by_one(plan: list[tuple[int, bool]]) -> None:
    """The compact run is only an encoding: results, applied commands and the table's
    snapshot bytes are those of the per-envelope path, retries and acks included."""
    by_run, by_env = SessionTable(), SessionTable()
    sm_run, sm_env = Counter(), Counter()
    seq, sent = 1, []
    for size, retry in plan:
        if retry and sent:
            first, commands, ack = sent[-1]  # the client re-sends its last run unchanged
        else:
            first, commands, ack = seq, [f"c{seq + i}".encode() for i in range(size)], seq
            seq += size
            sent.append((first, commands, ack))
        got = by_run.apply_run(decode_run(encode_run("c", first, commands, ack)), sm_run.apply)
        want = [by_env.apply(Envelope("c", first + i, cmd, ack), sm_env.apply)
                for i, cmd in enumerate(commands)]
        assert got == want
    assert sm_run.applied == sm_env.applied
    assert by_run.encode() == by_env.encode()
