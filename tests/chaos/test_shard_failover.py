"""Kill shard leaders while rounds are in flight: no round lost, none applied twice."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray

from paramserver.server import ParameterServer
from tests.integration.test_parameter_server import (
    SHAPES,
    initial_tensors,
    make_config,
    push_round,
    reference,
)

pytestmark = pytest.mark.usefixtures("ray_session")
ROUNDS = 24


def wait_restarted_version(handle: Any, version: int, limit_s: float = 90.0) -> None:
    """Wait until the replica behind ``handle`` applied ``version`` rounds. A killed one
    may still be restarting (its process imports torch), and Ray refuses calls to it
    meanwhile: ask again until it answers (polling Ray's actor state, not timing logic)."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            ray.get(handle.call_service.remote("wait_version", version, 60.0,
                                               leader_only=False), timeout=limit_s)
            return
        except ray.exceptions.ActorUnavailableError:
            assert time.monotonic() < deadline, "the killed replica never came back"
            time.sleep(0.1)


def test_leader_killed_mid_round_resubmits_and_applies_exactly_once(tmp_path: Path) -> None:
    ps = ParameterServer.create(make_config(tmp_path), initial_tensors())
    try:
        for r in range(ROUNDS):
            push_round(ps, r)
            if r in (5, 14):  # the round's contributions are in flight at the leader
                group = ps.groups[r % 2]
                ray.kill(group.leader(), no_restart=False)
            ps.wait_version(r + 1, timeout=90)
        got = ps.state_dict()
        want = reference(ROUNDS)
        for k in SHAPES:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-6)
        for group in ps.groups:
            for handle in group.handles():
                wait_restarted_version(handle, ROUNDS)
            snaps = group.snapshots()
            assert len(snaps) == 3, "the killed replica was restarted from its storage"
            assert len(set(snaps.values())) == 1
        assert [s["version"] for s in ps.status()] == [ROUNDS, ROUNDS]
    finally:
        ps.shutdown()
