"""Shard state machine: apply with the mean gradient, exactly-once, determinism, snapshots;
preview adoption; consistent reads concurrent with apply; write timeouts."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from consensus import StateMachine
from paramserver import (
    AggregatorConfig,
    CommandDecodeError,
    FutureRoundError,
    GradientShapeError,
    LockTimeoutError,
    OptimizerConfig,
    RestoreCommand,
    RoundAggregator,
    RoundCommand,
    ShardPlan,
    ShardState,
    ShardStateMachine,
    UnknownLayerError,
    decode_command,
)
from paramserver import layer_step as layer_step_module
from paramserver import shard as shard_module

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


# --- preview adoption --------------------------------------------------------------------

OPTIMIZERS = [
    OptimizerConfig(kind="sgd", lr=0.1),
    OptimizerConfig(kind="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    OptimizerConfig(kind="adam", lr=0.01, weight_decay=0.01),
    OptimizerConfig(kind="adamw", lr=0.01, weight_decay=0.1),
]


@pytest.mark.parametrize("opt", OPTIMIZERS, ids=lambda o: f"{o.kind}-{o.momentum}")
def test_apply_after_preview_equals_apply_without_preview_bitwise(opt: OptimizerConfig) -> None:
    previewed, plain = _machine(opt), _machine(opt)
    for r in range(5):
        command = _command(r, r)
        ahead = previewed.preview(command)
        assert previewed.version == r  # preview changes nothing
        previewed.apply(command)
        plain.apply(command)
        live = previewed.params()
        for key, value in ahead.items():
            assert not value.flags.writeable
            assert np.shares_memory(value, live[key])  # adopted, not recomputed
            np.testing.assert_array_equal(value, plain.params()[key])
        assert previewed.snapshot() == plain.snapshot()


@pytest.mark.parametrize("opt", OPTIMIZERS[2:3], ids=["adam"])
def test_a_command_handed_in_as_a_view_applies_and_adopts_like_bytes(
    opt: OptimizerConfig,
) -> None:
    """Replicas hand committed commands to the shard as read-only views of their log
    entries (``command_views``): the bits are those of bytes, a preview is adopted when the
    view holds the previewed bytes (in another buffer), and a different view is stepped."""
    assert ShardStateMachine.command_views
    viewed, plain = _machine(opt), _machine(opt)
    for r in range(3):
        command = _command(r, r)
        ahead = viewed.preview(command)
        viewed.apply(memoryview(bytearray(command)).toreadonly())  # equal bytes, elsewhere
        plain.apply(command)
        assert np.shares_memory(ahead["w"], viewed.params()["w"])  # adopted
        assert viewed.snapshot() == plain.snapshot()
    viewed.preview(_command(3, 1))
    viewed.apply(memoryview(_command(3, 2)))  # not the previewed bytes: computed
    plain.apply(_command(3, 2))
    assert viewed.snapshot() == plain.snapshot()


@pytest.mark.parametrize("opt", OPTIMIZERS, ids=lambda o: f"{o.kind}-{o.momentum}")
def test_a_large_shard_previews_lean_with_the_same_bits(
    opt: OptimizerConfig, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Above LEAN_PREVIEW_BYTES a preview keeps one copy of the parameters only: the same
    parameters as the apply, the live state untouched, nothing kept to adopt (the apply
    steps again, with the same bits as a shard that never previewed)."""
    monkeypatch.setattr(shard_module, "LEAN_PREVIEW_BYTES", 0)
    previewed, plain = _machine(opt), _machine(opt)
    for r in range(4):
        command = _command(r, r)
        before = previewed.snapshot()
        ahead = previewed.preview(command)
        assert previewed.snapshot() == before and previewed._pending is None
        previewed.apply(command)
        plain.apply(command)
        for key, value in ahead.items():
            assert not value.flags.writeable
            assert not np.shares_memory(value, previewed.params()[key])  # not adopted
            np.testing.assert_array_equal(value, plain.params()[key])
        assert previewed.snapshot() == plain.snapshot()


def test_a_small_shard_keeps_its_preview_to_adopt() -> None:
    machine = _machine(OptimizerConfig(kind="adam", lr=0.01))
    assert machine._state_bytes <= shard_module.LEAN_PREVIEW_BYTES
    machine.preview(_command(0, 0))
    assert machine._pending is not None


def test_a_different_command_after_a_preview_is_computed_normally() -> None:
    machine, reference = _machine(), _machine()
    ahead = machine.preview(_command(0, 1))
    machine.apply(_command(0, 2))  # same round, other gradients (e.g. a new leader's round)
    reference.apply(_command(0, 2))
    assert machine.snapshot() == reference.snapshot()
    assert not np.shares_memory(ahead["w"], machine.params()["w"])
    machine.apply(_command(1, 1))  # the stale preview is gone, not adopted later
    reference.apply(_command(1, 1))
    assert machine.snapshot() == reference.snapshot()


