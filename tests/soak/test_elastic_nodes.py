"""``--workers auto`` while nodes join and leave mid-training: the bits of a static run.

The multi-node cluster needs its own Ray, so the job runs in a child process
(``tests/soak/elastic_job.py``). The elastic run must have used 2 tasks per round, then 4
once two nodes joined, then 2 again once they left, and still end with the static run's
model bytes.

About 70 s on 2 cores, so it runs with the chaos tests (``make chaos``) and the soak tier,
not in ``make test``; there,
``tests/integration/test_microbatch_e2e.py::test_auto_workers_follow_the_cluster_size_with_the_same_bits``
keeps the per-round task count and its bits under test with scripted cluster sizes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.pipeline_depth import DEPTH
from tests.chaos.cluster_job import run_cluster_job
from tests.soak.elastic_job import JOIN_AFTER

pytestmark = pytest.mark.chaos

SETTLE = 16  # rounds after the leave was logged that may still have been launched before it


def test_nodes_joining_and_leaving_change_the_task_count_but_no_byte(tmp_path: Path) -> None:
    result, _ = run_cluster_job("tests.soak.elastic_job", tmp_path)
    assert [what for what, _ in result["events"]] == ["joined", "left"], result["events"]
    assert result["rounds"] == [192, 192]
    counts = result["contributors"]
    left = result["events"][1][1]  # rounds logged when the nodes had left
    assert set(counts) <= {2, 3, 4}, counts  # one task per CPU: 2, then 3 and 4, then 2
    assert set(counts[:JOIN_AFTER]) == {2}, counts  # launched before any node joined
    assert 4 in counts[:left + DEPTH + 1], counts  # the joined nodes were used
    assert set(counts[left + SETTLE:]) == {2}, counts  # and no longer once they left
    assert len(counts) > left + SETTLE + 16, "too few rounds after the leave to tell"
    assert result["elastic"] == result["static"]
