"""``--gpu`` on a cluster: the decision between the GPUs there, an autoscaler's GPUs and the
CPU (a pure function), how an autoscaler that can add nodes is recognised, and the wait for
its GPUs (a fake clock; no Ray)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from jobs import gpus
from jobs.config import TrainConfig
from jobs.errors import ConfigError, GpuUnavailableError
from jobs.gpus import autoscaler_can_add_nodes, plan_gpus, use_gpus, wait_for_gpus

# What Ray's read-only monitor publishes for an embedded ray.init() (abridged).
READONLY = {"autoscaler_report": {
    "active_nodes": {"node_ceb8": 1}, "pending_launches": {},
    "node_type_mapping": {"ceb8": "node_ceb8"}, "legacy": True}}
# What the autoscaler of `ray up cluster.yaml` publishes: the config's node type names.
AUTOSCALING = {"autoscaler_report": {
    "active_nodes": {"head": 1, "cpu_worker": 2}, "pending_launches": {},
    "node_type_mapping": {"a1": "head", "b2": "cpu_worker", "c3": "cpu_worker"}}}


@pytest.mark.parametrize(
    ("requested", "have", "can_scale", "gpu", "wait", "says"),
    [
        (0.0, 0.0, False, 0.0, False, None),             # no --gpu
        (0.0, 4.0, True, 0.0, False, None),
        (1.0, 2.0, False, 1.0, False, None),             # GPUs there: use them
        (0.25, 1.0, True, 0.25, False, None),
        (1.0, 0.0, True, 1.0, True, "asking its autoscaler"),   # ray up: ask and wait
        (2.0, 1.0, True, 2.0, True, "only 1 GPU"),
        (1.0, 0.0, False, 0.0, False, "running the gradient tasks on the CPU"),  # ray.init()
        (2.0, 1.0, False, 0.0, False, "running the gradient tasks on the CPU"),
    ],
)
def test_the_gpu_decision(requested: float, have: float, can_scale: bool, gpu: float,
                          wait: bool, says: str | None) -> None:
    plan = plan_gpus(requested, have, can_scale)
    assert (plan.gpu, plan.wait) == (gpu, wait)
    if says is None:
        assert plan.message is None
    else:
        assert plan.message is not None and says in plan.message
        assert "\n" not in plan.message


def test_an_autoscaler_with_node_types_can_add_nodes_the_readonly_monitor_cannot() -> None:
    assert autoscaler_can_add_nodes(AUTOSCALING)
    assert not autoscaler_can_add_nodes(READONLY)
    assert not autoscaler_can_add_nodes(None)
    assert not autoscaler_can_add_nodes({})
    assert not autoscaler_can_add_nodes({"autoscaler_report": {"node_type_mapping": None}})
    assert not autoscaler_can_add_nodes({"autoscaler_report": "garbage"})


class FakeCluster:
    """GPUs appear once the fake clock passes ``arrives_at``; sleeping advances the clock."""

    def __init__(self, arrives_at: float, gpus: float = 1.0) -> None:
        self.now = 0.0
        self.arrives_at = arrives_at
        self.count = gpus
        self.sleeps: list[float] = []

    def gpus(self) -> float:
        return self.count if self.now >= self.arrives_at else 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_the_wait_ends_when_the_gpus_arrive() -> None:
    cluster = FakeCluster(arrives_at=12.0, gpus=2.0)
    have = wait_for_gpus(1.0, 900.0, gpus=cluster.gpus, clock=cluster.clock,
                         sleep=cluster.sleep, poll_s=5.0)
    assert have == 2.0
    assert cluster.sleeps == [5.0, 5.0, 5.0] and cluster.now == 15.0


def test_no_gpu_by_the_deadline_is_a_clear_error() -> None:
    cluster = FakeCluster(arrives_at=float("inf"))
    with pytest.raises(GpuUnavailableError, match=r"added no GPU node in 12 s.*max_workers"):
        wait_for_gpus(0.5, 12.0, gpus=cluster.gpus, clock=cluster.clock,
                      sleep=cluster.sleep, poll_s=5.0)
    assert cluster.sleeps == [5.0, 5.0, 2.0]  # never sleeps past the deadline


@pytest.fixture
def facts(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """``use_gpus`` against a fake cluster: no GPU, the given autoscaler status; records
    what was asked of the autoscaler and waited for."""
    seen: dict[str, Any] = {"status": READONLY, "waited": []}
    monkeypatch.setattr(gpus, "cluster_gpus", lambda: 0.0)
    monkeypatch.setattr(gpus, "_autoscaling_status", lambda: seen["status"])
    monkeypatch.setattr(gpus, "_scale_up", lambda config, gpu: seen["waited"].append(gpu))
    return seen


def test_an_embedded_cluster_runs_on_the_cpu_and_says_so(
    facts: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    config = TrainConfig(gpu=0.5, progress=False)
    assert use_gpus(config).gpu == 0.0
    assert facts["waited"] == []
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no autoscaler that could add one" in err


def test_an_autoscaling_cluster_is_asked_for_the_gpus(
    facts: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    facts["status"] = AUTOSCALING
    config = TrainConfig(gpu=0.5, progress=False)
    assert use_gpus(config) == config
    assert facts["waited"] == [0.5]
    assert "asking its autoscaler for GPU nodes" in capsys.readouterr().err


@pytest.mark.parametrize(("flag", "status", "waited"),
                         [(True, READONLY, [1.0]), (False, AUTOSCALING, [])])
def test_wait_for_gpus_overrides_the_detection(
    facts: dict[str, Any], flag: bool, status: dict[str, Any], waited: list[float]
) -> None:
    facts["status"] = status
    config = TrainConfig(gpu=1.0, wait_for_gpus=flag, progress=False)
    assert use_gpus(config).gpu == (1.0 if flag else 0.0)
    assert facts["waited"] == waited


def test_wait_for_gpus_needs_gpu() -> None:
    with pytest.raises(ConfigError, match="--wait-for-gpus only applies with --gpu"):
        replace(TrainConfig(gpu=1.0, wait_for_gpus=True), gpu=0.0)


@pytest.mark.parametrize("arrives", [True, False])
def test_the_request_is_made_per_worker_and_always_withdrawn(
    monkeypatch: pytest.MonkeyPatch, arrives: bool
) -> None:
    import ray.autoscaler.sdk

    requests: list[list[dict[str, float]]] = []
    monkeypatch.setattr(ray.autoscaler.sdk, "request_resources",
                        lambda bundles: requests.append(list(bundles)))

    def wait(needed: float, deadline_s: float) -> float:
        assert requests == [[{"CPU": 1, "GPU": 0.25}] * 4]  # asked before waiting
        assert deadline_s == gpus.GPU_WAIT_S  # the default --timeout is shorter
        if not arrives:
            raise GpuUnavailableError("none came")
        return 1.0

    monkeypatch.setattr(gpus, "wait_for_gpus", wait)
    config = TrainConfig(gpu=0.25, workers=4, global_batch=64, progress=False)
    if arrives:
        gpus._scale_up(config, 0.25)
    else:
        with pytest.raises(GpuUnavailableError):
            gpus._scale_up(config, 0.25)
    assert requests[-1] == []  # withdrawn, success or not
