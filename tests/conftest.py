"""Shared fixtures: one Ray cluster per test session, never one per test."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from consensus.memory_log import DEFAULT_ROOT, ROOT_ENV

TIER_BY_FOLDER = {"unit": "unit", "sim": "sim", "integration": "integration",
                  "chaos": "chaos", "soak": "soak"}


def pytest_configure(config: pytest.Config) -> None:
    """Memory-durability replicas of this session keep their segments in a tmpfs folder of
    its own (under ``/dev/shm`` where there is one), removed when the session ends: tests
    that delete storage by hand leave nothing behind. Set before any Ray starts, so its
    replica processes inherit it."""
    if ROOT_ENV not in os.environ and DEFAULT_ROOT.is_dir():
        folder = tempfile.mkdtemp(prefix="raftps-tests-", dir=DEFAULT_ROOT)
        os.environ[ROOT_ENV] = folder
        config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))


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
