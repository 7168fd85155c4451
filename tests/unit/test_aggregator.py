"""Round aggregator: admission, dedup, errors, canonical sums, modes, non-finite policy."""

from __future__ import annotations

import pickle
import random
from typing import Any

import numpy as np
import pytest

from paramserver import (
    AggregatorConfig,
    ConfigError,
    FutureRoundError,
    GradientShapeError,
    InvalidContributionError,
    NonFiniteGradientError,
    RankOutOfRangeError,
    RoundAggregator,
    RoundCommand,
    StaleRoundError,
    UnknownLayerError,
    decode_command,
    tree_sum,
)

SHAPES = {"w": (4, 3), "b": (3,)}


def _grads(seed: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(s) * scale).astype(np.float32) for k, s in SHAPES.items()}


def _agg(**kw: Any) -> RoundAggregator:
    kw.setdefault("workers", 4)
    return RoundAggregator(AggregatorConfig(**kw), SHAPES)


def _round_cmd(data: bytes) -> RoundCommand:
    cmd = decode_command(data)
    assert isinstance(cmd, RoundCommand)
    return cmd


def test_sync_round_emits_one_command_with_the_sum_when_all_ranks_in() -> None:
    agg = _agg()
    outs = [agg.submit(0, r, _grads(r), samples=10 + r, param_version=0) for r in range(4)]
    assert [len(o.commands) for o in outs] == [0, 0, 0, 1]
    cmd = _round_cmd(outs[-1].commands[0])
    assert (cmd.round, cmd.kind, cmd.samples, cmd.ranks) == (0, "sync", 46, (0, 1, 2, 3))
    expected = tree_sum([_grads(r)["w"] for r in range(4)])
    np.testing.assert_array_equal(cmd.grads["w"], expected)
    np.testing.assert_allclose(cmd.grads["b"], sum(_grads(r)["b"] for r in range(4)), rtol=1e-6)
    assert agg.next_round == 1


@pytest.mark.parametrize("seed", range(10))
def test_sum_is_bitwise_independent_of_arrival_order(seed: int) -> None:
    grads = {r: _grads(100 + r, scale=10.0 ** (r % 5)) for r in range(7)}
    reference = None
    for trial in range(4):
        order = list(range(7))
        random.Random(seed * 31 + trial).shuffle(order)
        agg = _agg(workers=7)
        out = [agg.submit(0, r, grads[r], 1, 0) for r in order][-1]
        if reference is None:
            reference = out.commands[0]
        assert out.commands[0] == reference


def test_tree_sum_uses_fixed_pairwise_order() -> None:
    a, b, c = (np.float32(x) * np.ones(1, np.float32) for x in (1e8, -1e8, 1.0))
    # ((a + b) + c) = 1, whereas a + (b + c) loses the 1 in float32.
    assert tree_sum([a, b, c])[0] == 1.0
    assert tree_sum([np.ones(2, np.float32)] * 5).tolist() == [5.0, 5.0]


def test_duplicate_is_an_idempotent_noop() -> None:
    agg = _agg(workers=2)
    first = agg.submit(0, 1, _grads(1), 5, 0)
    again = agg.submit(0, 1, _grads(99), 5, 0)
    assert first.accepted and not first.duplicate
    assert again.duplicate and not again.accepted and again.commands == ()
    done = agg.submit(0, 0, _grads(0), 5, 0)
    cmd = _round_cmd(done.commands[0])
    np.testing.assert_array_equal(cmd.grads["w"], _grads(0)["w"] + _grads(1)["w"])
    late = agg.submit(0, 1, _grads(1), 5, 0)
    assert late.duplicate and late.commands == ()


def test_stale_and_future_rounds_are_rejected_in_sync() -> None:
    agg = _agg(workers=1)
    agg.submit(0, 0, _grads(0), 1, 0)
    with pytest.raises(FutureRoundError):
        agg.submit(2, 0, _grads(0), 1, 1)
    agg2 = _agg(workers=2)
    agg2.submit(0, 0, _grads(0), 1, 0)
    agg2.close_round(0)  # b=0: does not complete with 1 of 2
    assert agg2.next_round == 0
    agg2.submit(0, 1, _grads(1), 1, 0)
    agg3 = _agg(workers=2, backup_workers=1)
    agg3.submit(0, 0, _grads(0), 1, 0)
    assert len(agg3.close_round(0)) == 1
    with pytest.raises(StaleRoundError):
        agg3.submit(0, 1, _grads(1), 1, 0)


