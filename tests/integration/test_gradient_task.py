"""The real Ray gradient task: S + 1 returns, refs in, refs out, exact summed gradients."""

from __future__ import annotations

import numpy as np
import pytest
import ray
import torch
import torch.nn.functional as F

from workers.gradient import GradientMetrics, TaskSpec, launch_gradient_task
from workers.models import build_model, initial_parameters, resolve_model

SPEC = resolve_model("mlp", in_features=5, num_classes=4)


def test_task_returns_one_gradient_ref_per_shard_plus_metrics(ray_session: None) -> None:
    params = initial_parameters(build_model(SPEC, seed=2))
    names = list(params)
    layout = (tuple((n, n, 0, params[n].shape[0]) for n in names[:3]),
              tuple((n, n, 0, params[n].shape[0]) for n in names[3:]))
    param_refs = [ray.put({p[0]: params[p[0]] for p in shard}) for shard in layout]
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 5)).astype(np.float32)
    y = rng.integers(0, 4, size=32)
    idx = np.arange(8, 16)
    spec = TaskSpec(model=SPEC, seed=2, layout=layout)
    grad_refs, metrics_ref = launch_gradient_task(
        spec, 3, 1, ray.put(x), ray.put(y), idx, param_refs)
    assert len(grad_refs) == 2
    shard0, shard1, metrics = ray.get([*grad_refs, metrics_ref], timeout=120)

    ref = build_model(SPEC, seed=2)
    loss = F.cross_entropy(ref(torch.from_numpy(x[idx])), torch.from_numpy(y[idx]),
                           reduction="sum")
    loss.backward()
    grads = {n: p.grad.numpy() for n, p in ref.named_parameters()}
    assert shard0[0] == 8 and shard1[0] == 8
    for shard in (shard0[1], shard1[1]):
        for key, g in shard.items():
            np.testing.assert_allclose(g, grads[key], rtol=1e-5, atol=1e-7)
    assert set(shard0[1]) | set(shard1[1]) == set(names)
    assert isinstance(metrics, GradientMetrics)
    assert (metrics.round, metrics.rank, metrics.samples) == (3, 1, 8)
    assert metrics.device == "cpu"
    assert abs(metrics.loss_sum - float(loss.detach())) < 1e-4


def test_rerunning_a_task_is_bitwise_identical(ray_session: None) -> None:
    params = initial_parameters(build_model(SPEC, seed=0))
    layout = (tuple((n, n, 0, params[n].shape[0]) for n in params),)
    param_refs = [ray.put(params)]
    x_ref = ray.put(np.ones((10, 5), dtype=np.float32))
    y_ref = ray.put(np.arange(10) % 4)
    spec = TaskSpec(model=SPEC, seed=0, layout=layout)
    a, _ = launch_gradient_task(spec, 0, 0, x_ref, y_ref, np.arange(10), param_refs)
    b, _ = launch_gradient_task(spec, 0, 0, x_ref, y_ref, np.arange(10), param_refs)
    ga, gb = ray.get([a[0], b[0]], timeout=120)
    assert all(np.array_equal(ga[1][k], gb[1][k]) for k in ga[1])


def test_gpu_request_without_a_gpu_falls_back_to_cpu(
    ray_session: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """--gpu on a cluster without GPUs must say so and run on the CPU, never hang."""
    from jobs.config import TrainConfig
    from jobs.driver import usable_gpu

    if ray.cluster_resources().get("GPU"):
        pytest.skip("this cluster has a GPU")
    config = TrainConfig(gpu=0.5, progress=False)
    assert usable_gpu(config).gpu == 0.0
    assert "no GPU" in capsys.readouterr().err
    assert usable_gpu(TrainConfig(gpu=0.0, progress=False)).gpu == 0.0
