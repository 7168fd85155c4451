"""The markdown table and error lines of ``bench.scale``'s results (``{size: {side: entry}}``).

One row per (size, side): samples/s, its ratios to the same size's ``ray_ps_adam`` and
``torch_single`` and, for the raftps sides, to its ``ceiling`` (raftps' data plane without
Raft: how much of that upper bound a raftps side reaches), the median round breakdown in
milliseconds, the largest per-replica peak log and RSS (MB, as the harness polled them), the
largest ratio of a replica's peak log to its shard state (``summary.json``'s
``peak_log_bytes / snapshot_bytes``), the mean CPU cores of the leaders and followers (a
peer: its server actors) and of the whole machine (``bench.scale_cpu``), leader changes per
run and how many runs succeeded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bench.common import markdown_table
from bench.models import HIDDEN, parameter_count
from bench.scale_config import BREAKDOWN_FIELDS, RAFTPS_SIDES
from bench.scale_cpu import cpu_cell

TABLE_HEADERS = ["size", "side", "samples/s", "× Ray PS", "× torch", "× ceiling",
                 "round ms: publish/compute/aggregate/commit (wall)",
                 "peak log MB/replica (max)", "peak RSS MB/replica (max)",
                 "peak private MB/replica (max)", "log peak / state",
                 "CPU cores: leaders/followers or actors (machine)",
                 "leader changes", "ok runs"]


def _ms(value: Any) -> str:
    if value is None or value != value:
        return "-"
    return f"{float(value) * 1000:.0f}"


def breakdown_cell(breakdown: Mapping[str, float] | None) -> str:
    """``publish/compute/aggregate/commit (wall)`` in milliseconds; ``-`` for what is missing."""
    if not breakdown:
        return "-"
    parts = "/".join(_ms(breakdown.get(f)) for f in BREAKDOWN_FIELDS)
    return f"{parts} ({_ms(breakdown.get('round_s'))})"


def max_cell(per_replica: Mapping[str, float] | None) -> float:
    """The largest per-replica value (the table's ``per replica`` columns); NaN if none."""
    return max(per_replica.values()) if per_replica else float("nan")


def leader_cell(per_run: Sequence[Any]) -> str:
    """Each run's per-shard leader changes (``shard:count`` of a mapping, ``a,b`` of a list),
    runs separated by ``;``; ``-`` for a run (or all runs) without them."""
    def one(value: Any) -> str:
        if isinstance(value, Mapping):
            return ",".join(f"{k}:{v}" for k, v in value.items())
        if isinstance(value, list | tuple):
            return ",".join(str(v) for v in value)
        return "-" if value is None else str(value)

    return "-" if all(v is None for v in per_run) else "; ".join(one(v) for v in per_run)


def report(results: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """The markdown table of ``bench.scale.summarize``'s results, one row per (size, side)."""
    rows = []
    for size, sides in results.items():
        label = f"{size} ({parameter_count(HIDDEN[size]) / 1e6:.1f}M)"
        for side, r in sides.items():
            runs = len(r["runs"])
            to_ceiling = r.get("ratio_to_ceiling") if side in RAFTPS_SIDES else None
            rows.append([label, side, r["samples_per_s"], r["ratio_to_ray_ps_adam"],
                         r["ratio_to_torch_single"],
                         float("nan") if to_ceiling is None else float(to_ceiling),
                         breakdown_cell(r["round_breakdown_s"]),
                         max_cell(r["peak_log_mb_per_replica"]),
                         max_cell(r["peak_rss_mb_per_replica"]),
                         max_cell(r.get("summary_peak_private_mb_per_replica")),
                         float(r.get("log_peak_over_state", float("nan"))),
                         cpu_cell(r.get("cpu_cores_by_role"), side in RAFTPS_SIDES),
                         leader_cell(r["leader_changes"]), f"{runs - len(r['errors'])}/{runs}"])
    return markdown_table(TABLE_HEADERS, rows)


def error_lines(results: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[str]:
    """One line per failed run: ``size side: error`` (first 300 characters)."""
    return [f"{size} {side}: {error[:300]}" for size, sides in results.items()
            for side, r in sides.items() for error in r["errors"]]
