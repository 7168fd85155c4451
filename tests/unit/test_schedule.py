"""The batch schedule is exactly docs/DESIGN.md's: depends on seed and G only, never on N."""

from __future__ import annotations

import numpy as np
import pytest

from workers.errors import ScheduleError
from workers.schedule import BatchSchedule, check_split


def test_epoch_permutation_is_default_rng_of_seed_and_epoch() -> None:
    s = BatchSchedule(seed=7, global_batch=10, n_train=53)
    expected = np.random.default_rng([7, 3]).permutation(53)
    np.testing.assert_array_equal(s.permutation(3), expected)
    assert s.batches_per_epoch == 5  # 53 // 10: the partial last batch is dropped


def test_global_batch_is_a_contiguous_window_of_the_permutation() -> None:
    s = BatchSchedule(seed=1, global_batch=8, n_train=30)
    perm = np.random.default_rng([1, 2]).permutation(30)
    np.testing.assert_array_equal(s.global_batch_indices(2, 1), perm[8:16])
    with pytest.raises(ScheduleError, match="out of range"):
        s.global_batch_indices(2, 3)  # positions 24..32 would be a partial batch


@pytest.mark.parametrize("workers", [1, 2, 4, 8])
def test_worker_slices_concatenate_to_the_global_batch_for_any_n(workers: int) -> None:
    s = BatchSchedule(seed=5, global_batch=16, n_train=100)
    slices = [s.worker_indices(1, 2, rank, workers) for rank in range(workers)]
    assert all(len(sl) == 16 // workers for sl in slices)
    np.testing.assert_array_equal(np.concatenate(slices), s.global_batch_indices(1, 2))


def test_schedule_changes_with_seed_and_epoch() -> None:
    a = BatchSchedule(seed=0, global_batch=4, n_train=40)
    b = BatchSchedule(seed=1, global_batch=4, n_train=40)
    assert not np.array_equal(a.permutation(0), b.permutation(0))
    assert not np.array_equal(a.permutation(0), a.permutation(1))


def test_round_position_maps_rounds_to_epoch_and_batch() -> None:
    s = BatchSchedule(seed=0, global_batch=10, n_train=35)  # 3 batches per epoch
    assert s.round_position(0) == (0, 0)
    assert s.round_position(4) == (1, 1)
    assert s.round_position(6) == (2, 0)


def test_invalid_sizes_raise_schedule_errors() -> None:
    with pytest.raises(ScheduleError, match="exceeds"):
        BatchSchedule(seed=0, global_batch=11, n_train=10)
    with pytest.raises(ScheduleError, match="multiple of --workers"):
        check_split(10, 4)
    with pytest.raises(ScheduleError, match="rank"):
        BatchSchedule(seed=0, global_batch=4, n_train=10).worker_indices(0, 0, 4, 4)
