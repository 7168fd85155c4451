"""Compaction by bytes as well as by count (``consensus.compaction``), and what it keeps
on disk: a storage driven by the policy never holds more log than about twice the state
plus one entry, however large the entries."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from consensus.compaction import MIN_TRIGGER_BYTES, CompactionPolicy, stagger
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


def test_early_brings_either_trigger_sooner_by_its_fraction() -> None:
    policy = CompactionPolicy(every_entries=256)
    state, entry = 120 * MB, 40 * MB  # trigger 160 MB: four 40 MB rounds
    assert not policy.due(entries=2, applied_bytes=80 * MB, state_bytes=state,
                          largest_entry=entry, early=0.4)
    assert policy.due(entries=3, applied_bytes=120 * MB, state_bytes=state,
                      largest_entry=entry, early=0.25)  # 160 * 0.75 = 120 MB
    assert not policy.due(entries=3, applied_bytes=120 * MB, state_bytes=state,
                          largest_entry=entry)
    assert policy.due(entries=128, applied_bytes=0, state_bytes=10, largest_entry=1,
                      early=0.5)  # the count trigger too
    assert not policy.due(entries=127, applied_bytes=0, state_bytes=10, largest_entry=1,
                          early=0.5)
    with pytest.raises(ValueError, match="early"):
        policy.due(entries=1, applied_bytes=0, state_bytes=10, largest_entry=1, early=1.0)


def test_stagger_spreads_a_groups_replicas_evenly_and_offsets_groups_by_name() -> None:
    for group in ("job/shard-0", "job/shard-1", "other/shard-0"):
        phases = sorted(stagger(group, i, 3) for i in range(3))
        assert all(0.0 <= p < 1.0 for p in phases)
        gaps = [b - a for a, b in itertools.pairwise(phases)]
        assert gaps == pytest.approx([1 / 3, 1 / 3])
    assert stagger("job/shard-0", 0, 3) != stagger("job/shard-1", 0, 3)
    assert stagger("job/shard-0", 1, 3) == stagger("job/shard-0", 1, 3)  # deterministic
    assert 0.0 <= stagger("job/shard-0", 4, 3) < 1.0  # a replacement past the first three
    with pytest.raises(ValueError):
        stagger("g", -1, 3)


def test_staggered_replicas_of_a_group_never_snapshot_at_the_same_round() -> None:
    """Three replicas applying the same 40 MB rounds over a 120 MB state (20M parameters,
    Adam): with ``stagger`` no round has two of them snapshotting, after the first cycle
    (which does not know the state's size yet); without it, every snapshot round has all
    three."""
    state, entry = 120 * MB, 40 * MB

    def snapshot_rounds(early: float) -> set[int]:
        policy = CompactionPolicy(every_entries=10_000)
        rounds, last, since, known, pending = set(), 0, 0, 0, early
        for index in range(1, 41):
            since += entry
            if policy.due(entries=index - last, applied_bytes=since, state_bytes=known,
                          largest_entry=entry, early=pending if known else 0.0):
                if known:
                    pending = 0.0
                rounds.add(index)
                last, since, known = index, 0, state
        return rounds

    staggered = [snapshot_rounds(stagger("job/shard-0", i, 3)) for i in range(3)]
    later = [{r for r in rs if r > 2} for rs in staggered]
    assert all(len(rs) >= 9 for rs in later)  # each still snapshots every four rounds
    assert not (later[0] & later[1]) and not (later[0] & later[2]) \
        and not (later[1] & later[2])
    aligned = [snapshot_rounds(0.0) for _ in range(3)]
    assert aligned[0] == aligned[1] == aligned[2]
