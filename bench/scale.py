"""``python -m bench.scale [--quick]``: raftps' training throughput at real model sizes.

Every side trains the same job: a ReLU MLP of ``bench.models`` (6M, 20M, 124M parameters;
``--quick``: 6M, 20M) on synthetic 784-feature, 10-class data, synchronous data-parallel
Adam (lr 1e-3), global batch 256 over 2 workers (128 samples each). Sides:

- ``raftps_r1`` / ``raftps_r3_disk`` / ``raftps_r3_memory``: 2 shards of 1 replica, or of 3
  with ``--durability disk|memory``. ``python -m jobs.train``'s own parser builds the config
  (``--data synthetic:784x10xNx256 --model bench.models:mlp20m --optimizer adam
  --keep-raft-log``, one epoch of exactly ``warmup + rounds`` batches); ``jobs.api.train``
  runs it in the child on a local Ray that child started, so a thread there can watch it;
- ``ceiling``: raftps' own data plane with Raft taken out (``bench.peers.task_ceiling``): the
  same ``workers.gradient`` tasks, the same 2-shard ``paramserver.plan.ShardPlan``, rounds
  pipelined 3 deep, each shard one plain in-memory Ray actor stepping ``paramserver.optim``'s
  Adam on the mean gradient, on the very samples and batch order of ``--data synthetic``:
  the upper bound of the raftps sides;
- ``ray_ps_adam``: Ray's documented synchronous parameter server (one PS actor, 2 DataWorker
  actors, ``bench.peers.ray_ps_example``), same model, ``torch.optim.Adam`` on the server;
- ``torch_single``: one process, 2 torch threads, Adam, no communication.

Per side: steady-state samples/s (raftps: ``metrics.jsonl`` rounds after the first ``warmup``,
``bench.common.steady_state_rate``; the peers time ``rounds`` iterations after ``warmup``
untimed ones), its ratio to the same size's ``ray_ps_adam`` and ``torch_single`` (and, in the
results of every side and the table's rows of the raftps sides, to its ``ceiling``), the median
round breakdown (``metrics.jsonl``'s ``publish_s``/``compute_s``/``aggregate_s``/``commit_s``
and wall time; the peers only have the wall time, global batch / rate), leader changes per
shard (``summary.json``'s ``leader_changes``, else the last metrics line's, else null) and
per replica:

- sampled every 0.5 s by a thread of the child (``bench.scale_probe.peak_poller``): peak bytes
  on disk (raftps: the replica's sqlite file, WAL, segments and snapshots) and peak RSS
  (raftps: its ``ReplicaActor`` actor; ``ray_ps_adam``: its ``ParameterServer`` actor;
  ``ceiling``: each shard actor, keyed ``shard-<s>``; ``torch_single``: its own process,
  ``ru_maxrss``);
- raftps, as ``summary.json``'s ``replicas`` reports them (``summary_replica_stats``): each
  replica's own ``peak_log_bytes`` (log only), ``peak_rss_bytes`` and ``snapshot_bytes`` (its
  last snapshot: about the shard's state), the largest ``peak_log_bytes / snapshot_bytes`` of
  a replica (``log_peak_over_state``), and the run's ``failovers``.

As in ``bench.train``, each measurement is a fresh child process (``--child``, one JSON line,
environment from ``bench.common.child_env``), repeats are interleaved over every (size, side)
and medians reported. A side that fails or times out (its process group is then killed)
keeps its error in the results and the others go on. Writes ``bench/results/scale.json``
(``{size: {side: {...}}, "_settings", "_machine"}``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.common import (
    RESULTS_DIR,
    child_env,
    interleave,
    last_json_object,
    median,
    percentile,
    ratio,
    steady_state_rate,
    write_results,
)
from bench.models import FACTORIES, HIDDEN, factory_spec, parameter_count
from bench.scale_config import (
    BREAKDOWN_FIELDS,
    CEILING_SIDE,
    GLOBAL_BATCH,
    LR,
    MB,
    RAFTPS_SIDES,
    RAY_CPUS,
    SHARDS,
    SIDES,
    SIZES,
    TEST_SAMPLES,
    WORKERS,
    BenchConfigError,
    ScaleBenchConfig,
)
from bench.scale_cpu import median_split, side_split
from bench.scale_probe import POLL_S, ceiling_match, peak_poller, ps_match, raft_replica_match
from bench.scale_report import error_lines, report
from bench.scale_summary import leader_changes, summary_replica_stats
from consensus.memory_log import remove_storage_tree


class BenchSideError(RuntimeError):
    """One side could not be measured (its error is kept in the results)."""


# ---------------------------------------------------------------- pure parts (unit-tested)


def raftps_args(size: str, side: str, rounds: int, out: Path, job: str, *, seed: int = 0,
                cli_flags: Collection[str] = ()) -> list[str]:
    """``python -m jobs.train`` flags of a raftps side: one epoch of exactly ``rounds`` batches.

    ``--durability`` is always passed to the 3-replica sides (a CLI without it must fail that
    side, not measure the default); ``--keep-raft-log`` only when ``cli_flags`` has it.
    """
    replicas, durability = RAFTPS_SIDES[side]
    args = ["--data", f"synthetic:784x10x{rounds * GLOBAL_BATCH}x{TEST_SAMPLES}",
            "--model", factory_spec(size), "--workers", str(WORKERS),
            "--global-batch", str(GLOBAL_BATCH), "--shards", str(SHARDS),
            "--replicas", str(replicas),
            "--optimizer", "adam", "--lr", str(LR), "--epochs", "1",
            "--checkpoint-every", "0", "--seed", str(seed), "--out", str(out), "--job", job]
    if durability is not None:
        args += ["--durability", durability]
    if "--keep-raft-log" in cli_flags:
        args.append("--keep-raft-log")
    return args


def round_breakdown(records: Sequence[Mapping[str, Any]], skip: int) -> dict[str, float]:
    """Median seconds of each ``BREAKDOWN_FIELDS`` entry and of the wall time (``round_s``)
    over the metrics records after the first ``skip``; NaN where a field is missing."""
    kept = list(records[skip:])
    out = {f: median([float(r[f]) for r in kept if f in r]) for f in BREAKDOWN_FIELDS}
    out["round_s"] = median([float(r["samples"]) / float(r["samples_per_s"]) for r in kept
                             if float(r.get("samples_per_s", 0.0)) > 0])
    return out


def median_breakdown(runs: Sequence[Mapping[str, Any]]) -> dict[str, float] | None:
    """Per field, the median over runs of each run's ``round_breakdown_s``; None if none has
    one."""
    parts = [r["round_breakdown_s"] for r in runs if r.get("round_breakdown_s")]
    if not parts:
        return None
    fields = [f for f in (*BREAKDOWN_FIELDS, "round_s") if any(f in p for p in parts)]
    return {f: median([float(p[f]) for p in parts if f in p]) for f in fields}


def peak_mb(runs: Sequence[Mapping[str, Any]], field: str) -> dict[str, float] | None:
    """Per replica, the median over runs of ``run[field][replica]`` bytes, in MB (1e6); None
    when no run reported ``field``."""
    samples = [r[field] for r in runs if isinstance(r.get(field), Mapping)]
    if not samples:
        return None
    keys = sorted({k for s in samples for k in s})
    return {k: median([float(s[k]) / MB for s in samples if k in s]) for k in keys}


def side_entry(values: Sequence[float], runs: Sequence[Mapping[str, Any]], ray_ref: float,
               torch_ref: float, ceiling_ref: float = float("nan")) -> dict[str, Any]:
    """One side's results: median rate, quartiles, ratios, breakdown, peaks, errors, runs."""
    ok = [r for r in runs if "error" not in r]
    rate = median(values)
    return {"samples_per_s": rate, "repeats": list(values),
            "p25": percentile(values, 25), "p75": percentile(values, 75),
            "ratio_to_ray_ps_adam": ratio(rate, ray_ref),
            "ratio_to_torch_single": ratio(rate, torch_ref),
            "ratio_to_ceiling": ratio(rate, ceiling_ref),
            "round_breakdown_s": median_breakdown(ok),
            "peak_log_mb_per_replica": peak_mb(ok, "peak_log_bytes"),
            "peak_rss_mb_per_replica": peak_mb(ok, "peak_rss_bytes"),
            "summary_peak_log_mb_per_replica": peak_mb(ok, "summary_peak_log_bytes"),
            "summary_peak_rss_mb_per_replica": peak_mb(ok, "summary_peak_rss_bytes"),
            "summary_peak_private_mb_per_replica": peak_mb(ok, "summary_peak_private_bytes"),
            "snapshot_mb_per_replica": peak_mb(ok, "snapshot_bytes"),
            "log_peak_over_state": median([float(r["log_peak_over_state"]) for r in ok
                                           if r.get("log_peak_over_state") is not None]),
            "cpu_cores_by_role": median_split(ok),
            "failovers": [r.get("failovers") for r in ok],
            "leader_changes": [r.get("leader_changes") for r in ok],
            "errors": [str(r["error"]) for r in runs if "error" in r],
            "runs": list(runs)}


