"""``python -m bench.goodput``: training goodput under failures, raftps next to Ray Train and
torchft on one workload and one fault schedule (``bench.goodput_workload``).

Each side runs twice, in fresh child processes: fault-free, then with a fault every ``T``
seconds after its first completed step. Reported per side (``bench/results/goodput.json``,
a README table and ``bench/results/goodput.png``):

- ``wall_s_clean`` / ``wall_s_faulted``: seconds from the first completed step until
  ``steps`` distinct steps are complete (start-up, ``startup_s``, is reported apart);
- ``goodput``: ``wall_s_clean / wall_s_faulted``;
- ``steady_samples_per_s``: the fault-free run's rate after ``WARMUP`` steps;
- ``lost_steps_per_failure``: completed steps computed again per fault (mean);
- ``recovery_s_median``: median seconds from a fault to the next completed step;
- ``byte_identical``: the faulted run's model equals its own fault-free run's, bit for bit;
- ``failures``: faults injected.

Sides: ``raftps`` (2 shards x 3 replicas; faults rotate over a gradient task's process, a
shard leader and a follower: ``bench.goodput_raftps``), ``raftps_driver_kill`` (the
driver SIGKILLed once, ``T`` s after its first round, then resumed with ``--resume``),
``ray_train_k10`` and ``ray_train_k50`` (``TorchTrainer``, gloo DDP, checkpoint every 10 or
50 steps,
``FailureConfig(max_failures=-1)``: ``bench.peers.ray_train_goodput``; and
``ray_train_k50_driver_kill``, resumed from its stored checkpoint), ``torchft`` (2
replica groups of 1 worker with a Lighthouse: ``bench.peers.torchft_goodput``). A side that
cannot run here is reported with the reason. ``raftps_node_loss`` and
``ray_train_k50_node_loss`` lose one worker node of a ``ray.cluster_utils.Cluster`` (1 head
+ 3 nodes) ``T`` s after the first step (``bench.goodput_node_loss``), and are compared
with a fault-free run on the same cluster; a driver-kill scenario with its side's
fault-free run (``CLEAN_OF``).

A faulted run of a ``CAPPED_SIDES`` side stops ``GoodputConfig.peer_cap_s`` seconds after its
first step if it has not finished by then (``--quick``: ``QUICK_PEER_CAP_S``). Ray Train's
restarts can take as long as the fault period, and then it barely moves between kills for
many minutes. A capped run is reported with ``capped`` true, the steps it finished, its wall
until the cap (so ``wall_s_faulted`` is a lower bound and ``goodput`` an upper bound).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    RESULTS_DIR,
    child_env,
    format_number,
    last_json_object,
    markdown_table,
    median,
    write_results,
)
from bench.goodput_workload import SideRun, Workload, recovery_s

WARMUP = 5  # steps before the steady-state rate is taken
SIDES: dict[str, tuple[str, ...]] = {
    "raftps": ("bench.goodput_raftps",),
    "raftps_driver_kill": ("bench.goodput_raftps",),
    "ray_train_k10": ("bench.peers.ray_train_goodput", "--checkpoint-every", "10"),
    "ray_train_k50": ("bench.peers.ray_train_goodput", "--checkpoint-every", "50"),
    "ray_train_k50_driver_kill": ("bench.peers.ray_train_goodput", "--checkpoint-every", "50"),
    "torchft": ("bench.peers.torchft_goodput",),
    "raftps_node_loss": ("bench.goodput_node_loss", "--side", "raftps"),
    "ray_train_k50_node_loss": ("bench.goodput_node_loss", "--side", "ray_train",
                                "--checkpoint-every", "50"),
}
QUICK_SIDES = ("raftps", "raftps_driver_kill", "ray_train_k50", "torchft")
"""What ``--quick`` runs unless ``--sides`` says otherwise (about 10 minutes on 2 cores): raftps
under every fault one run can hold, and a killed driver, against Ray Train checkpointing every
50 steps and torchft. ``ray_train_k10`` alone takes about 12 minutes here, and the node-loss
sides start a 4-node cluster each; the full table is ``--quick --sides`` with every side."""
CAPPED_SIDES = ("ray_train_k10", "ray_train_k50")
"""Sides whose faulted run takes ``--max-wall`` (``bench.peers.ray_train_goodput``)."""
QUICK_PEER_CAP_S = 300.0
"""``--quick``'s cap on a ``CAPPED_SIDES`` faulted run: about 5x raftps' faulted wall here,
enough to decide the target of finishing at least 4x sooner than Ray Train, and the whole
``--quick`` run stays near 10 minutes."""
CLEAN_OF = {"raftps_driver_kill": "raftps", "ray_train_k50_driver_kill": "ray_train_k50"}
"""A driver-kill scenario is compared with its side's fault-free run. A node-loss side has
a fault-free run of its own, on the same multi-node cluster (a single-node run moves no
object between nodes, so it would be faster for reasons that are not the fault)."""


@dataclass(frozen=True, kw_only=True)
class GoodputConfig:
    steps: int = 300
    kill_every_s: float = 10.0
    seed: int = 0
    side_timeout_s: float = 900.0
    peer_cap_s: float | None = None
    """Seconds after its first step at which a ``CAPPED_SIDES`` faulted run stops."""

    @classmethod
    def quick(cls) -> GoodputConfig:
        # 1000 steps: the fastest peers train 400 in under 10 s here, too short for faults
        # 10 s apart; 1000 give every side a few
        return cls(steps=1000, kill_every_s=10.0, side_timeout_s=900.0,
                   peer_cap_s=QUICK_PEER_CAP_S)


def side_command(side: str, cfg: GoodputConfig, out: Path, *, faulted: bool) -> list[str]:
    """The child command line of one run of ``side``."""
    module, *flags = SIDES[CLEAN_OF.get(side, side) if not faulted else side]
    cmd = [sys.executable, "-m", module, *flags, "--steps", str(cfg.steps), "--out", str(out)]
    if faulted and side.endswith("_node_loss"):
        cmd += ["--node-loss-at", str(cfg.kill_every_s)]  # one node removed
    elif faulted and side.endswith("_driver_kill"):
        cmd += ["--driver-kill-at", str(cfg.kill_every_s)]  # one kill, then --resume
    elif faulted:
        cmd += ["--kill-every", str(cfg.kill_every_s)]
        if side in CAPPED_SIDES and cfg.peer_cap_s is not None:
            cmd += ["--max-wall", str(cfg.peer_cap_s)]
    return cmd


def run_child(side: str, cfg: GoodputConfig, *, faulted: bool) -> SideRun:
    """One run of ``side`` in a fresh child process; a failed child is a run with errors."""
    out = Path(tempfile.mkdtemp(prefix=f"goodput-{side}-"))
    cmd = side_command(side, cfg, out, faulted=faulted)
    env = child_env(os.environ)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False,
                              timeout=cfg.side_timeout_s)
    except subprocess.TimeoutExpired:
        return SideRun(side=side, faulted=faulted,
                       errors=[f"timed out after {cfg.side_timeout_s} s"])
    try:
        record = last_json_object(proc.stdout)
    except ValueError:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return SideRun(side=side, faulted=faulted,
                       errors=[f"exit {proc.returncode}: {tail[:300]}"])
    return side_run(record, side=side, faulted=faulted)


def side_run(record: Mapping[str, Any], *, side: str, faulted: bool) -> SideRun:
    """A ``SideRun`` from a child's JSON line (unknown keys ignored)."""
    fields = SideRun.__dataclass_fields__
    values = {k: v for k, v in record.items() if k in fields}
    values.update(side=side, faulted=faulted)
    return SideRun(**values)