@pytest.mark.parametrize(("bad", "error"), [
    ({"rank": 4}, RankOutOfRangeError),
    ({"rank": -1}, RankOutOfRangeError),
    ({"grads": {"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32),
                 "x": np.zeros(1, np.float32)}}, UnknownLayerError),
    ({"grads": {"w": np.zeros((4, 3), np.float32)}}, GradientShapeError),
    ({"grads": {"w": np.zeros((3, 4), np.float32), "b": np.zeros(3, np.float32)}},
     GradientShapeError),
    ({"grads": {"w": np.zeros((4, 3), np.float64), "b": np.zeros(3, np.float32)}},
     GradientShapeError),
    ({"samples": 0}, InvalidContributionError),
])
def test_bad_input_raises_and_changes_nothing(bad: dict[str, Any], error: type[Exception]) -> None:
    agg = _agg(workers=2)
    agg.submit(0, 0, _grads(0), 3, 0)
    args: dict[str, Any] = {"round": 0, "rank": 1, "grads": _grads(1), "samples": 3,
                            "param_version": 0}
    args.update(bad)
    with pytest.raises(error) as info:
        agg.submit(**args)
    assert isinstance(info.value, ValueError)
    assert agg.received(0) == (0,)
    out = agg.submit(0, 1, _grads(1), 3, 0)
    assert _round_cmd(out.commands[0]).samples == 6


def test_nonfinite_error_policy_names_rank_round_layer_and_pickles() -> None:
    agg = _agg(workers=2)
    grads = _grads(0)
    grads["w"][1, 1] = np.nan
    with pytest.raises(NonFiniteGradientError) as info:
        agg.submit(0, 1, grads, 1, 0)
    err = info.value
    assert (err.rank, err.round, err.layer) == (1, 0, "w")
    assert "rank 1" in str(err) and "'w'" in str(err) and "skip-round" in str(err)
    clone = pickle.loads(pickle.dumps(err))
    assert (clone.rank, clone.round, clone.layer, str(clone)) == (1, 0, "w", str(err))
    assert agg.received(0) == ()


def test_nonfinite_skip_round_commits_a_noop_step() -> None:
    agg = _agg(workers=2, nonfinite="skip-round")
    grads = _grads(0)
    grads["b"][0] = np.inf
    assert agg.submit(0, 0, grads, 1, 0).accepted
    cmd = _round_cmd(agg.submit(0, 1, _grads(1), 1, 0).commands[0])
    assert cmd.nonfinite_skip and cmd.grads == {} and cmd.round == 0
    assert agg.next_round == 1


def test_backup_workers_complete_with_n_minus_b_after_deadline() -> None:
    agg = _agg(workers=4, backup_workers=1)
    agg.submit(0, 0, _grads(0), 8, 0)
    agg.submit(0, 2, _grads(2), 8, 0)
    assert agg.close_round(0) == ()  # only 2 of the 3 needed
    out = agg.submit(0, 3, _grads(3), 4, 0)
    cmd = _round_cmd(out.commands[0])
    assert cmd.ranks == (0, 2, 3) and cmd.samples == 20
    np.testing.assert_array_equal(cmd.grads["w"],
                                  tree_sum([_grads(r)["w"] for r in (0, 2, 3)]))


def test_backup_workers_wait_for_all_before_the_deadline() -> None:
    agg = _agg(workers=3, backup_workers=1)
    agg.submit(0, 0, _grads(0), 1, 0)
    assert agg.submit(0, 1, _grads(1), 1, 0).commands == ()
    assert len(agg.close_round(0)) == 1
    assert agg.close_round(0) == ()


def test_ssp_allows_rounds_ahead_and_emits_in_round_order() -> None:
    agg = _agg(workers=2, mode="ssp", staleness=2)
    assert agg.submit(1, 0, _grads(0), 1, 0).accepted
    assert agg.submit(1, 1, _grads(1), 1, 0).commands == ()  # round 1 held until round 0
    with pytest.raises(FutureRoundError):
        agg.submit(3, 0, _grads(0), 1, 1)
    agg.submit(0, 0, _grads(0), 1, 0)
    out = agg.submit(0, 1, _grads(1), 1, 0)
    assert [_round_cmd(c).round for c in out.commands] == [0, 1]
    agg.advance(2)
    assert agg.submit(4, 0, _grads(0), 1, 2).accepted