def run_key(size: str, side: str) -> str:
    return f"{size}:{side}"


def summarize(raw: Mapping[str, Sequence[float]], details: Mapping[str, Sequence[Any]],
              cfg: ScaleBenchConfig) -> dict[str, dict[str, Any]]:
    """``{size: {side: side_entry}}`` from interleave's rates and the children's JSON lines
    (both keyed ``size:side``); ratios are to the same size's ``ray_ps_adam``/``torch_single``/
    ``ceiling`` medians (NaN when that side was not run or failed)."""
    results: dict[str, dict[str, Any]] = {}
    for size in cfg.sizes:
        rates = {side: list(raw.get(run_key(size, side), [])) for side in cfg.sides}
        refs = [median(rates.get(s, [])) for s in ("ray_ps_adam", "torch_single", CEILING_SIDE)]
        results[size] = {side: side_entry(values, details.get(run_key(size, side), []), *refs)
                         for side, values in rates.items()}
    return results


def split_names(text: str) -> tuple[str, ...]:
    """``"a, b,"`` → ``("a", "b")``: a comma-separated ``--sizes``/``--sides`` value."""
    return tuple(n.strip() for n in text.split(",") if n.strip())


def config_from_args(args: argparse.Namespace) -> ScaleBenchConfig:
    """The preset (``--quick`` or full) with the command line's overrides; raises
    ``BenchConfigError`` for bad values."""
    base = ScaleBenchConfig.quick() if args.quick else ScaleBenchConfig()
    names = ("sizes", "sides", "repeats", "rounds", "warmup", "seed", "side_timeout_s")
    overrides = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    return dataclasses.replace(base, **overrides)


