"""A ``ray.data.Dataset`` addressed by index, in the order the batch schedule gives.

``materialize`` runs the dataset once, in order (``preserve_order``), into the object store
as numpy blocks holding only its ``x`` and ``y`` columns, and returns a
``RayBlocksDataset``: the block refs and each block's first row (a block-offset index).
That handle is small (a ref and an int per block); the driver ships it to the gradient
tasks, and ``get_batch`` fetches only the blocks its indices touch (zero-copy from the
local object store; Ray copies a block from another node first). Memory: the dataset's two
columns live once in the object store, for the job's lifetime (they are freed with the
handle); a worker holds the blocks of one batch at a time. A dataset whose pipeline is not
deterministic (an unseeded ``random_shuffle``) gives other indices on another run, so
resume and failover need a deterministic one.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
from ray import ObjectRef

from workers.datasets.contract import InconsistentItemsError, RayDataSplit, is_ray_dataset
from workers.errors import DataError

BlockInfo = tuple[int, tuple[int, ...], str, tuple[int, ...], str]
"""(rows, x shape per row, x dtype, y shape per row, y dtype) of one block."""


@ray.remote(num_cpus=0)
def _block_info(block: dict[str, np.ndarray], x: str, y: str) -> BlockInfo:
    """What the index and the consistency check need of one block, read where it lives."""
    xs, ys = np.asarray(block[x]), np.asarray(block[y])
    return (len(xs), tuple(int(d) for d in xs.shape[1:]), xs.dtype.str,
            tuple(int(d) for d in ys.shape[1:]), ys.dtype.str)


@dataclass(frozen=True, eq=False)
class RayBlocksDataset:
    """A materialized ray.data dataset: ``blocks[b]`` holds rows ``[offsets[b],
    offsets[b + 1])`` as ``{x: array, y: array}``. Also its own task handle (``key``,
    ``open``): it is the same object in every process."""

    token: str
    blocks: tuple[ObjectRef[Any], ...]
    offsets: np.ndarray
    x: str
    y: str

    @property
    def key(self) -> str:
        """Identifies this materialization in a worker's cache."""
        return f"ray.data:{self.token}"

    def open(self) -> RayBlocksDataset:
        """Nothing to open: the blocks are in the object store."""
        return self

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = self.get_batch(np.array([index], dtype=np.int64))
        return xs[0], ys[0]

    def get_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``indices``, fetching each block they touch once."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise DataError(f"indices out of range for a ray.data dataset of {len(self)} rows")
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        needed = np.unique(which)
        fetched = ray.get([self.blocks[b] for b in needed])
        xs: np.ndarray | None = None
        ys: np.ndarray | None = None
        for b, block in zip(needed, fetched, strict=True):
            bx, by = np.asarray(block[self.x]), np.asarray(block[self.y])
            if xs is None or ys is None:
                xs = np.empty((len(idx), *bx.shape[1:]), dtype=bx.dtype)
                ys = np.empty((len(idx), *by.shape[1:]), dtype=by.dtype)
            if bx.shape[1:] != xs.shape[1:] or by.shape[1:] != ys.shape[1:]:
                raise InconsistentItemsError(
                    f"a ray.data dataset has blocks of different shapes per row (x "
                    f"{xs.shape[1:]} and {bx.shape[1:]}, y {ys.shape[1:]} and {by.shape[1:]})")
            mask = which == b
            rows = idx[mask] - self.offsets[b]
            xs[mask] = bx[rows]
            ys[mask] = by[rows]
        if xs is None or ys is None:
            raise DataError("a ray.data dataset was asked for no rows")
        return xs, ys

    def target_range(self) -> tuple[int, int]:
        """``(min, max)`` of the targets, one block at a time."""
        lows, highs = [], []
        for ref in self.blocks:
            y = np.asarray(ray.get(ref)[self.y])
            lows.append(int(y.min()))
            highs.append(int(y.max()))
        return min(lows), max(highs)


def materialize(split: object, name: str) -> RayBlocksDataset:
    """Run a ``ray.data.Dataset`` (or a ``RayDataSplit``) once into the object store as
    numpy blocks of its ``x`` and ``y`` columns, in order; ``DataError`` naming ``name``
    when a column is missing, the dataset is empty or its blocks differ in shape per row
    (``InconsistentItemsError``). Needs Ray up."""
    if not is_ray_dataset(split):
        raise DataError(f"{name} is not a ray.data.Dataset")
    chosen = split if isinstance(split, RayDataSplit) else RayDataSplit(split)
    ds = chosen.dataset
    ds.context.execution_options.preserve_order = True  # index i is the i-th row, every run
    columns = list(ds.columns() or [])
    missing = [c for c in (chosen.x, chosen.y) if c not in columns]
    if missing:
        raise DataError(f"{name} has columns {columns}, not {missing}; name the feature and "
                        "target columns x and y, or pass "
                        "workers.datasets.from_ray_data(ds, x=..., y=...)")
    refs = ds.select_columns([chosen.x, chosen.y]).to_numpy_refs()
    infos: list[BlockInfo] = ray.get([_block_info.remote(r, chosen.x, chosen.y) for r in refs])
    kept = [(ref, info) for ref, info in zip(refs, infos, strict=True) if info[0] > 0]
    if not kept:
        raise DataError(f"{name} is empty; a split must hold samples")
    shapes = {(info[1], info[3]) for _, info in kept}
    if len(shapes) > 1 or any("O" in info[2] or "O" in info[4] for _, info in kept):
        raise InconsistentItemsError(
            f"{name} has rows of different shapes ((x, y) per row: "
            f"{', '.join(map(str, sorted(shapes)))}); every row must have one shape")
    offsets = np.concatenate([[0], np.cumsum([info[0] for _, info in kept])]).astype(np.int64)
    offsets.flags.writeable = False
    return RayBlocksDataset(token=uuid.uuid4().hex, blocks=tuple(ref for ref, _ in kept),
                            offsets=offsets, x=chosen.x, y=chosen.y)
