"""Run by test_elastic_nodes.py in its own process: ``--workers auto`` on a multi-node Ray
(``ray.cluster_utils``) while worker nodes join and leave, against a static run.

The cluster starts with 2 CPUs (a head and one worker node: the shard replicas live there).
One static run with ``workers=2`` (and one replica: the bits do not depend on it), then
the same job with ``workers="auto"``: after a few rounds two 1-CPU nodes join (4 CPUs: 4
tasks per round), and some rounds later they leave again (2 tasks), taking their running
tasks and stored gradients with them.

Prints one JSON line: {"static": digest, "elastic": digest, "contributors": [per round],
"events": [(what, rounds logged when it was done)], ...}. If the elastic run stops with the
documented "rerun with --resume" error (gradients lost with a node after one shard applied
them), it resumes from its checkpoint, as a user would.
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

JOIN_AFTER = 8  # rounds logged before the two nodes join
LEAVE_AFTER = 40  # rounds logged, after the join, before they leave


def config(out: Path, job: str, workers: int | str, replicas: int = 3) -> TrainConfig:
    # 3 epochs of 64 rounds: about 100 rounds still run after the nodes leave
    return TrainConfig(model="mlp", data="synthetic:16x4x2048x64",
                       workers=workers,  # type: ignore[arg-type]
                       micro_batches=4, shards=2, replicas=replicas, epochs=3, global_batch=32,
                       optimizer="momentum", lr=0.05, seed=5, out=str(out), job=job,
                       checkpoint_every=32, progress=False, timeout_s=120.0)


def _logged(out: Path) -> int:
    metrics = out / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


def join_then_leave(cluster: Cluster, out: Path, events: list[tuple[str, int]]) -> None:
    """Two 1-CPU nodes join after ``JOIN_AFTER`` rounds and leave ``LEAVE_AFTER`` rounds
    after they are up. Runs on the main thread (Ray starts node processes from there)."""
    wait_for_rounds(out, JOIN_AFTER)
    joined = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    events.append(("joined", _logged(out)))
    wait_for_rounds(out, _logged(out) + LEAVE_AFTER)
    for node in joined:
        cluster.remove_node(node, allow_graceful=True)
    events.append(("left", _logged(out)))


def _train_elastic(config: TrainConfig, outcome: dict[str, Any]) -> None:
    """The elastic job (on a thread); resumes once on the documented rare error."""
    try:
        try:
            outcome["result"] = train(config, backend=RaftServerBackend())
        except TrainingError as exc:
            if "rerun with --resume" not in str(exc):
                raise
            outcome["resumed"] = True
            outcome["result"] = train(dataclasses.replace(config, resume=True),
                                      backend=RaftServerBackend())
    except BaseException as exc:  # re-raised on the main thread
        outcome["error"] = exc


def main(root: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        out = Path(root)
        # the reference bits: any fixed worker count and replica count give them
        static = train(config(out / "static", "elastic-static", 2, replicas=1),
                       backend=RaftServerBackend())
        events: list[tuple[str, int]] = []
        outcome: dict[str, Any] = {"resumed": False}
        job = threading.Thread(target=_train_elastic,
                               args=(config(out / "elastic", "elastic-auto", "auto"), outcome))
        job.start()
        join_then_leave(cluster, out / "elastic", events)
        job.join(timeout=300)
        if "error" in outcome:
            raise outcome["error"]
        elastic = outcome["result"]
        rows: list[dict[str, Any]] = [
            json.loads(line)
            for line in (out / "elastic" / "metrics.jsonl").read_text().splitlines()]
        print(json.dumps({
            "static": hashlib.sha256(static.model_path.read_bytes()).hexdigest(),
            "elastic": hashlib.sha256(elastic.model_path.read_bytes()).hexdigest(),
            "rounds": [static.rounds, elastic.rounds], "events": events,
            "contributors": [int(row["contributors"]) for row in rows],
            "resumed": outcome["resumed"]}), flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
