"""The shard groups' health, as the driver and operators read it: terms, leader changes,
per-replica peaks, the full status, and ``heal`` (replacing replicas that were lost).

Every query is one status round over all the shards' replicas at once
(``consensus.group.statuses_of``), bounded, so a replica that is down or restarting holds
nothing up for longer than the round's bound, whatever the shard count. The
``ParameterServer`` facade delegates to these functions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import ray

from consensus import ConsensusError, RaftGroup
from consensus.group import statuses_of

LOG = logging.getLogger(__name__)

HEAL_STATUS_S = 0.25
"""heal's status round: a live replica answers in milliseconds, and the training waits at
the epoch barrier while heal runs."""
STATS_STATUS_S = 2.0
"""The status round of the queries an operator or a summary makes (not on the round path)."""

__all__ = ["HEAL_STATUS_S", "heal", "leader_changes", "replica_stats", "shard_status",
           "terms"]


def terms(groups: Sequence[RaftGroup], wait_s: float) -> list[int]:
    """Per shard, the highest Raft term its replicas report within ``wait_s`` seconds (-1
    where none answers). A term above the one a shard's leader answered under means that
    leader was replaced (``jobs.leader_watch``)."""
    return [max((int(r["term"]) for r in replicas if r.get("alive") and "term" in r),
                default=-1)
            for replicas in statuses_of(groups, wait_s)]


def leader_changes(groups: Sequence[RaftGroup]) -> list[int]:
    """Per shard: the most leader changes any live replica saw since it started."""
    return [max((int(r.get("leader_changes", 0)) for r in replicas), default=0)
            for replicas in statuses_of(groups, STATS_STATUS_S)]


_STAT_KEYS = ("index", "role", "leader_changes", "peak_log_bytes", "snapshot_bytes",
              "peak_rss_bytes", "peak_private_bytes", "disk_bytes", "cpu_s")


def replica_stats(groups: Sequence[RaftGroup]) -> list[list[dict[str, Any]]]:
    """Per shard, per live replica: ``_STAT_KEYS`` of its status."""
    return [[{k: r[k] for k in _STAT_KEYS if k in r} for r in replicas if r.get("alive")]
            for replicas in statuses_of(groups, STATS_STATUS_S)]


def shard_status(groups: Sequence[RaftGroup], timeout: float) -> list[dict[str, Any]]:
    """Per shard: name, leader replica, version, and per replica its status plus the
    version and digest its shard service reports (within ``timeout``)."""
    statuses = statuses_of(groups, STATS_STATUS_S)
    calls = {h.call_service.remote("info", leader_only=False): (s, i)
             for s, group in enumerate(groups) for i, h in enumerate(group.handles())}
    ready, _ = ray.wait(list(calls), num_returns=len(calls), timeout=timeout)
    for ref in ready:
        s, i = calls[ref]
        try:
            info = ray.get(ref, timeout=0)
        except ray.exceptions.RayError:
            statuses[s][i]["alive"] = False
            continue
        statuses[s][i].update(version=info["version"], digest=info["digest"])
    out = []
    for s, (group, replicas) in enumerate(zip(groups, statuses, strict=True)):
        leader = next((r["index"] for r in replicas if r.get("role") == "LEADER"), None)
        versions = [int(r["version"]) for r in replicas if "version" in r]
        out.append({"shard": s, "group": group.name, "leader": leader,
                    "version": max(versions, default=None), "replicas": replicas})
    return out


def heal(groups: Sequence[RaftGroup], timeout: float) -> list[tuple[int, int, int]]:
    """``RaftGroup.heal`` of every shard, after one status round of at most
    ``HEAL_STATUS_S`` for all: ``(shard, old index, new index)`` per replacement. A shard
    whose replacement fails or is refused is logged with the reason and skipped."""
    healed = []
    statuses = statuses_of(groups, HEAL_STATUS_S)
    for shard, group in enumerate(groups):
        try:
            replaced = group.heal(timeout=timeout, statuses=statuses[shard])
        except (ConsensusError, ValueError, TimeoutError, ray.exceptions.RayError) as exc:
            # a flagged replica never votes and a dead one is just one voter short, so the
            # shard is safe; training goes on and the next epoch end tries again
            LOG.warning("shard %d: could not replace a lost replica (%s); will retry at the "
                        "next epoch end", shard, exc)
            continue
        for old, new in replaced.items():
            LOG.warning("shard %d: replica %d lost its storage or stayed unreachable; "
                        "replaced by replica %d", shard, old, new)
            healed.append((shard, old, new))
    return healed
