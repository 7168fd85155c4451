"""What one committed round did, as the driver reports it (metrics.jsonl, progress)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class RoundResult:
    """What one committed round did; times are driver-observed seconds.

    publish_s: pull until parameter refs exist. compute_s: launch until the last accepted
    contribution. aggregate_s: time in submit/close calls. commit_s: waiting for the version.
    """

    round: int
    contributors: int
    samples: int
    loss_sum: float
    correct: float
    """The metric's per-sample values summed over the round (accuracy: samples right)."""
    publish_s: float
    compute_s: float
    aggregate_s: float
    commit_s: float
    wall_s: float
    devices: tuple[str, ...] = ()
    """Where the round's gradient tasks ran (``cpu``, ``cuda``), sorted and unique."""
    leader_changes: tuple[int, ...] = ()
    """Per shard: leader changes seen so far in this run, as the shard's leader counts them
    (new (term, leader) pairs after the first; a healthy run stays at 0). Empty when the
    round loop does not learn them per round (then summary.json still has them)."""
    failovers: int = 0
    """Times so far the driver recovered rounds after losing a replica, a leader or a node."""
