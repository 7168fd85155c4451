"""The raftps side of ``bench.goodput``: the shared workload on 2 shards x 3 replicas, with
the shared fault schedule injected while it trains.

Run in a fresh child process by the harness (``python -m bench.goodput_raftps --steps N
[--kill-every T] --out DIR``); it starts its own local Ray (``RAY_CPUS`` logical CPUs),
trains with ``jobs.api.train`` on a thread and prints one ``SideRun`` JSON line last.

Faults rotate through three kinds, one every ``T`` seconds after the first committed round:
``worker`` (SIGKILL the process running a gradient task: Ray runs the task again),
``leader`` (kill shard ``i % 2``'s Raft leader: the group elects another and the driver
replays the rounds in flight) and ``follower`` (kill a follower of that shard: nothing to
replay). Completed steps are the rounds metrics.jsonl logs, stamped when they appear there
(polled every ``POLL_S``). A committed round is durable on a majority of every shard, so a
fault never undoes one: ``lost_steps`` counts rounds logged a second time after a fault
(none, unless a restart rewinds).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import DRIVER_LOG, log_driver_to
from bench.goodput_workload import FaultPlan, SideRun, Workload, model_digest

RAY_CPUS = 4
POLL_S = 0.01
TEST_SAMPLES = 512
SHARDS, REPLICAS = 2, 3
KINDS = ("worker", "leader", "follower")


def loader(workload: Workload) -> Any:
    """The side's data loader: the workload's arrays, plus a small test split."""
    def load() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        from bench.common import synthetic_classification

        x, y = workload.data()
        x_test, y_test = synthetic_classification(TEST_SAMPLES, workload.seed + 1)
        return x, y, x_test, y_test
    return load


def config(workload: Workload, out: Path, job: str) -> Any:
    from jobs.config import TrainConfig

    per_epoch = min(workload.steps, workload.batches)  # the data set's global batches
    return TrainConfig(model="mlp", data="goodput", workers=workload.workers, shards=SHARDS,
                       replicas=REPLICAS, epochs=-(-workload.steps // per_epoch),
                       max_rounds=workload.steps, global_batch=workload.global_batch,
                       optimizer="sgd", lr=workload.lr, seed=workload.seed, out=str(out),
                       job=job, checkpoint_every=50, progress=False, timeout_s=300.0,
                       overwrite=True)


class StepClock:
    """Stamps each line metrics.jsonl gains (seconds since ``start``), on its own thread."""

    def __init__(self, path: Path, start: float) -> None:
        self.path, self.start = path, start
        self.stamps: list[float] = []
        self.rounds: list[int] = []
        self._seen = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self._scan(time.monotonic() - self.start)
            self._stop.wait(POLL_S)

    def _scan(self, now: float) -> None:
        """(under the lock) Stamp ``now`` on each whole line the file gained."""
        import json

        if not self.path.exists():
            return
        text = self.path.read_text()
        # only whole lines: the writer may be half way through the last one
        lines = text[:text.rfind("\n") + 1].splitlines()
        if len(lines) < self._seen:  # a resume rewrote it, keeping earlier rounds
            self._seen = len(lines)
        for line in lines[self._seen:]:
            if line.strip():
                self.rounds.append(int(json.loads(line)["round"]))
                self.stamps.append(now)
        self._seen = len(lines)

    def mark(self) -> float:
        """Now (seconds since ``start``), with every line the file holds stamped no later: call
        it right after a fault, so a round that ended before the fault but had not been read
        yet does not count as the first one after it."""
        with self._lock:
            now = time.monotonic() - self.start
            self._scan(now)
            return now

    def settle(self, killed_at: float) -> None:
        """The writer was killed at ``killed_at`` (seconds since ``start``) and is gone: every
        line the file holds was written before that, so none is stamped later (the poller
        may have read the last ones after the kill, which would make the recovery look
        instant)."""
        with self._lock:
            self._scan(killed_at)
            self.stamps = [min(stamp, killed_at) for stamp in self.stamps]

    def wait_first(self, timeout: float) -> float:
        """Block until one round is logged; its stamp."""
        deadline = time.monotonic() + timeout
        while not self.stamps:
            if time.monotonic() > deadline:
                raise TimeoutError("no round was logged")
            time.sleep(POLL_S)
        return self.stamps[0]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def kill_gradient_worker(timeout_s: float = 2.0) -> bool:
    """SIGKILL a process that is running a gradient task now (its title names the task),
    among this process's descendants (the workers of the Ray it started)."""
    import psutil

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in psutil.Process().children(recursive=True):
            try:
                cmd = " ".join(proc.cmdline())
            except psutil.Error:
                continue
            if cmd.startswith("ray::_gradient_task"):
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                return True
        time.sleep(0.002)
    return False