# ---------------------------------------------------------------- child: one measurement


def cli_flags() -> frozenset[str]:
    """Every option string ``python -m jobs.train`` accepts."""
    from jobs.train import build_parser

    return frozenset(s for action in build_parser()._actions for s in action.option_strings)


def _parse_train_config(argv: list[str]) -> Any:
    """``jobs.train.parse_config(argv)``; a rejected flag raises ``BenchSideError`` with the
    CLI's one-line reason instead of exiting."""
    from jobs.train import parse_config

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return parse_config(argv)
    except SystemExit as exc:
        raise BenchSideError(f"python -m jobs.train rejected the flags (exit {exc.code}): "
                             f"{stderr.getvalue().strip()}") from None


def measure_raftps(size: str, side: str, cfg: ScaleBenchConfig) -> dict[str, Any]:
    """Train ``warmup + rounds`` rounds with ``jobs.api.train`` under ``peak_poller``. Needs
    Ray initialised; the output folder is a temp dir, removed afterwards."""
    from jobs.api import train
    from jobs.metrics import read_metrics

    out = Path(tempfile.mkdtemp(prefix=f"raftps-scale-{size}-"))
    job = f"scale-{size}-{side.rpartition('_')[2]}-{uuid.uuid4().hex[:6]}"
    argv = raftps_args(size, side, cfg.warmup + cfg.rounds, out, job, seed=cfg.seed,
                       cli_flags=cli_flags())
    try:
        config = _parse_train_config(argv)
        raft_dir = Path(getattr(config, "storage_dir", out / "raft"))
        with peak_poller(raft_dir, raft_replica_match(job)) as peaks:
            train(dataclasses.replace(config, progress=False))
        summary = json.loads((out / "summary.json").read_text())
        records = read_metrics(out / "metrics.jsonl")
        return {"samples_per_s": steady_state_rate(records, cfg.warmup),
                "summary_samples_per_s": float(summary["samples_per_s"]),
                "cpu_cores_by_role": side_split(peaks, summary),
                "timed_rounds": len(records) - cfg.warmup,
                "round_breakdown_s": round_breakdown(records, cfg.warmup),
                "leader_changes": leader_changes(summary, records),
                **summary_replica_stats(summary), "train_args": argv, **peaks}
    finally:
        remove_storage_tree(str(out))


def measure_ray_ps(size: str, cfg: ScaleBenchConfig) -> dict[str, Any]:
    """The Ray example with this size's model and Adam; the PS actor's RSS is polled."""
    from bench.peers import ray_ps_example

    ps_cfg = ray_ps_example.RayPSConfig(
        workers=WORKERS, batch_per_worker=GLOBAL_BATCH // WORKERS, iterations=cfg.rounds,
        warmup=cfg.warmup, lr=LR, seed=cfg.seed, timeout_s=cfg.side_timeout_s,
        model=FACTORIES[size], optimizer="adam")
    with peak_poller(None, ps_match) as peaks:
        rate = ray_ps_example.run(ps_cfg)
    return {"samples_per_s": rate, "timed_rounds": cfg.rounds,
            "round_breakdown_s": {"round_s": GLOBAL_BATCH / rate},
            "cpu_cores_by_role": side_split(peaks), **peaks}


