"""A replica process starts with two malloc arenas unless its creator's environment says."""

from __future__ import annotations

from consensus.replica_env import MALLOC_ARENAS, replica_env_vars


def test_replicas_default_to_two_arenas() -> None:
    assert replica_env_vars({}) == {"MALLOC_ARENA_MAX": MALLOC_ARENAS} == {"MALLOC_ARENA_MAX": "2"}


def test_the_creators_setting_wins() -> None:
    assert replica_env_vars({"MALLOC_ARENA_MAX": "8"}) == {"MALLOC_ARENA_MAX": "8"}
