"""Where a ``bench.scale`` side's CPU goes: mean cores used by the shard leaders, by the
other replicas (followers), by any other polled actor (a peer's server), and by the whole
machine, over the side's run (``bench.scale_probe``'s first to last sample).

On a machine whose cores are all busy (``machine`` near the core count) a side is CPU-bound:
its throughput is then set by the CPU seconds a round costs, and the followers' share is
what 3 replicas cost on top of 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from statistics import median
from typing import Any

ROLES = ("leaders", "followers", "actors", "machine")


def cpu_split(cpu_cores: Mapping[str, float] | None, roles: Mapping[str, str],
              machine: float | None) -> dict[str, float | None]:
    """Sum the polled actors' mean cores by role: ``roles`` maps a replica key to its role at
    the end of the run (``summary.json``); a ``LEADER`` counts as a leader, any other
    replica as a follower, a key without a role (not a replica) as ``actors``."""
    split: dict[str, float | None] = {"leaders": 0.0, "followers": 0.0, "actors": 0.0,
                                      "machine": machine}
    for key, cores in (cpu_cores or {}).items():
        role = roles.get(key)
        bucket = "actors" if role is None else "leaders" if role == "LEADER" else "followers"
        split[bucket] = float(split[bucket] or 0.0) + cores
    return split


def side_split(peaks: Mapping[str, Any],
               summary: Mapping[str, Any] | None = None) -> dict[str, float | None]:
    """``cpu_split`` of a side's polled peaks; the roles from its ``summary.json`` (raftps)."""
    return cpu_split(peaks.get("cpu_cores"), summary_roles(summary or {}),
                     peaks.get("machine_busy_cores"))


def summary_roles(summary: Mapping[str, Any]) -> dict[str, str]:
    """``{shard-<s>/replica-<i>: role}`` from ``summary.json``'s ``replicas``."""
    shards = summary.get("replicas")
    if not isinstance(shards, list):
        return {}
    return {f"shard-{s}/replica-{r.get('index', i)}": str(r["role"])
            for s, shard in enumerate(shards) for i, r in enumerate(shard) if r.get("role")}


def median_split(runs: Sequence[Mapping[str, Any]]) -> dict[str, float] | None:
    """Per role, the median over runs of ``cpu_cores_by_role``; None if no run has one."""
    splits = [r["cpu_cores_by_role"] for r in runs if r.get("cpu_cores_by_role")]
    if not splits:
        return None
    return {role: median(float(s[role]) for s in splits) for role in ROLES
            if any(s.get(role) is not None for s in splits)}


def cpu_cell(split: Mapping[str, float] | None, replicas: bool) -> str:
    """``leaders/followers (machine)`` for a raftps side, ``actors (machine)`` for a peer."""
    if not split:
        return "-"
    machine = split.get("machine")
    tail = "" if machine is None else f" ({machine:.2f})"
    if replicas:
        return f"{split.get('leaders', 0.0):.2f}/{split.get('followers', 0.0):.2f}{tail}"
    return f"{split.get('actors', 0.0):.2f}{tail}"
