"""SIGKILL the driver mid-training, then ``--resume``: no committed round is lost, and the
model is byte-identical to an uninterrupted run's.

The driver runs in a child process connected to the session's Ray
(``tests/chaos/driver_kill_job.py``), so killing it takes its replicas down with it (they
are its actors) and leaves their Raft logs on disk, as a killed ``ray job`` would. The
resumed job reloads the logs: when every shard applied the same rounds it continues from
there ("from the Raft logs"); when the kill fell between two shards' commits of a round it
continues from the checkpoint of round 8. Either way it says which, in one line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from jobs import train
from jobs.backend import RaftServerBackend
from tests.chaos.conftest import CleanRun
from tests.chaos.test_train_kill import config, wait_for_rounds

pytestmark = pytest.mark.usefixtures("ray_session")
ROOT = Path(__file__).resolve().parents[2]
KILL_AFTER = 13  # rounds logged; the last checkpoint before it is round 8's


def test_a_killed_driver_resumes_without_losing_a_round(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], clean_run: CleanRun) -> None:
    clean = clean_run
    out, job = tmp_path / "killed", "dk-killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    address = ray.get_runtime_context().gcs_address
    child = subprocess.Popen([sys.executable, "-m", "tests.chaos.driver_kill_job", str(out),
                              job, address], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_for_rounds(out, KILL_AFTER)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    logged = len((out / "metrics.jsonl").read_text().splitlines())
    assert KILL_AFTER <= logged < clean.rounds, "the driver was not killed mid-training"
    capsys.readouterr()
    resumed = train(dataclasses.replace(config(out, job), resume=True),
                    backend=RaftServerBackend())
    line = next(x for x in capsys.readouterr().err.splitlines() if x.startswith("resuming"))
    found = re.fullmatch(r"resuming at round (\d+) from (the Raft logs|checkpoint round-8) "
                         r"\((.*)\)", line)
    assert found, line
    start, source = int(found.group(1)), found.group(2)
    if source == "the Raft logs":
        assert start >= logged, line  # every logged round and any committed after it
    else:
        assert start == 8 and "different versions" in found.group(3), line
    assert resumed.rounds == clean.rounds
    assert resumed.model_path.read_bytes() == clean.model
    rounds = [json.loads(x)["round"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rounds[-1] == clean.rounds - 1
