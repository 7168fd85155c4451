"""``python -m bench.raft [--quick]``: raftps' RaftGroup vs PySyncObj, three replicas each.

Measured on both sides, with the same payloads (``bench.common.payload``: 7-bit random bytes):

- ``p50_ms_100b`` / ``p99_ms_100b`` (and ``_1mb``): latency of one proposal at a time, from
  submit until the leader applied it;
- ``ops_per_s_100b``: throughput with many 100-byte proposals in flight: all
  ``throughput_ops`` submitted at once, one command per call, each with its own completion
  (raftps: ``propose_async`` futures; PySyncObj: its callbacks);
- ``mb_per_s_1mb``: throughput with several 1 MB proposals in flight;
- ``failover_s``: the leader is killed; seconds until the next proposal commits.

raftps: ``RaftGroup.create`` with the default ``RaftGroupConfig`` (20 ms ticks, elections
after 10-20 ticks = 200-400 ms, heartbeats every tick), sqlite storage that fsyncs before
acknowledging, proposals from this driver process (a Ray actor call to the leader per
batch). Queued ``propose_async``/``propose`` calls are coalesced by the client into shared
entries (client group commit, ``consensus.coalescer``; PySyncObj batches too), and replicas
talk to each other over TCP (``consensus.transport``). Failover = ``ray.kill`` of the
leader's actor (no restart), then ``group.propose`` (the client finds the new leader).
Extras (raftps only): ``ops_per_s_100b_threads`` = ``--inflight`` client threads each
blocking in ``propose`` (latency-bound: that many in flight), ``ops_per_s_100b_batched`` =
``propose_batch`` calls of ``batch`` commands, 4 in flight; ``failover_s_shard_timing_kill``
and ``_freeze`` = the failover of a fresh group with the parameter shards' Raft timing (an
election timeout of 1-2 s), its leader killed (followers see its connections close and
campaign at once) or frozen with SIGSTOP (a hung leader: only the timeout replaces it).

PySyncObj: see ``bench.peers.pysyncobj_peer`` for the exact ``SyncObjConf`` (timers set to the
same 200-400 ms election window), proposals issued inside the leader's process (no client
hop, unlike raftps), in-memory log.

Each side runs ``repeats`` times, interleaved (raftps, PySyncObj, raftps, ...), each time on a
fresh group/cluster; every key is the median of its repeats (raw values under ``repeats``),
and ``ratios`` gives raftps / PySyncObj per key. Writes ``bench/results/raft.json`` as
``{"raftps": {...}, "pysyncobj": {...}}`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from bench.common import (
    interleaved_order,
    markdown_table,
    median,
    payload,
    percentile,
    ratio,
    write_results,
)
from bench.peers.pysyncobj_peer import CONF_OVERRIDES, PySyncObjCluster
from consensus.memory_log import remove_storage_tree

SMALL = 100
LARGE = 1 << 20
KEYS = ("p50_ms_100b", "p99_ms_100b", "ops_per_s_100b", "p50_ms_1mb", "p99_ms_1mb",
        "mb_per_s_1mb", "failover_s")


@dataclass(frozen=True, kw_only=True)
class RaftBenchConfig:
    """How much work each measurement does (``--quick`` shrinks every count)."""

    latency_ops: int = 500  # sequential 100 B proposals for p50/p99
    latency_ops_1mb: int = 30  # sequential 1 MB proposals
    throughput_ops: int = 10_000  # 100 B proposals for ops/s
    throughput_ops_1mb: int = 60  # 1 MB proposals for MB/s
    inflight: int = 32  # concurrent proposals (raftps: client threads)
    inflight_1mb: int = 8  # concurrent 1 MB proposals (raftps)
    batch: int = 1000  # commands per propose_batch call (raftps extra)
    timeout_s: float = 120.0  # limit on any one measurement
    repeats: int = 3  # interleaved runs of each side; medians are reported

    def __post_init__(self) -> None:
        for key, value in asdict(self).items():
            if value <= 0:
                raise ValueError(f"RaftBenchConfig.{key} must be > 0, got {value}")

    @classmethod
    def quick(cls) -> RaftBenchConfig:
        return cls(latency_ops=150, latency_ops_1mb=10, throughput_ops=10_000,
                   throughput_ops_1mb=16, timeout_s=20.0, repeats=3)


def _latency_stats(seconds: list[float], suffix: str) -> dict[str, float]:
    return {f"p50_ms_{suffix}": percentile(seconds, 50) * 1e3,
            f"p99_ms_{suffix}": percentile(seconds, 99) * 1e3}


# ---------------------------------------------------------------------------- raftps


class CounterMachine:
    """The replicated state of both sides: a count of commands and of their bytes."""

    def __init__(self) -> None:
        self.commands = 0
        self.total_bytes = 0

    def apply(self, command: bytes) -> int:
        self.commands += 1
        self.total_bytes += len(command)
        return self.commands

    def snapshot(self) -> bytes:
        return f"{self.commands},{self.total_bytes}".encode()

    def restore(self, data: bytes) -> None:
        commands, total = data.decode().split(",")
        self.commands, self.total_bytes = int(commands), int(total)

    def query(self, query: Any) -> Any:
        return (self.commands, self.total_bytes)


def _sequential(group: Any, size: int, count: int) -> list[float]:
    data = payload(size)
    out = []
    for _ in range(count):
        start = time.perf_counter()
        group.propose(data, timeout=30.0)
        out.append(time.perf_counter() - start)
    return out


def _concurrent(group: Any, size: int, count: int, threads: int) -> float:
    """Seconds to commit ``count`` proposals issued from ``threads`` client threads."""
    data = payload(size)
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda _i: group.propose(data, timeout=60.0), range(count)))
    return time.perf_counter() - start


def _batched(group: Any, cfg: RaftBenchConfig) -> float:
    """ops/s with ``propose_batch`` of ``cfg.batch`` commands, a few batches in flight."""
    data = payload(SMALL)
    calls = max(1, cfg.throughput_ops // cfg.batch)
    start = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _i: group.propose_batch([data] * cfg.batch, 60.0), range(calls)))
    return calls * cfg.batch / (time.perf_counter() - start)


def _async(group: Any, count: int) -> float:
    """ops/s with ``count`` single-command ``propose_async`` calls submitted at once."""
    data = payload(SMALL)
    start = time.perf_counter()
    futures = [group.propose_async(data, 60.0) for _ in range(count)]
    for fut in futures:
        fut.result(timeout=90.0)
    return count / (time.perf_counter() - start)


def _raftps_failover(group: Any, how: str = "kill") -> float:
    """Seconds from stopping the leader to the next commit. ``kill``: its process is killed,
    so its connections close and its followers campaign at once (``RaftNode.peer_gone``).
    ``freeze``: SIGSTOP, a hung leader whose connections stay open: only the election
    timeout replaces it (it is resumed afterwards)."""
    import os
    import signal

    import ray

    leader = group.leader_index(timeout=30.0)
    pid = next(int(r["pid"]) for r in group.status() if r.get("index") == leader)
    stopped = time.monotonic()
    if how == "kill":
        ray.kill(group.handles()[group.indices().index(leader)], no_restart=True)
    else:
        os.kill(pid, signal.SIGSTOP)
    try:
        group.propose(b"after-failover", timeout=60.0)
        return time.monotonic() - stopped
    finally:
        if how == "freeze":
            os.kill(pid, signal.SIGCONT)


def _shard_timing_failover(how: str) -> float:
    """``_raftps_failover`` of a fresh 3-replica group with the parameter shards' timing
    (1-2 s election timeout)."""
    from consensus.group import RaftGroup
    from paramserver.server_config import default_group_config

    storage = tempfile.mkdtemp(prefix="raftps-bench-failover-")
    group = RaftGroup.create(f"bench-{uuid.uuid4().hex[:8]}/shard-0", replicas=3,
                             state_machine=CounterMachine, storage_dir=storage,
                             config=default_group_config())
    try:
        group.propose(b"warm-up", timeout=60.0)
        return _raftps_failover(group, how)
    finally:
        group.shutdown()
        remove_storage_tree(str(storage))


def measure_raftps(cfg: RaftBenchConfig) -> dict[str, Any]:
    """All measurements on one fresh 3-replica group (storage in a temp dir, removed after).

    Needs ``ray.init``; blocks for the whole run; kills the group's actors at the end.
    """
    from consensus.group import RaftGroup, RaftGroupConfig

    storage = tempfile.mkdtemp(prefix="raftps-bench-raft-")
    group = RaftGroup.create(f"bench-{uuid.uuid4().hex[:8]}/shard-0", replicas=3,
                             state_machine=CounterMachine, storage_dir=storage)
    try:
        group.propose(b"warm-up", timeout=60.0)
        out: dict[str, Any] = _latency_stats(_sequential(group, SMALL, cfg.latency_ops), "100b")
        out |= _latency_stats(_sequential(group, LARGE, cfg.latency_ops_1mb), "1mb")
        out["ops_per_s_100b"] = _async(group, cfg.throughput_ops)
        secs = _concurrent(group, LARGE, cfg.throughput_ops_1mb, cfg.inflight_1mb)
        out["mb_per_s_1mb"] = cfg.throughput_ops_1mb / secs
        secs = _concurrent(group, SMALL, cfg.throughput_ops // 4, cfg.inflight)
        out["ops_per_s_100b_threads"] = cfg.throughput_ops // 4 / secs
        out["ops_per_s_100b_batched"] = _batched(group, cfg)
        out["failover_s"] = _raftps_failover(group)
        out["failover_s_shard_timing_kill"] = _shard_timing_failover("kill")
        out["failover_s_shard_timing_freeze"] = _shard_timing_failover("freeze")
        out["config"] = {k: v for k, v in asdict(RaftGroupConfig()).items() if k != "seed"}
        out["client"] = {"inflight_threads": cfg.inflight, "inflight_threads_1mb": cfg.inflight_1mb}
        return out
    finally:
        group.shutdown()
        remove_storage_tree(str(storage))


# ---------------------------------------------------------------------------- PySyncObj


def measure_pysyncobj(cfg: RaftBenchConfig) -> dict[str, Any]:
    """All measurements on one fresh 3-process PySyncObj cluster; stops it at the end.

    A measurement that fails (PySyncObj sometimes loses 1 MB entries) is recorded as NaN
    with its error under ``errors``, so the other numbers survive.
    """
    out: dict[str, Any] = {"conf": dict(CONF_OVERRIDES), "errors": {}}
    steps: list[tuple[str, Callable[[PySyncObjCluster, int], dict[str, Any]]]] = [
        ("100b", lambda c, i: _latency_stats(
            c.call(i, "latency", SMALL, cfg.latency_ops, 10.0, timeout=cfg.timeout_s), "100b")),
        ("ops", lambda c, i: {"ops_per_s_100b": cfg.throughput_ops / c.call(
            i, "throughput", SMALL, cfg.throughput_ops, cfg.timeout_s, timeout=cfg.timeout_s + 5)}),
        ("1mb", lambda c, i: _latency_stats(
            c.call(i, "latency", LARGE, cfg.latency_ops_1mb, 20.0, timeout=cfg.timeout_s), "1mb")),
        ("mb", lambda c, i: {"mb_per_s_1mb": cfg.throughput_ops_1mb / c.call(
            i, "throughput", LARGE, cfg.throughput_ops_1mb, cfg.timeout_s,
            timeout=cfg.timeout_s + 5)}),
    ]
    with PySyncObjCluster() as cluster:
        for name, step in steps:
            try:
                out |= step(cluster, cluster.wait_leader())
            except Exception as exc:
                out["errors"][name] = f"{type(exc).__name__}: {exc}"
        out["failover_s"] = _pysyncobj_failover(cluster)
    for key in KEYS:
        out.setdefault(key, float("nan"))
    return out


def _pysyncobj_failover(cluster: PySyncObjCluster) -> float:
    leader = cluster.wait_leader()
    survivor = next(i for i in cluster.alive() if i != leader)
    killed = cluster.kill(leader)
    committed: float = cluster.call(survivor, "commit", 60.0, timeout=65.0)
    return committed - killed


# ---------------------------------------------------------------------------- main


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per side: the median of every numeric key over its repeats, the raw values under
    ``repeats``, the first run's settings/errors; raftps gets ``ratios`` to PySyncObj."""
    out: dict[str, dict[str, Any]] = {}
    for side, side_runs in runs.items():
        numeric = sorted({k for r in side_runs for k, v in r.items()
                          if isinstance(v, int | float) and not isinstance(v, bool)})
        merged: dict[str, Any] = {k: v for k, v in side_runs[0].items() if k not in numeric}
        merged["repeats"] = {k: [r.get(k, float("nan")) for r in side_runs] for k in numeric}
        merged |= {k: median([v for v in merged["repeats"][k] if v == v]) for k in numeric}
        errors = [r["error"] for r in side_runs if "error" in r]
        if errors:
            merged["error"] = errors
        out[side] = merged
    if "raftps" in out and "pysyncobj" in out:
        out["raftps"]["ratios"] = {k: ratio(out["raftps"].get(k, float("nan")),
                                            out["pysyncobj"].get(k, float("nan")))
                                   for k in KEYS}
    return out



