"""The torchft side of ``bench.goodput``: per-step fault tolerance with PyTorch's torchft.

Layout, all on this host and on CPU: one torchft Lighthouse (the ``torchft_lighthouse``
server, ``min_replicas=1``) as a child process, and ``workload.workers`` replica groups of one
worker each, every group its own OS process (``bench.peers.torchft_group``: torchft ``Manager`` with
its own ``TCPStore``, ``ProcessGroupGloo``, torchft DDP and optimizer wrappers, SGD at
``workload.lr``, the bench MLP built after ``torch.manual_seed(workload.seed)``). Step ``s``
uses samples ``[s*G, (s+1)*G)`` of ``workload.data()``, group ``r`` its ``r``-th half.

Normalisation when a group is missing: torchft averages the gradient over the groups in the
step's quorum, so a step committed by the surviving group alone applies the mean gradient of
its own ``batch_per_worker`` samples at the same learning rate (a half-size step); the
missing group's half of that step's samples is never trained on. A killed group's step in
flight is discarded by the survivor (``should_commit`` is refused) and the survivor runs that
step index again alone.

Faults (``faulted=True``): at each ``faults.worker_kills_s`` time after the first completed
step, the group ``faults.victim(i, [0, 1])`` gets SIGKILL and is started again at once; the new
process joins through the Lighthouse and heals from the healthy group (torchft's checkpoint
transfer of model, optimizer and step). A kill waits until every group has committed a step in
its current process, so that a healthy copy of the state always exists (killing the only
healthy group would lose the model); ``fault_times_s`` holds the times the kills happened.
Node loss and driver kills are not injected (there is no driver and no second node).

What the ``SideRun`` holds (``bench.peers.torchft_ledger`` has the exact rules):

* ``step_times_s``: per step index, when the first group committed it (any group; the
  survivor while its peer is down). torchft commits each index once, so there are exactly
  ``workload.steps`` entries.
* ``lost_steps``: per fault, the completed steps the killed group did not contribute to
  (from the kill until its restarted process commits). None of them is computed twice; each
  lost half of its samples. The survivors' discarded attempts are in the detail file.
* ``model_sha256``: ``model_digest`` of group 0's final ``state_dict``; of the other group's
  when group 0 was down at the end. Groups hold bitwise equal models after every committed
  step; when both finish, a digest mismatch is reported in ``errors``.
* ``wall_s``: from this side's start to the commit of the last step.

Per-group commit times, kills, rejoin times and redone attempts go to
``<out_dir>/torchft_detail.json``; each group process's output to ``<out_dir>/group<r>.<n>.log``.
If torchft cannot be imported or the run fails, ``errors`` holds the one-line reason.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bench.common import child_env
from bench.goodput_workload import FaultPlan, SideRun, Workload, model_digest
from bench.peers.torchft_ledger import (
    Kill,
    StepEvent,
    completion_times,
    live_groups,
    lost_steps,
    parse_log,
    redone_attempts,
    rejoin,
)

SIDE = "torchft"
HEARTBEAT_TIMEOUT_MS = 2000
"""The Lighthouse drops a group whose heartbeats (every 100 ms) stop for this long."""
JOIN_TIMEOUT_MS = 10_000
"""How long the Lighthouse waits for a heartbeating group to join a quorum."""
THREADS_PER_GROUP = 1
"""torch intra-op threads per group process (two groups: the bench's 2-core budget)."""
POLL_S = 0.02
STALL_S = 300.0
"""A run in which no step commits for this long is aborted with an error."""
FINAL_WAIT_S = 60.0
DEFAULT_HORIZON_S = 3600.0
REPO_ROOT = Path(__file__).resolve().parents[2]


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line, for ``SideRun.errors``."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass
class _Group:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    incarnation: int = -1
    output: IO[bytes] | None = None
    kills: list[Kill] = field(default_factory=list)


class LogTail:
    """Reads the complete lines appended to a step log since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read(self) -> list[StepEvent]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        return parse_log(chunk[:end].decode())


class _Side:
    """One run: the Lighthouse, the group processes, the kill schedule and the ledger."""

    def __init__(self, workload: Workload, faults: FaultPlan, out_dir: Path,
                 faulted: bool, t0: float) -> None:
        self.workload = workload
        self.faults = faults
        self.out = out_dir
        self.faulted = faulted
        self.t0 = t0
        self.data = out_dir / "data"
        self.go = out_dir / "go"
        self.groups = [_Group(r) for r in range(workload.workers)]
        self.tails = [LogTail(self._path(r, "steps")) for r in range(workload.workers)]
        self.events: list[StepEvent] = []
        self.lighthouse: subprocess.Popen[bytes] | None = None
        self.lighthouse_addr = ""
        self.env = child_env(os.environ)
        self.env.setdefault("RUST_LOG", "warn")  # torchft's Rust side logs every quorum at info
        self.env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO_ROOT), self.env.get("PYTHONPATH")]))

    def _path(self, group: int, suffix: str) -> Path:
        return self.out / f"group{group}.{suffix}"

    def execute(self, result: SideRun) -> None:
        self._prepare()
        self._start_lighthouse()
        try:
            for group in self.groups:
                self._start(group)
            self._wait_ready()
            self.go.write_text("go")
            end_t = self._train()
            self._record(result, end_t)
            self._finish(result)
        finally:
            self._stop_all()
            shutil.rmtree(self.data, ignore_errors=True)

    def _prepare(self) -> None:
        import numpy as np

        self.out.mkdir(parents=True, exist_ok=True)
        for stale in [self.go, *self.out.glob("group*.steps"), *self.out.glob("group*.pt"),
                      *self.out.glob("group*.ready")]:
            stale.unlink(missing_ok=True)
        self.data.mkdir(exist_ok=True)
        x, y = self.workload.data()
        np.save(self.data / "x.npy", x)
        np.save(self.data / "y.npy", y)

    def _start_lighthouse(self) -> None:
        """The ``torchft_lighthouse`` server as a child process, listening on a free port."""
        binary = Path(sys.executable).parent / "torchft_lighthouse"
        if not binary.exists():
            binary = Path(shutil.which("torchft_lighthouse") or binary)
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::", 0))
            port = probe.getsockname()[1]
        with (self.out / "lighthouse.log").open("wb") as output:
            self.lighthouse = subprocess.Popen(
                [str(binary), "--min_replicas", "1", "--bind", f"[::]:{port}",
                 "--join_timeout_ms", str(JOIN_TIMEOUT_MS),
                 "--heartbeat_timeout_ms", str(HEARTBEAT_TIMEOUT_MS)],
                env=self.env, stdout=output, stderr=subprocess.STDOUT)
        self.lighthouse_addr = f"http://localhost:{port}"
        deadline = time.time() + STALL_S
        while True:
            if self.lighthouse.poll() is not None:
                raise RuntimeError(f"torchft_lighthouse exited with status "
                                   f"{self.lighthouse.returncode}; see {self.out}/lighthouse.log")
            try:
                socket.create_connection(("localhost", port), timeout=1).close()
                return
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"torchft_lighthouse did not listen on port {port} "
                                       f"within {STALL_S:.0f} s") from None
                time.sleep(POLL_S)

    def _start(self, group: _Group) -> None:
        group.incarnation += 1
        r, n = group.index, group.incarnation
        if group.output is not None:
            group.output.close()
        group.output = self._path(r, f"{n}.log").open("wb")
        w = self.workload
        cmd = [sys.executable, "-m", "bench.peers.torchft_group",
               "--group", str(r), "--incarnation", str(n),
               "--lighthouse", self.lighthouse_addr, "--steps", str(w.steps),
               "--batch-per-worker", str(w.batch_per_worker), "--groups", str(w.workers),
               "--seed", str(w.seed), "--lr", repr(w.lr), "--threads", str(THREADS_PER_GROUP),
               "--data", str(self.data), "--log", str(self._path(r, "steps")),
               "--ready", str(self._path(r, f"{n}.ready")), "--go", str(self.go),
               "--final", str(self._path(r, "pt"))]
        group.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=self.env, stdout=group.output,
                                      stderr=subprocess.STDOUT)

    def _wait_ready(self) -> None:
        deadline = time.time() + STALL_S
        while not all(self._path(g.index, "0.ready").exists() for g in self.groups):
            self._check_processes()
            if time.time() > deadline:
                raise RuntimeError(f"the torchft groups were not up within {STALL_S:.0f} s")
            time.sleep(POLL_S)

    def _check_processes(self) -> None:
        if self.lighthouse is not None and self.lighthouse.poll() is not None:
            raise RuntimeError(f"torchft_lighthouse exited with status "
                               f"{self.lighthouse.returncode}; see {self.out}/lighthouse.log")
        for group in self.groups:
            assert group.proc is not None
            rc = group.proc.poll()
            if rc is not None and rc != 0:
                raise RuntimeError(f"torchft group {group.index} (process {group.incarnation}) "
                                   f"exited with status {rc}: {self._last_line(group)}")

    def _last_line(self, group: _Group) -> str:
        path = self._path(group.index, f"{group.incarnation}.log")
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        return lines[-1].strip() if lines else "(no output)"

    def _train(self) -> float:
        """Poll the logs, inject the kills; return the time the last step was completed."""
        kills = list(self.faults.worker_kills_s) if self.faulted else []
        first_t: float | None = None
        last_progress = time.time()
        while True:
            fresh = [e for tail in self.tails for e in tail.read()]
            if fresh:
                self.events.extend(fresh)
                if any(e.kind == "commit" for e in fresh):
                    last_progress = time.time()
            done = completion_times(self.events)
            if first_t is None and done:
                first_t = min(done.values())
            if len(done) >= self.workload.steps:
                return sorted(done.values())[self.workload.steps - 1]
            self._check_processes()
            now = time.time()
            fault = sum(len(g.kills) for g in self.groups)
            if first_t is not None and fault < len(kills) and now >= first_t + kills[fault]:
                self._maybe_kill(fault)
            if now - last_progress > STALL_S:
                raise RuntimeError(f"no torchft step committed for {STALL_S:.0f} s "
                                   f"({len(done)} of {self.workload.steps} done)")
            time.sleep(POLL_S)

    def _maybe_kill(self, fault: int) -> None:
        incarnations = {g.index: g.incarnation for g in self.groups}
        if len(live_groups(self.events, incarnations)) < len(self.groups):
            return  # a group is still recovering: wait until a healthy copy exists elsewhere
        victim = self.groups[self.faults.victim(fault, [g.index for g in self.groups])]
        assert victim.proc is not None
        victim.kills.append(Kill(victim.index, victim.incarnation, time.time()))
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
        self._start(victim)

    def _record(self, result: SideRun, end_t: float) -> None:
        done = completion_times(self.events)
        result.step_times_s = sorted(t - self.t0 for t in done.values())
        result.first_step_s = result.step_times_s[0]
        result.wall_s = end_t - self.t0
        kills = sorted((k for g in self.groups for k in g.kills), key=lambda k: k.t)
        result.fault_times_s = [k.t - self.t0 for k in kills]
        result.fault_kinds = ["worker"] * len(kills)
        result.lost_steps = [lost_steps(k, self.events) for k in kills]
        detail = {
            "definitions": "see bench/peers/torchft_ledger.py",
            "heartbeat_timeout_ms": HEARTBEAT_TIMEOUT_MS,
            "join_timeout_ms": JOIN_TIMEOUT_MS,
            "threads_per_group": THREADS_PER_GROUP,
            "commits_s": {str(g.index): [e.t - self.t0 for e in self.events
                                         if e.kind == "commit" and e.group == g.index]
                          for g in self.groups},
            "aborts_s": {str(g.index): [e.t - self.t0 for e in self.events
                                        if e.kind == "abort" and e.group == g.index]
                         for g in self.groups},
            "faults": [self._fault_detail(k) for k in kills],
        }
        (self.out / "torchft_detail.json").write_text(json.dumps(detail, indent=1) + "\n")

    def _fault_detail(self, kill: Kill) -> dict[str, Any]:
        back = rejoin(kill, self.events)
        return {"group": kill.group, "killed_process": kill.incarnation,
                "kill_s": kill.t - self.t0,
                "rejoin_s": None if back is None else back.t - self.t0,
                "rejoin_step": None if back is None else back.step,
                "lost_steps": lost_steps(kill, self.events),
                "redone_attempts": redone_attempts(kill, self.events)}

    def _finish(self, result: SideRun) -> None:
        """Collect the final models of the groups that were healthy at the end."""
        incarnations = {g.index: g.incarnation for g in self.groups}
        live = live_groups(self.events, incarnations)
        for group in self.groups:
            if group.index not in live and group.proc is not None:
                group.proc.kill()  # restarted too late to heal; it would train from scratch
        deadline = time.time() + FINAL_WAIT_S
        digests: dict[int, str] = {}
        for r in live:
            path = self._path(r, "pt")
            while not path.exists() and time.time() < deadline:
                time.sleep(POLL_S)
            if path.exists():
                digests[r] = _digest_file(path)
        if not digests:
            result.errors.append(f"no torchft group saved its final model within "
                                 f"{FINAL_WAIT_S:.0f} s")
            return
        result.model_sha256 = digests[min(digests)]
        if len(set(digests.values())) > 1:
            result.errors.append(f"torchft groups finished with different models: {digests}")

    def _stop_all(self) -> None:
        for group in self.groups:
            if group.proc is not None and group.proc.poll() is None:
                group.proc.kill()
                group.proc.wait()
            if group.output is not None:
                group.output.close()
        if self.lighthouse is not None and self.lighthouse.poll() is None:
            self.lighthouse.kill()
            self.lighthouse.wait()


def _digest_file(path: Path) -> str:
    import torch

    return model_digest(torch.load(path, map_location="cpu"))


def run(workload: Workload, faults: FaultPlan, out_dir: Path, *, faulted: bool) -> SideRun:
    """Train ``workload`` with torchft (see the module docstring); blocks for the whole run.

    Never raises for a failed run: the reason is the one line in ``errors``.
    """
    t0 = time.time()
    result = SideRun(side=SIDE, faulted=faulted)
    if faulted and (faults.node_loss_s is not None or faults.driver_kill_s is not None):
        result.errors.append("torchft side: node_loss_s and driver_kill_s are not injected "
                             "(one host, no driver); only worker kills are")
    if importlib.util.find_spec("torchft") is None:  # a group would fail the same way, later
        result.errors.append("ModuleNotFoundError: No module named 'torchft' "
                             "(pip install torchft==0.2.0)")
        return result
    try:
        _Side(workload, faults, Path(out_dir), faulted, t0).execute(result)
    except Exception as exc:
        result.errors.append(one_line(exc))
    return result


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> tuple[Workload, FaultPlan, bool, Path]:
    """``(workload, faults, faulted, out_dir)`` from the command line; exits on bad input."""
    parser = argparse.ArgumentParser(prog="python -m bench.peers.torchft_goodput",
                                     description="One torchft side of bench.goodput.")
    parser.add_argument("--steps", type=_positive_int, required=True,
                        help="steps to commit")
    parser.add_argument("--kill-every", type=_positive_float, default=None, metavar="T",
                        help="SIGKILL one replica group every T s after the first step")
    parser.add_argument("--horizon", type=_positive_float, default=DEFAULT_HORIZON_S,
                        help="schedule kills up to this many seconds (default %(default)s)")
    parser.add_argument("--batch-per-worker", type=_positive_int,
                        default=Workload().batch_per_worker)
    parser.add_argument("--seed", type=int, default=0, help="data, init and victim seed")
    parser.add_argument("--out", type=Path, required=True, help="folder for logs and models")
    args = parser.parse_args(argv)
    workload = Workload(steps=args.steps, batch_per_worker=args.batch_per_worker,
                        seed=args.seed)
    if args.kill_every is None:
        return workload, FaultPlan(seed=args.seed), False, args.out
    return (workload, FaultPlan.every(args.kill_every, args.horizon, seed=args.seed), True,
            args.out)


def main(argv: Sequence[str] | None = None) -> None:
    workload, faults, faulted, out_dir = parse_args(argv)
    result = run(workload, faults, out_dir, faulted=faulted)
    print(json.dumps(result.to_json()), flush=True)


if __name__ == "__main__":
    main()
