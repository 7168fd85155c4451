"""``--workers auto`` (``jobs.elastic``): the per-round task count from the cluster's size."""

from __future__ import annotations

import pytest

from jobs.config import TrainConfig
from jobs.elastic import ElasticWorkers, task_count
from jobs.errors import ConfigError


def test_one_task_per_cpu_clamped_to_one_and_m() -> None:
    assert task_count({"CPU": 3.0}, gpu=0.0, most=8) == 3
    assert task_count({"CPU": 12.0}, gpu=0.0, most=8) == 8
    assert task_count({}, gpu=0.0, most=8) == 1  # a cluster with no CPU left still runs one
    assert task_count({"CPU": 2.9999999999}, gpu=0.0, most=8) == 3


def test_gpu_slots_bound_the_count_as_well() -> None:
    assert task_count({"CPU": 16.0, "GPU": 2.0}, gpu=0.5, most=8) == 4
    assert task_count({"CPU": 2.0, "GPU": 4.0}, gpu=0.5, most=8) == 2
    assert task_count({"CPU": 16.0}, gpu=1.0, most=8) == 1


def test_most_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one task"):
        task_count({"CPU": 4.0}, gpu=0.0, most=0)


class _Cluster:
    def __init__(self, cpus: float) -> None:
        self.cpus = cpus
        self.reads = 0
        self.now = 0.0

    def read(self) -> dict[str, float]:
        self.reads += 1
        return {"CPU": self.cpus}

    def clock(self) -> float:
        return self.now


def test_a_round_keeps_its_count_when_the_cluster_changes_later() -> None:
    cluster = _Cluster(2.0)
    elastic = ElasticWorkers(gpu=0.0, most=6, read=cluster.read, clock=cluster.clock,
                             refresh_s=0.0)
    assert [elastic.tasks(r) for r in range(3)] == [2, 2, 2]
    cluster.cpus = 5.0
    assert elastic.tasks(1) == 2  # recomputed after a failover: the same split
    assert elastic.tasks(3) == 5
    cluster.cpus = 1.0
    assert [elastic.tasks(r) for r in (3, 4, 2)] == [5, 1, 2]


def test_the_cluster_is_read_at_most_every_refresh_interval() -> None:
    cluster = _Cluster(2.0)
    elastic = ElasticWorkers(gpu=0.0, most=6, read=cluster.read, clock=cluster.clock,
                             refresh_s=1.0)
    elastic.tasks(0)
    cluster.cpus, cluster.now = 4.0, 0.5
    assert elastic.tasks(1) == 2 and cluster.reads == 1  # not re-read yet
    cluster.now = 1.0
    assert elastic.tasks(2) == 4 and cluster.reads == 2


def test_old_decisions_are_forgotten_but_recent_ones_kept() -> None:
    cluster = _Cluster(3.0)
    elastic = ElasticWorkers(gpu=0.0, most=6, read=cluster.read, clock=cluster.clock,
                             refresh_s=0.0)
    for r in range(5000):
        elastic.tasks(r)
    assert len(elastic._by_round) <= 2048 + 1
    cluster.cpus = 1.0
    assert elastic.tasks(4990) == 3


def test_auto_workers_in_the_config() -> None:
    config = TrainConfig(workers="auto", micro_batches=6, global_batch=24)
    assert config.elastic and config.max_workers == 6
    fixed = TrainConfig(workers=3, micro_batches=6, global_batch=24)
    assert not fixed.elastic and fixed.max_workers == 3


@pytest.mark.parametrize(("changes", "fix"), [
    ({"workers": "auto"}, "--workers auto needs --micro-batches"),
    ({"workers": "auto", "micro_batches": 4, "mode": "async"}, "use --mode sync or ssp"),
    ({"workers": "auto", "micro_batches": 4, "backup_workers": 1}, "drop --backup-workers"),
    ({"workers": "four"}, "a count >= 1 or 'auto'"),
    ({"workers": True}, "a count >= 1 or 'auto'"),
])
def test_bad_auto_workers_settings_say_what_to_change(changes: dict[str, object],
                                                      fix: str) -> None:
    with pytest.raises(ConfigError, match=fix):
        TrainConfig(global_batch=32, **changes)  # type: ignore[arg-type]
