"""``jobs.resume_point``: a resumed job continues from the shards' logs only when they agree."""

from __future__ import annotations

from jobs.resume_point import round_from_logs


def test_agreeing_logs_ahead_of_the_checkpoint_are_used() -> None:
    verdict = round_from_logs([7, 7, 7], versions_per_round=1, checkpoint_round=5)
    assert (verdict.round, verdict.why) == (7, "every shard applied 7 rounds")
    assert round_from_logs([5, 5], versions_per_round=1, checkpoint_round=5).round == 5
    assert round_from_logs([4], versions_per_round=1, checkpoint_round=None).round == 4


def test_logs_that_differ_lag_or_end_mid_round_are_not() -> None:
    assert round_from_logs([7, 6], versions_per_round=1, checkpoint_round=5).round is None
    behind = round_from_logs([3, 3], versions_per_round=1, checkpoint_round=5)
    assert behind.round is None and "before the checkpoint" in behind.why
    mid = round_from_logs([9, 9], versions_per_round=2, checkpoint_round=None)
    assert mid.round is None and "mid-round" in mid.why
    assert round_from_logs([8, 8], versions_per_round=2, checkpoint_round=None).round == 4
    assert round_from_logs([], versions_per_round=1, checkpoint_round=None).round is None


def test_empty_logs_without_a_checkpoint_start_at_round_zero() -> None:
    assert round_from_logs([0, 0], versions_per_round=1, checkpoint_round=None).round == 0
