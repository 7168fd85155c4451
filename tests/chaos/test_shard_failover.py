"""Kill shard leaders while rounds are in flight: no round lost, none applied twice."""

from __future__ import annotations

from pathlib import Path

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
            ray.get([h.call_service.remote("wait_version", ROUNDS, 60.0, leader_only=False)
                     for h in group.handles()], timeout=90)
            snaps = group.snapshots()
            assert len(snaps) == 3, "the killed replica was restarted from its storage"
            assert len(set(snaps.values())) == 1
        assert [s["version"] for s in ps.status()] == [ROUNDS, ROUNDS]
    finally:
        ps.shutdown()
