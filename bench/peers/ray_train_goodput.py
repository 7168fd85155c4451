"""The Ray Train side of ``bench.goodput``: ``TorchTrainer`` DDP on CPU, killed on a schedule.

One run trains the shared ``Workload`` (``bench.goodput_workload``) with Ray Train's
``TorchTrainer``: ``workload.workers`` gloo DDP workers on CPU, the benchmark MLP built after
``torch.manual_seed(workload.seed)``, SGD with ``workload.lr``. Step ``s`` uses the samples
``[s*G, (s+1)*G)`` of the training set (``G`` the global batch) and rank ``r`` the ``r``-th
contiguous ``batch_per_worker`` slice of them (``rank_slice``), so a run is deterministic and a
step recomputed after a restore does the same arithmetic. The driver puts the training set
into the object store once; the workers read it zero-copy. What every worker runs is
``bench.peers.ray_train_loop``.

Every ``checkpoint_every`` steps (and after the last step) rank 0 reports a checkpoint (model,
optimizer state and the next step) with ``ray.train.report``; a worker group that starts
resumes from ``ray.train.get_checkpoint()``. Ray Train registers a reported checkpoint when
its controller next polls the workers (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``, 2 s by
default), so a kill within that window after a report restores the checkpoint before it. A
faulted run uses ``FailureConfig(max_failures=-1)``: Ray Train restarts the whole worker group
after every kill.

Progress is recorded in an append-only event log (``<run name>.events.jsonl`` in the output
folder, one JSON object a line, each appended by one ``write``): every worker appends a
``start`` record (rank, PID, the step it resumes from) when its training loop begins, rank 0 a
``step`` record with a ``time.time()`` stamp after every completed step (recomputed ones
included) and a ``done`` record with the final model's digest, and whoever injects a fault a
``fault`` record (its kind and time). The log outlives every process that writes it, so the
``SideRun`` is built from it alone (``side_run``); steps a group logs after a fault hit it
are lost with it and left out of ``step_times_s``.

Worker kills: a driver thread (``FaultInjector``) waits for the first ``step`` record, then at
each ``FaultPlan.worker_kills_s`` time SIGKILLs one worker of the running group, picked with
``FaultPlan.victim`` among the PIDs of the group's ``start`` records in rank order. A kill
that comes due while the group is still recovering (some rank has not started again since the
previous fault, or no step has completed since it did) is skipped, not stacked: kills landing
back to back on a restarting group would keep it from ever reaching a checkpoint. Each
fault's ``lost_steps`` is the highest step the group alive at the fault completed minus the
step the next group resumed from (``lost_steps``).

Driver kill (``run_with_driver_kill``): this process keeps a local Ray and runs each driver
(``TorchTrainer.fit``, its data and its worker kills) in a child process connected to it; at
``FaultPlan.driver_kill_s`` it SIGKILLs the child, whose Ray Train controller and workers
then die with it, and starts a new driver with the same run name and storage, which Ray Train
resumes from the latest registered checkpoint.

``python -m bench.peers.ray_train_goodput --steps N --checkpoint-every K [--kill-every T]
[--driver-kill-at S] [--max-wall S] --out DIR`` runs one side with its own local Ray
(``num_cpus=4``) and prints the ``SideRun`` as one JSON line last. ``--max-wall`` caps a
run at that many seconds after its first step (``bench.goodput`` caps Ray Train's faulted
runs, whose restarts can outlast the fault period for minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.goodput_workload import FaultPlan, SideRun, Workload
from bench.peers.ray_train_events import (
    SIDE,
    append_event,
    first_step_time,
    kill_candidates,
    last_fault_time,
    of_kind,
    read_events,
    side_run,
)
from bench.peers.ray_train_loop import train_loop

RAY_CPUS = 4  # logical CPUs of the side's local Ray (as in bench.train)
EVENTS_SUFFIX = ".events.jsonl"  # the event log is <output folder>/<run name> + this
STORAGE_DIR = "ray_train_storage"  # under the output folder: Ray Train's run storage
KILL_HORIZON_S = 3600.0  # --kill-every schedules kills up to this; later ones never come due
POLL_S = 0.02  # how often a fault injector reads the event log
DRIVER_TIMEOUT_S = 1800.0  # limit on one driver child of run_with_driver_kill


class GoodputArgumentError(ValueError):
    """A setting of the Ray Train goodput side is out of range."""


# ---- worker kills (a thread of the driver) ----


class FaultInjector(threading.Thread):
    """SIGKILLs workers at ``plan.worker_kills_s`` after the first step (see the module).

    Kills due before ``not_before`` (a ``time.time()`` stamp, default: when the injector is
    made), such as a previous driver's, are not made again. Returns once rank 0 has logged
    ``done`` or ``stop`` is set.
    """

    def __init__(self, plan: FaultPlan, events: Path, workers: int,
                 kill: Callable[[int], None] | None = None,
                 not_before: float | None = None) -> None:
        super().__init__(name="ray-train-fault-injector", daemon=True)
        self.plan = plan
        self.events = events
        self.workers = workers
        self.kill = kill or (lambda pid: os.kill(pid, signal.SIGKILL))
        self.not_before = time.time() if not_before is None else not_before
        self.stop = threading.Event()
        self.fault_times: list[float] = []  # time.time() of each kill this thread made
        self.skipped: list[float] = []  # plan times that came due while recovering
        self.errors: list[str] = []

    def run(self) -> None:
        first = None
        while first is None:
            if self.stop.wait(POLL_S):
                return
            first = first_step_time(read_events(self.events))
        for index, offset in enumerate(self.plan.worker_kills_s):
            if first + offset < self.not_before:
                continue
            if self.stop.wait(max(0.0, first + offset - time.time())):
                return
            records = read_events(self.events)
            if of_kind(records, "done") or of_kind(records, "capped"):
                return  # training is over: later kills would only hit its shutdown
            pids = kill_candidates(records, self.workers, last_fault_time(records))
            if pids is None:
                self.skipped.append(offset)
                continue
            victim = self.plan.victim(index, pids)
            try:
                self.kill(victim)
            except ProcessLookupError:
                self.errors.append(f"kill {index}: worker {victim} was already gone")
                continue
            now = time.time()
            append_event(self.events, {"event": "fault", "kind": "worker", "t": now})
            self.fault_times.append(now)


# ---- one driver ----


def run_name(faulted: bool, driver_kill: bool = False) -> str:
    """The Ray Train run name (and event-log name) of a side's run."""
    if driver_kill:
        return f"{SIDE}_driver"
    return f"{SIDE}_{'faulted' if faulted else 'clean'}"