def ceiling_config(size: str, cfg: ScaleBenchConfig, actor_prefix: str | None = None) -> Any:
    """The ``bench.peers.task_ceiling`` config of the ``ceiling`` side: this size's model, the
    job's workers, shards and batch, Adam at ``LR``, and ``--data synthetic``'s samples (one
    epoch of exactly ``warmup + rounds`` batches) in ``jobs.train``'s batch order."""
    from bench.peers import task_ceiling

    return task_ceiling.TaskCeilingConfig(
        shards=SHARDS, workers=WORKERS, batch_per_worker=GLOBAL_BATCH // WORKERS,
        iterations=cfg.rounds, warmup=cfg.warmup, seed=cfg.seed, timeout_s=cfg.side_timeout_s,
        model=FACTORIES[size], optimizer="adam", adam_lr=LR, data="synthetic",
        samples=(cfg.warmup + cfg.rounds) * GLOBAL_BATCH, actor_prefix=actor_prefix)


def measure_ceiling(size: str, cfg: ScaleBenchConfig) -> dict[str, Any]:
    """raftps' data plane without Raft (``bench.peers.task_ceiling``) at this size, Adam; the
    RSS of each shard actor is polled."""
    from bench.peers import task_ceiling

    prefix = f"scale-ceiling-{uuid.uuid4().hex[:6]}"
    ceiling_cfg = ceiling_config(size, cfg, actor_prefix=prefix)
    with peak_poller(None, ceiling_match(prefix)) as peaks:
        rate = task_ceiling.run(ceiling_cfg)
    return {"samples_per_s": rate, "timed_rounds": cfg.rounds, "depth": ceiling_cfg.depth,
            "round_breakdown_s": {"round_s": GLOBAL_BATCH / rate},
            "cpu_cores_by_role": side_split(peaks), **peaks}


def measure_torch(size: str, cfg: ScaleBenchConfig) -> dict[str, Any]:
    """Single-process torch, 2 threads, Adam; RSS is this process's peak (``ru_maxrss``)."""
    from bench.peers import torch_single

    torch_cfg = torch_single.TorchSingleConfig(
        steps=cfg.rounds, warmup=cfg.warmup, global_batch=GLOBAL_BATCH, threads=2, lr=LR,
        seed=cfg.seed, model=FACTORIES[size], optimizer="adam")
    rate = torch_single.run(torch_cfg)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"samples_per_s": rate, "timed_rounds": cfg.rounds,
            "round_breakdown_s": {"round_s": GLOBAL_BATCH / rate},
            "peak_rss_bytes": {"process": peak}}


def measure(size: str, side: str, cfg: ScaleBenchConfig) -> dict[str, Any]:
    """Measure (size, side) once in this process; Ray sides start and stop a local Ray."""
    if side == "torch_single":
        return measure_torch(size, cfg)
    import ray

    # address="local": a fresh Ray of this process, never another cluster on this machine
    ray.init(address="local", num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False)
    try:
        if side == "ray_ps_adam":
            return measure_ray_ps(size, cfg)
        if side == CEILING_SIDE:
            return measure_ceiling(size, cfg)
        return measure_raftps(size, side, cfg)
    finally:
        ray.shutdown()


def child_main(cfg: ScaleBenchConfig) -> int:
    """``--child``: measure ``cfg``'s one size and side, print one JSON line (``error`` set
    on failure); return the exit status."""
    if len(cfg.sizes) != 1 or len(cfg.sides) != 1:
        raise BenchConfigError("--child measures one size and one side")
    size, side = cfg.sizes[0], cfg.sides[0]
    head: dict[str, Any] = {"size": size, "side": side, "loadavg_1m_before": os.getloadavg()[0]}
    try:
        body, status = measure(size, side, cfg), 0
    except Exception as exc:  # reported in the JSON line; the parent records it
        body, status = {"error": f"{type(exc).__name__}: {exc}"}, 1
    print(json.dumps({**head, **body, "loadavg_1m_after": os.getloadavg()[0]}), flush=True)
    return status


# ---------------------------------------------------------------- parent: the whole run


def side_command(size: str, side: str, cfg: ScaleBenchConfig) -> list[str]:
    """The child command line that measures (size, side) once and prints one JSON line."""
    return [sys.executable, "-m", "bench.scale", "--child", "--sizes", size, "--sides", side,
            "--rounds", str(cfg.rounds), "--warmup", str(cfg.warmup), "--seed", str(cfg.seed),
            "--side-timeout", str(cfg.side_timeout_s)]


