"""The chaos tests' shared reference: one fault-free run of ``test_train_kill.config``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class CleanRun:
    """The rounds and model bytes of the fault-free run every faulted run must match."""

    rounds: int
    model: bytes


@pytest.fixture(scope="session")
def clean_run(tmp_path_factory: pytest.TempPathFactory, ray_session: None) -> Iterator[CleanRun]:
    """Trained once per session (the job's bits depend on its config, not on its name)."""
    from jobs import train
    from jobs.backend import RaftServerBackend
    from tests.chaos.test_train_kill import config

    out = tmp_path_factory.mktemp("chaos-clean")
    result = train(config(out, "chaos-clean"), backend=RaftServerBackend())
    yield CleanRun(rounds=result.rounds, model=result.model_path.read_bytes())
