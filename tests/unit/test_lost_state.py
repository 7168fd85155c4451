"""Which replica starts must run with RaftConfig.lost_state (a restart that lost its disk)."""

from __future__ import annotations

from pathlib import Path

from consensus.lost_state import detect_lost_state, marker_path


def test_first_start_and_joiners_are_not_flagged(tmp_path: Path) -> None:
    db = tmp_path / "replica-0.db"
    assert not detect_lost_state(db, reconstructed=False, storage_empty=True, join=False)
    assert not detect_lost_state(db, reconstructed=True, storage_empty=True, join=True)
    assert not detect_lost_state(db, reconstructed=True, storage_empty=False, join=False)
    assert not marker_path(db).exists()


def test_a_restart_without_state_is_flagged_and_the_flag_is_sticky(tmp_path: Path) -> None:
    db = tmp_path / "replica-1.db"
    assert detect_lost_state(db, reconstructed=True, storage_empty=True, join=False)
    assert marker_path(db).exists()
    # a later restart finds the log it rebuilt since, but not its old votes: still flagged
    assert detect_lost_state(db, reconstructed=True, storage_empty=False, join=False)
    assert detect_lost_state(db, reconstructed=False, storage_empty=False, join=False)
    # another replica's database is not affected
    assert not detect_lost_state(tmp_path / "replica-2.db", reconstructed=False,
                                 storage_empty=True, join=False)