def events_path(out_dir: Path, name: str) -> Path:
    return out_dir.resolve() / f"{name}{EVENTS_SUFFIX}"


def _check_checkpoint_every(checkpoint_every: int) -> None:
    if checkpoint_every < 0:
        raise GoodputArgumentError(f"checkpoint_every must be >= 0 (0: only after the last "
                                   f"step), got {checkpoint_every}")


def _fresh_outputs(out_dir: Path, name: str) -> None:
    """Remove a previous run's log and storage of ``name``, so a run starts from step 0."""
    out_dir.resolve().mkdir(parents=True, exist_ok=True)
    events_path(out_dir, name).unlink(missing_ok=True)
    shutil.rmtree(out_dir.resolve() / STORAGE_DIR / name, ignore_errors=True)


def _init_ray(address: str | None) -> bool:
    """Connect to ``address``, or start a local Ray when it is ``None`` and none is
    initialised; whether this call started one (the caller shuts it down)."""
    import ray

    if address is not None:
        ray.init(address=address, log_to_driver=False)
        return True
    if ray.is_initialized():
        return False
    ray.init(address="local", num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False)
    return True


def drive(workload: Workload, faults: FaultPlan, checkpoint_every: int, out_dir: Path, *,
          faulted: bool, name: str, address: str | None = None,
          max_wall_s: float | None = None) -> list[str]:
    """One driver: ``TorchTrainer.fit`` of run ``name``, worker kills when ``faulted``.

    Appends to the run's event log and resumes the run's storage if they exist. Connects to
    the Ray at ``address`` (else as ``_init_ray``). Training stops ``max_wall_s`` after its
    first step if it has not ended by then (``bench.peers.ray_train_loop``). Blocks until
    training ends; returns the errors seen (a failed fit, skipped kills).
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    _check_checkpoint_every(checkpoint_every)
    events = events_path(out_dir, name)
    started_ray = _init_ray(address)
    injector = FaultInjector(faults, events, workload.workers)
    errors: list[str] = []
    try:
        data = ray.put(workload.data())
        trainer = TorchTrainer(
            train_loop,
            train_loop_config={"workload": workload, "checkpoint_every": checkpoint_every,
                               "data": data, "events": str(events),
                               "max_wall_s": max_wall_s},
            scaling_config=ScalingConfig(num_workers=workload.workers, use_gpu=False),
            run_config=RunConfig(
                name=name, storage_path=str(out_dir.resolve() / STORAGE_DIR),
                failure_config=FailureConfig(max_failures=-1 if faulted else 0),
                checkpoint_config=CheckpointConfig(num_to_keep=2)),
        )
        if faulted and faults.worker_kills_s:
            injector.start()
        try:
            trainer.fit()
        except Exception as exc:  # the log says how far it got; the error goes with it
            errors.append(f"fit failed: {type(exc).__name__}: {exc}")
    finally:
        injector.stop.set()
        if injector.is_alive():
            injector.join()
        if started_ray:
            ray.shutdown()
    if injector.skipped:
        errors.append(f"{len(injector.skipped)} worker kills skipped: they came due while the "
                      f"worker group was recovering (at {list(injector.skipped)} s)")
    return errors + injector.errors


def run(workload: Workload, faults: FaultPlan, checkpoint_every: int, out_dir: Path, *,
        faulted: bool, started_at: float | None = None,
        max_wall_s: float | None = None) -> SideRun:
    """Train ``workload`` once with ``TorchTrainer``; kill workers per ``faults`` when
    ``faulted`` (``faults.driver_kill_s`` needs ``run_with_driver_kill``); stop
    ``max_wall_s`` after the first step if training has not ended by then.

    ``started_at`` (a ``time.time()`` stamp) is the side's start, default now. Starts a local
    Ray (``num_cpus=RAY_CPUS``) unless one is initialised, and shuts down only the one it
    started. Blocks until training ends. A previous run's log and storage of the same kind
    under ``out_dir`` are removed first, so the run starts from step 0.
    """
    t0 = time.time() if started_at is None else started_at
    _check_checkpoint_every(checkpoint_every)
    name = run_name(faulted)
    _fresh_outputs(out_dir, name)
    errors = drive(workload, faults, checkpoint_every, out_dir, faulted=faulted, name=name,
                   max_wall_s=max_wall_s)
    return side_run(read_events(events_path(out_dir, name)), t0=t0, steps=workload.steps,
                    faulted=faulted, errors=errors)


# ---- driver kill: drivers in child processes on this process's Ray ----


def driver_command(workload: Workload, faults: FaultPlan, checkpoint_every: int,
                   out_dir: Path, address: str) -> list[str]:
    """The command line of one driver child (it prints its errors as one JSON line)."""
    command = [sys.executable, "-m", "bench.peers.ray_train_goodput", "--driver-child",
               "--address", address, "--steps", str(workload.steps),
               "--batch-per-worker", str(workload.batch_per_worker),
               "--seed", str(workload.seed), "--checkpoint-every", str(checkpoint_every),
               "--fault-seed", str(faults.seed), "--out", str(out_dir.resolve())]
    if faults.worker_kills_s:
        command += ["--kill-times", ",".join(repr(t) for t in faults.worker_kills_s)]
    return command


def run_with_driver_kill(workload: Workload, faults: FaultPlan, checkpoint_every: int,
                         out_dir: Path, *, started_at: float | None = None,
                         driver_timeout_s: float = DRIVER_TIMEOUT_S) -> SideRun:
    """A faulted run whose driver is SIGKILLed at ``faults.driver_kill_s`` after the first
    step and started again (see the module); worker kills as in ``run``.

    Starts a local Ray in this process (``num_cpus=RAY_CPUS``; one must not be initialised
    yet) and shuts it down at the end. Blocks until training ends, each driver at most
    ``driver_timeout_s``.
    """
    t0 = time.time() if started_at is None else started_at
    _check_checkpoint_every(checkpoint_every)
    if faults.driver_kill_s is None or faults.driver_kill_s < 0:
        raise GoodputArgumentError(f"run_with_driver_kill needs FaultPlan.driver_kill_s >= 0, "
                                   f"got {faults.driver_kill_s}")
    import ray

    from bench.common import child_env

    if ray.is_initialized():
        raise GoodputArgumentError("run_with_driver_kill starts its own Ray; call it with none "
                                   "initialised")
    name = run_name(True, driver_kill=True)
    _fresh_outputs(out_dir, name)
    events = events_path(out_dir, name)
    ray.init(address="local", num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False)
    errors: list[str] = []
    try:
        command = driver_command(workload, faults, checkpoint_every, out_dir,
                                 ray.get_runtime_context().gcs_address)
        env = child_env(os.environ)
        cwd = Path(__file__).resolve().parents[2]
        first = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, text=True)
        killed = _kill_driver_on_time(first, events, faults.driver_kill_s, driver_timeout_s)
        errors += _driver_errors(first, driver_timeout_s)
        if killed:
            second = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE,
                                      text=True)
            errors += _driver_errors(second, driver_timeout_s)
    finally:
        ray.shutdown()
    return side_run(read_events(events), t0=t0, steps=workload.steps, faulted=True,
                    errors=errors)


def _kill_driver_on_time(child: subprocess.Popen[str], events: Path, kill_s: float,
                         timeout_s: float) -> bool:
    """SIGKILL ``child`` ``kill_s`` after the first step unless training ended first; whether
    it was killed (then logged as a ``driver`` fault)."""
    deadline = time.time() + timeout_s
    first = None
    while first is None and child.poll() is None and time.time() < deadline:
        time.sleep(POLL_S)
        first = first_step_time(read_events(events))
    if first is None:
        return False
    while time.time() < first + kill_s and child.poll() is None:
        time.sleep(min(POLL_S, max(0.0, first + kill_s - time.time())))
    if child.poll() is not None or of_kind(read_events(events), "done"):
        return False
    child.kill()
    append_event(events, {"event": "fault", "kind": "driver", "t": time.time()})
    child.wait()
    return True


def _driver_errors(child: subprocess.Popen[str], timeout_s: float) -> list[str]:
    """Wait for ``child``; the errors it printed, or why it has none."""
    from bench.common import last_json_object

    try:
        out, _ = child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        return [f"driver {child.pid} ran past {timeout_s} s and was killed"]
    if child.returncode == -signal.SIGKILL:
        return []  # the injected driver fault
    try:
        return [str(e) for e in last_json_object(out).get("errors", [])]
    except ValueError:
        return [f"driver {child.pid} exited {child.returncode} without a result line"]


# ---- command line ----


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring); out-of-range values exit with usage."""
    defaults = Workload()
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers.ray_train_goodput",
        description="One Ray Train TorchTrainer run of the goodput workload; prints its "
                    "SideRun as one JSON line")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="training steps")
    parser.add_argument("--checkpoint-every", type=int, default=50,
                        help="steps between checkpoints (0: only after the last step)")
    parser.add_argument("--kill-every", type=float, default=None,
                        help="SIGKILL a worker every this many seconds after the first step "
                             "(default: no worker kills)")
    parser.add_argument("--driver-kill-at", type=float, default=None,
                        help="SIGKILL the driver this many seconds after the first step and "
                             "start it again (default: no driver kill)")
    parser.add_argument("--max-wall", type=float, default=None, metavar="S",
                        help="stop training this many seconds after the first step if it "
                             "has not ended by then; the run is reported as capped (default: "
                             "no cap; not with --driver-kill-at)")
    parser.add_argument("--batch-per-worker", type=int, default=defaults.batch_per_worker)
    parser.add_argument("--seed", type=int, default=defaults.seed, help="data and init seed")
    parser.add_argument("--fault-seed", type=int, default=0, help="seeds the kills' victims")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    # a driver child of run_with_driver_kill
    parser.add_argument("--driver-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--kill-times", type=_float_list, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.batch_per_worker < 1:
        parser.error(f"--batch-per-worker must be >= 1, got {args.batch_per_worker}")
    if args.checkpoint_every < 0:
        parser.error(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    if args.kill_every is not None and not args.kill_every > 0:
        parser.error(f"--kill-every must be > 0 seconds, got {args.kill_every}")
    if args.driver_kill_at is not None and not args.driver_kill_at >= 0:
        parser.error(f"--driver-kill-at must be >= 0 seconds, got {args.driver_kill_at}")
    if args.max_wall is not None and not args.max_wall > 0:
        parser.error(f"--max-wall must be > 0 seconds, got {args.max_wall}")
    if args.max_wall is not None and args.driver_kill_at is not None:
        parser.error("--max-wall cannot be combined with --driver-kill-at")
    if args.driver_child and args.address is None:
        parser.error("--driver-child needs --address")
    return args


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(",") if t)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated seconds, got {text!r}") from None


def plan_from_args(args: argparse.Namespace) -> tuple[Workload, FaultPlan]:
    """The workload and fault plan the parsed command line asks for."""
    workload = Workload(steps=args.steps, batch_per_worker=args.batch_per_worker,
                        seed=args.seed)
    kills: tuple[float, ...] = ()
    if args.kill_times is not None:
        kills = args.kill_times
    elif args.kill_every is not None:
        kills = FaultPlan.every(args.kill_every, KILL_HORIZON_S).worker_kills_s
    return workload, FaultPlan(worker_kills_s=kills, driver_kill_s=args.driver_kill_at,
                               seed=args.fault_seed)


def main(argv: Sequence[str] | None = None) -> SideRun | None:
    """Run one side in this process and print its ``SideRun`` as the last stdout line (a
    driver child prints only its errors)."""
    started_at = time.time()
    args = parse_args(argv)
    workload, faults = plan_from_args(args)
    if args.driver_child:
        errors = drive(workload, faults, args.checkpoint_every, args.out, faulted=True,
                       name=run_name(True, driver_kill=True), address=args.address)
        print(json.dumps({"errors": errors}), flush=True)
        return None
    if faults.driver_kill_s is not None:
        result = run_with_driver_kill(workload, faults, args.checkpoint_every, args.out,
                                      started_at=started_at)
    else:
        result = run(workload, faults, args.checkpoint_every, args.out,
                     faulted=bool(faults.worker_kills_s), started_at=started_at,
                     max_wall_s=args.max_wall)
    print(json.dumps(result.to_json()), flush=True)
    return result


if __name__ == "__main__":
    main()