def kill_replica(job: str, shard: int, role: str) -> bool:
    """Kill one replica of ``shard`` in ``role`` (LEADER or FOLLOWER); Ray restarts it."""
    import ray

    for r in range(REPLICAS):
        try:  # a replica down, or not registered (restarting, or the job tearing down)
            handle = ray.get_actor(f"{job}/shard-{shard}/replica-{r}", namespace=job)
            status: dict[str, Any] = ray.get(handle.status.remote(), timeout=5)  # type: ignore[assignment]
        except Exception:  # try the next
            continue
        if status["role"] == role:
            ray.kill(handle, no_restart=False)
            return True
    return False


def inject(plan: FaultPlan, job: str, clock: StepClock, first: float, done: threading.Event,
           run: SideRun) -> None:
    """Inject ``plan``'s faults at their times (seconds after the first round)."""
    for i, at in enumerate(plan.worker_kills_s):
        wait = first + at - (time.monotonic() - clock.start)
        if done.wait(max(0.0, wait)):
            return
        kind = KINDS[i % len(KINDS)]
        shard = plan.victim(i, list(range(SHARDS)))
        ok = (kill_gradient_worker() if kind == "worker"
              else kill_replica(job, shard, "LEADER" if kind == "leader" else "FOLLOWER"))
        if ok:
            run.fault_times_s.append(clock.mark())  # the kill's time, after its victim search
            run.fault_kinds.append(kind)
        else:
            run.notes.append(f"fault {i} ({kind}) found nothing to kill")


def lost_steps(rounds: list[int], stamps: list[float], faults: list[float]) -> list[int]:
    """Per fault: rounds logged again after it (a round number not above one seen before)."""
    out = []
    for k, t in enumerate(faults):
        end = faults[k + 1] if k + 1 < len(faults) else float("inf")
        best = max((r for r, s in zip(rounds, stamps, strict=True) if s <= t), default=-1)
        again = sum(1 for r, s in zip(rounds, stamps, strict=True) if t < s <= end and r <= best)
        out.append(again)
    return out


def run(workload: Workload, plan: FaultPlan, out: Path, *, faulted: bool) -> SideRun:
    """One run of the raftps side (see the module docstring): on the connected Ray, else
    on a local Ray of ``RAY_CPUS`` CPUs started (and stopped) for it."""
    import ray
    from safetensors.numpy import load_file

    from jobs.api import train
    from jobs.backend import RaftServerBackend

    start = time.monotonic()
    owns_ray = not ray.is_initialized()
    if owns_ray:
        ray.init(address="local", num_cpus=RAY_CPUS, include_dashboard=False,
                 log_to_driver=False)
    side = SideRun(side="raftps", faulted=faulted)
    job = f"goodput-{uuid.uuid4().hex[:8]}"
    clock = StepClock(out / "metrics.jsonl", start)
    done = threading.Event()
    result: dict[str, Any] = {}

    def job_thread() -> None:
        try:
            result["train"] = train(config(workload, out, job), data=loader(workload),
                                    backend=RaftServerBackend())
        except BaseException as exc:
            result["error"] = exc
        finally:
            done.set()

    trainer = threading.Thread(target=job_thread)
    trainer.start()
    try:
        first = clock.wait_first(300.0)
        if faulted:
            inject(plan, job, clock, first, done, side)
        trainer.join()
    finally:
        done.set()
        clock.stop()
        if owns_ray:
            ray.shutdown()
    if "error" in result:
        side.errors.append(f"{type(result['error']).__name__}: {result['error']}")
        return side
    side.step_times_s = clock.stamps
    side.first_step_s = first
    side.wall_s = clock.stamps[-1] if clock.stamps else 0.0
    side.lost_steps = lost_steps(clock.rounds, clock.stamps, side.fault_times_s)
    side.model_sha256 = model_digest(load_file(str(result["train"].model_path)))
    return side


def _driver(workload: Workload, out: Path, job: str, address: str, resume: bool) -> None:
    """The job as a driver of its own on the Ray at ``address`` (``--driver``)."""
    import ray

    from jobs.api import train
    from jobs.backend import RaftServerBackend

    ray.init(address=address, log_to_driver=False)
    cfg = dataclasses.replace(config(workload, out, job), resume=resume,
                              overwrite=not resume)
    train(cfg, data=loader(workload), backend=RaftServerBackend())