def training_wall_s(run: SideRun) -> float:
    """Seconds from the first completed step to the last: a run ends once all its steps
    are done, recomputed ones included."""
    if not run.step_times_s:
        return math.nan
    return run.step_times_s[-1] - run.step_times_s[0]


def steady_rate(run: SideRun, global_batch: int) -> float:
    """Samples per second of a fault-free run after ``WARMUP`` steps."""
    times = run.step_times_s
    if len(times) <= WARMUP + 1:
        return math.nan
    span = times[-1] - times[WARMUP]
    return (len(times) - 1 - WARMUP) * global_batch / span if span > 0 else math.nan


def summarize(clean: SideRun, faulted: SideRun, workload: Workload) -> dict[str, Any]:
    """One side's entry of goodput.json (see the module docstring)."""
    wall_clean = training_wall_s(clean)
    wall_faulted = training_wall_s(faulted)
    recoveries = [r for r in recovery_s(faulted) if not math.isnan(r)]
    lost = faulted.lost_steps
    entry: dict[str, Any] = {
        "wall_s_clean": wall_clean,
        "wall_s_faulted": wall_faulted,
        "startup_s": clean.first_step_s,
        "steady_samples_per_s": steady_rate(clean, workload.global_batch),
        "goodput": wall_clean / wall_faulted if wall_faulted > 0 else math.nan,
        "lost_steps_per_failure": sum(lost) / len(lost) if lost else 0.0,
        "recovery_s_median": median(recoveries) if recoveries else math.nan,
        "byte_identical": bool(clean.model_sha256)
        and clean.model_sha256 == faulted.model_sha256,
        "failures": len(faulted.fault_times_s),
        "capped": faulted.capped,
        "steps_done": faulted.steps_done if faulted.capped else workload.steps,
        "fault_kinds": sorted(set(faulted.fault_kinds)),
        "errors": [*clean.errors, *faulted.errors],
        "notes": faulted.notes,
    }
    return entry


def bounded(value: float, bound: str) -> str:
    """A table cell for a capped run's figure: ``≥ 300`` or ``≤ 0.12``."""
    return f"{bound} {format_number(value)}"


