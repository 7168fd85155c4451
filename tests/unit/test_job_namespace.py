"""A job's shard replicas live in the Ray namespace named after the job (``--job``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from jobs.backend import RaftServerBackend
from jobs.config import TrainConfig


def test_the_backend_puts_the_shard_actors_in_the_jobs_namespace(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from paramserver.server import ParameterServer

    seen: list[Any] = []

    def create(cls: type, config: Any, initial: Any, buffers: Any) -> str:
        seen.append(config)
        return "server"

    monkeypatch.setattr(ParameterServer, "create", classmethod(create))
    config = TrainConfig(job="team-a.run-7", out=str(tmp_path / "out"))
    assert RaftServerBackend().create(config, {"w": np.zeros(3, np.float32)}) == "server"
    (server_config,) = seen
    assert server_config.namespace == "team-a.run-7"
    assert server_config.job == "team-a.run-7"
