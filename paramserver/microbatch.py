"""The micro-batch gradient tree: one fixed pairwise tree over micro-batches 0..M-1.

With ``--micro-batches M`` a round's global batch is cut into M contiguous micro-batches and
its gradient is the sum of their M gradient sums, added by ONE fixed tree over micro-batch
index, whichever tasks computed them. The tree is the one ``tree_sum`` uses for M inputs:
node ``(start, stop)`` is a block of leaves aligned to a power of two ``2**L`` (``start`` a
multiple of it), cut at M: ``stop = min(start + 2**L, M)``. A node of two or more leaves
adds its left child ``(start, start + 2**(L-1))`` and its right child (the rest), where L is
the smallest level that spans the node. A task computing micro-batches ``[a, b)`` sends the
sums of ``aligned_cover(a, b, M)``, the maximal tree nodes inside its range; the server adds
the nodes of all tasks up to the root (``subtree_sum``). Every addition happens at the same
node with the same operands for any split of 0..M-1 into contiguous ranges, so the round's
sum is bitwise the same for any number of tasks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from paramserver.errors import InvalidContributionError

F32 = npt.NDArray[np.float32]
Node = tuple[int, int]
"""A tree node as its micro-batch range ``[start, stop)``."""


class OverlappingContributionError(InvalidContributionError):
    """A micro-batch contribution overlaps one the round already holds (but is not it)."""


def _span_level(size: int) -> int:
    """The smallest L with ``2**L >= size``."""
    return max(0, (size - 1).bit_length())


def is_node(start: int, stop: int, total: int) -> bool:
    """Whether ``[start, stop)`` is a node of the tree over ``total`` leaves."""
    if not 0 <= start < stop <= total:
        return False
    width = 1 << _span_level(stop - start)
    return start % width == 0 and stop == min(start + width, total)


def children(start: int, stop: int) -> tuple[Node, Node]:
    """The two children of an inner node (two or more leaves): left, then right."""
    if stop - start < 2:
        raise ValueError(f"node [{start}, {stop}) is a leaf: it has no children")
    mid = start + (1 << (_span_level(stop - start) - 1))
    return (start, mid), (mid, stop)


def aligned_cover(start: int, stop: int, total: int) -> tuple[Node, ...]:
    """The maximal tree nodes inside ``[start, stop)``, left to right (they tile it)."""
    if not 0 <= start < stop <= total:
        raise ValueError(f"micro-batch range [{start}, {stop}) is not inside 0..{total}")
    nodes: list[Node] = []
    top = _span_level(total)
    a = start
    while a < stop:
        level = 0
        while (level < top and a % (2 << level) == 0
               and min(a + (2 << level), total) <= stop):
            level += 1
        end = min(a + (1 << level), total)
        nodes.append((a, end))
        a = end
    return tuple(nodes)


def subtree_sum(nodes: Mapping[Node, F32], start: int, stop: int, total: int,
                out: F32 | None = None) -> F32:
    """The float32 sum of tree node ``[start, stop)`` from given node sums tiling it.

    ``nodes`` maps tree nodes (disjoint, covering ``[start, stop)``) to their sums; each
    missing node is the sum of its children, left + right. The result is a new array, or
    ``out`` (which must not alias an input); inputs are never modified. Raises ValueError when
    the nodes do not tile the range exactly (a gap, an overlap, a node outside it, or a range
    that is not a tree node).
    """
    if not is_node(start, stop, total):
        raise ValueError(f"[{start}, {stop}) is not a node of the tree over {total} leaves")
    used: set[Node] = set()

    def value(node: Node, dest: F32 | None) -> tuple[F32, bool]:
        """(the node's sum, whether it is a buffer of ours that may be added into)."""
        given = nodes.get(node)
        if given is not None:
            used.add(node)
            return given, False
        if node[1] - node[0] < 2:
            raise ValueError(f"no sum for micro-batch {node[0]}: the nodes leave a gap")
        left_node, right_node = children(*node)
        left, owned = value(left_node, None)
        right, _ = value(right_node, None)
        if dest is not None:
            return np.add(left, right, out=dest), True
        if owned:
            return np.add(left, right, out=left), True
        return np.add(left, right, dtype=np.float32), True

    result, owned = value((start, stop), out)
    extra = sorted(set(nodes) - used)
    if extra:
        raise ValueError(f"nodes {extra[:3]} overlap others or lie outside [{start}, {stop})")
    if out is not None and result is not out:
        np.copyto(out, result)
        return out
    if not owned:
        return np.array(result, dtype=np.float32, copy=True)
    return result


def tree_total(nodes: Mapping[Node, F32], total: int, out: F32 | None = None) -> F32:
    """The root of the tree over ``total`` leaves: the round's sum (``subtree_sum``)."""
    return subtree_sum(nodes, 0, total, total, out=out)


@dataclass(frozen=True, kw_only=True)
class TreeContribution:
    """One task's contribution to one shard in micro-batch mode.

    It computed micro-batches ``[start, stop)`` of ``total`` and sends, for each node of
    ``aligned_cover(start, stop, total)`` (``nodes``, in order), the node's gradient sums
    by piece key (``sums``), plus the shard's buffer pieces as the forward of micro-batch
    ``start`` left them (``buffers``; the round takes those of micro-batch 0).
    """

    start: int
    stop: int
    total: int
    nodes: tuple[Node, ...]
    sums: tuple[Mapping[str, F32], ...]
    buffers: Mapping[str, npt.NDArray[np.generic]] = field(default_factory=dict)

    @property
    def range(self) -> Node:
        """The micro-batch range ``[start, stop)``."""
        return (self.start, self.stop)

    def check(self) -> None:
        """Raise InvalidContributionError unless the nodes are exactly the aligned cover of
        the range, each with its sums."""
        for name in ("start", "stop", "total"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise InvalidContributionError(f"micro-batch {name}={value!r} must be an int")
        if not 0 <= self.start < self.stop <= self.total:
            raise InvalidContributionError(
                f"micro-batch range [{self.start}, {self.stop}) is not inside 0..{self.total}")
        expected = aligned_cover(self.start, self.stop, self.total)
        if tuple(tuple(n) for n in self.nodes) != expected:
            raise InvalidContributionError(
                f"micro-batches [{self.start}, {self.stop}) must be sent as the tree nodes "
                f"{list(expected)}, got {list(self.nodes)}")
        if len(self.sums) != len(self.nodes):
            raise InvalidContributionError(
                f"{len(self.sums)} gradient sums for {len(self.nodes)} tree nodes")
