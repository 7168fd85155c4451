"""A dataset as the driver sees it: sizes, shapes and dtypes, never all of its samples.

``open_dataset`` opens a spec's splits, materializes a ray.data split once (Ray must be up),
checks a sample of items of each split (the first, the last and ``SAMPLED`` seeded random
ones: one shape and one kind of dtype for all, train and test alike) and derives what the
driver needs: the training length (the batch schedule), the sample shape (built-in models,
the preflight), the output width (from integer targets, scanned in bounded steps, unless the
spec declares ``num_classes``), and a handle the gradient tasks open the train split with.
The test split is read by index in bounded batches (``test_batch``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from workers.datasets.cache import TaskDataset
from workers.datasets.contract import (
    InconsistentItemsError,
    MapDataset,
    Splits,
    fetch_batch,
    is_ray_dataset,
)
from workers.datasets.raydata import RayBlocksDataset, materialize
from workers.datasets.source import (
    DatasetHandle,
    DatasetSpec,
    dataset_key,
    describe_spec,
    open_splits,
    resolve_dataset,
)
from workers.errors import DataError

SAMPLED = 4
"""Seeded random items checked per split, besides the first and the last."""
SAMPLE_SEED = 20240611
"""Fixed: which items are sampled never depends on the training seed."""
SCAN_BYTES = 64 << 20
"""Bytes of samples read per step when the targets are scanned through ``get_batch``."""


@dataclass(frozen=True, kw_only=True)
class OpenedDataset:
    """An opened dataset spec (see the module doc). ``task_data`` goes to every gradient
    task; ``splits`` stay in the driver."""

    name: str
    splits: Splits
    task_data: TaskDataset
    sample_shape: tuple[int, ...]
    target_shape: tuple[int, ...]
    x_dtype: np.dtype
    y_dtype: np.dtype
    num_classes: int
    ranges: dict[str, tuple[int, int]]
    """Integer targets: (min, max) per split (``y_train``, ``y_test``); empty when the spec
    declares ``num_classes`` or the targets are floats."""

    @property
    def n_train(self) -> int:
        """Number of training samples."""
        return len(self.splits.train)

    @property
    def n_test(self) -> int:
        """Number of test samples."""
        return len(self.splits.test)

    @property
    def in_features(self) -> int:
        """Number of input values per sample."""
        return int(np.prod(self.sample_shape, dtype=np.int64))

    @property
    def sample_bytes(self) -> int:
        """Bytes of one sample's features and target, after the dtype rule."""
        return (self.in_features * self.x_dtype.itemsize
                + int(np.prod(self.target_shape, dtype=np.int64)) * self.y_dtype.itemsize)

    def first_sample(self) -> tuple[np.ndarray, np.ndarray]:
        """The first training sample as a batch of one."""
        return fetch_batch(self.splits.train, np.zeros(1, np.int64), what=f"{self.name} train")

    def label_ranges(self) -> dict[str, tuple[int, int]]:
        """Integer targets: ``{"y_train": (min, max), "y_test": (min, max)}``."""
        return dict(self.ranges)

    def test_batch(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Test samples ``[start, stop)``, read by index."""
        return fetch_batch(self.splits.test, np.arange(start, stop, dtype=np.int64),
                           what=f"{self.name} test")


def sample_indices(n: int) -> np.ndarray:
    """Which of ``n`` items are checked: the first, the last and ``SAMPLED`` seeded ones."""
    rng = np.random.default_rng(SAMPLE_SEED)
    drawn = rng.integers(0, n, size=SAMPLED) if n > 2 else np.zeros(0, np.int64)
    return np.unique(np.concatenate([[0, n - 1], drawn]).astype(np.int64))


def _materialized(splits: Splits, name: str) -> Splits:
    if not (is_ray_dataset(splits.train) or is_ray_dataset(splits.test)):
        return splits
    train, test = (materialize(ds, f"{name} {split}") if is_ray_dataset(ds) else ds
                   for split, ds in (("train", splits.train), ("test", splits.test)))
    return Splits(train=train, test=test, num_classes=splits.num_classes)


def check_items(splits: Splits, name: str) -> tuple[tuple[int, ...], tuple[int, ...],
                                                     np.dtype, np.dtype]:
    """Sample shape, target shape and dtypes (after the dtype rule) of the sampled items;
    ``InconsistentItemsError`` naming two items that differ, ``DataError`` for an empty
    split or features without a dimension per sample."""
    seen: tuple[str, int, tuple[Any, ...]] | None = None
    for split in ("train", "test"):
        ds: MapDataset = getattr(splits, split)
        n = len(ds)
        if n < 1:
            raise DataError(f"{name}: the {split} split is empty; it must hold samples")
        for i in sample_indices(n):
            xb, yb = fetch_batch(ds, np.array([i]), what=f"{name} {split}")
            got = (xb.shape[1:], yb.shape[1:], xb.dtype, yb.dtype)
            if seen is None:
                seen = (split, int(i), got)
                continue
            if got != seen[2]:
                raise InconsistentItemsError(
                    f"{name} has items of different shapes or dtypes: {split} item {i} is "
                    f"{_show(got)} but {seen[0]} item {seen[1]} is {_show(seen[2])}; every "
                    "item of both splits must have one shape and dtype")
    assert seen is not None
    x_shape, y_shape, x_dtype, y_dtype = seen[2]
    if len(x_shape) < 1:
        raise DataError(f"{name}: each x must have at least one dimension (one feature is "
                        f"shape (1,)), got a scalar")
    return x_shape, y_shape, x_dtype, y_dtype


def _show(item: tuple[Any, ...]) -> str:
    x_shape, y_shape, x_dtype, y_dtype = item
    return f"x {x_shape} {x_dtype}, y {y_shape} {y_dtype}"


def target_range(ds: MapDataset, sample_bytes: int, name: str) -> tuple[int, int]:
    """``(min, max)`` of a split's integer targets: its ``target_range()`` when it has one,
    else read through ``fetch_batch`` in steps of about ``SCAN_BYTES``."""
    fast = getattr(ds, "target_range", None)
    if callable(fast):
        low, high = fast()
        return int(low), int(high)
    step = max(1, SCAN_BYTES // max(sample_bytes, 1))
    lows, highs = [], []
    for start in range(0, len(ds), step):
        _, ys = fetch_batch(ds, np.arange(start, min(start + step, len(ds))), what=name)
        lows.append(int(ys.min()))
        highs.append(int(ys.max()))
    return min(lows), max(highs)


def open_dataset(spec: DatasetSpec) -> OpenedDataset:
    """Open and check ``spec`` (see the module doc). Raises ``DataError`` (a bad spec or
    layout; ``InconsistentItemsError`` for items that differ); an exception the spec's
    callable raises propagates unchanged. A ray.data split needs Ray up."""
    name = describe_spec(spec)
    resolved = resolve_dataset(spec)
    splits = _materialized(open_splits(resolved), name)
    x_shape, y_shape, x_dtype, y_dtype = check_items(splits, name)
    per_sample = (int(np.prod(x_shape, dtype=np.int64)) * x_dtype.itemsize
                  + int(np.prod(y_shape, dtype=np.int64)) * y_dtype.itemsize)
    ranges: dict[str, tuple[int, int]] = {}
    if splits.num_classes is not None:
        num_classes = splits.num_classes
    elif y_dtype == np.int64:
        ranges = {f"y_{split}": target_range(getattr(splits, split), per_sample,
                                             f"{name} {split}")
                  for split in ("train", "test")}
        num_classes = max(max(high for _, high in ranges.values()) + 1, 1)
    else:
        num_classes = int(np.prod(y_shape, dtype=np.int64))
    train = splits.train
    task_data: TaskDataset = (train if isinstance(train, RayBlocksDataset)
                              else DatasetHandle(resolved, "train", dataset_key(resolved)))
    return OpenedDataset(name=name, splits=splits, task_data=task_data, sample_shape=x_shape,
                         target_shape=y_shape, x_dtype=x_dtype, y_dtype=y_dtype,
                         num_classes=num_classes, ranges=ranges)
