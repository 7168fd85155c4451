"""Layer locks: seqlock semantics, timeouts, writer preference, threaded stress test; the
state-wide VersionGate: optimistic reads, retries, the locked fallback, timeouts."""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest

from paramserver import LayerLocks, LockTimeoutError, UnknownLayerError
from paramserver.locks import VersionGate, remaining


def test_stamp_fails_validation_when_a_write_overlaps() -> None:
    locks = LayerLocks(["a", "b"])
    stamp = locks.stamp("a")
    assert locks.validate("a", stamp)
    with locks.write(["a"]):
        assert locks.stamp("a") % 2 == 1
        assert not locks.validate("a", stamp)
        assert not locks.validate("a", locks.stamp("a"))  # odd stamps never validate
        other = locks.stamp("b")
        assert locks.validate("b", other)  # other layers are unaffected
    assert not locks.validate("a", stamp)
    assert locks.version("a") == 1 and locks.version("b") == 0


def test_read_falls_back_to_the_read_lock_after_a_torn_copy() -> None:
    locks = LayerLocks(["a"])
    calls: list[bool] = []

    def copy_fn() -> int:
        calls.append(True)
        if len(calls) == 1:  # a writer slips in during the first (optimistic) copy
            with locks.write(["a"]):
                pass
        return len(calls)

    assert locks.read("a", copy_fn) == 2


def test_write_timeout_releases_what_it_took() -> None:
    locks = LayerLocks(["a", "b"])
    held, done = threading.Event(), threading.Event()

    def holder() -> None:
        with locks.write(["b"]):
            held.set()
            done.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(10)
    with pytest.raises(LockTimeoutError), locks.write(["b", "a"], timeout=0.05):
        pass
    with locks.write(["a"], timeout=0):  # "a" was released after the timeout
        assert locks.stamp("a") % 2 == 1
    done.set()
    thread.join(10)
    assert locks.stamp("a") % 2 == 0 and locks.stamp("b") % 2 == 0


def test_waiting_writer_blocks_new_readers() -> None:
    locks = LayerLocks(["a"])
    reading, release, writer_in = threading.Event(), threading.Event(), threading.Event()

    def reader() -> None:
        with locks.read_lock("a"):
            reading.set()
            release.wait(10)

    def writer() -> None:
        with locks.write(["a"], timeout=10):
            writer_in.set()

    r = threading.Thread(target=reader)
    r.start()
    reading.wait(10)
    w = threading.Thread(target=writer)
    w.start()
    deadline = time.monotonic() + 10
    while locks._get("a").waiting_writers == 0 and time.monotonic() < deadline:
        time.sleep(0.001)  # wait for the writer thread to queue (synchronisation, not logic)
    with pytest.raises(LockTimeoutError), locks.read_lock("a", timeout=0.05):
        pass
    release.set()
    r.join(10)
    w.join(10)
    assert writer_in.is_set()


def test_unknown_layer_is_rejected() -> None:
    with pytest.raises(UnknownLayerError):
        LayerLocks(["a"]).stamp("z")


def test_stress_no_torn_reads_no_deadlock_no_writer_starvation() -> None:
    keys = [f"layer{i:02d}" for i in range(12)]
    data = {k: np.zeros(20_000, np.float32) for k in keys}
    locks = LayerLocks(keys)
    stop = time.monotonic() + 2.0
    torn: list[str] = []
    writes = [0] * 3
    reads = [0] * 4
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        rng = random.Random(index)
        value = 0.0
        while time.monotonic() < stop:
            chosen = rng.sample(keys, rng.randint(1, 4))
            value += 1.0
            with locks.write(chosen, timeout=5):
                for key in chosen:  # two halves: a reader between them sees a torn layer
                    data[key][:10_000] = value
                    data[key][10_000:] = value
            writes[index] += 1

    def reader(index: int) -> None:
        rng = random.Random(100 + index)
        while time.monotonic() < stop:
            key = rng.choice(keys)
            copy = locks.read(key, data[key].copy, timeout=5)
            if copy.min() != copy.max():
                torn.append(key)
            reads[index] += 1

    def guarded(fn: object, index: int) -> None:
        try:
            fn(index)  # type: ignore[operator]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(writer, i)) for i in range(3)]
    threads += [threading.Thread(target=guarded, args=(reader, i)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a thread deadlocked"
    assert errors == []
    assert torn == []
    assert all(w > 10 for w in writes), writes
    assert all(r > 10 for r in reads), reads


def test_gate_read_runs_once_optimistically_when_no_writer_comes() -> None:
    gate = VersionGate()
    calls: list[bool] = []
    assert gate.read(lambda _d, locked: calls.append(locked) or 7) == 7
    assert calls == [False] and gate.stamp == 0
    with gate.write():
        assert gate.stamp == 1
    assert gate.stamp == 2


def test_gate_read_retries_after_an_overlapping_write_then_takes_the_read_lock() -> None:
    gate = VersionGate()
    calls: list[bool] = []

    def overlapped(_deadline: float | None, locked: bool) -> int:
        calls.append(locked)
        if not locked:  # every optimistic run is overlapped by a whole write
            with gate.write(timeout=1):
                pass
        return len(calls)

    assert gate.read(overlapped, tries=2) == 3
    assert calls == [False, False, True]


def test_gate_read_discards_errors_of_torn_runs_but_raises_real_ones() -> None:
    gate = VersionGate()
    calls: list[bool] = []

    def torn_once(_deadline: float | None, locked: bool) -> str:
        calls.append(locked)
        if len(calls) == 1:
            with gate.write():
                raise KeyError("torn state")  # a torn read may fail: discarded, retried
        return "ok"

    assert gate.read(torn_once) == "ok" and calls == [False, False]
    with pytest.raises(KeyError):
        gate.read(lambda _d, _l: {}["missing"])  # nothing overlapped: a real error


def test_gate_timeouts_raise_and_leave_the_stamp_alone() -> None:
    gate = VersionGate()
    with gate.write():
        with pytest.raises(LockTimeoutError):  # a reader waits for the writer, then gives up
            gate.read(lambda _d, _l: 1, timeout=0.05)
        stamp = gate.stamp
    with gate.read_lock(), pytest.raises(LockTimeoutError), gate.write(timeout=0.05):
        pass
    assert gate.stamp == stamp + 1  # the timed-out writer never got in
    assert remaining(None) is None and remaining(time.monotonic() - 1) == 0.0