@pytest.mark.parametrize("through_log", [False, True])
def test_restore_drops_the_preview(through_log: bool) -> None:
    other_bytes = ShardStateMachine(PLAN.pieces(0), _params(9), SGD).snapshot()  # version 0
    machine, reference = _machine(), _machine()
    machine.preview(_command(0, 0))
    if through_log:
        machine.apply(RestoreCommand(other_bytes).encode())
    else:
        machine.restore(other_bytes)
    reference.restore(other_bytes)
    machine.apply(_command(0, 0))  # byte-equal to the previewed command, but another base
    reference.apply(_command(0, 0))
    assert machine.snapshot() == reference.snapshot()


def test_frozen_views_keep_their_version_while_the_shard_moves_on() -> None:
    machine = _machine(OptimizerConfig(kind="adam", lr=0.01))
    version, views = machine.read_params(copy=False)
    before = {k: v.copy() for k, v in views.items()}
    machine.apply(_command(0, 0))  # copy-on-write: the frozen layers are copied, then stepped
    assert version == 0 and machine.version == 1
    for key, view in views.items():
        np.testing.assert_array_equal(view, before[key])
        assert not np.array_equal(view, machine.params(copy=True)[key])
        with pytest.raises(ValueError):
            view.flags.writeable = True


def test_preview_does_not_change_the_shard_and_keeps_one_pending() -> None:
    machine = _machine(OptimizerConfig(kind="adam", lr=0.01))
    digest = machine.digest()
    first = machine.preview(_command(0, 1))
    second = machine.preview(_command(0, 2))
    assert machine.digest() == digest and machine.version == 0
    machine.apply(_command(0, 1))  # only the newest preview is kept: this one is recomputed
    assert not np.shares_memory(first["w"], machine.params()["w"])
    assert not np.shares_memory(second["w"], machine.params()["w"])
    np.testing.assert_array_equal(first["w"], machine.params()["w"])


def test_an_empty_shard_still_counts_versions() -> None:
    machine = ShardStateMachine([], {}, SGD)
    machine.apply(RoundCommand(round=0, kind="sync", samples=1, ranks=(0,)).encode())
    assert machine.read_params() == (1, {}) and machine.export_state().version == 1


# --- concurrent readers and writers -------------------------------------------------------

BIG = {"w": (300, 250), "v": (70_000,), "b": (250,)}  # w, v >= POOL_MIN_ELEMENTS: pooled
BIG_PLAN = ShardPlan.build(BIG, 1)
ADAM = OptimizerConfig(kind="adam", lr=0.01, weight_decay=0.01)


def _big_params(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in BIG.items()}


def _big_machine() -> ShardStateMachine:
    return ShardStateMachine(BIG_PLAN.pieces(0), _big_params(0), ADAM)


def _replay(rounds: int) -> tuple[list[bytes], dict[int, ShardState], dict[str, int]]:
    """The commands, and a reference replay's state and digest at every version."""
    commands = [RoundCommand(round=r, kind="sync", samples=3, ranks=(0,),
                             grads=_big_params(100 + r)).encode() for r in range(rounds)]
    machine = _big_machine()
    states, digests = {0: machine.export_state()}, {machine.digest(): 0}
    for command in commands:
        machine.apply(command)
        states[machine.version] = machine.export_state()
        digests[machine.digest()] = machine.version
    return commands, states, digests


def _assert_same_state(got: ShardState, want: ShardState) -> None:
    assert (got.version, got.layer_versions) == (want.version, want.layer_versions)
    for key, value in want.params.items():
        assert np.array_equal(got.params[key], value), (got.version, key)
        for name, buf in want.optimizer_state[key].items():
            assert np.array_equal(got.optimizer_state[key][name], buf), (got.version, name)


def _checked_reads(machine: ShardStateMachine, states: dict[int, ShardState],
                   digests: dict[str, int]) -> list[Callable[[], int]]:
    """Readers that check what they got against the reference; each returns the version."""
    def read_params() -> int:
        version, params = machine.read_params()
        for key, value in params.items():
            assert np.array_equal(value, states[version].params[key]), (version, key)
        return version

    def export() -> int:
        state = machine.export_state()
        _assert_same_state(state, states[state.version])
        return state.version

    def snapshot() -> int:
        restored = ShardStateMachine.blank(BIG_PLAN.pieces(0), ADAM)
        restored.restore(machine.snapshot())
        assert digests[restored.digest()] == restored.version
        return restored.version

    def digest() -> int:
        return digests[machine.digest()]  # a KeyError would be a digest of no version

    return [read_params, export, snapshot, digest]


