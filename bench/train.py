"""``python -m bench.train [--quick]``: training throughput of raftps next to its peers.

One run measures up to seven sides (``--quick``: five, without the two 1-shard sides) on the
same job, the benchmark MLP (784 → 256 → 128 → 10, ReLU)
on synthetic 784-feature, 10-class data, synchronous SGD with a global batch of 2048 split
over 2 workers (1024 samples each):

- ``raftps_r1`` / ``raftps_r3``: ``jobs.api.train`` (the same config the CLI builds from
  ``--data synthetic --model mlp --workers 2 --global-batch 2048 --replicas 1|3``, the
  default 2 shards; ``raftps_r3_s1``: the same with ``--shards 1``, the natural layout for a
  0.94 MB model, half the replica processes), one epoch
  of ``warmup + rounds`` global batches;
- ``ceiling`` / ``ceiling_s1``: raftps' own data plane with no Raft (the same gradient tasks,
  shard plan (2 shards / 1) and pipeline depth; one in-memory Ray actor per shard,
  ``bench.peers.task_ceiling``): what the training contract's round costs in Ray alone, so an
  upper bound for the raftps sides with the same shard count;
- ``ray_ps_example``: Ray's documented synchronous parameter server
  (``bench.peers.ray_ps_example``), ``warmup`` untimed then ``rounds`` timed iterations;
- ``torch_single``: one process, 2 torch threads, no communication
  (``bench.peers.torch_single``), ``warmup`` untimed then ``rounds`` timed steps.

Isolation: every measurement runs in its own fresh child process (``python -m bench.train
--side NAME``, which prints one JSON line), so no side inherits another's torch thread
setting, Ray workers or actors. A Ray side starts its own local Ray (``address="local"``,
``num_cpus=4``) and shuts it down before the child exits; the child's environment has
``OMP_NUM_THREADS`` & co. and ``RAY_ADDRESS`` removed (``bench.common.child_env``). Repeats
are interleaved (A B C D A B C D ...) and the medians are reported.

Steady state on every side: one-time start-up (Ray init, actor creation, worker process
start, first-touch allocations) and the ``warmup`` first rounds are excluded. raftps'
``summary.json`` ``samples_per_s`` is samples over the whole training loop, first round
included (it pays for the gradient workers' start-up), so the raftps number here is computed
from ``metrics.jsonl`` instead: samples of the rounds after the first ``warmup`` over the sum
of their wall times (``bench.common.steady_state_rate``). Sync rounds run back to back, so this
equals the steady-state throughput except for the driver's per-round bookkeeping between
rounds (one metrics line, well under a millisecond). The summary's value is kept in the
results as ``summary_samples_per_s`` for comparison.

Writes ``bench/results/train.json`` as ``{"raftps_r1": {...}, "raftps_r3": {...},
"ray_ps_example": {...}, "torch_single": {...}}``, each with ``samples_per_s`` (the median),
``repeats`` (raw values, in run order), ``p25``/``p75``, ``ratio_to_ray_example`` and
``runs`` (each child's JSON line, with the 1-minute load average before and after it: a
busy shared machine lowers every side, the multi-threaded ``torch_single`` most), and prints
a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    child_env,
    interleave,
    last_json_object,
    markdown_table,
    median,
    percentile,
    ratio,
    steady_state_rate,
    write_results,
)
from consensus.memory_log import remove_storage_tree

WORKERS = 2
GLOBAL_BATCH = 2048
RAY_CPUS = 4  # logical CPUs of every Ray side (2 gradient tasks at once; fewer idle workers)
SIDES = ("raftps_r1", "raftps_r3", "raftps_r3_s1", "ceiling", "ceiling_s1", "ray_ps_example",
         "torch_single")
# --quick keeps the four sides plus the 2-shard ceiling (about 3 min on 2 cores)
QUICK_SIDES = ("raftps_r1", "raftps_r3", "ceiling", "ray_ps_example", "torch_single")


class BenchConfigError(ValueError):
    """A benchmark setting is out of range."""


@dataclass(frozen=True, kw_only=True)
class TrainBenchConfig:
    """Size of the benchmark (``--quick`` is the small one)."""

    repeats: int = 5  # interleaved repeats of every side (>= 1)
    rounds: int = 64  # timed global batches per measurement, every side (>= 2)
    warmup: int = 5  # untimed global batches first, every side (>= 1)
    seed: int = 0  # data and init seed
    side_timeout_s: float = 240.0  # limit on one child process (start-up included)

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise BenchConfigError("TrainBenchConfig.repeats must be >= 1")
        if self.rounds < 2:
            raise BenchConfigError("TrainBenchConfig.rounds must be >= 2 (a rate needs rounds)")
        if self.warmup < 1:
            raise BenchConfigError("TrainBenchConfig.warmup must be >= 1: the first round "
                                   "pays for worker start-up on the raftps sides")
        if not self.side_timeout_s > 0:
            raise BenchConfigError("TrainBenchConfig.side_timeout_s must be > 0")

    @classmethod
    def quick(cls) -> TrainBenchConfig:
        return cls(repeats=3, rounds=32, warmup=4)


def raftps_args(replicas: int, rounds: int, out: Path, job: str, shards: int = 2) -> list[str]:
    """The CLI flags of the raftps side (one epoch of exactly ``rounds`` global batches)."""
    n_train = rounds * GLOBAL_BATCH
    return ["--data", f"synthetic:784x10x{n_train}", "--model", "mlp",
            "--workers", str(WORKERS), "--global-batch", str(GLOBAL_BATCH),
            "--replicas", str(replicas), "--shards", str(shards), "--optimizer", "sgd",
            "--lr", "0.05",
            "--epochs", "1", "--checkpoint-every", "0", "--out", str(out), "--job", job]


def measure_raftps(replicas: int, cfg: TrainBenchConfig, shards: int = 2) -> dict[str, Any]:
    """Train ``warmup + rounds`` rounds with ``jobs.api.train``; steady-state rate (see module).

    Needs Ray initialised. Blocks for the whole job; the output folder is a temp dir,
    removed afterwards.
    """
    from jobs.api import train
    from jobs.metrics import read_metrics
    from jobs.train import parse_config

    out = Path(tempfile.mkdtemp(prefix=f"raftps-bench-r{replicas}-"))
    job = f"bench-r{replicas}-{uuid.uuid4().hex[:6]}"
    try:
        config = parse_config(raftps_args(replicas, cfg.warmup + cfg.rounds, out, job, shards))
        train(dataclasses.replace(config, progress=False))
        summary = json.loads((out / "summary.json").read_text())
        records = read_metrics(out / "metrics.jsonl")
        return {"samples_per_s": steady_state_rate(records, cfg.warmup),
                "summary_samples_per_s": float(summary["samples_per_s"]),
                "timed_rounds": len(records) - cfg.warmup}
    finally:
        remove_storage_tree(str(out))


def measure_ray_example(cfg: TrainBenchConfig) -> dict[str, Any]:
    """One timed run of the Ray documentation's parameter server. Needs Ray initialised."""
    from bench.peers import ray_ps_example

    ps_cfg = ray_ps_example.RayPSConfig(workers=WORKERS, batch_per_worker=GLOBAL_BATCH // WORKERS,
                                        iterations=cfg.rounds, warmup=cfg.warmup, seed=cfg.seed)
    return {"samples_per_s": ray_ps_example.run(ps_cfg), "timed_rounds": cfg.rounds}