def report(results: dict[str, dict[str, Any]]) -> str:
    """The markdown table printed at the end (one row per metric, one column per side)."""
    sides = list(results)
    ratios = results.get("raftps", {}).get("ratios", {})
    rows = [[key, *(results[s].get(key, float("nan")) for s in sides),
             ratios.get(key, float("nan"))] for key in KEYS]
    for extra in ("ops_per_s_100b_threads", "ops_per_s_100b_batched",
                  "failover_s_shard_timing_kill", "failover_s_shard_timing_freeze"):
        rows.append([extra, *(results[s].get(extra, float("nan")) for s in sides), float("nan")])
    return markdown_table(["metric (median)", *sides, "raftps / pysyncobj"], rows)


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small counts (about 1 minute)")
    args = parser.parse_args(argv)
    cfg = RaftBenchConfig.quick() if args.quick else RaftBenchConfig()
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False,
                 namespace="raftps-bench")  # never attach to a cluster found on the machine
    sides: dict[str, Callable[[RaftBenchConfig], dict[str, Any]]] = {
        "raftps": measure_raftps, "pysyncobj": measure_pysyncobj}
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for rep, side in interleaved_order(list(sides), cfg.repeats):
        started = time.perf_counter()
        try:
            run = sides[side](cfg)
        except Exception as exc:
            run = {"error": f"{type(exc).__name__}: {exc}"}
        run["wall_s"] = time.perf_counter() - started
        runs[side].append(run)
        print(f"[bench.raft] repeat {rep} {side} done in {run['wall_s']:.1f}s")
    results = summarize(runs)
    results["_settings"] = asdict(cfg) | {"quick": args.quick}
    path = write_results("raft", results)
    print(report({k: v for k, v in results.items() if not k.startswith("_")}))
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