def run_child(command: list[str], timeout_s: float) -> tuple[int | None, str, str]:
    """Run ``command`` in its own session; ``(returncode, stdout, stderr)``, returncode None
    when it ran past ``timeout_s`` (its whole process group is then killed)."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env(os.environ), start_new_session=True,
                            cwd=Path(__file__).resolve().parent.parent)
    try:
        out, err = proc.communicate(timeout=timeout_s)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the child and the Ray it started
        out, err = proc.communicate()
        return None, out, err


def run_side(size: str, side: str, cfg: ScaleBenchConfig,
             details: dict[str, list[dict[str, Any]]]) -> float:
    """Measure (size, side) in a fresh child; append its JSON (or its error) to ``details``;
    return its samples/s. Raises ``BenchSideError`` when it failed."""
    start = time.monotonic()
    returncode, out, err = run_child(side_command(size, side, cfg), cfg.side_timeout_s)
    try:
        result = last_json_object(out)
    except ValueError:
        result = {"size": size, "side": side}
    result["child_wall_s"] = time.monotonic() - start
    if returncode != 0 or "error" in result or "samples_per_s" not in result:
        reason = result.get("error") or (f"timed out after {cfg.side_timeout_s:.0f} s"
                                         if returncode is None else f"exited {returncode}")
        result |= {"error": str(reason), "returncode": returncode, "stderr_tail": err[-2000:]}
        details.setdefault(run_key(size, side), []).append(result)
        raise BenchSideError(str(reason))
    details.setdefault(run_key(size, side), []).append(result)
    return float(result["samples_per_s"])


def settings(cfg: ScaleBenchConfig, quick: bool) -> dict[str, Any]:
    """The ``_settings`` record of the results file."""
    return dataclasses.asdict(cfg) | {
        "quick": quick, "workers": WORKERS, "global_batch": GLOBAL_BATCH,
        "optimizer": "adam", "lr": LR, "ray_num_cpus": RAY_CPUS, "test_samples": TEST_SAMPLES,
        "poll_s": POLL_S, "params": {s: parameter_count(HIDDEN[s]) for s in cfg.sizes},
        "isolation": "one fresh child process per measurement",
        "raftps_run": "jobs.train's parser + jobs.api.train in the child, on its own local Ray",
        "raftps_rate": "metrics.jsonl rounds after warmup (steady state)",
        "ceiling_run": "bench.peers.task_ceiling: workers.gradient tasks, the same shard plan, "
                       "one in-memory actor per shard stepping paramserver.optim's Adam, "
                       "rounds pipelined depth deep, no Raft",
        "rss": "psutil RSS of actors from the GCS actor table, every poll_s",
        "replica_stats": "raftps: summary.json's replicas (peak_log_bytes, peak_rss_bytes, "
                         "snapshot_bytes per replica) and failovers"}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="raftps training throughput at model sizes")
    parser.add_argument("--quick", action="store_true",
                        help="6m and 20m, 1 repeat of 2 + 15 rounds (about 5 min on 2 cores)")
    parser.add_argument("--sizes", type=split_names, help=f"comma-separated: {','.join(SIZES)}")
    parser.add_argument("--sides", type=split_names, help=f"comma-separated: {','.join(SIDES)}")
    parser.add_argument("--repeats", type=int, help="override the preset's repeats")
    parser.add_argument("--rounds", type=int, help="override the preset's timed rounds")
    parser.add_argument("--warmup", type=int, help="override the preset's warm-up rounds")
    parser.add_argument("--seed", type=int, help="override the seed")
    parser.add_argument("--side-timeout", dest="side_timeout_s", type=float,
                        help="seconds one child may run (default 300 quick, 1800 full)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR,
                        help="where scale.json goes (default bench/results)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parent: run every (size, side) in child processes, write the JSON, print the table.
    Child (``--child``, one size and side): measure once, print its JSON line, exit 1 if it
    failed."""
    args = _parse(argv)
    cfg = config_from_args(args)
    if args.child:
        sys.exit(child_main(cfg))
    details: dict[str, list[dict[str, Any]]] = {}
    runners = {run_key(size, side): (lambda s=size, d=side: run_side(s, d, cfg, details))
               for size in cfg.sizes for side in cfg.sides}
    results: dict[str, Any] = summarize(interleave(runners, cfg.repeats), details, cfg)
    table = report(results)
    errors = error_lines(results)
    path = write_results("scale", {**results, "_settings": settings(cfg, args.quick)},
                         directory=args.results_dir)
    print(table)
    for line in errors:
        print(f"failed: {line}")
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