def measure_ceiling(cfg: TrainBenchConfig, shards: int) -> dict[str, Any]:
    """One timed run of raftps' data plane without Raft (``bench.peers.task_ceiling``)."""
    from bench.peers import task_ceiling

    ceiling_cfg = task_ceiling.TaskCeilingConfig(
        shards=shards, workers=WORKERS, batch_per_worker=GLOBAL_BATCH // WORKERS,
        iterations=cfg.rounds, warmup=cfg.warmup, seed=cfg.seed)
    return {"samples_per_s": task_ceiling.run(ceiling_cfg), "timed_rounds": cfg.rounds,
            "shards": shards}


def measure_torch(cfg: TrainBenchConfig) -> dict[str, Any]:
    """One timed run of single-process torch with 2 threads (no Ray)."""
    import torch

    from bench.peers import torch_single

    torch_cfg = torch_single.TorchSingleConfig(steps=cfg.rounds, warmup=cfg.warmup,
                                               global_batch=GLOBAL_BATCH, threads=2,
                                               seed=cfg.seed)
    rate = torch_single.run(torch_cfg)
    return {"samples_per_s": rate, "timed_rounds": cfg.rounds,
            "torch_threads_default": torch.get_num_threads()}


def measure_side(side: str, cfg: TrainBenchConfig) -> dict[str, Any]:
    """Measure ``side`` once in this process (the child's job); Ray sides start and stop Ray.

    Raises ``BenchConfigError`` for an unknown side.
    """
    if side == "torch_single":
        return measure_torch(cfg)
    measures: dict[str, Callable[[], dict[str, Any]]] = {
        "raftps_r1": lambda: measure_raftps(1, cfg),
        "raftps_r3": lambda: measure_raftps(3, cfg),
        "raftps_r3_s1": lambda: measure_raftps(3, cfg, shards=1),
        "ceiling": lambda: measure_ceiling(cfg, shards=2),
        "ceiling_s1": lambda: measure_ceiling(cfg, shards=1),
        "ray_ps_example": lambda: measure_ray_example(cfg),
    }
    if side not in measures:
        raise BenchConfigError(f"unknown side {side!r}; pick one of {', '.join(SIDES)}")
    import ray

    # address="local": a fresh Ray of this process, never another cluster on this machine
    ray.init(address="local", num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False)
    try:
        return measures[side]()
    finally:
        ray.shutdown()


