"""What ``bench.scale`` reads from a raftps run's ``summary.json`` and ``metrics.jsonl``: the
leader changes per shard and the per-replica stats (peak log, RSS, private memory, snapshot
bytes), keyed ``shard-<s>/replica-<i>`` like the polled peaks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def leader_changes(summary: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> Any:
    """``summary.json``'s ``leader_changes`` (per shard); else the last metrics line's
    (per shard, so far), when it has a non-empty one; else None."""
    if summary.get("leader_changes") is not None:
        return summary["leader_changes"]
    last = records[-1].get("leader_changes") if records else None
    return last or None


def log_peak_over_state(peak_log: Mapping[str, float],
                        state: Mapping[str, float]) -> float | None:
    """The largest ``peak_log[r] / state[r]`` over the replicas with a non-zero state (how
    many shard states a replica's log held at its peak); None when there is none."""
    ratios = [float(peak_log[k]) / float(state[k]) for k in peak_log if state.get(k)]
    return max(ratios) if ratios else None


_SUMMARY_FIELDS = {"summary_peak_log_bytes": "peak_log_bytes",
                   "summary_peak_rss_bytes": "peak_rss_bytes",
                   "summary_peak_private_bytes": "peak_private_bytes",
                   "snapshot_bytes": "snapshot_bytes"}


def summary_replica_stats(summary: Mapping[str, Any]) -> dict[str, Any]:
    """``summary.json``'s per-replica stats (``replicas``: per shard, per live replica), keyed
    ``shard-<s>/replica-<i>`` like the polled peaks: ``summary_peak_log_bytes``,
    ``summary_peak_rss_bytes``, ``snapshot_bytes``, their ``log_peak_over_state``, and the
    run's ``failovers``; each is None when the summary lacks it."""
    shards = summary.get("replicas")
    out: dict[str, Any] = {"failovers": summary.get("failovers")}
    if not isinstance(shards, list):
        return out | dict.fromkeys(_SUMMARY_FIELDS) | {"log_peak_over_state": None}
    for name, field in _SUMMARY_FIELDS.items():
        out[name] = {f"shard-{s}/replica-{r.get('index', i)}": int(r[field])
                     for s, shard in enumerate(shards) for i, r in enumerate(shard)
                     if r.get(field) is not None}
    out["log_peak_over_state"] = log_peak_over_state(out["summary_peak_log_bytes"],
                                                     out["snapshot_bytes"])
    return out
