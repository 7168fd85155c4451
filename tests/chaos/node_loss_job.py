"""Run by test_node_loss.py in its own process: a multi-node Ray (``ray.cluster_utils``),
one clean training job, then the same job while the node of a shard-0 replica is removed.

Prints one JSON line: {"clean": hex digest, "faulty": hex digest, "removed": what, ...}.
If the faulty run stops with the documented "rerun with --resume" error (gradients lost with
the node after one shard applied them), it resumes from its checkpoint, as a user would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import threading
from pathlib import Path
from typing import Any

import ray
from ray.cluster_utils import Cluster

from jobs import TrainConfig, TrainingError, train
from jobs.backend import RaftServerBackend
from tests.chaos.test_train_kill import wait_for_rounds


def config(out: Path, job: str) -> TrainConfig:
    return TrainConfig(model="mlp", data="synthetic:16x4x512x64", workers=2, shards=2,
                       replicas=3, epochs=3, global_batch=32, optimizer="momentum", lr=0.05,
                       seed=5, out=str(out), job=job, checkpoint_every=8, progress=False,
                       timeout_s=120.0)


def remove_replica_node(cluster: Cluster, out: Path, job: str, rounds: int,
                        removed: list[str]) -> None:
    """After ``rounds`` rounds, remove the worker node that hosts a shard-0 replica (the
    leader's if it is not on the head node)."""
    wait_for_rounds(out, rounds)
    head = cluster.head_node.node_id
    by_id = {node.node_id: node for node in cluster.worker_nodes}
    candidates: list[tuple[bool, str, str]] = []
    for r in range(3):
        handle = ray.get_actor(f"{job}/shard-0/replica-{r}", namespace=job)
        status: dict[str, Any] = ray.get(handle.status.remote(), timeout=10)
        node_id = _node_of(f"{job}/shard-0/replica-{r}")
        if node_id != head and node_id in by_id:
            candidates.append((status["role"] != "LEADER", node_id, f"replica-{r}"))
    if candidates:
        _, node_id, name = sorted(candidates)[0]
        cluster.remove_node(by_id[node_id], allow_graceful=False)
        removed.append(f"{name} on node {node_id[:8]}")


def _node_of(actor_name: str) -> str:
    from ray.util.state import list_actors

    for actor in list_actors(filters=[("name", "=", actor_name)], detail=True):
        if actor.state == "ALIVE":
            return str(actor.node_id)
    return ""


def main(root: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    for _ in range(3):
        cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        out = Path(root)
        clean = train(config(out / "clean", "node-clean"), backend=RaftServerBackend())
        removed: list[str] = []
        remover = threading.Thread(target=remove_replica_node,
                                   args=(cluster, out / "faulty", "node-faulty", 10, removed))
        remover.start()
        faulty_config = config(out / "faulty", "node-faulty")
        resumed = False
        try:
            faulty = train(faulty_config, backend=RaftServerBackend())
        except TrainingError as exc:  # the documented rare case: resume from the checkpoint
            if "rerun with --resume" not in str(exc):
                raise
            resumed = True
            faulty = train(dataclasses.replace(faulty_config, resume=True),
                           backend=RaftServerBackend())
        remover.join(timeout=130)
        print(json.dumps({
            "clean": hashlib.sha256(clean.model_path.read_bytes()).hexdigest(),
            "faulty": hashlib.sha256(faulty.model_path.read_bytes()).hexdigest(),
            "removed": removed, "rounds": [clean.rounds, faulty.rounds],
            "resumed": resumed}), flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
