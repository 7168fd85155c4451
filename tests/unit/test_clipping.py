"""``--clip-grad-norm``: each contribution is clipped by its mean gradient's global norm in
the gradient task; with one worker that is ``torch.nn.utils.clip_grad_norm_``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jobs.config import TrainConfig
from jobs.errors import ConfigError
from jobs.task_spec import task_spec
from paramserver.errors import NonFiniteGradientError, NonFiniteSumError
from workers.clipping import clip_contribution, mean_gradient_norm
from workers.gradient import TaskSpec, compute_gradients
from workers.models import build_model, initial_parameters, resolve_model

SPEC = resolve_model("mlp", in_features=6, num_classes=3)
LAYOUT = (
    (("0.weight#0:100", "0.weight", 0, 100), ("2.weight", "2.weight", 0, 128),
     ("4.bias", "4.bias", 0, 3)),
    (("0.weight#100:256", "0.weight", 100, 256), ("0.bias", "0.bias", 0, 256),
     ("2.bias", "2.bias", 0, 128), ("4.weight", "4.weight", 0, 3)),
)


def _shards(params: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    return [{key: params[t] if key == t else params[t][a:b].copy() for key, t, a, b in shard}
            for shard in LAYOUT]


def _full(shard_grads: list[tuple[int, dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    """Per-tensor gradients back from the layout's pieces (row slices in order)."""
    pieces = {k: v for _, grads in shard_grads for k, v in grads.items()}
    out: dict[str, list[tuple[int, np.ndarray]]] = {}
    for shard in LAYOUT:
        for key, tensor, start, _ in shard:
            out.setdefault(tensor, []).append((start, pieces[key]))
    return {t: np.concatenate([a for _, a in sorted(parts, key=lambda p: p[0])])
            for t, parts in out.items()}


def _batch(seed: int = 0, n: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6)).astype(np.float32) * 4, rng.integers(0, 3, size=n)


def test_one_task_equals_torch_clip_grad_norm_on_the_batch_mean() -> None:
    """The server steps with sum / samples: that equals clip_grad_norm_ of the batch-mean
    loss's gradient (the norm bit for bit, the gradient to float32 rounding)."""
    params = initial_parameters(build_model(SPEC, seed=1))
    x, y = _batch()
    indices = np.arange(len(x))
    spec = TaskSpec(model=SPEC, seed=1, layout=LAYOUT, clip_grad_norm=0.05)
    shard_grads, _ = compute_gradients(spec, x, y, indices, _shards(params))
    clipped_mean = {k: v / np.float32(len(x)) for k, v in _full(shard_grads).items()}

    ref = build_model(SPEC, seed=1)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    F.cross_entropy(ref(torch.from_numpy(x)), torch.from_numpy(y)).backward()
    unclipped = {n: p.grad.clone() for n, p in ref.named_parameters()}  # type: ignore[union-attr]
    norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.05)
    assert float(norm) > 0.05  # the clip is active
    for name, p in ref.named_parameters():
        assert p.grad is not None
        np.testing.assert_allclose(clipped_mean[name], p.grad.numpy(), rtol=2e-6, atol=1e-9)

    sums = {n: g * len(x) for n, g in unclipped.items()}
    assert float(mean_gradient_norm(sums, len(x))) == pytest.approx(float(norm), rel=1e-6)


def test_the_norm_is_torchs_bit_for_bit_on_the_same_mean() -> None:
    rng = np.random.default_rng(3)
    sums = {f"p{i}": torch.from_numpy(rng.normal(size=s).astype(np.float32))
            for i, s in enumerate([(13, 7), (13,), (3, 13), (3,)])}
    grads = [torch.nn.Parameter(torch.zeros_like(g)) for g in sums.values()]
    for p, g in zip(grads, sums.values(), strict=True):
        p.grad = g / 10
    expected = torch.nn.utils.clip_grad_norm_(grads, 0.1)
    assert clip_contribution(sums, 10, 0.1) == float(expected)
    for p, g in zip(grads, sums.values(), strict=True):
        assert p.grad is not None
        np.testing.assert_allclose((g / 10).numpy(), p.grad.numpy(), rtol=2e-7, atol=0)


def test_a_contribution_under_the_bound_is_sent_bit_for_bit() -> None:
    params = initial_parameters(build_model(SPEC, seed=1))
    x, y = _batch(seed=1)
    indices = np.arange(len(x))
    plain, _ = compute_gradients(TaskSpec(model=SPEC, seed=1, layout=LAYOUT), x, y, indices,
                                 _shards(params))
    loose = TaskSpec(model=SPEC, seed=1, layout=LAYOUT, clip_grad_norm=1e6)
    same, _ = compute_gradients(loose, x, y, indices, _shards(params))
    for (n1, a), (n2, b) in zip(plain, same, strict=True):
        assert n1 == n2 and a.keys() == b.keys()
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_each_worker_is_clipped_by_its_own_norm_deterministically() -> None:
    params = initial_parameters(build_model(SPEC, seed=2))
    x, y = _batch(seed=2)
    spec = TaskSpec(model=SPEC, seed=2, layout=LAYOUT, clip_grad_norm=0.01)
    halves = [np.arange(0, 8), np.arange(8, 16)]
    for indices in halves:
        grads, _ = compute_gradients(spec, x, y, indices, _shards(params))
        norm = mean_gradient_norm(
            {k: torch.from_numpy(v) for k, v in _full(grads).items()}, len(indices))
        assert float(norm) == pytest.approx(0.01, rel=1e-4)
        again, _ = compute_gradients(spec, x, y, indices, _shards(params))
        assert all(np.array_equal(a[k], b[k])
                   for (_, a), (_, b) in zip(grads, again, strict=True) for k in a)


def test_the_setting_reaches_the_task_spec_and_is_validated() -> None:
    layout = [[("w", "w", 0, 2)]]
    assert task_spec(TrainConfig(clip_grad_norm=2.5), SPEC, layout).clip_grad_norm == 2.5
    assert task_spec(TrainConfig(), SPEC, layout).clip_grad_norm is None
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ConfigError, match="clip_grad_norm must be a positive number"):
            TrainConfig(clip_grad_norm=bad)


def test_the_non_finite_advice_names_settings_that_exist() -> None:
    for message in (str(NonFiniteGradientError(1, 3, "w")), str(NonFiniteSumError(3, "w"))):
        assert "--clip-grad-norm" in message and "--nonfinite-policy skip-round" in message
        assert "nonfinite='skip-round'" not in message
    assert {"clip_grad_norm", "nonfinite_policy"} <= set(TrainConfig().to_dict())
