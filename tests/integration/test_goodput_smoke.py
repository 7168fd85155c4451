"""``bench.goodput``'s harness on a tiny workload: the raftps side's fault injector really
kills a gradient task, a shard leader and a follower, and the result has the schema the
README table and goodput.json are made from."""

from __future__ import annotations

import math
from pathlib import Path

from bench.goodput import report, summarize
from bench.goodput_raftps import run
from bench.goodput_workload import FaultPlan, Workload

STEPS = 30


def test_faults_are_injected_and_the_result_has_the_schema(tmp_path: Path,
                                                          ray_session: None) -> None:
    """One faulted run (bit-identity under these faults is the chaos tests' job); its
    entry is summarized against itself, which is enough to check the schema."""
    workload = Workload(steps=STEPS, batch_per_worker=32)
    plan = FaultPlan(worker_kills_s=(0.05, 0.3, 0.6), seed=1)
    faulted = run(workload, plan, tmp_path / "faulted", faulted=True)
    assert faulted.model_sha256, faulted.errors
    assert len(faulted.step_times_s) == STEPS
    assert faulted.fault_kinds, faulted.errors  # at least one fault was really injected
    assert set(faulted.fault_kinds) <= {"worker", "leader", "follower"}
    assert faulted.lost_steps == [0] * len(faulted.fault_kinds)
    entry = summarize(faulted, faulted, workload)
    assert set(entry) >= {"wall_s_clean", "wall_s_faulted", "steady_samples_per_s", "goodput",
                          "lost_steps_per_failure", "recovery_s_median", "byte_identical",
                          "failures"}
    assert entry["failures"] == len(faulted.fault_kinds) and entry["goodput"] == 1.0
    assert entry["wall_s_faulted"] > 0
    assert not math.isnan(entry["recovery_s_median"])
    table = report({"raftps": entry})
    assert table.count("\n") >= 2 and "raftps" in table