def side_command(side: str, cfg: TrainBenchConfig) -> list[str]:
    """The child command line that measures ``side`` once and prints one JSON line."""
    return [sys.executable, "-m", "bench.train", "--side", side, "--rounds", str(cfg.rounds),
            "--warmup", str(cfg.warmup), "--seed", str(cfg.seed)]


def run_side(side: str, cfg: TrainBenchConfig, details: dict[str, list[dict[str, Any]]]) -> float:
    """Measure ``side`` in a fresh child process; return its samples/s, append its JSON.

    Blocks until the child exits (at most ``cfg.side_timeout_s``). Raises
    ``RuntimeError`` when the child fails (its stderr tail in the message).
    """
    proc = subprocess.run(side_command(side, cfg), capture_output=True, text=True,
                          timeout=cfg.side_timeout_s, env=child_env(os.environ),
                          cwd=Path(__file__).resolve().parent.parent, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child exited {proc.returncode}: {proc.stderr[-2000:]}")
    result = last_json_object(proc.stdout)
    details.setdefault(side, []).append(result)
    return float(result["samples_per_s"])


def summarize(raw: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """Medians, quartiles, raw repeats and the ratio of each median to the Ray example's."""
    reference = median(raw.get("ray_ps_example", []))
    return {
        name: {"samples_per_s": median(values), "repeats": values,
               "p25": percentile(values, 25), "p75": percentile(values, 75),
               "ratio_to_ray_example": ratio(median(values), reference)}
        for name, values in raw.items()
    }


def report(results: dict[str, dict[str, Any]]) -> str:
    """The markdown table: side, median samples/s, quartiles, ratio to the Ray example,
    repeats, and the median machine load when the side's children started."""
    rows = [[name, r["samples_per_s"], r["p25"], r["p75"], r["ratio_to_ray_example"],
             len(r["repeats"]), r.get("loadavg_1m_median", float("nan"))]
            for name, r in results.items()]
    return markdown_table(["side", "samples/s (median)", "p25", "p75", "× ray example",
                           "repeats", "load 1m (median)"], rows)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="raftps training throughput vs its peers")
    parser.add_argument("--quick", action="store_true",
                        help="3 repeats of 4 + 32 rounds of 5 sides (about 3 min on 2 cores)")
    parser.add_argument("--repeats", type=int, help="override the repeats of the preset")
    parser.add_argument("--rounds", type=int, help="override the timed rounds of the preset")
    parser.add_argument("--warmup", type=int, help="override the warm-up rounds of the preset")
    parser.add_argument("--seed", type=int, help="override the seed")
    parser.add_argument("--sides", default=None,
                        help="comma-separated sides, in run order (default: all; with --quick: "
                             + ",".join(QUICK_SIDES) + ")")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # child mode
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parent: run the sides in child processes, write the JSON, print the table. Child
    (``--side``): measure one side and print its JSON line."""
    args = _parse(argv)
    base = TrainBenchConfig.quick() if args.quick else TrainBenchConfig()
    overrides = {k: getattr(args, k) for k in ("repeats", "rounds", "warmup", "seed")
                 if getattr(args, k) is not None}
    cfg = dataclasses.replace(base, **overrides)
    if args.side:
        load_before = os.getloadavg()[0]  # other tenants' load skews every side; record it
        child = {"side": args.side, **measure_side(args.side, cfg),
                 "loadavg_1m_before": load_before, "loadavg_1m_after": os.getloadavg()[0]}
        print(json.dumps(child), flush=True)
        return child
    chosen = args.sides or ",".join(QUICK_SIDES if args.quick else SIDES)
    sides = [s for s in chosen.split(",") if s]
    unknown = sorted(set(sides) - set(SIDES))
    if unknown:
        raise BenchConfigError(f"unknown sides {unknown}; pick from {', '.join(SIDES)}")
    details: dict[str, list[dict[str, Any]]] = {}
    runners = {side: (lambda s=side: run_side(s, cfg, details)) for side in sides}
    results: dict[str, Any] = summarize(interleave(runners, cfg.repeats))
    for side, runs in details.items():
        results[side]["runs"] = runs
        results[side]["loadavg_1m_median"] = median(
            [float(r.get("loadavg_1m_before", float("nan"))) for r in runs])
    table = report(results)
    results["_settings"] = dataclasses.asdict(cfg) | {
        "quick": args.quick, "workers": WORKERS, "global_batch": GLOBAL_BATCH,
        "ray_num_cpus": RAY_CPUS, "isolation": "one fresh child process per measurement",
        "raftps_rate": "metrics.jsonl rounds after warmup (steady state)"}
    path = write_results("train", results)
    print(table)
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
