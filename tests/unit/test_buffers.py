"""Module buffers (BatchNorm's running statistics and counter) as replicated shard state:
the plan, the round command, the shard's apply, the aggregator, checkpoints, the model state
and the gradient task."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from torch import nn

from paramserver import (
    AggregatorConfig,
    GradientShapeError,
    OptimizerConfig,
    PlanError,
    RoundAggregator,
    RoundCommand,
    ShardPlan,
    ShardStateMachine,
    UnknownLayerError,
    decode_command,
    read_checkpoint,
    write_checkpoint,
)
from paramserver.commands import decode_frame, encode_frame
from paramserver.errors import CommandDecodeError
from paramserver.plan import buffer_dtypes
from workers.errors import GradientTaskError, ModelFactoryError
from workers.gradient import TaskSpec, compute_gradients
from workers.model_state import full_state_dict, load_state, model_state
from workers.models import ModelSpec, build_model

SHAPES = {"w": (4, 3), "b": (3,), "mean": (3,), "count": ()}
BUFFERS = {"mean": "float32", "count": "int64"}
PLAN = ShardPlan.build(SHAPES, 1, buffers=BUFFERS)
SGD = OptimizerConfig(kind="sgd", lr=0.1, momentum=0.9)
ADAM = OptimizerConfig(kind="adam", lr=0.01)


def _tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal((4, 3)).astype(np.float32),
            "b": rng.standard_normal(3).astype(np.float32),
            "mean": rng.standard_normal(3).astype(np.float32),
            "count": np.asarray(seed, np.int64)}


def _command(round: int, seed: int, **changes: object) -> RoundCommand:
    t = _tensors(100 + seed)
    fields: dict[str, object] = {
        "round": round, "kind": "sync", "samples": 4, "ranks": (0,),
        "grads": {"w": t["w"], "b": t["b"]},
        "buffers": {"mean": t["mean"], "count": np.asarray(round + 1, np.int64)}}
    fields.update(changes)
    return RoundCommand(**fields)  # type: ignore[arg-type]


def _machine(opt: OptimizerConfig = SGD) -> ShardStateMachine:
    return ShardStateMachine(PLAN.pieces(0), _tensors(), opt)


# ---------------------------------------------------------------------------- plan


def test_buffers_are_whole_pieces_placed_after_the_parameters() -> None:
    shapes = {"big": (64, 8), "small": (8,), "bn.mean": (64,), "bn.count": ()}
    params_only = ShardPlan.build({k: shapes[k] for k in ("big", "small")}, 2, split_bytes=512)
    plan = ShardPlan.build(shapes, 2, split_bytes=128,
                           buffers={"bn.mean": "float32", "bn.count": "int64"})
    plan_big = ShardPlan.build(shapes, 2, split_bytes=512,
                               buffers={"bn.mean": "float32", "bn.count": "int64"})
    buffers = [p for s in range(2) for p in plan.pieces(s) if p.buffer]
    assert sorted((p.key, p.whole, p.dtype) for p in buffers) == [
        ("bn.count", True, "int64"), ("bn.mean", True, "float32")]
    for s in range(2):  # the parameters sit where they would without buffers
        assert [p for p in plan_big.pieces(s) if not p.buffer] == params_only.pieces(s)
    assert plan.buffers == {"bn.mean": "float32", "bn.count": "int64"}
    assert ShardPlan.from_json(plan.to_json()) == plan


def test_split_and_join_keep_a_buffers_dtype() -> None:
    full = _tensors(3)
    parts = PLAN.split(full)
    assert parts[0]["count"].dtype == np.int64 and parts[0]["mean"].dtype == np.float32
    joined = PLAN.join(parts)
    assert joined["count"].dtype == np.int64 and int(joined["count"]) == 3
    for key, value in full.items():
        assert np.array_equal(joined[key], value)


def test_a_plan_without_buffers_keeps_its_json() -> None:
    plan = ShardPlan.build({"w": (4, 3)}, 1)
    assert json.loads(plan.to_json())["shards"] == [[["w", "w", 0, 4, [4, 3]]]]
    assert plan.buffers == {}


def test_bad_buffer_specs_are_refused() -> None:
    with pytest.raises(PlanError, match="not among the model's tensors"):
        ShardPlan.build(SHAPES, 1, buffers={"nope": "float32"})
    with pytest.raises(PlanError, match="dtype 'float16'"):
        ShardPlan.build(SHAPES, 1, buffers={"mean": "float16"})
    assert buffer_dtypes(_tensors(), ["count", "mean"]) == BUFFERS
    with pytest.raises(PlanError, match="floating-point, integer or boolean"):
        buffer_dtypes({"z": np.zeros(2, np.complex64)}, ["z"])


# ---------------------------------------------------------------------------- command


def test_a_round_command_carries_float_and_integer_buffers() -> None:
    command = _command(2, 1)
    back = decode_command(command.encode())
    assert isinstance(back, RoundCommand)
    assert set(back.grads) == {"w", "b"} and set(back.buffers) == {"mean", "count"}
    assert back.buffers["count"].dtype == np.int64 and int(back.buffers["count"]) == 3
    assert np.array_equal(back.buffers["mean"], command.buffers["mean"])
    assert back.encode() == command.encode()


def test_a_command_without_buffers_has_the_bytes_it_always_had() -> None:
    grads = {"w": _tensors()["w"]}
    header = {"type": "round", "round": 0, "kind": "sync", "samples": 2, "ranks": [0],
              "nonfinite_skip": False}
    command = RoundCommand(round=0, kind="sync", samples=2, ranks=(0,), grads=grads)
    assert command.encode() == encode_frame(header, grads)


def test_malformed_buffer_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="both gradients and buffers"):
        _command(0, 0, buffers={"w": _tensors()["w"]}).encode()
    header, arrays = decode_frame(_command(0, 0).encode())
    header["buffers"] = ["mean", "missing"]
    with pytest.raises(CommandDecodeError, match="do not name its arrays"):
        decode_command(encode_frame(header, arrays))


# ---------------------------------------------------------------------------- shard


def test_apply_replaces_the_buffers_and_steps_only_the_parameters() -> None:
    machine = _machine()
    before = machine.params(copy=True)
    command = _command(0, 1)
    machine.apply(command.encode())
    after = machine.params(copy=True)
    assert np.array_equal(after["mean"], command.buffers["mean"])
    assert after["count"].dtype == np.int64 and int(after["count"]) == 1
    assert not np.array_equal(after["w"], before["w"])
    state = machine.export_state()
    assert set(state.optimizer_state) == {"w", "b"}  # buffers are never optimized
    assert machine.buffers == {"count": np.dtype(np.int64), "mean": np.dtype(np.float32)}


def test_preview_snapshot_and_restore_keep_the_buffers() -> None:
    applied, previewed = _machine(ADAM), _machine(ADAM)
    for r in range(3):
        command = _command(r, r).encode()
        preview = previewed.preview(command)
        previewed.apply(command)
        applied.apply(command)
        assert int(preview["count"]) == r + 1
    assert previewed.digest() == applied.digest()
    copy = ShardStateMachine.blank(PLAN.pieces(0), ADAM)
    copy.restore(applied.snapshot())
    assert copy.digest() == applied.digest()
    assert copy.params()["count"].dtype == np.int64
    rebuilt = ShardStateMachine.from_state(PLAN.pieces(0), applied.export_state(), ADAM)
    assert rebuilt.digest() == applied.digest()


def test_a_skipped_round_leaves_the_buffers() -> None:
    machine = _machine()
    before = machine.params(copy=True)
    machine.apply(RoundCommand(round=0, kind="sync", samples=4, ranks=(0,),
                               nonfinite_skip=True).encode())
    assert machine.version == 1
    for key, value in machine.params().items():
        assert np.array_equal(value, before[key])


@pytest.mark.parametrize(("changes", "error", "match"), [
    ({"buffers": {}}, UnknownLayerError, "carries buffers"),
    ({"buffers": {"mean": np.zeros(3, np.float32), "count": np.zeros((), np.float32)}},
     GradientShapeError, "buffer 'count' is float32"),
    ({"buffers": {"mean": np.zeros(4, np.float32), "count": np.zeros((), np.int64)}},
     GradientShapeError, r"buffer 'mean' is float32 \(4,\)"),
])
def test_a_command_with_wrong_buffers_changes_nothing(
    changes: dict[str, object], error: type[Exception], match: str
) -> None:
    machine = _machine()
    digest = machine.digest()
    with pytest.raises(error, match=match):
        machine.apply(_command(0, 0, **changes).encode())
    assert machine.digest() == digest and machine.version == 0


# ---------------------------------------------------------------------------- aggregator


def _contribution(rank: int) -> dict[str, np.ndarray]:
    t = _tensors(rank + 7)
    return {"w": t["w"], "b": t["b"], "mean": t["mean"], "count": np.asarray(rank, np.int64)}


def _aggregator(workers: int = 3, mode: str = "sync") -> RoundAggregator:
    return RoundAggregator(AggregatorConfig(workers=workers, mode=mode),  # type: ignore[arg-type]
                           PLAN.shapes, buffers=_machine().buffers)


def test_a_round_takes_the_lowest_ranks_buffers_whatever_the_arrival_order() -> None:
    encoded = []
    for order in ([0, 1, 2], [2, 1, 0], [1, 2, 0]):
        agg = _aggregator()
        commands: tuple[bytes, ...] = ()
        for rank in order:
            commands += agg.submit(0, rank, _contribution(rank), 4, 0).commands
        (command,) = commands
        encoded.append(command)
    assert encoded[0] == encoded[1] == encoded[2]
    decoded = decode_command(encoded[0])
    assert isinstance(decoded, RoundCommand)
    assert np.array_equal(decoded.buffers["mean"], _contribution(0)["mean"])
    assert int(decoded.buffers["count"]) == 0 and set(decoded.grads) == {"w", "b"}
    expected = (_contribution(0)["w"] + _contribution(1)["w"]) + _contribution(2)["w"]
    assert np.array_equal(decoded.grads["w"], expected)


def test_an_async_contribution_carries_its_own_buffers() -> None:
    agg = _aggregator(workers=2, mode="async")
    (command,) = agg.submit(0, 1, _contribution(1), 4, 0).commands
    decoded = decode_command(command)
    assert isinstance(decoded, RoundCommand) and int(decoded.buffers["count"]) == 1


def test_a_buffer_of_the_wrong_dtype_or_shape_is_refused_changing_nothing() -> None:
    agg = _aggregator()
    bad = dict(_contribution(0), count=np.asarray(0.0, np.float32))
    with pytest.raises(GradientShapeError, match="buffer 'count' from rank 0 must be a int64"):
        agg.submit(0, 0, bad, 4, 0)
    bad = dict(_contribution(0), mean=np.zeros(5, np.float32))
    with pytest.raises(GradientShapeError, match="buffer 'mean' from rank 0 has shape"):
        agg.submit(0, 0, bad, 4, 0)
    assert agg.received(0) == ()


# ---------------------------------------------------------------------------- checkpoints


def test_checkpoints_keep_buffers_in_their_own_dtype(tmp_path: Path) -> None:
    machine = _machine(ADAM)
    for r in range(2):
        machine.apply(_command(r, r).encode())
    path = write_checkpoint(tmp_path, 2, PLAN, [machine.export_state()], ADAM)
    stored = load_file(str(path / "shard-0.safetensors"))
    assert stored["buffer/count"].dtype == np.int64 and int(stored["buffer/count"]) == 2
    assert "optim/mean/exp_avg" not in stored and "optim/w/exp_avg" in stored
    loaded = read_checkpoint(path)
    assert loaded.plan == PLAN
    rebuilt = ShardStateMachine.from_state(PLAN.pieces(0), loaded.shards[0], ADAM)
    assert rebuilt.digest() == machine.digest()


# ---------------------------------------------------------------------------- model state


class TiedBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)
        self.out = nn.Linear(4, 4)
        self.out.weight = self.inp.weight  # tied: one parameter, two state_dict keys
        self.register_buffer("scratch", torch.zeros(2), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(self.bn(self.inp(x)))
        return out


def test_model_state_holds_parameters_and_persistent_buffers() -> None:
    state = model_state(TiedBN())
    assert state.buffers == {"bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}
    assert "out.weight" not in state and "scratch" not in state  # an alias; not persistent
    assert state["bn.num_batches_tracked"].dtype == np.int64


def test_a_state_loads_strictly_with_tied_names_and_must_be_complete() -> None:
    trained = TiedBN()
    with torch.no_grad():
        trained.inp.weight.add_(1.0)
        trained.bn.running_mean.fill_(0.5)
        trained.bn.num_batches_tracked.fill_(7)
    state = model_state(trained)
    fresh = TiedBN()
    load_state(fresh, state)
    for key, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    full = full_state_dict(TiedBN(), state)
    assert set(full) == set(TiedBN().state_dict())
    del state["bn.running_var"]
    with pytest.raises(ModelFactoryError, match="lacks 1 tensor"):
        load_state(fresh, state)
    state = model_state(trained)
    state["extra"] = np.zeros(1, np.float32)
    with pytest.raises(ModelFactoryError, match="holds 1 tensor"):
        load_state(fresh, state)


# ---------------------------------------------------------------------------- gradient task


def bn_model() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


BN_SPEC = ModelSpec(factory=bn_model, key="tests.unit.test_buffers:bn_model")


def _layout_and_shards(state: dict[str, np.ndarray]) -> tuple[
        tuple[tuple[tuple[str, str, int, int], ...], ...], list[dict[str, np.ndarray]]]:
    plan = ShardPlan.build({k: v.shape for k, v in state.items()}, 2,
                           buffers=buffer_dtypes(state, getattr(state, "buffers", ())))
    layout = tuple(tuple(tuple(p) for p in shard) for shard in plan.layout())
    shards = plan.split(state)
    for part in shards:
        for array in part.values():
            array.setflags(write=False)  # like object-store arrays
    return layout, shards  # type: ignore[return-value]


def test_a_gradient_task_returns_the_buffers_its_forward_left() -> None:
    state = model_state(build_model(BN_SPEC, 4))
    layout, shards = _layout_and_shards(state)
    published = [{k: v.copy() for k, v in part.items()} for part in shards]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((10, 5)).astype(np.float32)
    y = rng.integers(0, 3, 10)
    idx = np.array([0, 2, 3, 5, 8])
    spec = TaskSpec(model=BN_SPEC, seed=4, layout=layout)
    grads, _ = compute_gradients(spec, x, y, idx, shards, round_index=3, rank=0)

    ref = build_model(BN_SPEC, 4)
    torch.nn.functional.cross_entropy(ref(torch.from_numpy(x[idx])),
                                      torch.from_numpy(y[idx]), reduction="sum").backward()
    out = {k: v for _, pieces in grads for k, v in pieces.items()}
    assert int(out["1.num_batches_tracked"]) == 1
    for key, value in ref.named_buffers():
        assert torch.equal(torch.from_numpy(out[key]), value), key
    for name, p in ref.named_parameters():
        assert torch.equal(torch.from_numpy(out[name]), p.grad), name
    for part, before in zip(shards, published, strict=True):  # the inputs are untouched
        for key, value in part.items():
            assert np.array_equal(value, before[key])


def test_a_layout_without_the_models_buffers_is_refused() -> None:
    state = model_state(build_model(BN_SPEC, 0))
    params = {k: v for k, v in state.items() if k not in state.buffers}
    layout, shards = _layout_and_shards(params)
    spec = TaskSpec(model=BN_SPEC, seed=0, layout=layout)
    x = np.zeros((4, 5), np.float32)
    with pytest.raises(GradientTaskError, match="lacks model tensors"):
        compute_gradients(spec, x, np.zeros(4, np.int64), np.arange(4), shards)
