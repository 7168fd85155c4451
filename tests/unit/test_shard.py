"""Shard state machine: apply with the mean gradient, exactly-once, determinism, snapshots."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from consensus import StateMachine
from paramserver import (
    AggregatorConfig,
    CommandDecodeError,
    FutureRoundError,
    GradientShapeError,
    OptimizerConfig,
    RestoreCommand,
    RoundAggregator,
    RoundCommand,
    ShardPlan,
    ShardStateMachine,
    UnknownLayerError,
    decode_command,
)

SHAPES = {"w": (6, 5), "b": (5,)}
PLAN = ShardPlan.build(SHAPES, 1)
SGD = OptimizerConfig(kind="sgd", lr=0.1, momentum=0.9)


def _params(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


def _machine(opt: OptimizerConfig = SGD) -> ShardStateMachine:
    return ShardStateMachine(PLAN.pieces(0), _params(), opt)


def _command(round: int, seed: int, samples: int = 4, skip: bool = False) -> bytes:
    grads = {} if skip else _params(1000 + seed)
    return RoundCommand(round=round, kind="sync", samples=samples, ranks=(0, 1), grads=grads,
                        nonfinite_skip=skip).encode()


def test_implements_the_consensus_state_machine_protocol() -> None:
    assert isinstance(_machine(), StateMachine)


def test_apply_steps_with_the_mean_gradient_like_torch() -> None:
    machine = _machine()
    ref = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in _params().items()}
    opt = torch.optim.SGD(list(ref.values()), lr=0.1, momentum=0.9)
    for r in range(5):
        result = machine.apply(_command(r, r, samples=4))
        assert result is not None and (result.round, result.version, result.stepped) == (r, r + 1,
                                                                                         True)
        for k, p in ref.items():
            p.grad = torch.from_numpy(_params(1000 + r)[k]) / torch.tensor(4, dtype=torch.float32)
        opt.step()
    for k, p in ref.items():
        np.testing.assert_array_equal(machine.params()[k], p.detach().numpy())
    assert machine.version == 5 and machine.layer_versions == {"b": 5, "w": 5}


def test_reapplying_a_round_is_a_noop_returning_the_same_result() -> None:
    machine = _machine()
    first = machine.apply(_command(0, 0))
    digest = machine.digest()
    again = machine.apply(_command(0, 7))
    assert again == first and machine.digest() == digest and machine.version == 1


def test_future_round_and_bad_commands_change_nothing() -> None:
    machine = _machine()
    digest = machine.digest()
    with pytest.raises(FutureRoundError):
        machine.apply(_command(1, 0))
    bad_shape = RoundCommand(round=0, kind="sync", samples=1, ranks=(0,),
                             grads={"w": np.zeros((5, 6), np.float32),
                                    "b": np.zeros(5, np.float32)}).encode()
    with pytest.raises(GradientShapeError):
        machine.apply(bad_shape)
    missing = RoundCommand(round=0, kind="sync", samples=1, ranks=(0,),
                           grads={"w": np.zeros((6, 5), np.float32)}).encode()
    with pytest.raises(UnknownLayerError):
        machine.apply(missing)
    with pytest.raises(CommandDecodeError):
        machine.apply(b"not a command")
    with pytest.raises(CommandDecodeError):
        machine.apply(_command(0, 0)[:-3])
    assert machine.digest() == digest and machine.version == 0


def test_skip_round_advances_only_the_version() -> None:
    machine = _machine()
    before = machine.params(copy=True)
    result = machine.apply(_command(0, 0, skip=True))
    assert result is not None and not result.stepped and machine.version == 1
    assert machine.layer_versions == {"b": 0, "w": 0}
    for k, v in before.items():
        np.testing.assert_array_equal(machine.params()[k], v)


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_replicas_applying_the_same_log_are_byte_identical(kind: str) -> None:
    opt = OptimizerConfig(kind=kind, lr=0.01, weight_decay=0.01)  # type: ignore[arg-type]
    log = [_command(r, r, samples=r + 1) for r in range(8)]
    a, b = _machine(opt), _machine(opt)
    for entry in log:
        a.apply(entry)
    for entry in log[:3]:
        b.apply(entry)
    c = _machine(opt)
    c.restore(b.snapshot())  # a lagging replica catches up from a snapshot
    for entry in log:  # replays the whole log; applied rounds are no-ops
        b.apply(entry)
        c.apply(entry)
    assert a.snapshot() == b.snapshot() == c.snapshot()
    assert a.digest() == c.digest() and a.params_digest() == c.params_digest()


def test_restore_command_replaces_state_through_the_log() -> None:
    source = _machine()
    for r in range(3):
        source.apply(_command(r, r))
    target = _machine()
    assert target.apply(RestoreCommand(source.snapshot()).encode()) is None
    assert target.snapshot() == source.snapshot() and target.version == 3


def test_restore_rejects_a_snapshot_of_another_shard() -> None:
    other = ShardStateMachine(ShardPlan.build({"x": (2,)}, 1).pieces(0), {"x": np.zeros(2)}, SGD)
    machine = _machine()
    digest = machine.digest()
    with pytest.raises(UnknownLayerError):
        machine.restore(other.snapshot())
    assert machine.digest() == digest


def test_from_state_round_trips_export_state() -> None:
    machine = _machine(OptimizerConfig(kind="adam", lr=0.01))
    for r in range(4):
        machine.apply(_command(r, r))
    clone = ShardStateMachine.from_state(PLAN.pieces(0), machine.export_state(), machine.optimizer)
    assert clone.snapshot() == machine.snapshot()
    clone.apply(_command(4, 4))
    machine.apply(_command(4, 4))
    assert clone.digest() == machine.digest()


def test_params_views_are_read_only_and_copies_are_independent() -> None:
    machine = _machine()
    view = machine.params()["w"]
    with pytest.raises(ValueError):
        view[0, 0] = 1.0
    copy = machine.params(copy=True)["w"]
    machine.apply(_command(0, 0))
    assert not np.array_equal(copy, machine.params()["w"])


def test_queries() -> None:
    machine = _machine()
    machine.apply(_command(0, 0))
    assert machine.query("version") == 1
    assert machine.query("layer_versions") == {"b": 1, "w": 1}
    assert machine.query("digest") == machine.digest()
    np.testing.assert_array_equal(machine.query(("param", "b")), machine.params()["b"])
    with pytest.raises(UnknownLayerError):
        machine.query(("param", "nope"))
    with pytest.raises(ValueError):
        machine.query("everything")


def test_aggregator_commands_drive_the_shard_end_to_end() -> None:
    agg = RoundAggregator(AggregatorConfig(workers=3), SHAPES)
    machine = _machine()
    for r in range(3):
        for rank in (2, 0, 1):
            out = agg.submit(r, rank, _params(10 * r + rank), samples=5, param_version=r)
        for data in out.commands:
            machine.apply(data)
        agg.advance(machine.version)
    assert machine.version == 3


def test_codec_round_trips_and_is_deterministic() -> None:
    cmd = RoundCommand(round=7, kind="async", samples=3, ranks=(1,), grads=_params(3))
    data = cmd.encode()
    back = decode_command(data)
    assert isinstance(back, RoundCommand)
    assert (back.round, back.kind, back.samples, back.ranks) == (7, "async", 3, (1,))
    assert back.encode() == data and b"pickle" not in data
    for k, v in cmd.grads.items():
        np.testing.assert_array_equal(back.grads[k], v)
    blob = bytes(range(13))
    restored = decode_command(RestoreCommand(blob).encode())
    assert isinstance(restored, RestoreCommand) and restored.snapshot == blob


def test_async_contribution_reproposed_by_a_new_leader_applies_once() -> None:
    """A leader commits rank 1's step 0, dies before answering; the driver re-submits it to
    the next leader, whose fresh aggregator proposes it again. The shard applies it once."""
    from paramserver import AggregatorConfig, RoundAggregator

    shapes = {k: v.shape for k, v in _params().items()}
    config = AggregatorConfig(workers=2, mode="async")
    grads = _params(5)
    first = RoundAggregator(config, shapes).submit(0, 1, grads, 4, 0).commands[0]
    again = RoundAggregator(config, shapes).submit(0, 1, grads, 4, 0).commands[0]
    other = RoundAggregator(config, shapes).submit(0, 0, grads, 4, 0).commands[0]
    machine, reference = _machine(), _machine()
    for command in (first, again, other):
        machine.apply(command)
    for command in (first, other):
        reference.apply(command)
    assert machine.version == 2
    assert machine.snapshot() == reference.snapshot()
    restored = _machine()
    restored.restore(machine.snapshot())
    assert restored.apply(again) is not None and restored.version == 2


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_streamed_digest_equals_the_hash_of_snapshot_bytes(kind: str) -> None:
    machine = _machine(OptimizerConfig(kind=kind, lr=0.1))
    for r in range(3):
        machine.apply(_command(r, r))
        assert machine.digest() == hashlib.sha256(machine.snapshot()).hexdigest()
    copy = _machine(OptimizerConfig(kind=kind, lr=0.1))
    copy.restore(machine.snapshot())
    copy.apply(_command(3, 3))  # restored state is writable (decoded views were copied)
    machine.apply(_command(3, 3))
    assert copy.digest() == machine.digest()