def _run_concurrently(writer: Callable[[], None], readers: list[Callable[[], int]]
                      ) -> list[list[int]]:
    """Start the writer and the readers together; each reader loops until the writer is
    done, then reads once more. Returns every reader's versions; raises the first error."""
    start, done = threading.Barrier(len(readers) + 1), threading.Event()
    errors: list[BaseException] = []
    seen: list[list[int]] = [[] for _ in readers]

    def run(index: int) -> None:
        try:
            start.wait(30)
            if index < 0:
                writer()
                return
            while True:
                finished = done.is_set()
                seen[index].append(readers[index]())
                if finished:
                    return
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            if index < 0:
                done.set()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(-1, len(readers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(t.is_alive() for t in threads), "a thread deadlocked"
    if errors:
        raise errors[0]
    return seen


def test_concurrent_readers_see_exactly_one_version_while_rounds_apply() -> None:
    commands, states, digests = _replay(20)
    machine = _big_machine()

    def writer() -> None:
        for command in commands:
            machine.apply(command)

    seen = _run_concurrently(writer, _checked_reads(machine, states, digests))
    assert all(versions and versions[-1] == 20 for versions in seen), seen
    assert all(versions == sorted(versions) for versions in seen)  # never back in time


def test_reads_during_an_apply_wait_for_it_and_never_return_a_torn_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    machine, reference = _machine(), _machine()
    reference.apply(_command(0, 0))
    mid, resume = threading.Event(), threading.Event()
    real_step = layer_step_module.optimizer_step

    def paused_step(param: Any, grad: Any, state: Any, lr: float, cfg: Any,
                    **options: Any) -> None:
        real_step(param, grad, state, lr, cfg, **options)
        if param.shape == SHAPES["b"]:  # "b" stepped, "w" not yet: the state is torn here
            mid.set()
            assert resume.wait(30)

    monkeypatch.setattr(layer_step_module, "optimizer_step", paused_step)
    writer = threading.Thread(target=machine.apply, args=(_command(0, 0),))
    writer.start()
    assert mid.wait(30)
    assert machine.sequence % 2 == 1 and machine.version == 0
    reads: list[Callable[[], object]] = [
        lambda: machine.read_params(timeout=0.05), lambda: machine.export_state(timeout=0.05),
        lambda: machine.snapshot(timeout=0.05), lambda: machine.digest(timeout=0.05),
        lambda: machine.read_params(copy=False, timeout=0.05)]
    for read in reads:
        with pytest.raises(LockTimeoutError):
            read()
    got: list[tuple[int, dict[str, np.ndarray]]] = []
    reader = threading.Thread(target=lambda: got.append(machine.read_params(timeout=30)))
    reader.start()
    resume.set()
    writer.join(30)
    reader.join(30)
    ((version, params),) = got
    assert version == 1 and machine.sequence % 2 == 0
    for key, value in reference.params().items():
        np.testing.assert_array_equal(params[key], value)


def test_a_read_spanning_a_whole_apply_retries_instead_of_mixing_versions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each layer's copy validates against its own stamp, yet layer "b" would be version 0
    and "w" version 1: only the machine's sequence number catches the mix."""
    machine, reference = _machine(), _machine()
    reference.apply(_command(0, 0))
    real_read = machine.locks.read
    calls: list[str] = []

    def read(key: str, copy_fn: Callable[[], Any], timeout: float | None = None) -> Any:
        calls.append(key)
        if len(calls) == 2:  # between the two layers' copies, a whole round applies
            writer = threading.Thread(target=machine.apply, args=(_command(0, 0),))
            writer.start()
            writer.join(30)
        return real_read(key, copy_fn, timeout)

    monkeypatch.setattr(machine.locks, "read", read)
    version, params = machine.read_params()
    assert version == 1 and len(calls) == 4  # one failed try, one clean one
    for key, value in reference.params().items():
        np.testing.assert_array_equal(params[key], value)


def test_a_writer_blocked_by_a_reader_times_out_and_releases_everything() -> None:
    machine = ShardStateMachine(PLAN.pieces(0), _params(), SGD, write_timeout_s=0.05)
    reference = _machine()
    ahead = machine.preview(_command(0, 0))
    digest = machine.digest()
    held, release = threading.Event(), threading.Event()

    def hold_read_lock() -> None:
        with machine.locks.read_lock("w"):
            held.set()
            release.wait(30)

    reader = threading.Thread(target=hold_read_lock)
    reader.start()
    assert held.wait(30)
    with pytest.raises(LockTimeoutError):
        machine._apply_once(_command(0, 0))
    assert machine.version == 0 and machine.sequence % 2 == 0
    with machine.locks.write(["b"], timeout=0):  # "b", taken before "w", was released
        pass
    assert machine.read_params(timeout=1)[0] == 0  # and so was the gate
    release.set()
    reader.join(30)
    assert machine.digest() == digest
    machine.apply(_command(0, 0))  # works now, and adopts the preview it kept
    reference.apply(_command(0, 0))
    assert np.shares_memory(ahead["w"], machine.params()["w"])
    assert machine.snapshot() == reference.snapshot()


def test_a_raft_apply_blocked_by_a_reader_retries_until_it_gets_its_locks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``apply`` (what every replica runs for a committed entry) never fails on a local
    lock timeout, which other replicas would not share: it retries, then succeeds."""
    import paramserver.shard as shard_mod

    machine = ShardStateMachine(PLAN.pieces(0), _params(), SGD, write_timeout_s=0.05)
    reference = _machine()
    held, release, timed_out = threading.Event(), threading.Event(), threading.Event()
    monkeypatch.setattr(shard_mod.LOG, "warning", lambda *a, **k: timed_out.set())

    def hold_read_lock() -> None:
        with machine.locks.read_lock("w"):
            held.set()
            release.wait(30)

    reader = threading.Thread(target=hold_read_lock)
    reader.start()
    assert held.wait(30)
    results: list[object] = []
    writer = threading.Thread(target=lambda: results.append(machine.apply(_command(0, 0))))
    writer.start()
    assert timed_out.wait(30)  # at least one attempt timed out (and changed nothing)
    release.set()
    writer.join(30)
    reader.join(30)
    reference.apply(_command(0, 0))
    assert len(results) == 1 and machine.snapshot() == reference.snapshot()


def _async(step: int, rank: int, seed: int) -> bytes:
    return RoundCommand(round=step, kind="async", samples=2, ranks=(rank,),
                        grads=_params(2000 + seed)).encode()


def test_async_steps_of_one_rank_applied_out_of_order_each_step_once() -> None:
    """Rank 1's step 1 commits before its straggling step 0 (a new leader proposes it).
    Step 0 used to count as a duplicate of step 1 and was dropped silently."""
    machine = _machine()
    machine.apply(_async(1, 1, 1))
    machine.apply(_async(0, 1, 0))
    assert machine.version == 2
    state = machine.export_state()
    assert state.async_steps == {1: 1} and state.async_early == {}
    for command in (_async(0, 1, 0), _async(1, 1, 1)):  # re-proposals stay no-ops
        assert not machine.apply(command).stepped  # type: ignore[union-attr]
    assert machine.version == 2


def test_async_steps_applied_early_survive_snapshots() -> None:
    machine = _machine()
    machine.apply(_async(2, 0, 2))
    restored = _machine()
    restored.restore(machine.snapshot())
    assert restored.export_state().async_early == {0: (2,)}
    assert restored.snapshot() == machine.snapshot()
    assert not restored.apply(_async(2, 0, 2)).stepped  # type: ignore[union-attr]
    assert restored.apply(_async(0, 0, 0)).stepped  # type: ignore[union-attr]
    assert restored.export_state().async_early == {0: (2,)}
    restored.apply(_async(1, 0, 1))
    state = restored.export_state()
    assert state.async_steps == {0: 2} and state.async_early == {} and state.version == 3


@pytest.mark.parametrize("through_log", [False, True])
def test_restoring_another_optimizers_state_is_refused_and_changes_nothing(
    through_log: bool,
) -> None:
    """An Adam shard's state restored into an SGD-with-momentum shard used to be adopted:
    the next rounds stepped momentum beside stale Adam moments. Refused before any layer
    changes, also when it arrives as a committed RestoreCommand."""
    from paramserver.errors import OptimizerStateError

    adam = _machine(OptimizerConfig(kind="adam", lr=0.01))
    adam.apply(_command(0, 0))
    target = _machine()
    target.apply(_command(0, 5))
    digest, version = target.digest(), target.version
    with pytest.raises(OptimizerStateError, match=r"exp_avg.*momentum_buffer"):
        if through_log:
            target.apply(RestoreCommand(adam.snapshot()).encode())
        else:
            target.restore(adam.snapshot())
    assert target.digest() == digest and target.version == version
    with pytest.raises(OptimizerStateError):
        ShardStateMachine.from_state(PLAN.pieces(0), adam.export_state(), SGD)


def test_a_bad_optimizer_buffer_in_the_last_layer_changes_no_layer() -> None:
    from paramserver.errors import OptimizerStateError

    source = _machine()
    source.apply(_command(0, 1))
    state = source.export_state()
    last = sorted(state.optimizer_state)[-1]
    state.optimizer_state[last]["momentum_buffer"] = np.zeros(3, np.float32)
    target = _machine()
    digest = target.digest()
    with pytest.raises(OptimizerStateError, match=repr(last)):
        target._load(state)
    assert target.digest() == digest
