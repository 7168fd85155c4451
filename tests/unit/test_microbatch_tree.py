"""The micro-batch gradient tree: any contiguous split of 0..M-1 gives tree_sum's bits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paramserver import tree_sum
from paramserver.microbatch import (
    F32,
    Node,
    aligned_cover,
    children,
    is_node,
    subtree_sum,
    tree_total,
)
from workers.schedule import ScheduleError, micro_range


def _leaves(total: int, seed: int, size: int = 7) -> list[F32]:
    """Leaves of wildly different magnitudes, so a different addition order changes bits."""
    rng = np.random.default_rng(seed)
    scale = np.float32(10.0) ** rng.integers(-6, 7, size=(total, 1)).astype(np.float32)
    return [(rng.standard_normal(size).astype(np.float32) * s).astype(np.float32)
            for s in scale]


@st.composite
def _split(draw: st.DrawFn) -> tuple[int, list[Node]]:
    """A leaf count M (any, not only powers of two) and a random contiguous partition."""
    total = draw(st.integers(1, 48))
    tasks = draw(st.integers(1, total))
    cuts = sorted(draw(st.sets(st.integers(1, total - 1), min_size=tasks - 1,
                               max_size=tasks - 1))) if total > 1 else []
    bounds = [0, *cuts, total]
    return total, [(a, b) for a, b in itertools.pairwise(bounds)]


def _task_nodes(leaves: list[F32], ranges: list[Node], total: int) -> dict[Node, F32]:
    """What the tasks send: each pre-reduces its aligned cover from its own leaves only."""
    sent: dict[Node, F32] = {}
    for start, stop in ranges:
        own = {(i, i + 1): leaves[i] for i in range(start, stop)}
        for node in aligned_cover(start, stop, total):
            sent[node] = subtree_sum({n: v for n, v in own.items()
                                      if node[0] <= n[0] < node[1]}, *node, total)
    return sent


@settings(max_examples=300, deadline=None)
@given(_split(), st.integers(0, 2**32 - 1))
def test_any_contiguous_split_is_bitwise_tree_sum(split: tuple[int, list[Node]],
                                                  seed: int) -> None:
    total, ranges = split
    leaves = _leaves(total, seed)
    before = [leaf.copy() for leaf in leaves]
    expected = tree_sum(leaves)
    got = tree_total(_task_nodes(leaves, ranges, total), total)
    assert got.dtype == np.float32
    assert got.tobytes() == expected.tobytes()
    out = np.empty_like(expected)
    assert tree_total(_task_nodes(leaves, ranges, total), total, out=out) is out
    assert out.tobytes() == expected.tobytes()
    assert all(a.tobytes() == b.tobytes() for a, b in zip(leaves, before, strict=True))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 64), st.data())
def test_aligned_cover_tiles_the_range_with_maximal_nodes(total: int, data: st.DataObject
                                                          ) -> None:
    start = data.draw(st.integers(0, total - 1))
    stop = data.draw(st.integers(start + 1, total))
    cover = aligned_cover(start, stop, total)
    assert cover[0][0] == start and cover[-1][1] == stop
    assert all(a[1] == b[0] for a, b in itertools.pairwise(cover))
    assert all(is_node(a, b, total) for a, b in cover)
    # maximal: no two neighbours are the two children of one node
    for a, b in itertools.pairwise(cover):
        parent = (a[0], b[1])
        assert not (is_node(*parent, total) and children(*parent) == (a, b))


def test_the_tree_is_tree_sums_shape_for_six_leaves() -> None:
    assert children(0, 6) == ((0, 4), (4, 6))
    assert aligned_cover(0, 6, 6) == ((0, 6),)
    assert aligned_cover(1, 6, 6) == ((1, 2), (2, 4), (4, 6))
    assert aligned_cover(3, 5, 6) == ((3, 4), (4, 5))
    assert not is_node(1, 3, 6) and is_node(4, 6, 6) and is_node(4, 5, 5)



def test_gaps_and_overlaps_are_refused() -> None:
    leaves = _leaves(4, 0)
    nodes = {(i, i + 1): leaves[i] for i in range(4)}
    with pytest.raises(ValueError, match="gap"):
        tree_total({k: v for k, v in nodes.items() if k != (2, 3)}, 4)
    with pytest.raises(ValueError, match="overlap"):
        tree_total({**nodes, (0, 2): leaves[0]}, 4)
    with pytest.raises(ValueError, match="not a node"):
        subtree_sum(nodes, 1, 3, 4)
    with pytest.raises(ValueError, match="not inside"):
        aligned_cover(2, 2, 4)


def test_micro_ranges_are_contiguous_and_refuse_more_tasks_than_micro_batches() -> None:
    ranges = [micro_range(rank, 4, 6) for rank in range(4)]
    assert [(r.start, r.stop) for r in ranges] == [(0, 1), (1, 3), (3, 4), (4, 6)]
    assert (micro_range(0, 1, 3).start, micro_range(0, 1, 3).stop) == (0, 3)
    with pytest.raises(ScheduleError, match="cannot share"):
        micro_range(0, 5, 4)
