"""Which replica starts must run with RaftConfig.lost_state (a restart that lost its disk)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from consensus.lost_state import detect_lost_state, marker_path, peers_started_empty


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


def _asker(answers: dict[int, list[bool | None]], asked: list[int]) -> Any:
    """Peer -> scripted answers in order; None means "cannot be reached yet"."""
    async def ask(peer: int) -> bool:
        asked.append(peer)
        answer = answers[peer].pop(0)
        if answer is None:
            raise ConnectionError(f"peer {peer} not up yet")
        return answer
    return ask


def test_a_fresh_group_is_confirmed_once_every_peer_has_answered() -> None:
    asked: list[int] = []
    ask = _asker({2: [None, None, True], 3: [True]}, asked)
    assert asyncio.run(peers_started_empty([2, 3], ask, retry_s=0.0))
    assert asked == [2, 3, 2, 2]  # 3 answered at once and is not asked again


def test_one_peer_with_state_means_the_group_existed() -> None:
    asked: list[int] = []
    ask = _asker({2: [None, True], 3: [None, False]}, asked)
    assert not asyncio.run(peers_started_empty([2, 3], ask, retry_s=0.0))
    assert asked == [2, 3, 2, 3]