def report(results: Mapping[str, Mapping[str, Any]]) -> str:
    """The README table (a capped run's faulted wall and goodput are bounds)."""
    rows = [[side, r["steady_samples_per_s"], r["wall_s_clean"],
             bounded(r["wall_s_faulted"], "≥") if r.get("capped") else r["wall_s_faulted"],
             bounded(r["goodput"], "≤") if r.get("capped") else r["goodput"], r["failures"],
             r["lost_steps_per_failure"], r["recovery_s_median"],
             "yes" if r["byte_identical"] else "no"]
            for side, r in results.items()]
    return markdown_table(["side", "steady samples/s", "wall clean s", "wall faulted s",
                           "goodput", "faults", "lost steps/fault", "recovery s (median)",
                           "same bits"], rows)


def plot(runs: Mapping[str, tuple[SideRun, SideRun]], path: Path) -> None:
    """Steps completed against seconds since the first step, one line per side (faulted
    solid, fault-free dashed), faults marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    colors = [plt.get_cmap("tab20")(k) for k in range(20)]
    for i, (side, (clean, faulted)) in enumerate(runs.items()):
        pairs = [(faulted, "-")] + ([] if side in CLEAN_OF else [(clean, "--")])
        for run, style in pairs:  # a one-fault scenario shares its side's fault-free line
            if not run.step_times_s:
                continue
            t0 = run.step_times_s[0]
            xs = [t - t0 for t in run.step_times_s]
            line, = ax.plot(xs, range(1, len(xs) + 1), style, color=colors[i % len(colors)],
                            label=f"{side}{'' if run.faulted else ' (no faults)'}")
            if run.faulted and run.fault_times_s:
                ys = [sum(1 for s in run.step_times_s if s <= t) for t in run.fault_times_s]
                ax.plot([t - t0 for t in run.fault_times_s], ys, "x", color=line.get_color())
    ax.set_xlabel("seconds since the first completed step")
    ax.set_ylabel("step completions (a recomputed step counts again)")
    ax.set_title("Training progress under faults (x: a fault)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def chosen_sides(sides: Sequence[str] | None, *, quick: bool) -> list[str]:
    """The sides to run: those named, else ``QUICK_SIDES`` with ``--quick``, else all."""
    return list(sides) if sides else list(QUICK_SIDES if quick else SIDES)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.goodput", description=__doc__)
    p.add_argument("--quick", action="store_true",
                   help=f"1000 steps, a fault every 10 s; sides {', '.join(QUICK_SIDES)} "
                        "unless --sides names others")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--kill-every", type=float, default=None, metavar="T")
    p.add_argument("--sides", nargs="+", choices=sorted(SIDES), default=None,
                   help="sides to run, in order (default: all; with --quick, QUICK_SIDES)")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--merge", action="store_true",
                   help="keep the other sides of an existing goodput.json (a rerun of some)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    cfg = GoodputConfig.quick() if args.quick else GoodputConfig()
    if args.steps is not None or args.kill_every is not None:
        cfg = GoodputConfig(steps=args.steps or cfg.steps,
                            kill_every_s=args.kill_every or cfg.kill_every_s,
                            side_timeout_s=cfg.side_timeout_s, peer_cap_s=cfg.peer_cap_s)
    workload = Workload(steps=cfg.steps)
    runs: dict[str, tuple[SideRun, SideRun]] = {}
    results: dict[str, dict[str, Any]] = {}
    cleans: dict[str, SideRun] = {}  # one fault-free run per side
    for side in chosen_sides(args.sides, quick=args.quick):
        base = CLEAN_OF.get(side, side)
        if base not in cleans:
            cleans[base] = run_child(base, cfg, faulted=False)
        clean = cleans[base]
        faulted = run_child(side, cfg, faulted=True)
        runs[side] = (clean, faulted)
        results[side] = summarize(clean, faulted, workload)
        print(f"{side}: {json.dumps(results[side])}", flush=True)
    data: dict[str, Any] = {
            "sides": results,
            "runs": {s: [c.to_json(), f.to_json()] for s, (c, f) in runs.items()},
            "_settings": {"steps": cfg.steps, "kill_every_s": cfg.kill_every_s,
                          "workers": workload.workers, "global_batch": workload.global_batch,
                          "model": "bench MLP 784-256-128-10", "optimizer": "sgd",
                          "lr": workload.lr, "quick": args.quick,
                          "peer_cap_s": cfg.peer_cap_s}}
    path = args.results_dir / "goodput.json"
    if args.merge and path.exists():
        old = json.loads(path.read_text())
        data["sides"] = {**old.get("sides", {}), **results}
        data["runs"] = {**old.get("runs", {}), **data["runs"]}
        runs = {side: (side_run(c, side=side, faulted=False),
                       side_run(f, side=side, faulted=True))
                for side, (c, f) in data["runs"].items()}
    write_results("goodput", data, args.results_dir)
    plot(runs, args.results_dir / "goodput.png")
    print(report(data["sides"]))
    return data


if __name__ == "__main__":
    main()
