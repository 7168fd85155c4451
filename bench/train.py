"""``python -m bench.train [--quick]``: training throughput of raftps next to its peers.

One run measures four sides on the same job, the benchmark MLP (784 → 256 → 128 → 10, ReLU)
on synthetic 784-feature, 10-class data, synchronous SGD with a global batch of 2048 split
over 2 workers (1024 samples each):

- ``raftps_r1`` / ``raftps_r3``: ``jobs.api.train`` in this process (the same config the CLI
  builds from ``--data synthetic --model mlp --workers 2 --global-batch 2048
  --replicas 1|3``), one epoch; ``samples_per_s`` is read from the run's ``summary.json``
  (samples over the training loop's wall time: Ray/actor start-up and the final checkpoint
  are excluded);
- ``ray_ps_example``: Ray's documented synchronous parameter server
  (``bench.peers.ray_ps_example``), timed over the same number of rounds;
- ``torch_single``: one process, 2 torch threads, no communication (``bench.peers.torch_single``).

Repeats are interleaved (A B C D A B C D ...). Writes ``bench/results/train.json`` as
``{"raftps_r1": {...}, "raftps_r3": {...}, "ray_ps_example": {...}, "torch_single": {...}}``,
each with ``samples_per_s`` (the median), ``repeats`` (raw values) and ``ratio_to_ray_example``,
and prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import interleave, markdown_table, median, ratio, write_results
from bench.peers import ray_ps_example, torch_single

WORKERS = 2
GLOBAL_BATCH = 2048


@dataclass(frozen=True, kw_only=True)
class TrainBenchConfig:
    """Size of the benchmark (``--quick`` is the small one)."""

    repeats: int = 5  # interleaved repeats of every side
    rounds: int = 48  # global batches per timed run, every side
    seed: int = 0  # data and init seed

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.rounds < 2:
            raise ValueError("TrainBenchConfig needs repeats >= 1 and rounds >= 2")

    @classmethod
    def quick(cls) -> TrainBenchConfig:
        return cls(repeats=3, rounds=16)


def raftps_args(replicas: int, rounds: int, out: Path, job: str) -> list[str]:
    """The CLI flags of the raftps side (one epoch of exactly ``rounds`` global batches)."""
    n_train = rounds * GLOBAL_BATCH
    return ["--data", f"synthetic:784x10x{n_train}", "--model", "mlp",
            "--workers", str(WORKERS), "--global-batch", str(GLOBAL_BATCH),
            "--replicas", str(replicas), "--optimizer", "sgd", "--lr", "0.05",
            "--epochs", "1", "--checkpoint-every", "0", "--out", str(out), "--job", job]


def run_raftps(replicas: int, rounds: int) -> float:
    """Train once in-process with ``jobs.api.train``; return summary.json's samples_per_s.

    Blocks for the whole job; the output folder is a temp dir, removed afterwards.
    """
    from jobs.api import train
    from jobs.train import parse_config

    out = Path(tempfile.mkdtemp(prefix=f"raftps-bench-r{replicas}-"))
    job = f"bench-r{replicas}-{uuid.uuid4().hex[:6]}"
    try:
        config = parse_config(raftps_args(replicas, rounds, out, job))
        train(dataclasses.replace(config, progress=False))
        summary = json.loads((out / "summary.json").read_text())
        return float(summary["samples_per_s"])
    finally:
        shutil.rmtree(out, ignore_errors=True)


def runners(cfg: TrainBenchConfig) -> dict[str, Callable[[], float]]:
    """The four sides, in the order they are interleaved."""
    ps_cfg = ray_ps_example.RayPSConfig(workers=WORKERS, batch_per_worker=GLOBAL_BATCH // WORKERS,
                                        iterations=cfg.rounds, seed=cfg.seed)
    torch_cfg = torch_single.TorchSingleConfig(steps=cfg.rounds, global_batch=GLOBAL_BATCH,
                                               threads=2, seed=cfg.seed)
    return {
        "raftps_r1": lambda: run_raftps(1, cfg.rounds),
        "raftps_r3": lambda: run_raftps(3, cfg.rounds),
        "ray_ps_example": lambda: ray_ps_example.run(ps_cfg),
        "torch_single": lambda: torch_single.run(torch_cfg),
    }


def summarize(raw: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """Medians, raw repeats and the ratio of each median to the Ray example's."""
    reference = median(raw.get("ray_ps_example", []))
    return {
        name: {"samples_per_s": median(values), "repeats": values,
               "ratio_to_ray_example": ratio(median(values), reference)}
        for name, values in raw.items()
    }


def report(results: dict[str, dict[str, Any]]) -> str:
    """The markdown table: side, median samples/s, ratio to the Ray example, repeats."""
    rows = [[name, r["samples_per_s"], r["ratio_to_ray_example"], len(r["repeats"])]
            for name, r in results.items()]
    return markdown_table(["side", "samples/s (median)", "× ray example", "repeats"], rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="raftps training throughput vs its peers")
    parser.add_argument("--quick", action="store_true", help="3 repeats of 16 rounds (~2 min)")
    args = parser.parse_args(argv)
    cfg = TrainBenchConfig.quick() if args.quick else TrainBenchConfig()
    import ray

    if not ray.is_initialized():
        # address="local": never attach to another cluster found on this machine
        ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    results: dict[str, Any] = summarize(interleave(runners(cfg), cfg.repeats))
    table = report(results)
    results["_settings"] = dataclasses.asdict(cfg) | {
        "quick": args.quick, "workers": WORKERS, "global_batch": GLOBAL_BATCH}
    path = write_results("train", results)
    print(table)
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
