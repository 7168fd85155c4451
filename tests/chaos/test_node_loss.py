"""Lose a whole node (``ray.cluster_utils.Cluster``) mid-training: same model bytes.

The multi-node cluster needs its own Ray, so the job runs in a child process
(``tests/chaos/node_loss_job.py``): 1 head + 3 worker nodes, one clean run, then the same
job while the worker node hosting shard 0's leader (else another shard-0 replica) is
removed without warning. Ray restarts the replica elsewhere, the driver replays the
pipelined rounds it lost, and the model file must be byte-identical to the clean run's. In
the rare case where a replayed round's gradients died with the node after another shard
applied the round, the job stops with "rerun with --resume" and the child resumes it from
its checkpoint, as a user would: the bytes must still match.
"""

from __future__ import annotations

from pathlib import Path

from tests.chaos.cluster_job import run_cluster_job


def test_removing_a_node_with_a_shard_replica_changes_no_byte(tmp_path: Path) -> None:
    result, stderr = run_cluster_job("tests.chaos.node_loss_job", tmp_path)
    assert result["removed"], "no node was removed; the test proved nothing"
    assert result["rounds"] == [48, 48]
    assert result["faulty"] == result["clean"]
    if not result["resumed"]:  # a handled failover leaves no error behind
        assert "Unhandled error" not in stderr
