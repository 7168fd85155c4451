"""Chaos: kill replicas (leaders and followers, chosen by a seeded RNG) under a live stream
of proposals; every acknowledged command must be applied exactly once on every replica.

The kill schedule replays from its seed (``RAFTPS_CHAOS_SEED``); timing still varies with
the machine, which is the point of this tier.
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import ray

from consensus import RaftGroup, RaftGroupConfig
from tests.integration.test_raft_group import LogMachine, assert_identical

SEED = int(os.environ.get("RAFTPS_CHAOS_SEED", "2024"))
KILLS = 4


def _writer(group: RaftGroup, stop: threading.Event, acked: list[bytes],
            errors: list[BaseException]) -> None:
    i = 0
    while not stop.is_set():
        cmd = f"w{i}".encode()
        try:
            group.propose(cmd, timeout=30.0)
        except BaseException as exc:
            errors.append(exc)
            return
        acked.append(cmd)
        i += 1


def _wait_progress(acked: list[bytes], errors: list[BaseException], n: int) -> None:
    target, deadline = len(acked) + n, time.monotonic() + 30
    while len(acked) < target and not errors:
        assert time.monotonic() < deadline, "no progress within 30 s after a kill"
        time.sleep(0.01)


def test_random_kills_keep_exactly_once(ray_session: None, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    config = RaftGroupConfig(snapshot_every=50, seed=SEED)
    group = RaftGroup.create("chaos/kill", 3, LogMachine, tmp_path, config=config)
    acked: list[bytes] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    writer = threading.Thread(target=_writer, args=(group, stop, acked, errors))
    writer.start()
    try:
        for _ in range(KILLS):
            _wait_progress(acked, errors, 20)
            leader = group.leader_index()
            target = leader if rng.random() < 0.5 else rng.choice(
                [i for i in group.indices() if i != leader])
            ray.kill(group.handles()[group.indices().index(target)], no_restart=False)
        _wait_progress(acked, errors, 20)
    finally:
        stop.set()
        writer.join(timeout=60)
    try:
        assert not errors, f"seed {SEED}: {errors}"
        log = assert_identical(group, 3)
        assert len(log) == len(set(log)), f"seed {SEED}: a command applied twice"
        assert set(acked) <= set(log), f"seed {SEED}: an acknowledged command was lost"
        assert group.read("len") == len(log)
    finally:
        group.shutdown()