def run_driver_kill(workload: Workload, kill_at_s: float, out: Path) -> SideRun:
    """The driver-kill scenario: the job runs as its own driver process on a local Ray
    this process starts; ``kill_at_s`` after its first round it is SIGKILLed (its replicas
    die with it, their Raft logs stay) and started again with ``--resume``. ``lost_steps``:
    rounds logged before the kill that the resumed job computes again."""
    import re
    import subprocess

    import ray

    start = time.monotonic()
    ray.init(address="local", num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False)
    side = SideRun(side="raftps_driver_kill", faulted=True)
    address = ray.get_runtime_context().gcs_address
    job = f"goodput-dk-{uuid.uuid4().hex[:8]}"
    clock = StepClock(out / "metrics.jsonl", start)

    def driver(resume: bool) -> subprocess.Popen[str]:
        cmd = [sys.executable, "-m", "bench.goodput_raftps", "--driver", address, "--job", job,
               "--steps", str(workload.steps), "--seed", str(workload.seed), "--out", str(out)]
        return subprocess.Popen([*cmd, *(["--resume"] if resume else [])], text=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        first_driver = driver(False)
        first = clock.wait_first(300.0)
        time.sleep(max(0.0, first + kill_at_s - (time.monotonic() - start)))
        first_driver.send_signal(signal.SIGKILL)
        killed_at = clock.mark()
        side.fault_times_s.append(killed_at)
        side.fault_kinds.append("driver")
        first_driver.wait(timeout=60)
        clock.settle(killed_at)
        logged = max(clock.rounds, default=-1) + 1
        second = driver(True)
        _, err = second.communicate(timeout=900)
        if second.returncode != 0:
            side.errors.append(f"the resumed driver exited {second.returncode}: "
                               f"{(err.strip().splitlines() or [''])[-1][:300]}")
            return side
        found = re.search(r"resuming at round (\d+) from ([^(]+?) \(", err)
        resumed_at = int(found.group(1)) if found else 0
        side.lost_steps = [max(0, logged - resumed_at)]
        if found:
            side.notes.append(found.group(0).rstrip(" ("))  # where it continued from
    finally:
        clock.stop()
        ray.shutdown()
    from safetensors.numpy import load_file

    side.step_times_s, side.first_step_s = clock.stamps, first
    side.wall_s = clock.stamps[-1] if clock.stamps else 0.0
    side.model_sha256 = model_digest(load_file(str(out / "model.safetensors")))
    return side


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.goodput_raftps")
    p.add_argument("--steps", type=int, default=Workload().steps)
    p.add_argument("--kill-every", type=float, default=None, metavar="T")
    p.add_argument("--horizon", type=float, default=600.0,
                   help="seconds after the first step within which faults are scheduled")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--driver-kill-at", type=float, default=None, metavar="T",
                   help="the driver-kill scenario: SIGKILL the driver T s after its first "
                        "round, then resume it")
    p.add_argument("--driver", metavar="ADDRESS", default=None, help=argparse.SUPPRESS)
    p.add_argument("--job", default=None, help=argparse.SUPPRESS)
    p.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    workload = dataclasses.replace(Workload(), steps=args.steps, seed=args.seed)
    if args.driver is not None:  # one driver process of the driver-kill scenario
        log_driver_to(args.out)
        _driver(workload, args.out, args.job, args.driver, args.resume)
        return
    import json

    if args.driver_kill_at is not None:
        out = args.out or Path(tempfile.mkdtemp(prefix="goodput-raftps-dk-"))
        side = run_driver_kill(workload, args.driver_kill_at, out)
        side.notes.append(f"driver log: {out / DRIVER_LOG}")
        print(json.dumps(side.to_json()), flush=True)
        return
    faulted = args.kill_every is not None
    plan = FaultPlan.every(args.kill_every, args.horizon, args.seed) if faulted else FaultPlan()
    out = args.out or Path(tempfile.mkdtemp(prefix="goodput-raftps-"))
    log = log_driver_to(out)
    side = run(workload, plan, out, faulted=faulted)
    side.notes.append(f"driver log: {log}")
    print(json.dumps(side.to_json()), flush=True)
    sys.exit(0 if not side.errors or side.model_sha256 else 1)


if __name__ == "__main__":
    main()
