"""The node-loss scenario of ``bench.goodput``: a whole worker node disappears mid-training.

Each side trains the shared ``Workload`` on a multi-node Ray made with
``ray.cluster_utils.Cluster`` in this process: a head node and ``WORKER_NODES`` worker nodes
of ``NODE_CPUS`` logical CPU each. Training runs on a thread; ``node_loss_s`` seconds after
the first completed step the main thread (``Cluster.remove_node`` starts and stops node
processes, which needs the main thread) removes one worker node without warning
(``allow_graceful=False``): its raylet and every process on it die at once.

raftps (``run_raftps``): 2 shards x 3 replicas (``bench.goodput_raftps.config``), head of
``RAFTPS_HEAD_CPUS`` CPUs, so the 2 gradient tasks (1 CPU each) and the replicas (0 CPUs,
spread over the nodes) fit with a node to spare. The node removed is the worker node that
hosts a shard leader if one does, else a worker node hosting any replica. Ray restarts the
lost replicas on the nodes left and runs the lost gradient tasks again; the driver replays the
rounds in flight. In the rare case where a replayed round's gradients died with the node
after another shard applied that round, the job stops asking to be rerun with ``--resume``;
the side then resumes it from its checkpoint, as a user would, and says so in ``notes``.

Ray Train (``run_ray_train``): ``bench.peers.ray_train_goodput``'s ``TorchTrainer`` run
(``drive``, its training loop and event log) with ``FailureConfig(max_failures=-1)``, head of
``RAY_TRAIN_HEAD_CPUS`` CPU. Each Ray Train worker takes 1 CPU and the trainer's controller
stays on the driver's (head) node, so at least one of the 2 workers lands on a worker node;
the node removed is one that hosts a ``RayTrainWorker`` actor. Ray Train then restarts the
whole worker group from the latest registered checkpoint on the 3 CPUs left.

``python -m bench.goodput_node_loss --side raftps|ray_train --steps N [--node-loss-at T]
[--checkpoint-every K] [--out DIR]`` runs one side and prints its ``SideRun`` as one JSON
line last. Without ``--node-loss-at`` it is the side's fault-free run on the same cluster:
a multi-node Ray moves parameters and gradients between the nodes' object stores, so a
single-node run would not be its baseline.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import log_driver_to
from bench.goodput_workload import FaultPlan, SideRun, Workload

WORKER_NODES = 3
NODE_CPUS = 1  # logical CPUs of each worker node
RAFTPS_HEAD_CPUS = 2
RAY_TRAIN_HEAD_CPUS = 1
SIDES = ("raftps", "ray_train")
RAY_TRAIN_RUN = "ray_train_node_loss"  # the Ray Train run name (and event-log name)
FIRST_STEP_TIMEOUT_S = 300.0
POLL_S = 0.02
RESUME_HINT = "rerun with --resume"  # what a raftps job says when it must be resumed


class NodeLossArgumentError(ValueError):
    """A setting of the node-loss scenario is out of range."""


# ---- pure parts: which node to remove, the command line ----


@dataclass(frozen=True)
class Role:
    """One thing a node hosts: a Raft replica or a Ray Train worker."""

    name: str
    leader: bool = False
    """Whether it is a shard's Raft leader."""

    def __str__(self) -> str:
        return f"{self.name} (leader)" if self.leader else self.name


def node_to_remove(hosted: Mapping[str, Sequence[Role]], head: str) -> str | None:
    """The node to remove among ``hosted`` (node id -> what it hosts): never ``head``; a
    node hosting a leader first, else any node hosting something; ties go to the smallest
    node id. ``None`` when no worker node hosts anything."""
    candidates = sorted(node for node, roles in hosted.items() if node != head and roles)
    leading = [node for node in candidates if any(role.leader for role in hosted[node])]
    chosen = leading or candidates
    return chosen[0] if chosen else None


def removal_note(node: str, roles: Sequence[Role]) -> str:
    """What the removal took with it, for ``SideRun.notes``."""
    return f"removed node {node[:8]} hosting {', '.join(str(r) for r in roles)}"


