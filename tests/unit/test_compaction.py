"""Compaction by bytes as well as by count (``consensus.compaction``), and what it keeps
on disk: a storage driven by the policy never holds more log than about twice the state
plus one entry, however large the entries."""

from __future__ import annotations

from pathlib import Path

import pytest

from consensus.compaction import MIN_TRIGGER_BYTES, CompactionPolicy
from consensus.storage import SqliteStorage
from consensus.types import Entry, HardState, Snapshot, SnapshotMeta

pytestmark = pytest.mark.unit
MB = 1 << 20


def test_count_alone_triggers_for_small_entries() -> None:
    policy = CompactionPolicy(every_entries=256)
    assert not policy.due(entries=255, applied_bytes=1000, state_bytes=10, largest_entry=4)
    assert policy.due(entries=256, applied_bytes=1000, state_bytes=10, largest_entry=4)


def test_bytes_trigger_at_twice_the_state_plus_an_entry_less_the_entries_in_flight() -> None:
    policy = CompactionPolicy(every_entries=10_000)
    state, entry = 1200 * MB, 400 * MB  # a 100M-parameter shard with Adam, its gradient
    assert policy.trigger_bytes(state, entry) == 2 * state - 2 * entry
    assert not policy.due(entries=3, applied_bytes=1200 * MB, state_bytes=state,
                          largest_entry=entry)
    assert policy.due(entries=4, applied_bytes=1600 * MB, state_bytes=state,
                      largest_entry=entry)


def test_the_trigger_never_drops_below_one_state_nor_the_floor() -> None:
    policy = CompactionPolicy(every_entries=10_000)
    assert policy.trigger_bytes(120 * MB, 100 * MB) == 120 * MB  # entries near state size
    assert policy.trigger_bytes(120 * MB, 40 * MB) == 160 * MB  # a 20M shard with Adam
    assert policy.trigger_bytes(1 * MB, 10) == MIN_TRIGGER_BYTES  # a tiny state
    assert CompactionPolicy(every_entries=5, every_bytes=7).trigger_bytes(10**9, 1) == 7


def test_a_log_driven_by_the_policy_stays_below_twice_the_state_plus_an_entry(
    tmp_path: Path,
) -> None:
    """Entries of 40 MB over a state of 120 MB (a 20M-parameter model's shard), applied two
    behind the persisted end, as the pipelined driver does: the log on disk (sqlite and
    segments) never exceeds 2 x state + one entry."""
    state, entry = 120 * MB, 40 * MB
    storage = SqliteStorage(tmp_path / "r.db")
    policy = CompactionPolicy(every_entries=10_000)
    storage.save(HardState(1, 1, 0), [], None)
    snap_index, since, largest, peak = 0, 0, 0, 0
    payload = b"g" * entry
    for index in range(1, 25):
        storage.save(HardState(1, 1, index), [Entry(1, index, data=payload)], None)
        peak = max(peak, storage.disk_bytes()["log_bytes"])
        applied = index - 2  # two rounds persisted ahead of the apply
        if applied <= snap_index:
            continue
        since += entry
        largest = max(largest, entry)
        if policy.due(entries=applied - snap_index, applied_bytes=since,
                      state_bytes=state, largest_entry=largest):
            storage.compact(Snapshot(SnapshotMeta(applied, 1, (1, 2, 3)), b"s" * state))
            snap_index, since, largest = applied, 0, 0
    assert snap_index > 15  # it did compact, repeatedly
    assert 2 * state <= peak <= 2 * state + entry  # the bound is used, never passed
    storage.close()
