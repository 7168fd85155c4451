"""``--workers auto`` while nodes join and leave mid-training: the bits of a static run.

The multi-node cluster needs its own Ray, so the job runs in a child process
(``tests/chaos/elastic_job.py``). The elastic run must have used 2 tasks per round, then 4
once two nodes joined, then 2 again once they left, and still end with the static run's
model bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from jobs.pipeline_depth import DEPTH
from tests.chaos.elastic_job import JOIN_AFTER

ROOT = Path(__file__).resolve().parents[2]
SETTLE = 16  # rounds after the leave was logged that may still have been launched before it


def test_nodes_joining_and_leaving_change_the_task_count_but_no_byte(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "tests.chaos.elastic_job", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=540,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(lines[-1])
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
