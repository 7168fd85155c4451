"""Shared fixtures: one Ray cluster per test session, never one per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

TIER_BY_FOLDER = {"unit": "unit", "sim": "sim", "integration": "integration",
                  "chaos": "chaos", "soak": "soak"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with the tier of the folder it lives in."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        for folder, marker in TIER_BY_FOLDER.items():
            if folder in parts:
                item.add_marker(getattr(pytest.mark, marker))


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """Start one embedded Ray for the whole test session (about 7 s on 2 cores)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",  # never attach to a cluster another process left running
            num_cpus=int(os.environ.get("RAFTPS_TEST_CPUS", "8")),
            include_dashboard=False,
            log_to_driver=False,
            namespace="raftps-tests",
        )
    yield
    ray.shutdown()
