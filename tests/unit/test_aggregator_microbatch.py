"""Round aggregator with micro-batch contributions: keyed by range, one tree, same bits."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from paramserver import (
    AggregatorConfig,
    InvalidContributionError,
    RoundAggregator,
    RoundCommand,
    StaleRoundError,
    decode_command,
    tree_sum,
)
from paramserver.microbatch import (
    OverlappingContributionError,
    TreeContribution,
    aligned_cover,
    subtree_sum,
)
from workers.schedule import micro_range

SHAPES = {"w": (4, 3), "b": (3,), "stat": (3,)}
BUFFERS = {"stat": np.dtype(np.float32)}


def _leaf(i: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(i)
    scale = np.float32(10.0 ** (i % 7 - 3))
    return {k: (rng.standard_normal(s) * scale).astype(np.float32)
            for k, s in SHAPES.items() if k not in BUFFERS}


def _part(start: int, stop: int, total: int) -> TreeContribution:
    nodes = aligned_cover(start, stop, total)
    sums = tuple({key: subtree_sum({(i, i + 1): _leaf(i)[key] for i in range(*node)},
                                   *node, total) for key in ("w", "b")} for node in nodes)
    stat = np.full(3, float(start), np.float32)  # the forward of micro-batch ``start``
    return TreeContribution(start=start, stop=stop, total=total, nodes=nodes, sums=sums,
                            buffers={"stat": stat})


def _agg(workers: int = 4, **kw: Any) -> RoundAggregator:
    return RoundAggregator(AggregatorConfig(workers=workers, **kw), SHAPES, buffers=BUFFERS)


def _run(total: int, tasks: int, order: list[int] | None = None) -> bytes:
    agg = _agg(workers=tasks)
    ranges = [(r.start, r.stop) for r in (micro_range(k, tasks, total) for k in range(tasks))]
    outs = [agg.submit(0, rank, _part(*ranges[rank], total), 5 * (ranges[rank][1]
                                                                   - ranges[rank][0]), 0)
            for rank in (order or range(tasks))]
    assert [len(o.commands) for o in outs] == [0] * (tasks - 1) + [1]
    return outs[-1].commands[0]


@pytest.mark.parametrize("total", [1, 4, 6, 7])
def test_command_is_bitwise_the_same_for_any_number_of_tasks(total: int) -> None:
    commands = {tasks: _run(total, tasks) for tasks in range(1, total + 1)}
    assert len(set(commands.values())) == 1
    cmd = decode_command(commands[1])
    assert isinstance(cmd, RoundCommand)
    assert cmd.ranks == tuple(range(total)) and cmd.samples == 5 * total
    expected = tree_sum([_leaf(i)["w"] for i in range(total)])
    assert cmd.grads["w"].tobytes() == expected.tobytes()
    assert cmd.buffers["stat"].tolist() == [0.0, 0.0, 0.0]  # micro-batch 0's forward


def test_arrival_order_does_not_matter() -> None:
    assert _run(6, 4, order=[3, 1, 0, 2]) == _run(6, 4)


def test_a_duplicate_range_is_a_no_op_before_and_after_the_round_completes() -> None:
    agg = _agg(workers=2)
    first = agg.submit(0, 0, _part(0, 3, 6), 15, 0)
    again = agg.submit(0, 0, _part(0, 3, 6), 15, 0)
    assert (first.accepted, again.accepted, again.duplicate, again.received) == (
        True, False, True, 1)
    done = agg.submit(0, 1, _part(3, 6, 6), 15, 0)
    assert len(done.commands) == 1
    late = agg.submit(0, 1, _part(3, 6, 6), 15, 0)
    assert late.duplicate and not late.commands
    with pytest.raises(StaleRoundError, match=r"micro-batches 3\.\.4"):
        agg.submit(0, 1, _part(3, 5, 6), 10, 0)


def test_an_overlapping_range_is_refused_and_changes_nothing() -> None:
    agg = _agg(workers=3)
    agg.submit(0, 0, _part(0, 3, 6), 15, 0)
    with pytest.raises(OverlappingContributionError, match=r"overlap micro-batches 0\.\.2"):
        agg.submit(0, 1, _part(2, 4, 6), 10, 0)
    assert agg.received(0) == (0,)
    agg.submit(0, 1, _part(3, 5, 6), 10, 0)
    out = agg.submit(0, 2, _part(5, 6, 6), 5, 0)
    assert out.commands and out.commands[0] == _run(6, 1)


def test_malformed_and_mixed_contributions_are_refused() -> None:
    agg = _agg(workers=2)
    part = _part(0, 3, 6)
    wrong_nodes = TreeContribution(start=0, stop=3, total=6, nodes=((0, 1), (1, 3)),
                                   sums=part.sums, buffers=part.buffers)
    with pytest.raises(InvalidContributionError, match="must be sent as the tree nodes"):
        agg.submit(0, 0, wrong_nodes, 15, 0)
    agg.submit(0, 0, part, 15, 0)
    with pytest.raises(InvalidContributionError, match="same M"):
        agg.submit(0, 1, _part(3, 4, 4), 5, 0)
    with pytest.raises(InvalidContributionError, match="per-rank one cannot join"):
        agg.submit(0, 1, {**_leaf(0), "stat": np.zeros(3, np.float32)}, 5, 0)
    with pytest.raises(InvalidContributionError, match="need rounds"):
        _agg(workers=2, mode="async").submit(0, 0, part, 15, 0)
    assert agg.received(0) == (0,)