def _by_node(hosted: Mapping[str, Sequence[Role]]) -> dict[str, list[str]]:
    return {node[:8]: [str(role) for role in roles] for node, roles in hosted.items()}


def _check(node_loss_s: float, checkpoint_every: int = 0) -> None:
    if not node_loss_s >= 0:
        raise NodeLossArgumentError(f"node_loss_s must be >= 0 seconds after the first step, "
                                    f"got {node_loss_s}")
    if checkpoint_every < 0:
        raise NodeLossArgumentError(f"checkpoint_every must be >= 0 (0: only after the last "
                                    f"step), got {checkpoint_every}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring); out-of-range values exit with usage."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.goodput_node_loss",
        description="One side of the goodput workload on a 1 + 3 node Ray, losing a worker "
                    "node mid-training; prints its SideRun as one JSON line")
    parser.add_argument("--side", choices=SIDES, required=True)
    parser.add_argument("--steps", type=int, default=Workload().steps, help="training steps")
    parser.add_argument("--node-loss-at", type=float, default=None, metavar="T",
                        help="remove a worker node T seconds after the first completed step "
                             "(omitted: the fault-free run on the same cluster)")
    parser.add_argument("--checkpoint-every", type=int, default=None, metavar="K",
                        help="Ray Train: steps between checkpoints (default 50; 0: only "
                             "after the last step)")
    parser.add_argument("--seed", type=int, default=Workload().seed, help="data and init seed")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: a new temporary one)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.node_loss_at is not None and not args.node_loss_at >= 0:
        parser.error(f"--node-loss-at must be >= 0 seconds, got {args.node_loss_at}")
    if args.checkpoint_every is not None and args.side != "ray_train":
        parser.error("--checkpoint-every applies to --side ray_train only (raftps "
                     "checkpoints as bench.goodput_raftps.config says)")
    if args.checkpoint_every is None:
        args.checkpoint_every = 50
    if args.checkpoint_every < 0:
        parser.error(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    return args


# ---- the cluster and the removal (Ray) ----


def _start_cluster(head_cpus: int) -> Any:
    """A head of ``head_cpus`` CPUs and ``WORKER_NODES`` worker nodes; this process connects
    to it."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": head_cpus, "include_dashboard": False})
    for _ in range(WORKER_NODES):
        cluster.add_node(num_cpus=NODE_CPUS)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    return cluster


def _stop_cluster(cluster: Any) -> None:
    import ray

    ray.shutdown()
    cluster.shutdown()


@dataclass(frozen=True)
class Placed:
    """An alive actor and the node it runs on."""

    name: str
    class_name: str
    node: str
    pid: int


def alive_actors() -> list[Placed]:
    """The alive actors of the connected Ray, from its GCS. (Ray's state API would ask the
    dashboard over HTTP, and a second Ray on the same host can answer in its stead.)"""
    from ray._private import state

    table: dict[str, dict[str, Any]] = state.actors(actor_state_name="ALIVE")
    return [Placed(str(a["Name"]), str(a["ActorClassName"]), str(a["Address"]["NodeID"]),
                   int(a["Pid"])) for a in table.values()]


def replica_roles(job: str, shards: int, replicas: int) -> dict[str, list[Role]]:
    """Node id -> the replicas of ``job`` it hosts, with which of them lead."""
    import ray

    nodes = {a.name: a.node for a in alive_actors() if a.name}
    hosted: dict[str, list[Role]] = {}
    for shard in range(shards):
        for replica in range(replicas):
            name = f"{job}/shard-{shard}/replica-{replica}"
            if name not in nodes:
                continue
            leader = False
            try:
                handle = ray.get_actor(name, namespace=job)
                status: dict[str, Any] = ray.get(handle.status.remote(), timeout=5)  # type: ignore[assignment]
                leader = status["role"] == "LEADER"
            except Exception:  # a replica that does not answer still lives on its node
                pass
            role = Role(f"shard-{shard}/replica-{replica}", leader)
            hosted.setdefault(nodes[name], []).append(role)
    return hosted


def train_worker_roles() -> dict[str, list[Role]]:
    """Node id -> the Ray Train workers (``RayTrainWorker`` actors) it hosts."""
    hosted: dict[str, list[Role]] = {}
    for actor in alive_actors():
        if actor.class_name == "RayTrainWorker":
            hosted.setdefault(actor.node, []).append(Role(f"RayTrainWorker pid {actor.pid}"))
    return hosted


def remove_node(cluster: Any, node: str) -> None:
    """Remove worker node ``node`` of ``cluster`` without warning (on the main thread)."""
    by_id = {n.node_id: n for n in cluster.worker_nodes}
    cluster.remove_node(by_id[node], allow_graceful=False)


def _wait_until(deadline_s: float, start: float, done: threading.Event) -> bool:
    """Wait until ``deadline_s`` (seconds since ``start``, monotonic); whether training
    ended first."""
    return done.wait(max(0.0, start + deadline_s - time.monotonic()))


# ---- raftps ----


def run_raftps(workload: Workload, node_loss_s: float | None, out: Path) -> SideRun:
    """The raftps side of the scenario (see the module docstring); ``node_loss_s`` None:
    its fault-free run on the same cluster."""
    if node_loss_s is not None:
        _check(node_loss_s)
    from safetensors.numpy import load_file

    from bench.goodput_raftps import REPLICAS, SHARDS, StepClock, config, loader, lost_steps
    from bench.goodput_workload import model_digest
    from jobs import TrainingError, train
    from jobs.backend import RaftServerBackend

    start = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    # an earlier run's rounds would read as this one's (the job overwrites its outputs anyway)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    side = SideRun(side="raftps_node_loss", faulted=node_loss_s is not None)
    job = f"goodput-nl-{time.time_ns() % 10**8:08d}"
    cluster = _start_cluster(RAFTPS_HEAD_CPUS)
    clock = StepClock(out / "metrics.jsonl", start)
    done = threading.Event()
    result: dict[str, Any] = {}

    def job_thread() -> None:
        cfg = config(workload, out, job)
        try:
            try:
                result["train"] = train(cfg, data=loader(workload), backend=RaftServerBackend())
            except TrainingError as exc:  # the documented rare case: resume, as a user would
                if RESUME_HINT not in str(exc):
                    raise
                side.notes.append(f"the job asked to be resumed ({str(exc)[:200]}); resumed "
                                  f"from its checkpoint")
                resumed = dataclasses.replace(cfg, resume=True, overwrite=False)
                result["train"] = train(resumed, data=loader(workload),
                                        backend=RaftServerBackend())
        except BaseException as exc:
            result["error"] = exc
        finally:
            done.set()

    trainer = threading.Thread(target=job_thread, name="raftps-node-loss-train")
    first = float("nan")
    try:
        trainer.start()
        first = clock.wait_first(FIRST_STEP_TIMEOUT_S)
        if node_loss_s is None:
            pass  # the fault-free run
        elif _wait_until(first + node_loss_s, start, done):
            side.notes.append("training ended before the node loss came due")
        else:
            try:
                hosted = replica_roles(job, SHARDS, REPLICAS)
                node = node_to_remove(hosted, cluster.head_node.node_id)
                if node is None:
                    side.notes.append(f"no worker node hosted a replica: nothing was removed "
                                      f"(replicas by node: {_by_node(hosted)})")
                else:
                    side.fault_times_s.append(time.monotonic() - start)
                    side.fault_kinds.append("node")
                    remove_node(cluster, node)
                    side.notes.append(removal_note(node, hosted[node]))
            except Exception as exc:  # training goes on; the run says the removal failed
                side.errors.append(f"the node removal failed: {type(exc).__name__}: {exc}")
        trainer.join()
    except BaseException as exc:
        side.errors.append(f"{type(exc).__name__}: {exc}")
        done.set()
    finally:
        clock.stop()
        _stop_cluster(cluster)
        trainer.join(timeout=60)
    if "error" in result:
        side.errors.append(f"{type(result['error']).__name__}: {result['error']}")
    side.step_times_s, side.first_step_s = clock.stamps, first
    side.wall_s = clock.stamps[-1] if clock.stamps else 0.0
    side.lost_steps = lost_steps(clock.rounds, clock.stamps, side.fault_times_s)
    if "train" in result:
        side.model_sha256 = model_digest(load_file(str(result["train"].model_path)))
    return side


# ---- Ray Train ----


def run_ray_train(workload: Workload, node_loss_s: float | None, checkpoint_every: int,
                  out: Path) -> SideRun:
    """The Ray Train side of the scenario (see the module docstring). The run's progress is
    its event log (``bench.peers.ray_train_goodput``); the removal is its ``node`` fault.
    ``node_loss_s`` None: its fault-free run on the same cluster."""
    _check(0.0 if node_loss_s is None else node_loss_s, checkpoint_every)
    faulted = node_loss_s is not None
    from bench.peers import ray_train_events as rte
    from bench.peers import ray_train_goodput as rtg

    t0 = time.time()
    start = time.monotonic()
    rtg._fresh_outputs(out, RAY_TRAIN_RUN)
    events = rtg.events_path(out, RAY_TRAIN_RUN)
    cluster = _start_cluster(RAY_TRAIN_HEAD_CPUS)
    done = threading.Event()
    errors: list[str] = []
    notes: list[str] = []

    def fit_thread() -> None:
        try:
            errors.extend(rtg.drive(workload, FaultPlan(), checkpoint_every, out,
                                    faulted=faulted, name=RAY_TRAIN_RUN))
        except BaseException as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            done.set()

    trainer = threading.Thread(target=fit_thread, name="ray-train-node-loss-fit")
    try:
        trainer.start()
        first = None
        deadline = start + FIRST_STEP_TIMEOUT_S
        while first is None and not done.is_set():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no step completed within {FIRST_STEP_TIMEOUT_S} s")
            done.wait(POLL_S)
            first = rte.first_step_time(rte.read_events(events))
        if first is None:
            notes.append("training ended before its first step")
        elif node_loss_s is None:
            pass  # the fault-free run
        elif done.wait(max(0.0, first + node_loss_s - time.time())) or rte.of_kind(
                rte.read_events(events), "done"):
            notes.append("training ended before the node loss came due")
        else:
            try:
                hosted = train_worker_roles()
                node = node_to_remove(hosted, cluster.head_node.node_id)
                if node is None:
                    notes.append(f"no worker node hosted a Ray Train worker: nothing was "
                                 f"removed (workers by node: {_by_node(hosted)})")
                else:
                    # logged first: steps the group logs while its node goes are lost with it
                    rte.append_event(events, {"event": "fault", "kind": "node",
                                              "t": time.time()})
                    remove_node(cluster, node)
                    notes.append(removal_note(node, hosted[node]))
            except Exception as exc:  # training goes on; the run says the removal failed
                errors.append(f"the node removal failed: {type(exc).__name__}: {exc}")
        trainer.join()
    except BaseException as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        _stop_cluster(cluster)
        trainer.join(timeout=60)
    side = rte.side_run(rte.read_events(events), t0=t0, steps=workload.steps,
                        faulted=faulted, errors=errors)
    side.side = "ray_train_node_loss"
    side.notes += notes
    return side


def main(argv: Sequence[str] | None = None) -> SideRun:
    """Run one side and print its ``SideRun`` as the last stdout line."""
    args = parse_args(argv)
    workload = dataclasses.replace(Workload(), steps=args.steps, seed=args.seed)
    out = args.out or Path(tempfile.mkdtemp(prefix=f"goodput-node-loss-{args.side}-"))
    if args.side == "raftps":
        log = log_driver_to(out)
        side = run_raftps(workload, args.node_loss_at, out)
        side.notes.append(f"driver log: {log}")
    else:
        side = run_ray_train(workload, args.node_loss_at, args.checkpoint_every, out)
    print(json.dumps(side.to_json()), flush=True)
    return side


if __name__ == "__main__":
    result = main()
    sys.exit(0 if result.model_sha256 else 1)