def test_ssp_rejects_too_stale_parameters() -> None:
    agg = _agg(workers=2, mode="ssp", staleness=1)
    agg.advance(0)
    with pytest.raises(StaleRoundError, match="version"):
        agg.submit(1, 0, _grads(0), 1, param_version=-1)
    assert agg.submit(1, 0, _grads(0), 1, param_version=0).accepted


def test_async_makes_one_command_per_contribution() -> None:
    agg = _agg(workers=3, mode="async")
    outs = [agg.submit(0, r, _grads(r), 2, 0) for r in (2, 0, 1)]
    cmds = [_round_cmd(o.commands[0]) for o in outs]
    # an async command carries the rank's own step; the shard dedups on (rank, step)
    assert [(c.round, c.ranks, c.kind) for c in cmds] == [(0, (2,), "async"), (0, (0,), "async"),
                                                          (0, (1,), "async")]
    assert agg.submit(0, 2, _grads(2), 2, 0).duplicate
    with pytest.raises(StaleRoundError):
        _agg(workers=1, mode="async", staleness=1).submit(0, 0, _grads(0), 1, -5)


def test_advance_fast_forwards_past_rounds_committed_elsewhere() -> None:
    agg = _agg(workers=2)
    agg.submit(0, 0, _grads(0), 1, 0)
    agg.advance(3)
    assert agg.next_round == 3 and agg.received(0) == ()
    with pytest.raises(StaleRoundError):
        agg.submit(1, 0, _grads(0), 1, 1)


@pytest.mark.parametrize("kw", [{"workers": 0}, {"workers": 2, "backup_workers": 2},
                                {"workers": 2, "mode": "ssp", "backup_workers": 1},
                                {"workers": 2, "staleness": -1}, {"workers": 2, "mode": "bsp"},
                                {"workers": 2, "nonfinite": "ignore"}])
