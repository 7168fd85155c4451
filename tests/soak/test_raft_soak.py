"""Soak: many more simulator seeds (``RAFTPS_SOAK_SEEDS``, default 10000; start at
``RAFTPS_SOAK_START``). Excluded by default; run with ``make soak`` or ``-m soak``."""

from __future__ import annotations

import os

from consensus.invariants import InvariantViolation
from consensus.sim import run_seed
from tests.sim.test_raft_sim import STEPS, profile_for


def test_soak_many_seeds() -> None:
    start = int(os.environ.get("RAFTPS_SOAK_START", "0"))
    count = int(os.environ.get("RAFTPS_SOAK_SEEDS", "10000"))
    failures: list[str] = []
    for seed in range(start, start + count):
        try:
            run_seed(seed, STEPS, profile_for(seed))
        except InvariantViolation as exc:
            failures.append(str(exc))
            if len(failures) >= 5:
                break
    assert not failures, "\n".join(failures)
