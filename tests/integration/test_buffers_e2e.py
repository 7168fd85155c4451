"""A BatchNorm + dropout model end to end on the real server: with one worker it trains
exactly as a plain torch loop (every parameter AND buffer bitwise equal), its
model.safetensors loads strictly, and a stop + resume ends with the same bytes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from jobs import TrainConfig, TrainResult, train
from jobs.backend import RaftServerBackend
from workers.data import load
from workers.forward_rng import seeded_forward
from workers.models import build_model, resolve_model
from workers.schedule import BatchSchedule

DATA = "synthetic:16x4x128x32"  # 4 rounds of 32 per epoch


def bn_dropout_mlp() -> nn.Module:
    """Linear, BatchNorm, ReLU, Dropout, Linear: buffers and randomness in one model."""
    return nn.Sequential(nn.Linear(16, 24), nn.BatchNorm1d(24), nn.ReLU(), nn.Dropout(0.3),
                         nn.Linear(24, 4))


def config(out: Path, **changes: object) -> TrainConfig:
    base: dict[str, object] = {
        "data": DATA, "workers": 1, "shards": 2, "replicas": 1, "epochs": 2,
        "global_batch": 32, "optimizer": "momentum", "lr": 0.05, "momentum": 0.9, "seed": 7,
        "out": str(out), "checkpoint_every": 0, "progress": False, "timeout_s": 120.0,
        "job": "buffers-e2e"}
    base.update(changes)
    return TrainConfig(**base)  # type: ignore[arg-type]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Like a gradient task (``torch.set_num_threads(1)``), so reductions match bitwise."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def plain_torch_loop(cfg: TrainConfig, rounds: int) -> dict[str, torch.Tensor]:
    """The reference: one process, train mode, the forward seeded as the task seeds it,
    the summed loss's gradient divided by the batch, ``torch.optim.SGD``'s single-tensor
    step."""
    data = load(DATA)
    spec = resolve_model(bn_dropout_mlp, in_features=data.in_features,
                         num_classes=data.num_classes)
    model = build_model(spec, cfg.seed)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, foreach=False)
    sched = BatchSchedule(seed=cfg.seed, global_batch=cfg.global_batch, n_train=data.n_train)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    with one_thread():
        for r in range(rounds):
            idx = torch.from_numpy(sched.global_batch_indices(*sched.round_position(r)).copy())
            with seeded_forward(cfg.seed, r, 0):
                logits = model(x[idx])
            opt.zero_grad()
            F.cross_entropy(logits, y[idx], reduction="sum").backward()
            for p in model.parameters():
                assert p.grad is not None
                p.grad = p.grad / len(idx)
            opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory, ray_session: None) -> TrainResult:
    out = tmp_path_factory.mktemp("buffers") / "full"
    return train(config(out), model=bn_dropout_mlp, backend=RaftServerBackend())


def test_one_worker_equals_a_plain_torch_loop_bit_for_bit(full_run: TrainResult) -> None:
    reference = plain_torch_loop(config(Path("unused")), full_run.rounds)
    exported = load_file(str(full_run.model_path))
    model = bn_dropout_mlp()
    model.load_state_dict(exported)  # strict: parameters and buffers are all there
    assert set(exported) == set(reference)
    assert int(exported["1.num_batches_tracked"]) == full_run.rounds == 8
    for key, expected in reference.items():
        assert exported[key].dtype == expected.dtype, key
        assert torch.equal(exported[key], expected), key


def test_stop_then_resume_gives_the_same_bits(full_run: TrainResult, tmp_path: Path) -> None:
    stopped = train(config(tmp_path, max_rounds=3, job="buffers-stop"), model=bn_dropout_mlp,
                    backend=RaftServerBackend())
    assert stopped.rounds == 3
    resumed = train(config(tmp_path, resume=True, job="buffers-stop"), model=bn_dropout_mlp,
                    backend=RaftServerBackend())
    assert resumed.rounds == 8
    assert resumed.model_path.read_bytes() == full_run.model_path.read_bytes()