def test_config_rejects_bad_values(kw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        AggregatorConfig(**kw)


def _naive_tree(arrays: list[np.ndarray]) -> np.ndarray:
    level = list(arrays)
    while len(level) > 1:
        paired = [level[i] + level[i + 1] for i in range(0, len(level) - 1, 2)]
        level = paired + ([level[-1]] if len(level) % 2 else [])
    return np.array(level[0], np.float32)


@pytest.mark.parametrize("n", range(1, 10))
def test_tree_sum_in_place_levels_match_the_allocating_tree_and_spare_inputs(n: int) -> None:
    rng = np.random.default_rng(n)
    arrays = [(rng.standard_normal(64) * 10.0 ** rng.integers(-6, 6)).astype(np.float32)
              for _ in range(n)]
    before = [a.copy() for a in arrays]
    out = np.full(64, np.nan, np.float32)
    result = tree_sum(arrays, out=out)
    assert result is out
    assert np.array_equal(result.view(np.int32), _naive_tree(before).view(np.int32))
    assert all(np.array_equal(a, b) for a, b in zip(arrays, before, strict=True))
    fresh = tree_sum(arrays)
    assert all(not np.shares_memory(fresh, a) for a in arrays)


def test_reused_sum_buffers_do_not_leak_between_rounds() -> None:
    agg = _agg(workers=2)
    commands = []
    for r in range(3):
        agg.submit(r, 0, _grads(10 * r), 1, r)
        commands.extend(agg.submit(r, 1, _grads(10 * r + 1), 1, r).commands)
    for r, data in enumerate(commands):
        cmd = _round_cmd(data)
        expected = _grads(10 * r)["w"] + _grads(10 * r + 1)["w"]
        assert cmd.round == r and np.array_equal(cmd.grads["w"], expected)


def test_finite_gradients_whose_float32_sum_overflows_are_accepted() -> None:
    agg = _agg(workers=1)
    huge = {k: np.full(s, 3e38, np.float32) for k, s in SHAPES.items()}
    with np.errstate(over="ignore"):
        assert not np.isfinite(np.sum(huge["w"]))  # the fast path alone would misjudge them
    cmd = _round_cmd(agg.submit(0, 0, huge, 1, 0).commands[0])
    assert not cmd.nonfinite_skip and np.array_equal(cmd.grads["w"], huge["w"])
    with pytest.raises(NonFiniteGradientError):
        _agg(workers=1).submit(0, 0, {**huge, "b": np.array([1, np.nan, 2], np.float32)}, 1, 0)


def test_finite_gradients_whose_float32_sum_overflows_stop_the_round() -> None:
    """Two finite contributions of 3e38 sum to inf in float32; the check of each one alone
    let the sum through, and the shard then stepped inf into the parameters."""
    from paramserver.errors import NonFiniteSumError

    agg = _agg(workers=2)
    huge = {k: np.full(s, 3e38, np.float32) for k, s in SHAPES.items()}
    assert agg.submit(0, 0, huge, 1, 0).accepted
    with pytest.raises(NonFiniteSumError) as info:
        agg.submit(0, 1, huge, 1, 0)
    err = info.value
    assert isinstance(err, NonFiniteGradientError) and (err.round, err.layer) == (0, "b")
    assert "overflows float32" in str(err) and "skip-round" in str(err)
    clone = pickle.loads(pickle.dumps(err))
    assert (clone.round, clone.layer, str(clone)) == (0, "b", str(err))
    assert agg.received(0) == (0,) and agg.next_round == 0  # rank 1 was not admitted
    small = {k: np.ones(s, np.float32) for k, s in SHAPES.items()}
    cmd = _round_cmd(agg.submit(0, 1, small, 1, 0).commands[0])
    assert np.all(cmd.grads["w"] == np.float32(3e38) + np.float32(1))


def test_an_overflowing_sum_under_skip_round_commits_a_noop_step() -> None:
    agg = _agg(workers=2, nonfinite="skip-round")
    huge = {k: np.full(s, -3e38, np.float32) for k, s in SHAPES.items()}
    agg.submit(0, 0, huge, 1, 0)
    cmd = _round_cmd(agg.submit(0, 1, huge, 1, 0).commands[0])
    assert cmd.nonfinite_skip and cmd.grads == {} and cmd.ranks == (0, 1)


def test_an_overflowing_sum_at_the_straggler_deadline_changes_nothing() -> None:
    from paramserver.errors import NonFiniteSumError

    agg = _agg(workers=3, backup_workers=1)
    huge = {k: np.full(s, 3e38, np.float32) for k, s in SHAPES.items()}
    agg.submit(0, 0, huge, 1, 0)
    agg.submit(0, 1, huge, 1, 0)
    with pytest.raises(NonFiniteSumError):
        agg.close_round(0)
    assert agg.received(0) == (0, 1) and agg.next_round == 0


def test_async_steps_of_one_rank_out_of_order_are_each_admitted_once() -> None:
    """Two of rank 1's contributions in flight, the earlier one a straggler: step 1 arrives
    first. Step 0 used to raise StaleRoundError, which stopped the job."""
    agg = _agg(workers=2, mode="async")
    later = agg.submit(1, 1, _grads(1), 2, 0)
    earlier = agg.submit(0, 1, _grads(0), 2, 0)
    assert later.accepted and earlier.accepted
    assert [_round_cmd(o.commands[0]).round for o in (later, earlier)] == [1, 0]
    assert agg.submit(0, 1, _grads(0), 2, 0).duplicate
    assert agg.submit(1, 1, _grads(1), 2, 0).duplicate


def test_large_sum_buffers_are_dropped_once_encoded_and_small_ones_reused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Between rounds a large shard must not hold its last round's sum next to the command:
    the aggregator frees sum buffers above REUSE_SUM_BYTES once they are encoded, and keeps
    small ones for the next round; the sums are the same either way."""
    import paramserver.aggregator as aggregator_module

    def two_rounds(limit: int) -> tuple[list[bytes], list[dict[str, np.ndarray]]]:
        monkeypatch.setattr(aggregator_module, "REUSE_SUM_BYTES", limit)
        agg = _agg(workers=2)
        commands, kept = [], []
        for rnd in range(2):
            for rank in range(2):
                out = agg.submit(rnd, rank, _grads(10 * rnd + rank), samples=4, param_version=rnd)
            commands.extend(out.commands)
            kept.append(dict(agg._sums))
            agg.advance(rnd + 1)
        return commands, kept

    small_limit_cmds, dropped = two_rounds(0)  # every sum counts as large
    reused_cmds, reused = two_rounds(1 << 20)
    assert dropped == [{}, {}]
    assert set(reused[0]) == {"w", "b"} and reused[1]["w"] is reused[0]["w"]
    assert small_limit_cmds == reused_cmds
